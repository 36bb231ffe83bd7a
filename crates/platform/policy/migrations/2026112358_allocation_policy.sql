INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('allocations.max_concurrent_per_user', '8', 'Live allocations (requested to release_failed) one user may hold at once.', 0),
    ('allocations.max_concurrent_per_project', '16', 'Live allocations one project may hold at once.', 0),
    ('allocations.max_concurrent_per_tenant', '32', 'Live allocations one tenant may hold at once.', 0),
    ('allocations.placement_strategy', '"best_fit"', 'best_fit (the node with the fewest free GPUs that fit) or spread (the most).', 0),
    ('allocations.provision_timeout_seconds', '300', 'How long provisioning may take before the allocation fails and its GPUs are freed.', 0),
    ('allocations.release_timeout_seconds', '300', 'How long a release may take before the allocation becomes release_failed (GPUs held).', 0),
    ('allocations.workflow_max_attempts', '3', 'Node tasks the workflow queues for one provisioning or release before giving up.', 0),
    ('allocations.workflow_retry_base_ms', '1000', 'Backoff before the workflow queues a task again: this, doubled per attempt.', 0),
    ('allocations.workflow_poll_interval_ms', '250', 'How often the workflow looks at an in-flight node task.', 0),
    ('allocations.reconcile_grace_seconds', '120', 'An allocation missing from its node''s user list this long after activation is flagged.', 0),
    ('billing.window_seconds', '60', 'Usage is debited per window of this many seconds (per-second precision).', 0),
    ('billing.low_balance_threshold_minor', '1000', 'A balance at or below this (minor units) triggers a low-balance warning.', 0);

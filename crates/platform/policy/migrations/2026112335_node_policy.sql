INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('nodes.enrollment_token_ttl_seconds', '86400', 'How long a node enrollment token stays usable.', 0),
    ('nodes.certificate_ttl_seconds', '604800', 'Lifetime of a node client certificate; agents renew before a third of it remains.', 0),
    ('nodes.heartbeat_interval_seconds', '15', 'How often agents send a heartbeat.', 0),
    ('nodes.offline_after_seconds', '60', 'A node without a heartbeat for this long is marked offline.', 0),
    ('nodes.task_lease_seconds', '120', 'How long a node holds a pulled task before it is handed out again.', 0),
    ('nodes.task_ttl_seconds', '900', 'A queued node task not pulled within this time expires.', 0),
    ('nodes.task_max_attempts', '3', 'Deliveries of one node task before it fails.', 0),
    ('nodes.probe_wait_seconds', '10', 'How long a probe waits for the node to answer before returning 202.', 0),
    ('nodes.expose_hostnames', 'false', 'Whether GET /api/v1/nodes shows node hostnames to users.', 0);

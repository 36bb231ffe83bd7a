INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('payments.min_amount_minor', '500', 'Smallest card top-up, in minor units of its currency.', 0),
    ('payments.max_amount_minor', '1000000', 'Largest card top-up, in minor units of its currency.', 0),
    ('payments.currencies', '["USD","EUR","GBP"]', 'Currencies card top-ups may use (ISO 4217).', 0),
    ('billing.refund_window_days', '30', 'Days after a credit is posted during which it may be refunded.', 0),
    ('billing.checkpoint_every', '100', 'A balance checkpoint is written every this many ledger entries of an account.', 0);

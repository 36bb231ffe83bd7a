INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('ratelimit.auth.burst', '20', 'Requests to /api/v1/auth/ one caller (principal, else client IP) may make at once.', 0),
    ('ratelimit.auth.per_minute', '30', 'Rate at which the auth bucket refills, in requests per minute.', 0),
    ('ratelimit.read.burst', '120', 'GET, HEAD and OPTIONS requests one caller may make at once.', 0),
    ('ratelimit.read.per_minute', '600', 'Rate at which the read bucket refills, in requests per minute.', 0),
    ('ratelimit.write.burst', '60', 'State-changing requests one caller may make at once.', 0),
    ('ratelimit.write.per_minute', '300', 'Rate at which the write bucket refills, in requests per minute.', 0),
    ('ratelimit.admin.burst', '60', 'Requests to /api/v1/admin/ one caller may make at once.', 0),
    ('ratelimit.admin.per_minute', '300', 'Rate at which the admin bucket refills, in requests per minute.', 0);

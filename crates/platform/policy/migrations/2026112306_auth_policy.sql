INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('auth.personal_login.enabled', 'true', 'Whether local accounts may sign in with email and password.', 0),
    ('auth.access_token_ttl_seconds', '900', 'Lifetime of an access token; a disabled user is locked out within this time.', 0),
    ('auth.refresh_token_ttl_seconds', '2592000', 'Lifetime of a refresh token.', 0),
    ('auth.service_account_token_ttl_seconds', '600', 'Lifetime of a service-account access token.', 0),
    ('auth.lockout.max_failures', '5', 'Consecutive failed sign-ins after which an account is locked.', 0),
    ('auth.lockout.seconds', '900', 'How long a locked account stays locked.', 0),
    ('auth.oidc.flow_ttl_seconds', '600', 'How long an OIDC authorization flow may take between authorize and exchange.', 0);

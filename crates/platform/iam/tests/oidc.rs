//! Sign-in through an external OIDC provider, end to end on both databases:
//! authorize → provider login → code exchange with PKCE → ID token verified → user
//! upserted by (issuer, subject) → platform session. And every way the flow must refuse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use gpuaas_audit::AuditResult;
use gpuaas_iam::accounts::{UserFilter, list_users};
use gpuaas_iam::{ActorType, GlobalRole, IamError, SessionTokens, UserStatus};
use gpuaas_policy::keys;
use gpuaas_testkit::{Backend, both_backends};
use serde_json::json;
use support::{
    CLIENT_ID, CORR, Env, Grant, Identity, PLATFORM_ISSUER, REDIRECT_URI, TestKey, admin, audit_rows, env,
    env_with_provider, jwt_header, query_of, s256, user_target,
};

async fn provider_env(backend: Backend) -> Env {
    env_with_provider(backend, vec![TestKey::rsa("rsa-1")]).await
}

async fn sign_in(env: &Env, identity: &Identity) -> Result<SessionTokens, IamError> {
    let url = env.iam.oidc_authorize().await.unwrap();
    let (code, state) = env.provider().log_in(&url, identity).await;
    env.iam.oidc_exchange(&code, &state, CORR).await
}

/// Users whose identity comes from the test provider.
async fn provider_users(env: &Env) -> Vec<gpuaas_iam::User> {
    let page = list_users(&env.store, &UserFilter::default(), None, 100).await.unwrap();
    page.items.into_iter().filter(|user| user.identity_source == env.provider().issuer).collect()
}

async fn sign_in_end_to_end(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();

    let url = env.iam.oidc_authorize().await.unwrap();
    assert!(url.starts_with(&format!("{}/authorize?", provider.issuer)), "{url}");
    let query = query_of(&url);
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(query["redirect_uri"], REDIRECT_URI);
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"].len(), 43, "base64url of a SHA-256");
    assert!(query["scope"].split(' ').any(|s| s == "openid"));
    assert!(query["state"].len() >= 43 && query["nonce"].len() >= 43);
    assert_ne!(query["state"], query["nonce"]);

    let alice = Identity::new("alice-sub", "Alice@Example.com", &["offline_access", "admin"]);
    let (code, state) = provider.log_in(&url, &alice).await;
    assert_eq!(state, query["state"]);
    let session = env.iam.oidc_exchange(&code, &state, CORR).await.unwrap();
    assert_eq!(session.token_type, "Bearer");
    assert!(!session.refresh_token.is_empty());
    assert!(session.expires_in > 0);
    assert_eq!(provider.token_refusals(), Vec::<String>::new());

    // The session is the platform's own, not the provider's token passed through.
    let verified = env.iam.verify(&session.access_token).await.unwrap();
    assert_eq!(verified.issuer, PLATFORM_ISSUER);
    assert_eq!(jwt_header(&session.access_token)["alg"], "EdDSA");

    let ctx = env.iam.authenticate(&session.access_token).await.unwrap();
    assert_eq!(ctx.actor_type, ActorType::User);
    assert_eq!(ctx.global_role, GlobalRole::Admin, "admin in realm_access.roles maps to the admin role");
    let me = env.iam.me(&ctx).await.unwrap();
    assert_eq!(me.user.email, "alice@example.com", "emails are normalised");
    assert_eq!(me.user.display_name, "Name of alice-sub");
    assert_eq!(me.user.identity_source, provider.issuer);
    assert_eq!(me.projects.len(), 1);

    let target = user_target(&ctx.tenant_id, &ctx.actor_id);
    let rows = audit_rows(&env.store, &target).await;
    assert!(rows.iter().any(|r| r.action == "auth.oidc_login" && r.result == AuditResult::Success), "{rows:?}");
    assert!(rows.iter().any(|r| r.action == "user.create_from_oidc"), "{rows:?}");

    // The OIDC session refreshes like any other.
    let refreshed = env.iam.refresh(&session.refresh_token, CORR).await.unwrap();
    assert_eq!(env.iam.authenticate(&refreshed.access_token).await.unwrap().actor_id, ctx.actor_id);
}

async fn second_sign_in_updates_the_same_user(backend: Backend) {
    let env = provider_env(backend).await;
    let first = sign_in(&env, &Identity::new("sub-1", "first@example.com", &["admin"])).await.unwrap();
    let first = env.iam.authenticate(&first.access_token).await.unwrap();
    assert_eq!(first.global_role, GlobalRole::Admin);

    let mut changed = Identity::new("sub-1", "renamed@example.com", &["billing_operator"]);
    changed.name = "Renamed Person".into();
    let second = sign_in(&env, &changed).await.unwrap();
    let second = env.iam.authenticate(&second.access_token).await.unwrap();
    assert_eq!(second.actor_id, first.actor_id, "same (issuer, subject), same user");
    assert_eq!(second.tenant_id, first.tenant_id);
    assert_eq!(second.global_role, GlobalRole::BillingOperator, "the role follows the provider");
    let me = env.iam.me(&second).await.unwrap();
    assert_eq!(me.user.email, "renamed@example.com");
    assert_eq!(me.user.display_name, "Renamed Person");
    assert_eq!(me.projects.len(), 1, "no second default project");

    // Losing every role at the provider demotes to a plain user.
    let third = sign_in(&env, &Identity::new("sub-1", "renamed@example.com", &[])).await.unwrap();
    assert_eq!(env.iam.authenticate(&third.access_token).await.unwrap().global_role, GlobalRole::User);

    let users = provider_users(&env).await;
    assert_eq!(users.len(), 1, "{users:?}");

    // Another subject with another email is another user.
    sign_in(&env, &Identity::new("sub-2", "other@example.com", &[])).await.unwrap();
    assert_eq!(provider_users(&env).await.len(), 2);
}

async fn unknown_or_replayed_state_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();
    let url = env.iam.oidc_authorize().await.unwrap();
    let (code, state) = provider.log_in(&url, &Identity::new("sub-1", "a@example.com", &[])).await;

    // A state this platform never issued.
    assert_err!(env.iam.oidc_exchange(&code, "forged-state", CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(provider.token_requests(), 0, "refused before the code is redeemed");

    // The unknown state did not consume the real flow.
    env.iam.oidc_exchange(&code, &state, CORR).await.unwrap();

    // Replaying the callback finds no flow.
    assert_err!(env.iam.oidc_exchange(&code, &state, CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(provider.token_requests(), 1);

    // Empty or oversized parameters are input errors.
    assert_err!(env.iam.oidc_exchange("", &state, CORR).await, IamError::Invalid { field: "code", .. });
    assert_err!(env.iam.oidc_exchange(&code, "", CORR).await, IamError::Invalid { field: "state", .. });
    assert_err!(env.iam.oidc_exchange(&code, &"s".repeat(5000), CORR).await, IamError::Invalid { .. });
}

/// A code obtained in one flow, presented with the state of another (code injection):
/// the other flow's PKCE verifier does not match, so the provider refuses.
async fn code_from_another_flow_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();
    let victim_url = env.iam.oidc_authorize().await.unwrap();
    let attacker_url = env.iam.oidc_authorize().await.unwrap();
    let (attacker_code, _) = provider.log_in(&attacker_url, &Identity::new("attacker", "x@example.com", &[])).await;
    let victim_state = query_of(&victim_url)["state"].clone();
    assert_err!(env.iam.oidc_exchange(&attacker_code, &victim_state, CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(provider.token_refusals(), vec!["code_verifier".to_owned()]);
    assert!(provider_users(&env).await.is_empty());
}

async fn nonce_mismatch_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();
    for nonce in [Some("not-the-nonce-of-this-flow".to_owned()), None] {
        let query = query_of(&env.iam.oidc_authorize().await.unwrap());
        let code = provider.register_code(Grant {
            client_id: CLIENT_ID.into(),
            redirect_uri: REDIRECT_URI.into(),
            code_challenge: query["code_challenge"].clone(),
            nonce,
            identity: Identity::new("sub-1", "a@example.com", &["admin"]),
            claims_patch: json!(null),
        });
        assert_err!(env.iam.oidc_exchange(&code, &query["state"], CORR).await, IamError::OidcFlowInvalid(m) if m.contains("nonce"));
    }
    assert_eq!(provider.token_refusals(), Vec::<String>::new(), "the provider answered; the platform refused");
    assert!(provider_users(&env).await.is_empty(), "no user from a refused flow");
}

async fn wrong_pkce_verifier_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();
    let query = query_of(&env.iam.oidc_authorize().await.unwrap());
    let code = provider.register_code(Grant {
        client_id: CLIENT_ID.into(),
        redirect_uri: REDIRECT_URI.into(),
        code_challenge: s256("a verifier the platform does not hold"),
        nonce: Some(query["nonce"].clone()),
        identity: Identity::new("sub-1", "a@example.com", &[]),
        claims_patch: json!(null),
    });
    assert_err!(env.iam.oidc_exchange(&code, &query["state"], CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(provider.token_refusals(), vec!["code_verifier".to_owned()]);
    // The flow is spent even though it failed.
    assert_err!(env.iam.oidc_exchange(&code, &query["state"], CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(provider.token_requests(), 1);
}

async fn bad_id_token_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    let provider = env.provider();
    let now = support::now_secs();
    let cases = [
        (json!({"aud": "another-client"}), "audience"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (json!({"exp": now - 600, "iat": now - 900}), "expired"),
    ];
    for (patch, what) in cases {
        let query = query_of(&env.iam.oidc_authorize().await.unwrap());
        let code = provider.register_code(Grant {
            client_id: CLIENT_ID.into(),
            redirect_uri: REDIRECT_URI.into(),
            code_challenge: query["code_challenge"].clone(),
            nonce: Some(query["nonce"].clone()),
            identity: Identity::new("sub-1", "a@example.com", &["admin"]),
            claims_patch: patch,
        });
        let error = support::err(env.iam.oidc_exchange(&code, &query["state"], CORR).await);
        assert!(matches!(error, IamError::TokenInvalid(_) | IamError::TokenExpired), "{what}: {error:?}");
    }
    assert!(provider_users(&env).await.is_empty());
}

async fn expired_flow_is_refused(backend: Backend) {
    let env = provider_env(backend).await;
    env.policy.set(keys::AUTH_OIDC_FLOW_TTL_SECONDS, &0).await.unwrap();
    let url = env.iam.oidc_authorize().await.unwrap();
    let (code, state) = env.provider().log_in(&url, &Identity::new("sub-1", "a@example.com", &[])).await;
    assert_err!(env.iam.oidc_exchange(&code, &state, CORR).await, IamError::OidcFlowInvalid(_));
    assert_eq!(env.provider().token_requests(), 0);
}

/// A provider account cannot take over a local account by claiming its email.
async fn email_of_a_local_account_conflicts(backend: Backend) {
    let env = provider_env(backend).await;
    let admin = admin(&env).await;
    let claim = Identity::new("sub-evil", &admin.user.email, &["admin"]);
    assert_err!(sign_in(&env, &claim).await, IamError::Conflict(_));
    // Also when an existing provider user changes their email to it.
    sign_in(&env, &Identity::new("sub-1", "mine@example.com", &[])).await.unwrap();
    assert_err!(sign_in(&env, &Identity::new("sub-1", &admin.user.email, &[])).await, IamError::Conflict(_));
    let ctx = env.iam.authenticate(&admin.session.access_token).await.unwrap();
    assert_eq!(ctx.actor_id, admin.user.id);
    assert_eq!(ctx.global_role, GlobalRole::Admin);
}

async fn disabled_provider_user_cannot_sign_in(backend: Backend) {
    let env = provider_env(backend).await;
    let admin = admin(&env).await;
    let identity = Identity::new("sub-1", "a@example.com", &[]);
    let session = sign_in(&env, &identity).await.unwrap();
    let user = env.iam.authenticate(&session.access_token).await.unwrap();
    env.iam.admin_set_user_status(&admin.ctx, &user.actor_id, UserStatus::Disabled, CORR).await.unwrap();

    assert_err!(sign_in(&env, &identity).await, IamError::AccountDisabled);
    assert_err!(env.iam.authenticate(&session.access_token).await, IamError::AccountDisabled);
    // Nor with a token straight from the provider.
    assert_err!(env.iam.authenticate(&env.provider().token_for(&identity)).await, IamError::AccountDisabled);

    env.iam.admin_set_user_status(&admin.ctx, &user.actor_id, UserStatus::Active, CORR).await.unwrap();
    sign_in(&env, &identity).await.unwrap();
}

async fn oidc_is_off_without_a_provider(backend: Backend) {
    let env = env(backend).await;
    assert_err!(env.iam.oidc_authorize().await, IamError::FeatureDisabled(_));
    assert_err!(env.iam.oidc_exchange("code", "state", CORR).await, IamError::FeatureDisabled(_));
}

both_backends!(
    sign_in_end_to_end,
    second_sign_in_updates_the_same_user,
    unknown_or_replayed_state_is_refused,
    code_from_another_flow_is_refused,
    nonce_mismatch_is_refused,
    wrong_pkce_verifier_is_refused,
    bad_id_token_is_refused,
    expired_flow_is_refused,
    email_of_a_local_account_conflicts,
    disabled_provider_user_cannot_sign_in,
    oidc_is_off_without_a_provider,
);

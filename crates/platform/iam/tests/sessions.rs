//! The built-in issuer and sessions on both databases: password sign-in, signing-key
//! rotation, refresh-token rotation and reuse detection, logout, lockout with its audit
//! trail, disabled accounts, and concurrent refreshes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use std::collections::HashSet;
use std::time::Duration;

use gpuaas_audit::AuditResult;
use gpuaas_iam::{ActorType, GlobalRole, IamError, Permission, UserStatus};
use gpuaas_policy::keys;
use gpuaas_store::sqlx;
use gpuaas_testkit::{Backend, both_backends};
use support::{
    ADMIN_EMAIL, AUDIENCE, CORR, PASSWORD, PLATFORM_ISSUER, admin, audit_rows, env, jwt_claims, jwt_header, user,
    user_target,
};

async fn bootstrap_admin_signs_in(backend: Backend) {
    let env = env(backend).await;
    let created = env.iam.bootstrap_admin(ADMIN_EMAIL, PASSWORD).await.unwrap().expect("first admin");
    assert_eq!(created.role, GlobalRole::Admin);
    assert_eq!(created.identity_source, "local");
    assert!(env.iam.bootstrap_admin("second@gpuaas.test", PASSWORD).await.unwrap().is_none(), "only once");

    let session = env.iam.login(" Admin@GPUAAS.test ", PASSWORD, CORR).await.unwrap();
    assert_eq!(session.token_type, "Bearer");
    assert_eq!(session.expires_in, 900, "the access-token lifetime policy");
    assert_eq!(session.refresh_expires_in, 2_592_000, "the refresh-token lifetime policy");
    let answer = serde_json::to_value(&session).unwrap();
    assert!(answer.get("refresh_expires_in").is_none(), "the JSON answer keeps its shape: {answer}");
    let ctx = env.iam.authenticate(&session.access_token).await.unwrap();
    assert_eq!(ctx.actor_type, ActorType::User);
    assert_eq!(ctx.actor_id, created.id);
    assert_eq!(ctx.global_role, GlobalRole::Admin);
    assert!(ctx.allows(Permission::AdminWrite));

    let header = jwt_header(&session.access_token);
    assert_eq!(header["alg"], "EdDSA");
    let claims = jwt_claims(&session.access_token);
    assert_eq!(claims["iss"], PLATFORM_ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["sub"], created.id.as_str());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);

    let jwks = env.iam.jwks().await.unwrap();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, vec![header["kid"].as_str().unwrap()]);
    let discovery = env.iam.discovery_document();
    assert_eq!(discovery["issuer"], PLATFORM_ISSUER);

    let rows = audit_rows(&env.store, &user_target(&created.tenant_id, &created.id)).await;
    assert!(rows.iter().any(|r| r.action == "user.bootstrap_admin"));
    assert!(rows.iter().any(|r| r.action == "auth.login" && r.result == AuditResult::Success));

    // A token signed by this platform verifies on another instance of it.
    let other = env.second_instance();
    assert_eq!(other.authenticate(&session.access_token).await.unwrap().actor_id, created.id);
}

async fn signing_key_rotation_keeps_old_tokens_valid(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let old_kid = jwt_header(&admin.session.access_token)["kid"].as_str().unwrap().to_owned();
    // Another instance has verified (and cached) the old key set.
    let other = env.second_instance();
    other.authenticate(&admin.session.access_token).await.unwrap();

    let new_kid = env.iam.rotate_signing_key(&admin.ctx, CORR).await.unwrap();
    assert_ne!(new_kid, old_kid);

    env.iam.authenticate(&admin.session.access_token).await.expect("tokens of the retired key stay valid");
    let fresh = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();
    assert_eq!(jwt_header(&fresh.access_token)["kid"], new_kid.as_str(), "new tokens use the new key");
    env.iam.authenticate(&fresh.access_token).await.unwrap();
    other.authenticate(&fresh.access_token).await.expect("another instance picks up the new key");
    other.authenticate(&admin.session.access_token).await.unwrap();

    let jwks = env.iam.jwks().await.unwrap();
    let kids: HashSet<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, HashSet::from([old_kid.as_str(), new_kid.as_str()]));
    for key in jwks["keys"].as_array().unwrap() {
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["alg"], "EdDSA");
        assert!(key.get("d").is_none(), "no private material in the JWKS");
    }
    let rows = audit_rows(&env.store, &format!("gpuaas:local:-:-:signing_key:{new_kid}")).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action, "auth.signing_key.rotate");

    // Once its publication window has passed, the retired key leaves the JWKS and its
    // tokens stop verifying (on an instance without a cached copy).
    sqlx::query("UPDATE signing_keys SET publish_until = 1 WHERE kid = $1")
        .bind(&old_kid)
        .execute(env.store.pool())
        .await
        .unwrap();
    let jwks = env.iam.jwks().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], new_kid.as_str());
    let fresh_instance = env.second_instance();
    assert_err!(
        fresh_instance.authenticate(&admin.session.access_token).await,
        IamError::TokenInvalid(m) if m.contains("unknown signing key")
    );
    fresh_instance.authenticate(&fresh.access_token).await.unwrap();
}

async fn refresh_rotates_and_reuse_revokes(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let first = admin.session;

    let second = env.iam.refresh(&first.refresh_token, CORR).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(env.iam.authenticate(&second.access_token).await.unwrap().actor_id, admin.user.id);

    // The old refresh token is spent...
    assert_err!(env.iam.refresh(&first.refresh_token, CORR).await, IamError::InvalidCredentials);
    // ...and presenting it again revoked the token that replaced it too.
    assert_err!(env.iam.refresh(&second.refresh_token, CORR).await, IamError::InvalidCredentials);
    let rows = audit_rows(&env.store, &user_target(&admin.user.tenant_id, &admin.user.id)).await;
    assert!(rows.iter().any(|r| r.action == "auth.refresh_reuse" && r.result == AuditResult::Denied), "{rows:?}");

    // Every other session of the user went with it; a new sign-in works.
    let third = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();
    env.iam.refresh(&third.refresh_token, CORR).await.unwrap();

    for junk in ["", "not-a-token", &"x".repeat(500)] {
        assert_err!(env.iam.refresh(junk, CORR).await, IamError::InvalidCredentials);
    }
}

async fn refresh_token_expires(backend: Backend) {
    let env = env(backend).await;
    admin(&env).await;
    env.policy.set(keys::AUTH_REFRESH_TOKEN_TTL_SECONDS, &0).await.unwrap();
    let session = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();
    assert_err!(env.iam.refresh(&session.refresh_token, CORR).await, IamError::InvalidCredentials);
}

async fn logout_revokes_the_refresh_token(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let first = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();
    let second = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();

    // Logout ends only its own session.
    env.iam.logout(&first.refresh_token).await.unwrap();
    assert_err!(env.iam.logout(&first.refresh_token).await, IamError::InvalidCredentials);
    assert_err!(env.iam.logout("never-issued").await, IamError::InvalidCredentials);
    assert_err!(env.iam.logout("").await, IamError::InvalidCredentials);
    let second = env.iam.refresh(&second.refresh_token, CORR).await.expect("other sessions live on");

    // Refreshing with a logged-out token is refused, and counts as reuse of a spent
    // token: every session of the user is revoked.
    env.iam.logout(&admin.session.refresh_token).await.unwrap();
    assert_err!(env.iam.refresh(&admin.session.refresh_token, CORR).await, IamError::InvalidCredentials);
    assert_err!(env.iam.refresh(&second.refresh_token, CORR).await, IamError::InvalidCredentials);
}

async fn lockout_after_repeated_failures(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;
    env.policy.set(keys::AUTH_LOCKOUT_MAX_FAILURES, &3).await.unwrap();
    env.policy.set(keys::AUTH_LOCKOUT_SECONDS, &1).await.unwrap();

    // A success in between resets the count.
    for _ in 0..2 {
        assert_err!(env.iam.login("alice@example.com", "wrong password!", CORR).await, IamError::InvalidCredentials);
    }
    env.iam.login("alice@example.com", PASSWORD, CORR).await.unwrap();

    for _ in 0..2 {
        assert_err!(env.iam.login("alice@example.com", "wrong password!", CORR).await, IamError::InvalidCredentials);
    }
    let locked =
        assert_err!(env.iam.login("alice@example.com", "wrong password!", CORR).await, IamError::AccountLocked { .. });
    let IamError::AccountLocked { retry_after } = locked else { unreachable!() };
    assert_eq!(retry_after, Duration::from_secs(1));

    // While locked even the right password is refused.
    assert_err!(env.iam.login("alice@example.com", PASSWORD, CORR).await, IamError::AccountLocked { .. });
    // Other accounts are not affected.
    env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.unwrap();

    let target = user_target(&alice.user.tenant_id, &alice.user.id);
    let rows = audit_rows(&env.store, &target).await;
    let count =
        |action: &str, result: AuditResult| rows.iter().filter(|r| r.action == action && r.result == result).count();
    assert_eq!(count("auth.login", AuditResult::Failure), 5, "{rows:?}");
    assert_eq!(count("auth.lockout", AuditResult::Denied), 1, "{rows:?}");
    assert_eq!(count("auth.login", AuditResult::Denied), 1, "the attempt while locked");
    let lockout = rows.iter().find(|r| r.action == "auth.lockout").unwrap();
    assert_eq!(lockout.details["failures"], 3);
    for row in &rows {
        let text = format!("{row:?}");
        assert!(!text.contains("wrong password!") && !text.contains(PASSWORD), "no password in the audit trail");
    }

    // The lock lapses; the right password works again and the count starts over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.iam.login("alice@example.com", PASSWORD, CORR).await.unwrap();
    assert_err!(env.iam.login("alice@example.com", "wrong password!", CORR).await, IamError::InvalidCredentials);

    // An unknown email is just refused (and audited), never locked.
    for _ in 0..4 {
        assert_err!(env.iam.login("nobody@example.com", "wrong password!", CORR).await, IamError::InvalidCredentials);
    }
    assert_eq!(audit_rows(&env.store, "user:unknown").await.len(), 4);
}

/// A correct password that was already being checked when the account got locked
/// (by concurrent wrong guesses) must not unlock it: otherwise parallel guessing
/// sidesteps the lockout.
async fn lock_set_during_a_correct_sign_in_holds(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;

    // Another request is about to lock the account: its transaction holds the row.
    let mut tx = env.store.begin().await.unwrap();
    let until = gpuaas_kernel::Timestamp::now().saturating_add(Duration::from_secs(900));
    sqlx::query("UPDATE users SET locked_until = $1 WHERE id = $2")
        .bind(until.as_micros())
        .bind(&alice.user.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let iam = env.iam.clone();
    let attempt = tokio::spawn(async move { iam.login("alice@example.com", PASSWORD, CORR).await });
    // The sign-in reads the account (not locked yet) and checks the password.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.commit().await.unwrap();

    assert_err!(attempt.await.unwrap(), IamError::AccountLocked { .. });
    assert_err!(env.iam.login("alice@example.com", PASSWORD, CORR).await, IamError::AccountLocked { .. });
}

async fn disabled_user_is_shut_out(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;

    let disabled = env.iam.admin_set_user_status(&admin.ctx, &alice.user.id, UserStatus::Disabled, CORR).await.unwrap();
    assert_eq!(disabled.status, UserStatus::Disabled);
    assert_err!(env.iam.authenticate(&alice.session.access_token).await, IamError::AccountDisabled);
    assert_err!(env.iam.refresh(&alice.session.refresh_token, CORR).await, IamError::InvalidCredentials);
    assert_err!(env.iam.login("alice@example.com", PASSWORD, CORR).await, IamError::AccountDisabled);
    // A wrong password on a disabled account says nothing about the account.
    assert_err!(env.iam.login("alice@example.com", "wrong password!", CORR).await, IamError::InvalidCredentials);

    // An administrator cannot lock themselves out; unknown users are not found.
    assert_err!(
        env.iam.admin_set_user_status(&admin.ctx, &admin.user.id, UserStatus::Disabled, CORR).await,
        IamError::Conflict(_)
    );
    assert_err!(
        env.iam.admin_set_user_status(&admin.ctx, "no-such-user", UserStatus::Disabled, CORR).await,
        IamError::NotFound(_)
    );

    env.iam.admin_set_user_status(&admin.ctx, &alice.user.id, UserStatus::Active, CORR).await.unwrap();
    // Sessions revoked by disabling do not come back.
    assert_err!(env.iam.refresh(&alice.session.refresh_token, CORR).await, IamError::InvalidCredentials);
    let session = env.iam.login("alice@example.com", PASSWORD, CORR).await.unwrap();
    env.iam.authenticate(&session.access_token).await.unwrap();
    env.iam.authenticate(&alice.session.access_token).await.expect("unexpired access tokens work again");
}

async fn concurrent_refreshes_have_one_winner(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let token = admin.session.refresh_token;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let iam = env.iam.clone();
            let token = token.clone();
            tokio::spawn(async move { iam.refresh(&token, CORR).await })
        })
        .collect();
    let mut winners = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => winners += 1,
            Err(IamError::InvalidCredentials) => {}
            Err(other) => panic!("a losing refresh must be refused cleanly, got {other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

async fn password_sign_in_can_be_turned_off(backend: Backend) {
    let env = env(backend).await;
    admin(&env).await;
    env.policy.set(keys::AUTH_PERSONAL_LOGIN_ENABLED, &false).await.unwrap();
    assert_err!(env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await, IamError::FeatureDisabled(_));
}

async fn admin_creates_users(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;
    assert_eq!(alice.ctx.global_role, GlobalRole::User);
    assert!(!alice.ctx.allows(Permission::AdminRead));
    assert_eq!(alice.user.display_name, "alice");
    assert_err!(
        env.iam.admin_create_user(&admin.ctx, "ALICE@example.com", None, PASSWORD, GlobalRole::User, CORR).await,
        IamError::Conflict(_)
    );
    assert_err!(
        env.iam.admin_create_user(&admin.ctx, "bob@example.com", None, "short", GlobalRole::User, CORR).await,
        IamError::Invalid { field: "password", .. }
    );
    assert_err!(
        env.iam.admin_create_user(&admin.ctx, "not an email", None, PASSWORD, GlobalRole::User, CORR).await,
        IamError::Invalid { field: "email", .. }
    );
}

both_backends!(
    bootstrap_admin_signs_in,
    signing_key_rotation_keeps_old_tokens_valid,
    refresh_rotates_and_reuse_revokes,
    refresh_token_expires,
    logout_revokes_the_refresh_token,
    lockout_after_repeated_failures,
    lock_set_during_a_correct_sign_in_holds,
    disabled_user_is_shut_out,
    concurrent_refreshes_have_one_winner,
    password_sign_in_can_be_turned_off,
    admin_creates_users,
);

//! Service accounts and tenancy on both databases: client-credentials tokens with
//! scopes, rotation and revocation that take effect at once, and one tenant never
//! seeing another's projects or machine identities.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use gpuaas_iam::{ActorType, GlobalRole, IamError, Permission, ProjectRole};
use gpuaas_testkit::{Backend, both_backends};
use support::{CORR, Env, SignedIn, admin, audit_rows, env, jwt_claims, user};

fn scopes(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

async fn default_project(env: &Env, who: &SignedIn) -> String {
    let me = env.iam.me(&who.ctx).await.unwrap();
    assert_eq!(me.projects.len(), 1);
    assert_eq!(me.projects[0].role, ProjectRole::Admin);
    me.projects[0].id.clone()
}

async fn token_carries_the_service_account(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;
    let project = default_project(&env, &alice).await;

    let issued =
        env.iam.create_service_account(&alice.ctx, &project, "ci", &scopes(&["project:read"]), CORR).await.unwrap();
    assert!(issued.client_id.starts_with("sa_"));
    assert!(issued.client_secret.len() >= 43);
    let account = &issued.service_account;
    assert_eq!(account.project_id, project);
    assert_eq!(account.tenant_id, alice.ctx.tenant_id);
    assert_eq!(account.status, "active");
    assert_eq!(account.client_id.as_deref(), Some(issued.client_id.as_str()));

    let token = env.iam.service_account_token(&issued.client_id, &issued.client_secret, None, CORR).await.unwrap();
    assert_eq!(token.scope, "project:read");
    assert_eq!(token.expires_in, 600, "the service-account token lifetime policy");
    let claims = jwt_claims(&token.access_token);
    assert_eq!(claims["actor_type"], "service_account");
    assert!(claims.get("client_secret").is_none() && !token.access_token.contains(&issued.client_secret));

    let ctx = env.iam.authenticate(&token.access_token).await.unwrap();
    assert_eq!(ctx.actor_type, ActorType::ServiceAccount);
    assert_eq!(ctx.actor_id, account.id);
    assert_eq!(ctx.global_role, GlobalRole::User);
    assert_eq!(ctx.tenant_id, alice.ctx.tenant_id);
    assert_eq!(ctx.project_id.as_deref(), Some(project.as_str()));
    assert_eq!(ctx.scopes, scopes(&["project:read"]));
    assert_eq!(ctx.role_name(), "service_account");
    assert!(ctx.allows(Permission::ProjectRead));
    assert!(!ctx.allows(Permission::ProjectWrite));
    assert!(!ctx.allows(Permission::ProjectAdmin));
    assert!(!ctx.allows(Permission::AdminRead));

    // It sees its own project, read-only, and nothing else.
    assert_eq!(env.iam.project(&ctx, &project, Permission::ProjectRead).await.unwrap().id, project);
    assert_err!(env.iam.project(&ctx, &project, Permission::ProjectWrite).await, IamError::NotFound(_));
    let listed = env.iam.list_projects(&ctx).await.unwrap();
    assert_eq!(listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec![project.as_str()]);
    let admin_project = default_project(&env, &admin).await;
    assert_err!(env.iam.project(&ctx, &admin_project, Permission::ProjectRead).await, IamError::NotFound(_));
    // It has no user profile and cannot mint more machine identities.
    assert_err!(env.iam.me(&ctx).await, IamError::Forbidden(_));
    assert_err!(
        env.iam.create_service_account(&ctx, &project, "child", &scopes(&["project:read"]), CORR).await,
        IamError::Forbidden(_)
    );

    let listed = env.iam.list_service_accounts(&alice.ctx, &project).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, account.id);
    let rows = audit_rows(
        &env.store,
        &format!("gpuaas:local:{}:{}:service_account:{}", account.tenant_id, account.project_id, account.id),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action, "service_account.create");
    assert!(!format!("{rows:?}").contains(&issued.client_secret), "no secret in the audit trail");
}

async fn scopes_are_validated_and_narrowed(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let project = default_project(&env, &admin).await;
    let issued = env
        .iam
        .create_service_account(&admin.ctx, &project, "deployer", &scopes(&["project:read", "project:write"]), CORR)
        .await
        .unwrap();

    let full = env.iam.service_account_token(&issued.client_id, &issued.client_secret, None, CORR).await.unwrap();
    assert_eq!(full.scope, "project:read project:write");
    let ctx = env.iam.authenticate(&full.access_token).await.unwrap();
    assert!(ctx.allows(Permission::ProjectWrite));

    let narrow = env
        .iam
        .service_account_token(&issued.client_id, &issued.client_secret, Some("project:read"), CORR)
        .await
        .unwrap();
    assert_eq!(narrow.scope, "project:read");
    let ctx = env.iam.authenticate(&narrow.access_token).await.unwrap();
    assert_eq!(ctx.scopes, scopes(&["project:read"]));
    assert!(!ctx.allows(Permission::ProjectWrite));

    for asked in ["project:admin", "admin:write", "", "project:read admin:read"] {
        assert_err!(
            env.iam.service_account_token(&issued.client_id, &issued.client_secret, Some(asked), CORR).await,
            IamError::Invalid { field: "scope", .. }
        );
    }
    for bad in [scopes(&[]), scopes(&["admin:write"]), scopes(&["project:admin"])] {
        assert_err!(
            env.iam.create_service_account(&admin.ctx, &project, "bad", &bad, CORR).await,
            IamError::Invalid { field: "scopes", .. }
        );
    }
    assert_err!(
        env.iam.create_service_account(&admin.ctx, &project, "deployer", &scopes(&["project:read"]), CORR).await,
        IamError::Conflict(_)
    );
}

async fn wrong_credentials_are_refused(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let project = default_project(&env, &admin).await;
    let issued =
        env.iam.create_service_account(&admin.ctx, &project, "ci", &scopes(&["project:read"]), CORR).await.unwrap();
    let other =
        env.iam.create_service_account(&admin.ctx, &project, "other", &scopes(&["project:read"]), CORR).await.unwrap();

    let cases = [
        (issued.client_id.as_str(), "wrong-secret"),
        (issued.client_id.as_str(), other.client_secret.as_str()),
        ("sa_unknown", issued.client_secret.as_str()),
        ("", issued.client_secret.as_str()),
        (issued.client_id.as_str(), ""),
    ];
    for (client_id, secret) in cases {
        assert_err!(env.iam.service_account_token(client_id, secret, None, CORR).await, IamError::InvalidCredentials);
    }
    let failures = audit_rows(&env.store, &format!("client:{}", issued.client_id)).await;
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().all(|r| r.action == "auth.service_account_token"));
}

async fn rotation_and_revocation_take_effect_at_once(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;
    let project = default_project(&env, &alice).await;
    let issued =
        env.iam.create_service_account(&alice.ctx, &project, "ci", &scopes(&["project:read"]), CORR).await.unwrap();
    let account_id = issued.service_account.id.clone();
    let old_token = env.iam.service_account_token(&issued.client_id, &issued.client_secret, None, CORR).await.unwrap();
    env.iam.authenticate(&old_token.access_token).await.unwrap();

    let rotated = env.iam.rotate_service_account(&alice.ctx, &project, &account_id, CORR).await.unwrap();
    assert_ne!(rotated.client_id, issued.client_id);
    assert_ne!(rotated.client_secret, issued.client_secret);
    assert_eq!(rotated.service_account.id, account_id);
    assert_eq!(rotated.service_account.client_id.as_deref(), Some(rotated.client_id.as_str()));
    // The old secret and every token it bought stop at once, not at expiry.
    assert_err!(
        env.iam.service_account_token(&issued.client_id, &issued.client_secret, None, CORR).await,
        IamError::InvalidCredentials
    );
    assert_err!(
        env.iam.service_account_token(&rotated.client_id, &issued.client_secret, None, CORR).await,
        IamError::InvalidCredentials
    );
    assert_err!(env.iam.authenticate(&old_token.access_token).await, IamError::TokenInvalid(_));
    let new_token =
        env.iam.service_account_token(&rotated.client_id, &rotated.client_secret, None, CORR).await.unwrap();
    assert_eq!(env.iam.authenticate(&new_token.access_token).await.unwrap().actor_id, account_id);

    let revoked = env.iam.revoke_service_account(&alice.ctx, &project, &account_id, CORR).await.unwrap();
    assert_eq!(revoked.status, "revoked");
    assert_eq!(revoked.client_id, None);
    assert_err!(env.iam.authenticate(&new_token.access_token).await, IamError::TokenInvalid(_));
    assert_err!(
        env.iam.service_account_token(&rotated.client_id, &rotated.client_secret, None, CORR).await,
        IamError::InvalidCredentials
    );
    assert_err!(env.iam.rotate_service_account(&alice.ctx, &project, &account_id, CORR).await, IamError::Conflict(_));

    let actions: Vec<String> = audit_rows(
        &env.store,
        &format!("gpuaas:local:{}:{project}:service_account:{account_id}", issued.service_account.tenant_id),
    )
    .await
    .into_iter()
    .map(|r| r.action)
    .collect();
    assert_eq!(actions, vec!["service_account.revoke", "service_account.rotate", "service_account.create"]);
}

async fn other_tenants_see_nothing(backend: Backend) {
    let env = env(backend).await;
    let admin = admin(&env).await;
    let alice = user(&env, &admin.ctx, "alice@example.com").await;
    let bob = user(&env, &admin.ctx, "bob@example.com").await;
    assert_ne!(alice.ctx.tenant_id, bob.ctx.tenant_id);
    let alice_project = default_project(&env, &alice).await;
    let bob_project = default_project(&env, &bob).await;
    let issued = env
        .iam
        .create_service_account(&alice.ctx, &alice_project, "ci", &scopes(&["project:read"]), CORR)
        .await
        .unwrap();
    let account_id = issued.service_account.id.clone();

    // Projects: another tenant's project answers exactly like a missing one.
    for permission in [Permission::ProjectRead, Permission::ProjectWrite, Permission::ProjectAdmin] {
        assert_err!(env.iam.project(&bob.ctx, &alice_project, permission).await, IamError::NotFound("project"));
        assert_err!(env.iam.project(&bob.ctx, "no-such-project", permission).await, IamError::NotFound("project"));
        env.iam.project(&alice.ctx, &alice_project, permission).await.unwrap();
    }
    let bobs: Vec<String> = env.iam.list_projects(&bob.ctx).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(bobs, vec![bob_project.clone()]);
    let alices: Vec<String> = env.iam.list_projects(&alice.ctx).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(alices, vec![alice_project.clone()]);
    let me = env.iam.me(&bob.ctx).await.unwrap();
    assert_eq!(me.tenant.id, bob.ctx.tenant_id);
    assert!(me.projects.iter().all(|p| p.id != alice_project));

    // Service accounts of that project: not found, whichever way Bob asks.
    assert_err!(env.iam.list_service_accounts(&bob.ctx, &alice_project).await, IamError::NotFound(_));
    assert_err!(
        env.iam.create_service_account(&bob.ctx, &alice_project, "sneaky", &scopes(&["project:read"]), CORR).await,
        IamError::NotFound(_)
    );
    assert_err!(
        env.iam.rotate_service_account(&bob.ctx, &alice_project, &account_id, CORR).await,
        IamError::NotFound(_)
    );
    assert_err!(
        env.iam.revoke_service_account(&bob.ctx, &alice_project, &account_id, CORR).await,
        IamError::NotFound(_)
    );
    // Naming his own project with Alice's account id does not reach it either.
    assert_err!(env.iam.rotate_service_account(&bob.ctx, &bob_project, &account_id, CORR).await, IamError::NotFound(_));
    assert_err!(env.iam.revoke_service_account(&bob.ctx, &bob_project, &account_id, CORR).await, IamError::NotFound(_));
    assert!(env.iam.list_service_accounts(&bob.ctx, &bob_project).await.unwrap().is_empty());

    // Alice's account still works: none of Bob's attempts touched it.
    let token = env.iam.service_account_token(&issued.client_id, &issued.client_secret, None, CORR).await.unwrap();
    let sa = env.iam.authenticate(&token.access_token).await.unwrap();
    assert_err!(env.iam.project(&sa, &bob_project, Permission::ProjectRead).await, IamError::NotFound(_));
    assert_eq!(env.iam.list_service_accounts(&alice.ctx, &alice_project).await.unwrap().len(), 1);
}

both_backends!(
    token_carries_the_service_account,
    scopes_are_validated_and_narrowed,
    wrong_credentials_are_refused,
    rotation_and_revocation_take_effect_at_once,
    other_tenants_see_nothing,
);

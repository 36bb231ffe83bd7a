//! Verification of tokens from an external OIDC provider: accepted algorithms, the
//! time, issuer, audience and signature checks, forged and confused tokens, and
//! picking up a key rotation at the provider.
//!
//! `Iam::verify` touches no table for an external token, so these tests run on
//! SQLite only; the tests that do touch the database (`authenticate`) run on both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use std::time::Duration;

use gpuaas_iam::{ActorType, GlobalRole, IamError, IamOptions};
use gpuaas_testkit::{Backend, both_backends};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{
    AUDIENCE, CLIENT_ID, Env, Identity, PLATFORM_ISSUER, Provider, TestKey, env_with, env_with_provider, jwt_claims,
    now_secs, raw_jwt,
};

fn alice() -> Identity {
    Identity::new("alice-sub", "alice@example.com", &["admin"])
}

/// A provider publishing an RSA, an EC and an Ed25519 key (signing with the RSA one).
async fn three_keys() -> Env {
    env_with_provider(Backend::Sqlite, vec![TestKey::rsa("rsa-1"), TestKey::ec("ec-1"), TestKey::ed25519("ed-1")]).await
}

fn claims_for(env: &Env) -> serde_json::Value {
    env.provider().claims(&alice())
}

#[tokio::test]
async fn accepts_rs256_es256_and_eddsa() {
    let env = three_keys().await;
    let provider = env.provider();
    let claims = provider.claims(&alice());
    for key in [TestKey::rsa("rsa-1"), TestKey::ec("ec-1"), TestKey::ed25519("ed-1")] {
        let verified = env.iam.verify(&key.sign(&claims)).await.unwrap_or_else(|e| panic!("{:?}: {e:?}", key.alg));
        assert_eq!(verified.issuer, provider.issuer);
        assert_eq!(verified.subject(), "alice-sub");
        assert_eq!(verified.string_claim("email"), Some("alice@example.com"));
    }
}

#[tokio::test]
async fn expired_token_is_refused_beyond_the_leeway() {
    let env = three_keys().await;
    let provider = env.provider();
    let mut claims = provider.claims(&alice());
    claims["iat"] = (now_secs() - 600).into();
    claims["exp"] = (now_secs() - 120).into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenExpired);
    assert_err!(env.iam.authenticate(&provider.sign(&claims)).await, IamError::TokenExpired);

    // Within the 30 s clock-skew leeway it still counts as valid.
    claims["exp"] = (now_secs() - 10).into();
    env.iam.verify(&provider.sign(&claims)).await.unwrap();

    // `exp` is required.
    claims.as_object_mut().unwrap().remove("exp");
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(_));
}

#[tokio::test]
async fn token_not_yet_valid_is_refused_beyond_the_leeway() {
    let env = three_keys().await;
    let provider = env.provider();
    let mut claims = provider.claims(&alice());
    claims["nbf"] = (now_secs() + 120).into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(m) if m.contains("not valid yet"));

    claims["nbf"] = (now_secs() + 10).into();
    env.iam.verify(&provider.sign(&claims)).await.unwrap();
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let env = three_keys().await;
    let provider = env.provider();
    let mut claims = provider.claims(&alice());

    claims["iss"] = "https://evil.example".into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(m) if m.contains("issuer"));

    // The issuer differs only by a trailing slash: not the same issuer.
    claims["iss"] = format!("{}/", provider.issuer).into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(_));

    // A provider key cannot vouch for the platform's own issuer: that issuer only
    // trusts its own keys, which do not include the provider's kid.
    claims["iss"] = PLATFORM_ISSUER.into();
    claims["aud"] = AUDIENCE.into();
    claims["actor_type"] = "user".into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(_));
    assert_err!(env.iam.authenticate(&provider.sign(&claims)).await, IamError::TokenInvalid(_));

    claims.as_object_mut().unwrap().remove("iss");
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(_));
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let env = three_keys().await;
    let provider = env.provider();
    let mut claims = provider.claims(&alice());

    claims["aud"] = "another-client".into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(m) if m == "wrong audience");

    // The platform's own API audience is not one the external issuer is trusted for.
    claims["aud"] = AUDIENCE.into();
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(m) if m == "wrong audience");

    claims.as_object_mut().unwrap().remove("aud");
    assert_err!(env.iam.verify(&provider.sign(&claims)).await, IamError::TokenInvalid(_));

    // An audience list that includes our client id is fine.
    claims["aud"] = json!(["another-client", CLIENT_ID]);
    env.iam.verify(&provider.sign(&claims)).await.unwrap();
}

#[tokio::test]
async fn tampered_payload_or_foreign_key_fails_the_signature() {
    let env = three_keys().await;
    let provider = env.provider();
    for key in [TestKey::rsa("rsa-1"), TestKey::ec("ec-1"), TestKey::ed25519("ed-1")] {
        let token = key.sign(&provider.claims(&alice()));
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = jwt_claims(&token);
        claims["sub"] = "mallory-sub".into();
        claims["realm_access"]["roles"] = json!(["admin"]);
        let forged_payload = raw_jwt(&json!({}), &claims, b"").split('.').nth(1).unwrap().to_owned();
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_err!(env.iam.verify(&tampered).await, IamError::TokenInvalid(m) if m == "bad signature");

        // A signature cut short or missing.
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() / 2]);
        assert_err!(env.iam.verify(&truncated).await, IamError::TokenInvalid(_));
        assert_err!(env.iam.verify(&format!("{}.{}.", parts[0], parts[1])).await, IamError::TokenInvalid(_));
    }

    // Signed by an attacker's key that claims the provider's kid.
    let impostor = TestKey::random_ed25519("ed-1");
    assert_err!(
        env.iam.verify(&impostor.sign(&provider.claims(&alice()))).await,
        IamError::TokenInvalid(m) if m == "bad signature"
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let env = three_keys().await;
    let claims = env.provider().claims(&alice());
    for alg in ["none", "None", "NONE"] {
        let token = raw_jwt(&json!({"alg": alg, "typ": "JWT", "kid": "rsa-1"}), &claims, b"");
        assert_err!(env.iam.verify(&token).await, IamError::TokenInvalid(_));
        assert_err!(env.iam.authenticate(&token).await, IamError::TokenInvalid(_));
    }
}

#[tokio::test]
async fn hmac_signed_with_the_public_key_is_refused() {
    let env = three_keys().await;
    let provider = env.provider();
    let claims = provider.claims(&alice());
    let rsa = TestKey::rsa("rsa-1");
    // The classic confusion attack: HMAC keyed with public material the verifier holds.
    let secrets = [
        rsa.jwk.to_string().into_bytes(),
        rsa.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        TestKey::ed25519("ed-1").jwk["x"].as_str().unwrap().as_bytes().to_vec(),
    ];
    for (kid, secret) in ["rsa-1", "rsa-1", "ed-1"].into_iter().zip(secrets) {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some(kid.to_owned());
            let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
            assert_err!(env.iam.verify(&token).await, IamError::TokenInvalid(_));
        }
    }
}

#[tokio::test]
async fn algorithm_must_match_the_key() {
    let env = three_keys().await;
    let claims = env.provider().claims(&alice());
    // Signed correctly by the EC key but naming the RSA key (and vice versa).
    for forged in [
        TestKey::ec("ec-1").renamed("rsa-1"),
        TestKey::rsa("rsa-1").renamed("ec-1"),
        TestKey::ed25519("ed-1").renamed("ec-1"),
    ] {
        assert_err!(env.iam.verify(&forged.sign(&claims)).await, IamError::TokenInvalid(m) if m.contains("does not match"));
    }
    // A JWK that names no `alg` still binds its key family.
    let provider =
        Provider::start(vec![TestKey::rsa("rsa-1").without_alg(), TestKey::ed25519("ed-1").without_alg()]).await;
    let bare = env_with(Backend::Sqlite, Some(provider), IamOptions::default()).await;
    bare.iam.verify(&TestKey::rsa("rsa-1").sign(&claims_for(&bare))).await.unwrap();
    bare.iam.verify(&TestKey::ed25519("ed-1").sign(&claims_for(&bare))).await.unwrap();
    for forged in [TestKey::ec("ec-1").renamed("rsa-1"), TestKey::ec("ec-1").renamed("ed-1")] {
        assert_err!(bare.iam.verify(&forged.sign(&claims_for(&bare))).await, IamError::TokenInvalid(_));
    }

    // RS384/PS256 with the RSA key: not an accepted algorithm.
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        let mut header = Header::new(alg);
        header.kid = Some("rsa-1".into());
        let token = jsonwebtoken::encode(&header, &claims, &TestKey::rsa("rsa-1").encoding).unwrap();
        assert_err!(env.iam.verify(&token).await, IamError::TokenInvalid(_));
    }
}

#[tokio::test]
async fn unknown_or_missing_kid_is_refused() {
    let env = three_keys().await;
    let claims = env.provider().claims(&alice());
    assert_err!(
        env.iam.verify(&TestKey::rsa("rsa-1").renamed("rsa-2").sign(&claims)).await,
        IamError::TokenInvalid(m) if m.contains("unknown signing key")
    );

    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &TestKey::rsa("rsa-1").encoding).unwrap();
    assert_err!(env.iam.verify(&token).await, IamError::TokenInvalid(_));
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let env = three_keys().await;
    assert_err!(env.iam.verify("").await, IamError::TokenMissing);
    assert_err!(env.iam.authenticate("").await, IamError::TokenMissing);
    for token in ["abc", "a.b", "a.b.c", "...", "eyJhbGciOiJSUzI1NiJ9.e30.", "\u{0}.\u{0}.\u{0}"] {
        assert_err!(env.iam.verify(token).await, IamError::TokenInvalid(_));
    }
    let huge = format!("{}.{}.sig", "a".repeat(20_000), "b".repeat(20_000));
    assert_err!(env.iam.verify(&huge).await, IamError::TokenInvalid(_));
}

#[tokio::test]
async fn unknown_kid_refetch_is_throttled() {
    // Production settings: at most one refetch per 30 s for unknown kids.
    let env = three_keys().await;
    let provider = env.provider();
    let identity = alice();
    env.iam.verify(&provider.token_for(&identity)).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);

    // A flood of forged kids right after a fetch does not reach the provider.
    for i in 0..20 {
        let forged = TestKey::ed25519("ed-1").renamed(&format!("forged-{i}")).sign(&provider.claims(&identity));
        assert_err!(env.iam.verify(&forged).await, IamError::TokenInvalid(_));
    }
    assert_eq!(provider.jwks_fetches(), 1, "unknown kids are throttled");

    // Known kids keep verifying from the cache.
    env.iam.verify(&TestKey::ec("ec-1").sign(&provider.claims(&identity))).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);
}

#[tokio::test]
async fn provider_key_rotation_is_picked_up_without_restart() {
    let interval = Duration::from_millis(300);
    let provider = Provider::start(vec![TestKey::rsa("rsa-1")]).await;
    let env = env_with(Backend::Sqlite, Some(provider), IamOptions { remote_jwks_refetch_interval: interval }).await;
    let provider = env.provider();
    let identity = alice();
    let old_token = provider.token_for(&identity);
    env.iam.verify(&old_token).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);

    // The provider starts signing with a new key and keeps the old one published.
    provider.rotate(TestKey::random_ed25519("ed-2"), true);
    let new_token = provider.token_for(&identity);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    env.iam.verify(&new_token).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 2, "the unknown kid refetched the JWKS once");
    env.iam.verify(&old_token).await.unwrap();
    env.iam.verify(&new_token).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 2, "known kids come from the cache");

    // Next rotation drops the old keys: once refetched, their tokens stop verifying.
    provider.rotate(TestKey::random_ed25519("ed-3"), false);
    let newest = provider.token_for(&identity);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    env.iam.verify(&newest).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 3);
    assert_err!(env.iam.verify(&old_token).await, IamError::TokenInvalid(_));
    assert_err!(env.iam.verify(&new_token).await, IamError::TokenInvalid(_));
}

#[tokio::test]
async fn cached_keys_survive_a_jwks_outage() {
    let interval = Duration::from_millis(100);
    let provider = Provider::start(vec![TestKey::rsa("rsa-1")]).await;
    let env = env_with(Backend::Sqlite, Some(provider), IamOptions { remote_jwks_refetch_interval: interval }).await;
    let provider = env.provider();
    let token = provider.token_for(&alice());
    env.iam.verify(&token).await.unwrap();

    provider.set_jwks_failing(true);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    let unknown = TestKey::rsa("rsa-1").renamed("rsa-9").sign(&provider.claims(&alice()));
    assert_err!(env.iam.verify(&unknown).await, IamError::TokenInvalid(_));
    assert_eq!(provider.jwks_fetches(), 2, "the unknown kid tried to refetch");
    env.iam.verify(&token).await.unwrap();
}

#[tokio::test]
async fn unknown_kid_throttle_holds_during_an_outage() {
    // A failed fetch counts against the throttle like a good one: otherwise, while the
    // provider is down, every forged kid would be another fetch (each up to the fetch
    // timeout, with the issuer's key cache locked meanwhile).
    let interval = Duration::from_millis(200);
    let provider = Provider::start(vec![TestKey::rsa("rsa-1")]).await;
    let env = env_with(Backend::Sqlite, Some(provider), IamOptions { remote_jwks_refetch_interval: interval }).await;
    let provider = env.provider();
    let token = provider.token_for(&alice());
    env.iam.verify(&token).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 1);

    provider.set_jwks_failing(true);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    for i in 0..10 {
        let forged = TestKey::ed25519("ed-1").renamed(&format!("forged-{i}")).sign(&provider.claims(&alice()));
        assert_err!(env.iam.verify(&forged).await, IamError::TokenInvalid(_));
    }
    assert_eq!(provider.jwks_fetches(), 2, "one failed fetch per interval");
    env.iam.verify(&token).await.expect("cached keys keep verifying");
}

#[tokio::test]
async fn failed_first_fetch_is_retried_only_after_the_interval() {
    let interval = Duration::from_millis(200);
    let provider = Provider::start(vec![TestKey::rsa("rsa-1")]).await;
    let env = env_with(Backend::Sqlite, Some(provider), IamOptions { remote_jwks_refetch_interval: interval }).await;
    let provider = env.provider();
    let token = provider.token_for(&alice());
    provider.set_jwks_failing(true);
    for _ in 0..5 {
        assert_err!(env.iam.verify(&token).await, IamError::Provider(_));
    }
    assert_eq!(provider.jwks_fetches(), 1, "one failed fetch per interval");
    provider.set_jwks_failing(false);
    tokio::time::sleep(interval + Duration::from_millis(50)).await;
    env.iam.verify(&token).await.unwrap();
    assert_eq!(provider.jwks_fetches(), 2);
}

#[tokio::test]
async fn unreachable_jwks_without_cache_is_a_provider_error() {
    let provider = Provider::start(vec![TestKey::rsa("rsa-1")]).await;
    let env = env_with(Backend::Sqlite, Some(provider), IamOptions::default()).await;
    let provider = env.provider();
    provider.set_jwks_failing(true);
    assert_err!(env.iam.verify(&provider.token_for(&alice())).await, IamError::Provider(_));
}

/// `authenticate` with a provider's token signs the person in as a platform user,
/// created on first sight by `(issuer, subject)`, with the role from the roles claim.
async fn external_token_authenticates_a_user(backend: Backend) {
    let env = env_with_provider(backend, vec![TestKey::ec("ec-1")]).await;
    let provider = env.provider();
    let token = provider.token_for(&alice());
    let ctx = env.iam.authenticate(&token).await.unwrap();
    assert_eq!(ctx.actor_type, ActorType::User);
    assert_eq!(ctx.global_role, GlobalRole::Admin);
    let me = env.iam.me(&ctx).await.unwrap();
    assert_eq!(me.user.email, "alice@example.com");
    assert_eq!(me.user.identity_source, provider.issuer);
    assert_eq!(me.projects.len(), 1, "a first sign-in creates the default project");

    // The same subject again is the same user.
    let again = env.iam.authenticate(&provider.token_for(&alice())).await.unwrap();
    assert_eq!(again.actor_id, ctx.actor_id);
    assert_eq!(again.tenant_id, ctx.tenant_id);

    // Another subject is another user in another tenant.
    let bob =
        env.iam.authenticate(&provider.token_for(&Identity::new("bob-sub", "bob@example.com", &[]))).await.unwrap();
    assert_ne!(bob.actor_id, ctx.actor_id);
    assert_ne!(bob.tenant_id, ctx.tenant_id);
    assert_eq!(bob.global_role, GlobalRole::User);
}

both_backends!(external_token_authenticates_a_user);

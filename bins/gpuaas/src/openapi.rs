//! The OpenAPI document, generated from the handler and schema types.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "gpuaas API", description = "GPU-as-a-service control plane. Every non-2xx response body is an ErrorResponse."),
    paths(
        crate::api::healthz,
        crate::api::readyz,
        crate::api::buildinfo,
        crate::api::openapi_document,
        crate::api::metrics,
        crate::api::portal_index,
        crate::api::auth::openid_configuration,
        crate::api::auth::jwks,
        crate::api::auth::sign_in_methods,
        crate::api::auth::login,
        crate::api::auth::refresh,
        crate::api::auth::logout,
        crate::api::auth::oidc_authorize,
        crate::api::auth::oidc_exchange,
        crate::api::auth::session_login,
        crate::api::auth::session_refresh,
        crate::api::auth::session_logout,
        crate::api::auth::session_oidc_exchange,
        crate::api::auth::service_account_token,
        crate::api::projects::me,
        crate::api::projects::list_projects,
        crate::api::projects::create_project,
        crate::api::projects::get_project,
        crate::api::projects::list_service_accounts,
        crate::api::projects::create_service_account,
        crate::api::projects::rotate_service_account,
        crate::api::projects::revoke_service_account,
        crate::api::admin::list_users,
        crate::api::admin::create_user,
        crate::api::admin::get_user,
        crate::api::admin::disable_user,
        crate::api::admin::enable_user,
        crate::api::admin::rotate_signing_key,
        crate::api::admin::audit_logs,
        crate::api::admin::export_audit_logs,
        crate::api::nodes::list_skus,
        crate::api::nodes::list_public_nodes,
        crate::api::nodes::enroll,
        crate::api::ssh_keys::list_ssh_keys,
        crate::api::ssh_keys::add_ssh_key,
        crate::api::ssh_keys::delete_ssh_key,
        crate::api::nodes::admin_list_skus,
        crate::api::nodes::create_sku,
        crate::api::nodes::update_sku,
        crate::api::nodes::admin_list_nodes,
        crate::api::nodes::register_node,
        crate::api::nodes::get_node,
        crate::api::nodes::retire_node,
        crate::api::nodes::drain_node,
        crate::api::nodes::resume_node,
        crate::api::nodes::probe_node,
        crate::api::nodes::issue_enrollment_token,
        crate::api::nodes::revoke_certificates,
        crate::api::nodes::list_node_tasks,
        crate::api::billing::balance,
        crate::api::billing::ledger,
        crate::api::billing::usage,
        crate::api::billing::usage_csv,
        crate::api::payments::checkout_session,
        crate::api::payments::customer_portal_session,
        crate::api::payments::webhook,
        crate::api::payments::adjust_balance,
        crate::api::payments::refund,
        crate::api::payments::list_sessions,
        crate::api::allocations::list_allocations,
        crate::api::allocations::create_allocation,
        crate::api::allocations::get_allocation,
        crate::api::allocations::release_allocation,
        crate::api::allocations::admin_list_allocations,
        crate::api::allocations::force_release_allocation,
        crate::api::reconciliation::list_findings,
    ),
    components(schemas(gpuaas_kernel::ErrorResponse, gpuaas_kernel::ErrorBody, gpuaas_kernel::ErrCode)),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "Health, readiness, build and contract"),
        (name = "auth", description = "Sign-in, tokens, OIDC and the built-in issuer"),
        (name = "users", description = "The signed-in user"),
        (name = "projects", description = "Projects the caller belongs to"),
        (name = "service-accounts", description = "Machine identities of a project"),
        (name = "admin", description = "Operator endpoints: users, audit, signing keys, SKUs, nodes"),
        (name = "catalog", description = "What can be bought: SKUs and node capacity"),
        (name = "nodes", description = "Node enrollment (the agent's only call on the public API)"),
        (name = "ssh-keys", description = "The caller's SSH public keys for runtime access"),
        (name = "billing", description = "The tenant's balance, ledger and usage"),
        (name = "payments", description = "Card top-ups through Stripe"),
        (name = "allocations", description = "GPU allocations: create, watch, reach by SSH, release"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the protected operations reference.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The document as pretty JSON with a trailing newline, exactly as committed under
/// `docs/api/openapi.json`.
pub fn document_json() -> String {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = document.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

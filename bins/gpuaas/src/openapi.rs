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
    ),
    components(schemas(gpuaas_kernel::ErrorResponse, gpuaas_kernel::ErrorBody, gpuaas_kernel::ErrCode)),
    tags((name = "system", description = "Health, readiness, build and contract"))
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline, exactly as committed under
/// `docs/api/openapi.json`.
pub fn document_json() -> String {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = document.to_pretty_json().unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

//! The internal API node agents call, served only on the mTLS listener.
//!
//! The TLS layer admits only client certificates that chain to the node CA; the node
//! id then comes from that verified certificate (its SAN, cross-checked against the
//! record made at issuance by fingerprint), never from the request. A revoked
//! certificate is refused on the next request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use gpuaas_http::{ApiError, ApiJson, current_correlation_id};
use gpuaas_inventory::enrollment::AuthenticatedNode;
use gpuaas_kernel::ErrCode;
use gpuaas_nodeagent_protocol::wire::{
    HeartbeatRequest, HeartbeatResponse, MAX_PULL_WAIT_SECONDS, PullResponse, RenewRequest, RenewResponse,
};
use gpuaas_nodeagent_protocol::{TaskResult, paths};
use gpuaas_pki::PeerCertificate;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::HandlerResult;

/// The verified client certificate of a connection, or why it could not be read.
#[derive(Clone)]
struct PeerIdentity(Option<PeerCertificate>);

/// Routes of the internal API, behind node authentication.
pub fn router(state: AppState, body_limit: usize) -> Router {
    Router::new()
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::TASKS, get(pull_tasks))
        .route("/internal/v1/nodes/tasks/{task_id}/result", post(task_result))
        .route(paths::CERTIFICATE, post(renew_certificate))
        .fallback(|| async { ApiError::new(ErrCode::RouteNotFound, "no endpoint at this path") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate_node))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(gpuaas_http::error::envelope_guard))
        .layer(axum::middleware::from_fn(gpuaas_http::correlation::layer))
        .with_state(state)
}

async fn authenticate_node(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<PeerIdentity>().and_then(|identity| identity.0.clone());
    let Some(peer) = peer else {
        return ApiError::new(ErrCode::NodeCertificateInvalid, "a node client certificate is required").into_response();
    };
    match state.nodes.authenticate_node(&peer).await {
        Ok(node) => {
            request.extensions_mut().insert(node);
            next.run(request).await
        }
        Err(error) => {
            tracing::warn!(node_id = %peer.node_id, fingerprint = %peer.fingerprint, %error, "node refused");
            super::error::HandlerError::from(error).into_response()
        }
    }
}

async fn heartbeat(
    State(state): State<AppState>,
    Extension(node): Extension<AuthenticatedNode>,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> HandlerResult<Json<HeartbeatResponse>> {
    Ok(Json(state.nodes.heartbeat(&node.node_id, &body, &current_correlation_id()).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullQuery {
    wait_seconds: Option<u64>,
}

async fn pull_tasks(
    State(state): State<AppState>,
    Extension(node): Extension<AuthenticatedNode>,
    Query(query): Query<PullQuery>,
) -> HandlerResult<Json<PullResponse>> {
    let wait = query.wait_seconds.unwrap_or(0);
    if wait > MAX_PULL_WAIT_SECONDS {
        return Err(ApiError::invalid_field("wait_seconds", format!("at most {MAX_PULL_WAIT_SECONDS}")).into());
    }
    let tasks = state.nodes.pull_tasks_as(&node, Duration::from_secs(wait)).await?;
    Ok(Json(PullResponse { tasks }))
}

async fn task_result(
    State(state): State<AppState>,
    Extension(node): Extension<AuthenticatedNode>,
    Path(task_id): Path<String>,
    ApiJson(body): ApiJson<TaskResult>,
) -> HandlerResult<Json<gpuaas_inventory::NodeTask>> {
    if !gpuaas_nodeagent_protocol::is_valid_id(&task_id) {
        return Err(ApiError::new(ErrCode::NotFound, "no such task").into());
    }
    Ok(Json(state.nodes.complete_task(&node.node_id, &task_id, &body, &current_correlation_id()).await?))
}

async fn renew_certificate(
    State(state): State<AppState>,
    Extension(node): Extension<AuthenticatedNode>,
    ApiJson(body): ApiJson<RenewRequest>,
) -> HandlerResult<Json<RenewResponse>> {
    Ok(Json(state.nodes.renew_certificate(&node.node_id, &body).await?))
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` over mTLS on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "internal listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(acceptor, stream, remote, app, stop).await {
                tracing::debug!(%remote, error = %format!("{error:#}"), "internal connection ended");
            }
        });
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .context("tls handshake timed out")?
        .context("tls handshake")?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| gpuaas_pki::peer_certificate(der.as_ref()).ok());
    let app = app.layer(Extension(PeerIdentity(peer))).layer(Extension(axum::extract::ConnectInfo(remote)));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result.context("http"),
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            // A pull may be parked for up to 30 s; do not hold shutdown for it.
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
            Ok(())
        }
    }
}

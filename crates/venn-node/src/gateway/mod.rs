//! The gateway: the one port partners reach (default 0.0.0.0:1080), mutual TLS only.
//!
//! Per connection: TLS handshake (TLS 1.3/1.2, ALPN h2 and http/1.1) in which the client must
//! prove it holds the key of any certificate it presents; then [`PeerSet::authenticate`]
//! validates the chain against the CA pinned for the domain the certificate names. The result,
//! a [`Caller`], is attached to every request on that connection.
//!
//! - A request from an unauthenticated caller gets **HTTP 401 `{"reason":"unauthorized"}`** and
//!   nothing else: no domain, instance, version or server header (Kuscia leaks all three). The
//!   only exceptions are `POST /venn/v1/join`, which authenticates by invitation secret instead,
//!   and `POST /venn/v1/register` (a lite's deploy token, see `central`); both answer 401 the
//!   same way on any failure.
//! - An authenticated caller that names a missing path gets 404 `{"reason":"not found"}`.
//! - Bounded: at most 4096 connections, TLS handshakes and HTTP/1 request heads must complete
//!   within 10 s, HTTP/2 connections are kept alive with pings.
//! - Handlers are small; the partner-facing API is narrow and versioned (`/venn/v1/...`): a
//!   partner never gets a credential to this node's control API.
//!
//! [`PeerSet::authenticate`]: crate::trust::PeerSet::authenticate

pub mod client;
pub mod heartbeat;
pub mod link;
pub mod transit;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::central;
use crate::config::Mode;
use crate::error::{NodeError, Result};
use crate::grants::{self, SignedGrant};
use crate::onboarding::{self, JoinRequest};
use crate::state::SharedState;
use crate::trust::{DeferredClientVerifier, now_unix, provider};

/// Most connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 4096;

/// Who is calling, as established by the connection's TLS handshake.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The authenticated partner domain, if the client certificate is valid for one.
    pub domain: Option<String>,
    /// The client's certificate chain as presented (verified or not).
    pub certs: Arc<Vec<CertificateDer<'static>>>,
}

/// An authenticated partner (extractor): handlers that take it cannot run for anyone else.
pub struct Partner(pub String, pub Arc<Vec<CertificateDer<'static>>>);

/// The gateway's refusal of an unauthenticated request.
pub struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"reason": "unauthorized"})),
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Partner {
    type Rejection = Unauthorized;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> std::result::Result<Self, Unauthorized> {
        let caller = parts.extensions.get::<Caller>().ok_or(Unauthorized)?;
        let domain = caller.domain.clone().ok_or(Unauthorized)?;
        // A `venn-source` header, if sent, must name the authenticated domain.
        if let Some(claimed) = parts.headers.get("venn-source")
            && claimed.as_bytes() != domain.as_bytes()
        {
            return Err(Unauthorized);
        }
        Ok(Partner(domain, caller.certs.clone()))
    }
}

/// Maps library errors to partner-facing answers (few details: the partner is another party).
struct GatewayError(NodeError);

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self.0 {
            NodeError::Unauthorized => return Unauthorized.into_response(),
            NodeError::Invalid(m) | NodeError::Conflict(m) => (StatusCode::BAD_REQUEST, m.clone()),
            NodeError::NotFound(m) => (StatusCode::NOT_FOUND, format!("{m} not found")),
            other => {
                tracing::error!("gateway: {other}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (code, Json(json!({ "reason": reason }))).into_response()
    }
}

impl From<NodeError> for GatewayError {
    fn from(e: NodeError) -> Self {
        Self(e)
    }
}

async fn heartbeat(
    Extension(state): Extension<SharedState>,
    Partner(domain, _): Partner,
    body: axum::body::Bytes,
) -> std::result::Result<Json<Value>, GatewayError> {
    let me = state.domain_id().to_owned();
    state.store.ensure_route(&domain, &me, "").await?;
    state
        .store
        .set_route_status(&format!("{domain}-{me}"), true, "Ready", "")
        .await?;
    let mut answer = json!({ "domain_id": me, "time": now_unix() });
    // A lite's heartbeat to its master carries its report; the answer carries its routes.
    if state.config.mode == Mode::Master && state.store.lite_node(&domain).await?.is_some() {
        let report: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut routes = central::ingest_report(&state, &domain, &report).await?;
        answer["routes"] = routes["routes"].take();
        answer["domains"] = routes["domains"].take();
    }
    Ok(Json(answer))
}

async fn register(
    Extension(state): Extension<SharedState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> std::result::Result<Json<Value>, GatewayError> {
    let req: central::RegisterRequest =
        serde_json::from_slice(&body).map_err(|_| NodeError::Unauthorized)?;
    let answer = central::accept_register(&state, caller.domain.as_deref(), req).await?;
    Ok(Json(serde_json::to_value(answer).unwrap_or(Value::Null)))
}

/// An API call the master forwards to this lite: only the master may call, only for the
/// catalogue and job paths ([`central::forwarded`]); answered with the API's own envelope.
async fn forwarded_api(
    Extension(state): Extension<SharedState>,
    Partner(domain, _): Partner,
    Json(body): Json<Value>,
) -> Response {
    let master = central::master_of(&state);
    if master.is_empty() || master != domain {
        return Unauthorized.into_response();
    }
    let path = body.get("path").and_then(Value::as_str).unwrap_or_default();
    if !central::forwarded(path) {
        return (StatusCode::NOT_FOUND, Json(json!({"reason": "not found"}))).into_response();
    }
    let token = match crate::trust::read_token(&state.config.token_path()) {
        Ok(t) => t,
        Err(e) => return GatewayError(e).into_response(),
    };
    let inner = body.get("body").cloned().unwrap_or_else(|| json!({}));
    let req = match axum::http::Request::post(path)
        .header("Token", token)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(inner.to_string()))
    {
        Ok(r) => r,
        Err(_) => return GatewayError(NodeError::Invalid("path".into())).into_response(),
    };
    use tower::ServiceExt as _;
    match crate::api::router(state.clone()).oneshot(req).await {
        Ok(resp) => resp.into_response(),
        Err(never) => match never {},
    }
}

async fn join(
    Extension(state): Extension<SharedState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> std::result::Result<Json<Value>, GatewayError> {
    let req: JoinRequest = serde_json::from_slice(&body).map_err(|_| NodeError::Unauthorized)?;
    let answer = onboarding::accept_join(&state, &caller.certs, req).await?;
    Ok(Json(serde_json::to_value(answer).unwrap_or(Value::Null)))
}

async fn grant(
    Extension(state): Extension<SharedState>,
    Partner(domain, certs): Partner,
    body: axum::body::Bytes,
) -> std::result::Result<Json<Value>, GatewayError> {
    let signed: SignedGrant =
        serde_json::from_slice(&body).map_err(|e| NodeError::Invalid(format!("grant: {e}")))?;
    let leaf = certs.first().ok_or(NodeError::Unauthorized)?;
    grants::receive(&state, &domain, leaf, signed).await?;
    Ok(Json(json!({ "accepted": true })))
}

async fn job_message(
    Extension(state): Extension<SharedState>,
    Partner(domain, certs): Partner,
    body: axum::body::Bytes,
) -> std::result::Result<Json<Value>, GatewayError> {
    let signed: crate::jobs::SignedMessage = crate::api::parse_json(&body)?;
    let leaf = certs.first().ok_or(NodeError::Unauthorized)?;
    crate::jobs::receive(&state, &domain, leaf, signed).await?;
    Ok(Json(json!({ "accepted": true })))
}

async fn revoke(
    Extension(state): Extension<SharedState>,
    Partner(domain, _): Partner,
    Json(body): Json<Value>,
) -> std::result::Result<Json<Value>, GatewayError> {
    let id = body
        .get("domaindatagrant_id")
        .and_then(Value::as_str)
        .ok_or_else(|| NodeError::Invalid("domaindatagrant_id: missing".into()))?;
    grants::receive_revocation(&state, &domain, id).await?;
    Ok(Json(json!({ "revoked": true })))
}

/// Reads and discards up to 64 KiB of a request body (bounded in time), so that an early
/// answer is not followed by a stream reset that some HTTP/2 clients report instead of it.
async fn drain(req: Request) {
    let body = http_body_util::Limited::new(req.into_body(), 64 << 10);
    let _ = tokio::time::timeout(Duration::from_secs(2), body.collect()).await;
}

/// Whether the caller is an authenticated partner whose `venn-source` header (if any) agrees.
fn authenticated(req: &Request) -> bool {
    let Some(domain) = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.domain.as_deref())
    else {
        return false;
    };
    req.headers()
        .get("venn-source")
        .is_none_or(|claimed| claimed.as_bytes() == domain.as_bytes())
}

/// The gate in front of every route: strangers get 401 (except on the join path).
async fn gate(req: Request, next: Next) -> Response {
    let open = matches!(req.uri().path(), "/venn/v1/join" | "/venn/v1/register");
    if authenticated(&req) || open {
        return next.run(req).await;
    }
    drain(req).await;
    Unauthorized.into_response()
}

async fn fallback(req: Request) -> Response {
    drain(req).await;
    (StatusCode::NOT_FOUND, Json(json!({"reason": "not found"}))).into_response()
}

/// The gateway's routes.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/venn/v1/heartbeat", post(heartbeat))
        .route("/venn/v1/join", post(join))
        .route("/venn/v1/register", post(register))
        .route("/venn/v1/api", post(forwarded_api))
        .route("/venn/v1/grant", post(grant))
        .route("/venn/v1/grant/revoke", post(revoke))
        .route("/venn/v1/job/message", post(job_message))
        .route("/venn/v1/link", post(link::upgrade))
        .route("/venn/v1/transit", post(transit::relay))
        .route("/venn/v1/tunnel", post(transit::tunnel_in))
        .fallback(fallback)
        .layer(middleware::from_fn(gate))
        .layer(Extension(state))
}

/// The TLS server configuration of the gateway.
pub fn server_config(state: &SharedState) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(DeferredClientVerifier::new()))
        .with_single_cert(state.identity.chain.clone(), state.identity.tls_key()?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the gateway on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&state)?);
    let app = router(state.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("gateway accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        // Over the limit, new connections are closed at once instead of queuing unbounded.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "gateway: {MAX_CONNECTIONS} connections open; refusing");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            connection(acceptor, tcp, addr.to_string(), app, state, None).await;
            drop(slot);
        });
    }
}

/// Serves one gateway connection that arrived some other way than the listener: the inner
/// session of a transit tunnel ([`transit::tunnel_in`]). When `expect` is given, the
/// connection is dropped unless its client certificate authenticates as that domain.
pub async fn serve_one<S>(state: SharedState, io: S, label: String, expect: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let acceptor = match server_config(&state) {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            tracing::error!("gateway TLS configuration: {e}");
            return;
        }
    };
    let app = router(state.clone());
    connection(acceptor, io, label, app, state, expect).await;
}

async fn connection<S>(
    acceptor: tokio_rustls::TlsAcceptor,
    io: S,
    addr: String,
    app: Router,
    state: SharedState,
    expect: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%addr, "gateway TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "gateway TLS handshake timed out");
            return;
        }
    };
    let certs: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let domain = state.peers.authenticate(&certs);
    tracing::debug!(%addr, partner = ?domain, "gateway connection");
    if let Some(want) = &expect
        && domain.as_deref() != Some(want.as_str())
    {
        tracing::warn!(%addr, partner = ?domain, "tunnelled connection is not {want}; closed");
        return;
    }
    let caller = Caller {
        domain,
        certs: Arc::new(certs),
    };
    let svc = TowerToHyperService::new(app.layer(Extension(caller)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
        .await
    {
        tracing::debug!(%addr, "gateway connection closed: {e}");
    }
}

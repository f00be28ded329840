//! Transit: a route that runs through a third domain's gateway, end-to-end encrypted.
//!
//! When alice cannot reach bob directly (no network path, or policy), the route `alice-bob`
//! names a **transit** domain — in a centralized network the master (issue 6), in a
//! peer-to-peer network any partner both trust to carry bytes. Everything alice's node sends to
//! bob (heartbeats, grants, job messages, task links) then takes this path:
//!
//! ```text
//! alice ──mTLS(alice↔T)──▶ T's gateway ──mTLS(T↔bob)──▶ bob's gateway
//!   └──────────── inner mTLS (alice↔bob), opaque to T ─────────────┘
//! ```
//!
//! 1. alice opens a mutual-TLS connection to T and asks `POST /venn/v1/transit` with
//!    `Upgrade: venn-transit` and `venn-target: bob`.
//! 2. T authenticates alice (pinned CA, certificate naming alice) and relays only what it was
//!    told to relay: it needs a route row `alice-bob` whose `transit` is T itself (the master
//!    writes one for every `venn route create … --transit`; a peer relay gets it from
//!    `venn route transit`). T then opens its own mutual-TLS connection to bob and asks
//!    `POST /venn/v1/tunnel` with `Upgrade: venn-tunnel` and `venn-transit-from: alice`.
//! 3. bob authenticates T, checks that one of its routes with alice names T as transit, and
//!    answers 101. Both hops are now raw byte pipes; T copies bytes between them with a fixed
//!    buffer per direction (back-pressure end to end, nothing buffered).
//! 4. Through that pipe, alice and bob run **a second, inner TLS handshake** exactly as if
//!    connected directly: alice verifies bob's certificate against the CA pinned for bob, bob
//!    serves the inner stream with its ordinary gateway (same router, same gate) and accepts it
//!    only if the inner client certificate authenticates as alice. So T sees ciphertext only,
//!    cannot read or alter a job message or a PSI byte, and cannot pose as alice or bob: it
//!    holds neither key.
//!
//! Why nested TLS rather than a separate end-to-end cipher: it reuses the one authentication
//! path every direct connection already uses (pinned CAs, domain names in certificates,
//! explainable failures), so a transit route and a direct route differ only in how the first
//! bytes travel; and TLS 1.3 is the best-reviewed channel there is. Kuscia offers transit
//! encryption as an option that is off by default; here it cannot be turned off.
//!
//! Transit is one hop: a relay always dials the target directly (no chains), which keeps the
//! permission check local and the failure explainable (`Transit` route status).

use std::time::Duration;

use axum::Extension;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::Partner;
use super::client::{GatewayStream, Io, Step, connect, request_upgrade, tls_connect};
use crate::config::{Endpoint, check_domain_id};
use crate::state::{NodeState, SharedState};
use crate::store::RouteRow;

/// Copy buffer per direction at the relay.
const COPY_BUF: usize = 256 << 10;
/// How long a relay waits for the target's answer.
const HOP_WAIT: Duration = Duration::from_secs(15);

/// Opens a mutual-TLS session to `partner`'s gateway over the route `<self>-<partner>`:
/// directly, or through the route's transit domain with an inner end-to-end TLS session.
pub async fn open(state: &NodeState, partner: &str) -> Result<GatewayStream, Step> {
    let me = state.domain_id();
    let p = state
        .peers
        .get(partner)
        .ok_or_else(|| Step::Peer(format!("{partner} is not a partner")))?;
    let route = state
        .store
        .route(&format!("{me}-{partner}"))
        .await
        .map_err(|e| Step::Peer(e.to_string()))?;
    let transit = route.as_ref().map(|r| r.transit.as_str()).unwrap_or("");
    let io: Io = if transit.is_empty() || transit == me || transit == partner {
        let ep = endpoint_of(state, partner, route.as_ref()).await?;
        Box::new(connect(&ep, state.config.proxy().as_ref()).await?)
    } else {
        Box::new(tunnel(state, transit, partner).await?)
    };
    tls_connect(p.client_config, partner, io).await
}

/// Where `domain`'s gateway is: the route's host if it has one, else the domain's endpoint.
async fn endpoint_of(
    state: &NodeState,
    domain: &str,
    route: Option<&RouteRow>,
) -> Result<Endpoint, Step> {
    let host = match route.map(|r| r.host.as_str()).filter(|h| !h.is_empty()) {
        Some(h) => h.to_owned(),
        None => state
            .store
            .domain(domain)
            .await
            .map_err(|e| Step::Peer(e.to_string()))?
            .map(|d| d.endpoint)
            .unwrap_or_default(),
    };
    Endpoint::parse(&host)
        .map_err(|_| Step::Peer(format!("{domain} has no endpoint this node can reach")))
}

/// Asks the relay `via` for a pipe to `target`; the answer is the upgraded outer session.
async fn tunnel(state: &NodeState, via: &str, target: &str) -> Result<GatewayStream, Step> {
    let me = state.domain_id();
    let hop = |m: String| Step::Transit(format!("via {via}: {m}"));
    let relay = state
        .peers
        .get(via)
        .ok_or_else(|| hop(format!("{via} is not a partner of {me}")))?;
    let route = state
        .store
        .route(&format!("{me}-{via}"))
        .await
        .map_err(|e| Step::Peer(e.to_string()))?;
    let ep = endpoint_of(state, via, route.as_ref())
        .await
        .map_err(|e| hop(e.detail()))?;
    let tcp = connect(&ep, state.config.proxy().as_ref())
        .await
        .map_err(|e| hop(e.to_string()))?;
    let mut outer = tls_connect(relay.client_config, via, Box::new(tcp))
        .await
        .map_err(|e| hop(e.to_string()))?;
    let req = format!(
        "POST /venn/v1/transit HTTP/1.1\r\nHost: {via}\r\nvenn-source: {me}\r\n\
         venn-target: {target}\r\nConnection: Upgrade\r\nUpgrade: venn-transit\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match request_upgrade(&mut outer, &req, HOP_WAIT * 2).await {
        Ok(()) => Ok(outer),
        Err((status, _)) if status == "401" => Err(hop(format!(
            "{via} refused this node's certificate (is {me} added there?)"
        ))),
        Err((status, reason)) => Err(hop(format!("HTTP {status}: {reason}"))),
    }
}

fn refuse(code: StatusCode, reason: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "reason": reason.into() }))).into_response()
}

fn header(req: &Request, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn switching(protocol: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// `POST /venn/v1/transit` (`Upgrade: venn-transit`): this node relays a partner's route.
pub async fn relay(
    Extension(state): Extension<SharedState>,
    Partner(source, _): Partner,
    mut req: Request,
) -> Response {
    if !header(&req, "upgrade").eq_ignore_ascii_case("venn-transit") {
        return refuse(StatusCode::BAD_REQUEST, "Upgrade: venn-transit required");
    }
    let target = header(&req, "venn-target");
    if let Err(e) = check_domain_id(&target) {
        return refuse(StatusCode::BAD_REQUEST, format!("venn-target: {e}"));
    }
    let me = state.domain_id().to_owned();
    let name = format!("{source}-{target}");
    let permit = match state.store.route(&name).await {
        Ok(Some(r)) if r.transit == me => r,
        Ok(_) => {
            tracing::warn!(%source, %target, "transit refused: no route {name} through {me}");
            return refuse(
                StatusCode::FORBIDDEN,
                format!("{me} has no route {name} to carry"),
            );
        }
        Err(e) => {
            tracing::error!("transit: {e}");
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let downstream = match dial_target(&state, &permit, &source, &target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%source, %target, "transit: {e}");
            return refuse(StatusCode::BAD_GATEWAY, e);
        }
    };
    tracing::debug!(%source, %target, "transit open");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let mut up = TokioIo::new(up);
                let mut down = downstream;
                match tokio::io::copy_bidirectional_with_sizes(
                    &mut up, &mut down, COPY_BUF, COPY_BUF,
                )
                .await
                {
                    Ok((a, b)) => {
                        tracing::info!(%source, %target, to_target = a, to_source = b, "transit closed")
                    }
                    Err(e) => tracing::info!(%source, %target, "transit ended: {e}"),
                }
            }
            Err(e) => tracing::warn!(%source, %target, "transit upgrade failed: {e}"),
        }
    });
    switching("venn-transit")
}

/// The relay's own upgraded session to the target's gateway.
async fn dial_target(
    state: &NodeState,
    permit: &RouteRow,
    source: &str,
    target: &str,
) -> Result<GatewayStream, String> {
    let me = state.domain_id();
    let p = state
        .peers
        .get(target)
        .ok_or_else(|| format!("{target} is not a partner of {me}"))?;
    // The permit's host (the route's destination endpoint), else our own route to the target.
    let own = state
        .store
        .route(&format!("{me}-{target}"))
        .await
        .map_err(|e| e.to_string())?;
    let route = if permit.host.is_empty() {
        own.as_ref()
    } else {
        Some(permit)
    };
    let ep = endpoint_of(state, target, route)
        .await
        .map_err(|e| e.detail())?;
    let tcp = connect(&ep, state.config.proxy().as_ref())
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let mut tls = tls_connect(p.client_config, target, Box::new(tcp))
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let req = format!(
        "POST /venn/v1/tunnel HTTP/1.1\r\nHost: {target}\r\nvenn-source: {me}\r\n\
         venn-transit-from: {source}\r\nConnection: Upgrade\r\nUpgrade: venn-tunnel\r\n\
         Content-Length: 0\r\n\r\n"
    );
    request_upgrade(&mut tls, &req, HOP_WAIT)
        .await
        .map_err(|(status, reason)| {
            format!("{target} refused the tunnel: HTTP {status}: {reason}")
        })?;
    Ok(tls)
}

/// `POST /venn/v1/tunnel` (`Upgrade: venn-tunnel`): a relay hands this node a pipe from a
/// partner; the pipe is then served as an ordinary gateway connection that must authenticate
/// (inner mutual TLS) as that partner.
pub async fn tunnel_in(
    Extension(state): Extension<SharedState>,
    Partner(relay, _): Partner,
    mut req: Request,
) -> Response {
    if !header(&req, "upgrade").eq_ignore_ascii_case("venn-tunnel") {
        return refuse(StatusCode::BAD_REQUEST, "Upgrade: venn-tunnel required");
    }
    let from = header(&req, "venn-transit-from");
    if let Err(e) = check_domain_id(&from) {
        return refuse(StatusCode::BAD_REQUEST, format!("venn-transit-from: {e}"));
    }
    let me = state.domain_id().to_owned();
    let mut allowed = false;
    for name in [format!("{from}-{me}"), format!("{me}-{from}")] {
        match state.store.route(&name).await {
            Ok(Some(r)) if r.transit == relay => allowed = true,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("tunnel: {e}");
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    }
    if !allowed {
        tracing::warn!(%relay, %from, "tunnel refused: no route with {from} through {relay}");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{me} has no route with {from} through {relay}"),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let label = format!("{from} via {relay}");
                super::serve_one(state, TokioIo::new(up), label, Some(from)).await;
            }
            Err(e) => tracing::warn!(%relay, %from, "tunnel upgrade failed: {e}"),
        }
    });
    switching("venn-tunnel")
}

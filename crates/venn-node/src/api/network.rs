//! API handlers for the network: domains, routes and partner onboarding.
//!
//! `domain/query|list` and `route/query|list` follow Kuscia's names; a route is reported with
//! an explained status (`ready`, `reason`, `message`, `last_heartbeat`) instead of Kuscia's
//! token statuses. `peer/invite|join|export|add` are venn's onboarding calls (Kuscia has none:
//! it copies files by hand); the CLI's `venn peer ...` commands use them.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiResult, RequestHeader, ok};
use crate::central;
use crate::config::{Endpoint, Mode, check_domain_id};
use crate::error::NodeError;
use crate::onboarding::{self, DEFAULT_INVITATION_TTL};
use crate::state::SharedState;
use crate::store::{DomainRow, RouteRow};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v1/domain/query", post(domain_query))
        .route("/api/v1/domain/list", post(domain_list))
        .route("/api/v1/route/query", post(route_query))
        .route("/api/v1/route/list", post(route_list))
        .route("/api/v1/domain/create", post(domain_create))
        .route("/api/v1/domain/token", post(domain_token))
        .route("/api/v1/domain/reset", post(domain_reset))
        .route("/api/v1/route/create", post(route_create))
        .route("/api/v1/route/delete", post(route_delete))
        .route("/api/v1/route/transit", post(route_transit))
        .route("/api/v1/peer/invite", post(peer_invite))
        .route("/api/v1/peer/join", post(peer_join))
        .route("/api/v1/peer/export", post(peer_export))
        .route("/api/v1/peer/add", post(peer_add))
}

fn domain_json(d: &DomainRow) -> Value {
    json!({
        "domain_id": d.domain_id,
        "role": match d.role.as_str() { "self" => "", "lite" => "lite", _ => "partner" },
        "is_self": d.role == "self",
        "cert": d.ca_cert,
        "ca_sha256": d.ca_sha256,
        "endpoint": d.endpoint,
        "auth_center": { "authentication_type": "MTLS" },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainIdReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: String,
}

async fn domain_query(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainIdReq>,
) -> ApiResult {
    let d = state
        .store
        .domain(&req.domain_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("domain {}", req.domain_id)))?;
    ok(domain_json(&d))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: String,
}

async fn domain_list(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<PageReq>,
) -> ApiResult {
    let page = state
        .store
        .list_domains(&req.page_token, req.page_size)
        .await?;
    let mut domains: Vec<Value> = page.items.iter().map(domain_json).collect();
    // On a master, each domain carries its node status (Kuscia's `status.nodeStatuses`).
    if state.config.mode == Mode::Master {
        let statuses = central::domain_statuses(&state).await?;
        for d in &mut domains {
            if let Some(st) = statuses.iter().find(|s| s["domain_id"] == d["domain_id"]) {
                d["role"] = st["role"].clone();
                d["node_statuses"] = json!([{
                    "name": st["domain_id"],
                    "status": st["status"],
                    "version": st["version"],
                    "last_heartbeat_time": st["last_heartbeat"],
                    "registered": st["registered"],
                }]);
            }
        }
    }
    ok(json!({
        "domains": domains,
        "next_page_token": page.next_page_token,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainCreateReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: String,
    /// Kuscia's role: "" (a lite of this master) is the only one accepted here.
    #[serde(default)]
    role: String,
    /// Kuscia's fields that a venn master does not need (accepted, ignored).
    #[serde(default)]
    #[allow(dead_code)]
    cert: String,
    #[serde(default)]
    #[allow(dead_code)]
    auth_center: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    master_domain_id: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn ttl(s: Option<u64>) -> Duration {
    s.map(Duration::from_secs)
        .unwrap_or(central::DEFAULT_DEPLOY_TOKEN_TTL)
}

async fn domain_create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainCreateReq>,
) -> ApiResult {
    if !req.role.is_empty() && req.role != "lite" {
        return Err(ApiError(NodeError::Invalid(format!(
            "role: {:?}: a master creates lite domains (role \"\"); partners of an autonomy \
             node are added with venn peer invite",
            req.role
        ))));
    }
    let t = central::add_domain(&state, &req.domain_id, ttl(req.ttl_seconds)).await?;
    ok(central::token_json(&t))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainTokenReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn domain_token(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainTokenReq>,
) -> ApiResult {
    let t = central::issue_token(&state, &req.domain_id, ttl(req.ttl_seconds)).await?;
    ok(central::token_json(&t))
}

async fn domain_reset(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainTokenReq>,
) -> ApiResult {
    let t = central::reset_domain(&state, &req.domain_id, ttl(req.ttl_seconds)).await?;
    ok(central::token_json(&t))
}

/// Kuscia's route endpoint: `{host, ports: [{port, protocol, is_tls, ...}]}`.
#[derive(Debug, Deserialize)]
struct RouteEndpoint {
    host: String,
    #[serde(default)]
    ports: Vec<RoutePort>,
}

#[derive(Debug, Deserialize)]
struct RoutePort {
    port: u16,
}

/// Kuscia's transit: `{transit_method: "THIRD-DOMAIN", domain: {domain_id}}`.
#[derive(Debug, Deserialize)]
struct RouteTransit {
    #[serde(default)]
    transit_method: String,
    #[serde(default)]
    domain: Option<TransitDomain>,
}

#[derive(Debug, Deserialize)]
struct TransitDomain {
    domain_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteCreateReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    source: String,
    destination: String,
    /// Kuscia's endpoint object, or
    #[serde(default)]
    endpoint: Option<RouteEndpoint>,
    /// venn's shortcut: the destination's gateway URL `https://bob:1080`.
    #[serde(default)]
    host: String,
    #[serde(default)]
    authentication_type: String,
    #[serde(default)]
    transit: Option<RouteTransit>,
}

async fn route_create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<RouteCreateReq>,
) -> ApiResult {
    if !req.authentication_type.is_empty() && !req.authentication_type.eq_ignore_ascii_case("MTLS")
    {
        return Err(ApiError(NodeError::Invalid(format!(
            "authentication_type: {:?}: venn routes are always MTLS",
            req.authentication_type
        ))));
    }
    let host = match (&req.endpoint, req.host.as_str()) {
        (_, h) if !h.is_empty() => h.to_owned(),
        (Some(e), _) => match e.ports.first() {
            Some(p) => format!("https://{}:{}", e.host, p.port),
            None => format!("https://{}:1080", e.host),
        },
        (None, _) => {
            return Err(ApiError(NodeError::Invalid(
                "endpoint: give the destination's gateway (host https://bob:1080 or endpoint {host, ports})"
                    .into(),
            )));
        }
    };
    let transit = match &req.transit {
        None => String::new(),
        Some(t) => {
            if !t.transit_method.is_empty() && t.transit_method != "THIRD-DOMAIN" {
                return Err(ApiError(NodeError::Invalid(format!(
                    "transit.transit_method: {:?}: only THIRD-DOMAIN",
                    t.transit_method
                ))));
            }
            t.domain
                .as_ref()
                .map(|d| d.domain_id.clone())
                .unwrap_or_default()
        }
    };
    let r = central::create_route(&state, &req.source, &req.destination, &host, &transit).await?;
    ok(route_json(&r))
}

async fn route_delete(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<RouteReq>,
) -> ApiResult {
    let name = if !req.name.is_empty() {
        req.name
    } else if !req.source.is_empty() && !req.destination.is_empty() {
        format!("{}-{}", req.source, req.destination)
    } else {
        return Err(ApiError(NodeError::Invalid(
            "source: give source and destination (or name)".into(),
        )));
    };
    central::delete_route(&state, &name).await?;
    ok(json!({ "name": name }))
}

/// The JSON of a route (also used by `venn route list`).
fn route_json(r: &RouteRow) -> Value {
    json!({
        "name": r.name,
        "source": r.source,
        "destination": r.destination,
        "host": r.host,
        "authentication_type": r.authentication,
        "transit": r.transit,
        "status": {
            "ready": r.ready == 1,
            "reason": r.reason,
            "message": r.message,
            "last_heartbeat": r.last_heartbeat,
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

async fn route_query(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<RouteReq>,
) -> ApiResult {
    let name = if !req.name.is_empty() {
        req.name
    } else if !req.source.is_empty() && !req.destination.is_empty() {
        format!("{}-{}", req.source, req.destination)
    } else {
        return Err(ApiError(NodeError::Invalid(
            "source: give source and destination (or name)".into(),
        )));
    };
    let r = state
        .store
        .route(&name)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("route {name}")))?;
    ok(route_json(&r))
}

async fn route_list(State(state): State<SharedState>, ApiJson(req): ApiJson<PageReq>) -> ApiResult {
    let page = state
        .store
        .list_routes(&req.page_token, req.page_size)
        .await?;
    ok(json!({
        "routes": page.items.iter().map(route_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    source: String,
    destination: String,
    /// The relay; empty = direct.
    #[serde(default)]
    transit: String,
    /// The destination's gateway (at the relay).
    #[serde(default)]
    endpoint: String,
}

/// `route/transit`: sets the transit domain of a route (see `gateway::transit`). At either end
/// of the route it switches the route to the relay (or back to direct); at the relay itself it
/// records the permission to carry the route, with the destination's endpoint.
async fn route_transit(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<TransitReq>,
) -> ApiResult {
    let me = state.domain_id().to_owned();
    for (field, v) in [("source", &req.source), ("destination", &req.destination)] {
        check_domain_id(v).map_err(|e| NodeError::Invalid(format!("{field}: {e}")))?;
    }
    if !req.transit.is_empty() {
        check_domain_id(&req.transit).map_err(|e| NodeError::Invalid(format!("transit: {e}")))?;
    }
    if req.source == req.destination || req.transit == req.source || req.transit == req.destination
    {
        return Err(ApiError(NodeError::Invalid(
            "transit: source, destination and transit must be three different domains".into(),
        )));
    }
    if !req.endpoint.is_empty() {
        Endpoint::parse(&req.endpoint).map_err(|e| NodeError::Invalid(format!("endpoint: {e}")))?;
    }
    let partner = |d: &str| {
        if state.peers.get(d).is_some() {
            Ok(())
        } else {
            Err(ApiError(NodeError::Invalid(format!(
                "{d} is not a partner of {me}: pin its CA first (venn peer join, or venn peer add)"
            ))))
        }
    };
    let name = format!("{}-{}", req.source, req.destination);
    let existing = state.store.route(&name).await?;
    if req.source == me || req.destination == me {
        let other = if req.source == me {
            &req.destination
        } else {
            &req.source
        };
        partner(other)?;
        if !req.transit.is_empty() {
            partner(&req.transit)?;
        }
        let host = if req.source == me && !req.endpoint.is_empty() {
            req.endpoint.clone()
        } else {
            existing.map(|r| r.host).unwrap_or_default()
        };
        state
            .store
            .ensure_route(&req.source, &req.destination, &host)
            .await?;
    } else if req.transit == me {
        partner(&req.source)?;
        partner(&req.destination)?;
        let host = if req.endpoint.is_empty() {
            existing.map(|r| r.host).unwrap_or_default()
        } else {
            req.endpoint.clone()
        };
        state
            .store
            .ensure_route(&req.source, &req.destination, &host)
            .await?;
    } else {
        return Err(ApiError(NodeError::Invalid(format!(
            "{me} is neither an end of route {name} nor its transit: run this at {}, {} or the relay",
            req.source, req.destination
        ))));
    }
    state.store.set_route_transit(&name, &req.transit).await?;
    state.heartbeat_now.notify_one();
    let r = state
        .store
        .route(&name)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("route {name}")))?;
    ok(route_json(&r))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteReq {
    peer: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn peer_invite(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<InviteReq>,
) -> ApiResult {
    let ttl = req
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INVITATION_TTL);
    let inv = onboarding::invite(&state, &req.peer, ttl).await?;
    ok(onboarding::invitation_json(&inv))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinReq {
    invitation: String,
}

async fn peer_join(State(state): State<SharedState>, ApiJson(req): ApiJson<JoinReq>) -> ApiResult {
    let d = onboarding::join(&state, &req.invitation).await?;
    ok(domain_json(&d))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

async fn peer_export(State(state): State<SharedState>, ApiJson(_): ApiJson<Empty>) -> ApiResult {
    ok(onboarding::export(&state))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddReq {
    domain_id: String,
    ca_cert: String,
    #[serde(default)]
    endpoint: String,
}

async fn peer_add(State(state): State<SharedState>, ApiJson(req): ApiJson<AddReq>) -> ApiResult {
    let d = onboarding::add_partner(&state, &req.domain_id, &req.ca_cert, &req.endpoint).await?;
    ok(domain_json(&d))
}

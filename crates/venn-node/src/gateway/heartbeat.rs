//! Route status: heartbeats to every partner and the explained Ready state of each route.
//!
//! Every `gateway.heartbeat_seconds` (15 s by default, as Kuscia's gateway health check) the
//! node calls `POST /venn/v1/heartbeat` on each partner it has an endpoint (or a transit
//! domain) for, all partners concurrently. The outcome sets the outbound route `<self>-<partner>`:
//!
//! | reason          | meaning |
//! |-----------------|---------|
//! | `Ready`         | the partner answered over mutual TLS and the clocks agree |
//! | `Pending`       | no heartbeat tried or received yet |
//! | `DNS`, `TCP`, `TLS` | that step of the connection failed (message has the details) |
//! | `NotAuthorized` | the partner answered 401: it has not pinned (or removed) this node's CA |
//! | `ClockSkew`     | the partner's clock differs by more than `gateway.max_clock_skew_seconds` |
//! | `PeerError`     | the partner answered something unexpected |
//! | `Transit`       | the route's transit domain could not be reached or refused to relay |
//! | `HeartbeatLost` | inbound route: no heartbeat from the partner for 3 intervals |
//!
//! The inbound route `<partner>-<self>` is set Ready by the partner's heartbeats (see
//! `gateway::heartbeat` handler) and falls to `HeartbeatLost` here.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::central;
use crate::config::Mode;
use crate::gateway::client::{Step, call};
use crate::grants;
use crate::state::SharedState;
use crate::store::RouteRow;
use crate::trust::now_unix;

/// Runs heartbeat rounds until `shutdown` turns true.
pub async fn run(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_secs(state.config.gateway.heartbeat_seconds);
    loop {
        round(&state).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = state.heartbeat_now.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One heartbeat round over every route.
pub async fn round(state: &SharedState) {
    let routes = match state.store.all_routes().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("heartbeat: reading routes: {e}");
            return;
        }
    };
    let me = state.domain_id().to_owned();
    let outbound = routes
        .iter()
        .filter(|r| r.source == me && (!r.host.is_empty() || !r.transit.is_empty()))
        .map(|r| beat_route(state, r));
    futures_util::future::join_all(outbound).await;
    let lost_after = 3 * state.config.gateway.heartbeat_seconds as i64;
    for r in routes.iter().filter(|r| r.destination == me) {
        if r.ready == 1 && now_unix() - r.last_heartbeat > lost_after {
            let msg = format!("no heartbeat from {} for {lost_after} s", r.source);
            if let Err(e) = state
                .store
                .set_route_status(&r.name, false, "HeartbeatLost", &msg)
                .await
            {
                tracing::error!("heartbeat: {e}");
            }
            tracing::warn!(route = %r.name, "{msg}");
        }
    }
}

async fn beat_route(state: &SharedState, route: &RouteRow) {
    let (ready, reason, message) = match beat(state, &route.destination).await {
        Ok(()) => (true, "Ready".to_owned(), String::new()),
        Err((reason, message)) => (false, reason, message),
    };
    if ready != (route.ready == 1) || reason != route.reason {
        if ready {
            tracing::info!(route = %route.name, "route ready");
        } else {
            tracing::warn!(route = %route.name, reason = %reason, "route not ready: {message}");
        }
    }
    if let Err(e) = state
        .store
        .set_route_status(&route.name, ready, &reason, &message)
        .await
    {
        tracing::error!("heartbeat: {e}");
    }
    if ready {
        grants::redeliver(state, &route.destination).await;
    }
}

async fn beat(state: &SharedState, peer: &str) -> Result<(), (String, String)> {
    if state.peers.get(peer).is_none() {
        return Err(("Pending".to_owned(), format!("{peer}'s CA is not pinned")));
    }
    let sent = now_unix();
    // To its master, a lite also reports its version and routes (see `central`).
    let to_master = state.config.mode == Mode::Lite && central::master_of(state) == peer;
    let mut report = json!({ "time": sent });
    if to_master {
        let extra = central::lite_report(state).await;
        report["version"] = extra["version"].clone();
        report["routes"] = extra["routes"].clone();
    }
    let (status, body) = call(state, peer, "/venn/v1/heartbeat", &report)
        .await
        .map_err(|s: Step| (s.reason().to_owned(), s.detail()))?;
    if status != 200 {
        return Err((
            "PeerError".into(),
            format!("heartbeat answered HTTP {status}"),
        ));
    }
    let their = body.get("time").and_then(Value::as_i64).unwrap_or(0);
    let skew = (their - now_unix()).abs();
    let max = state.config.gateway.max_clock_skew_seconds as i64;
    if skew > max {
        return Err((
            "ClockSkew".into(),
            format!("{peer}'s clock differs by {skew} s (more than {max} s)"),
        ));
    }
    if to_master && let Err(e) = central::apply_master_answer(state, peer, &body).await {
        tracing::warn!("installing the master's routes: {e}");
    }
    Ok(())
}

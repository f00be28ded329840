//! The centralized network: a master and its lite nodes (Kuscia's "centralized" deployment).
//!
//! **Trust.** The master's CA is the network CA. `venn domain add alice` on the master creates
//! the domain and prints a deploy token ([`DeployToken`]): 32 random bytes of secret, single
//! use, expiring (24 h by default; Kuscia's never expire), and carrying the SHA-256 of the
//! network CA so that the lite pins the master on first contact, as invitations do. The master
//! stores only the SHA-256 of the secret, so a token is shown once: `venn domain token alice`
//! issues a fresh one and revokes any unused earlier one (the issue asked to show an unused
//! token again, which would require storing it; we chose not to).
//!
//! **Registration** (`POST /venn/v1/register` on the master's gateway, see [`accept_register`]):
//! the lite generates its key, sends a CSR naming its domain with the token over TLS pinned to
//! the token's CA fingerprint; the master checks the token (known, unused, unexpired, secret in
//! constant time, for this domain), signs a leaf (CA:FALSE, no keyCertSign/cRLSign, EKU server
//! and client auth, CN and DNS SAN = the domain), marks the token used with one conditional
//! UPDATE (single use under concurrency) and pins the domain to the registered key. Any failure
//! answers 401 `{"reason":"unauthorized"}`; the master's log says which check failed, without
//! the token. A lite that has a certificate re-registers at each start without a token: it
//! authenticates with its current certificate over mutual TLS and must send a CSR for the
//! *same* key (renewal). A lost key is recovered with `venn domain reset alice`: the master
//! forgets the registered key (the old certificate is refused from then on, by the master and
//! by the other lites, which receive the key pins from the master) and issues a new token.
//!
//! **Heartbeat.** A lite keeps the route `alice-<master>` to the master like any route (the
//! `gateway::heartbeat` loop); to the master its heartbeat body also carries its version and the
//! status of its outbound routes ([`lite_report`]). The master records them (`venn domain list`,
//! `venn route list` READY as the lites report it) and answers with the lite's routes (rows in
//! which it is source or destination, with host and transit) and the key pins of the domains at
//! their other ends, which the lite installs ([`apply_master_answer`]). A master restart only
//! makes heartbeats fail for a while: the lite keeps its routes, certificates and running tasks
//! and the next heartbeat reconnects (every `heartbeat_seconds`, so no back-off is needed).
//! Idleness changes nothing: Ready depends only on the last heartbeat (kuscia#823).
//!
//! **Data and jobs.** Each lite holds its own data, grants and jobs (the autonomy job protocol
//! runs lite to lite: every lite trusts the network CA for every domain the master routes to
//! it). The master is the front door: its API forwards `domaindata*`, `domaindatagrant*` and
//! `job*` calls to the lite of the domain named in the body (`domain_id`, or the job's
//! `initiator`) over mutual TLS (`POST /venn/v1/api` on the lite's gateway, which only the
//! master may call), so no data row is stored on or passes through the master. Keeping the
//! job state on the lites (not a copy at the master) is why a master restart cannot lose or
//! stall a job; `venn job get` on the master asks the lites.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Config, Endpoint, Mode, check_domain_id};
use crate::error::{NodeError, Result};
use crate::gateway::client::{Step, post_json};
use crate::state::NodeState;
use crate::store::{DomainRow, RouteRow};
use crate::trust::{
    self, DeployToken, Identity, PinnedCaVerifier, ct_eq_str, now_unix, provider, random_id,
    secret_hash,
};

/// Default lifetime of a deploy token.
pub const DEFAULT_DEPLOY_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A lite is NotReady when its last heartbeat is older than this many heartbeat intervals.
const LOST_AFTER_INTERVALS: i64 = 3;

/// The version a node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

// === the lite's view of its network ===

/// What a lite remembers about its master (`<data_dir>/keys/network.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The master's domain.
    pub master: String,
    /// Hex SHA-256 of the network CA.
    pub ca_sha256: String,
}

fn network_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("keys").join("network.json")
}

/// The master's domain as this lite registered it, if it has.
pub fn network_info(config: &Config) -> Option<NetworkInfo> {
    let text = std::fs::read_to_string(network_path(config)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The master's domain, for a lite (empty otherwise).
pub fn master_of(state: &NodeState) -> String {
    if state.config.mode != Mode::Lite {
        return String::new();
    }
    network_info(&state.config)
        .map(|n| n.master)
        .unwrap_or_default()
}

// === master: domains and deploy tokens ===

fn check_master(state: &NodeState) -> Result<()> {
    if state.config.mode != Mode::Master {
        return Err(NodeError::Invalid(
            "this call is for a master node (mode: master)".into(),
        ));
    }
    Ok(())
}

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.as_secs() == 0 || ttl.as_secs() > 30 * 24 * 3600 {
        return Err(NodeError::Invalid(
            "ttl_seconds: must be between 1 and 2592000 (30 days)".into(),
        ));
    }
    Ok(())
}

/// Issues a deploy token for `domain` (the domain must exist), revoking unused earlier ones.
pub async fn issue_token(state: &NodeState, domain: &str, ttl: Duration) -> Result<DeployToken> {
    check_master(state)?;
    check_ttl(ttl)?;
    if state.store.lite_node(domain).await?.is_none() {
        return Err(NodeError::NotFound(format!("domain {domain}")));
    }
    let id = random_id(12)?;
    let secret = random_id(32)?;
    let expires = now_unix() + ttl.as_secs() as i64;
    state
        .store
        .issue_deploy_token(&id, domain, &secret_hash(&secret), expires)
        .await?;
    tracing::info!(domain, token_id = %id, expires, "deploy token issued");
    Ok(DeployToken {
        v: 1,
        master: state.domain_id().to_owned(),
        ca_sha256: state.identity.ca_fingerprint.clone(),
        domain: domain.to_owned(),
        id,
        secret,
        expires,
    })
}

/// Creates domain `domain` on the master (`venn domain add`, `POST /api/v1/domain/create`) and
/// issues its first deploy token.
pub async fn add_domain(state: &NodeState, domain: &str, ttl: Duration) -> Result<DeployToken> {
    check_master(state)?;
    check_domain_id(domain).map_err(|e| NodeError::Invalid(format!("domain_id: {e}")))?;
    check_ttl(ttl)?;
    if domain == state.domain_id() || state.store.domain(domain).await?.is_some() {
        return Err(NodeError::Conflict(format!(
            "domain_id: {domain} already exists (a lost token: venn domain token {domain})"
        )));
    }
    state
        .store
        .upsert_domain(&DomainRow {
            domain_id: domain.to_owned(),
            role: "lite".into(),
            ca_cert: state.identity.ca_pem(),
            ca_sha256: state.identity.ca_fingerprint.clone(),
            endpoint: String::new(),
            created_at: 0,
            updated_at: 0,
        })
        .await?;
    state.store.ensure_lite_node(domain).await?;
    tracing::info!(domain, "domain created");
    issue_token(state, domain, ttl).await
}

/// Forgets the registered key of `domain` and issues a new deploy token (`venn domain reset`):
/// the recovery from a lost or stolen lite key.
pub async fn reset_domain(state: &NodeState, domain: &str, ttl: Duration) -> Result<DeployToken> {
    check_master(state)?;
    check_ttl(ttl)?;
    if state.store.lite_node(domain).await?.is_none() {
        return Err(NodeError::NotFound(format!("domain {domain}")));
    }
    state.store.set_lite_key(domain, "").await?;
    state.peers.remove(domain);
    tracing::warn!(
        domain,
        "domain reset: its registered key is no longer accepted"
    );
    issue_token(state, domain, ttl).await
}

/// The JSON answer for an issued token (shown once).
pub fn token_json(t: &DeployToken) -> Value {
    json!({
        "domain_id": t.domain,
        "deploy_token": t.encode(),
        "expires_at": t.expires,
    })
}

/// `venn domain list` on a master: every lite with its status.
pub async fn domain_statuses(state: &NodeState) -> Result<Vec<Value>> {
    let lost = LOST_AFTER_INTERVALS * state.config.gateway.heartbeat_seconds as i64;
    let now = now_unix();
    let mut out = vec![json!({
        "domain_id": state.domain_id(),
        "role": "master",
        "status": "Ready",
        "last_heartbeat": now,
        "version": VERSION,
        "registered": true,
    })];
    for n in state.store.lite_nodes().await? {
        let ready =
            !n.key_sha256.is_empty() && n.last_heartbeat > 0 && now - n.last_heartbeat <= lost;
        out.push(json!({
            "domain_id": n.domain_id,
            "role": "lite",
            "status": if ready { "Ready" } else { "NotReady" },
            "last_heartbeat": n.last_heartbeat,
            "version": n.version,
            "registered": !n.key_sha256.is_empty(),
        }));
    }
    Ok(out)
}

/// Loads the registered lites into the master's peer set (at start).
pub async fn load_lites(state: &NodeState) -> Result<()> {
    for n in state.store.lite_nodes().await? {
        if n.key_sha256.is_empty() {
            continue;
        }
        state
            .peers
            .insert(&state.identity, &n.domain_id, state.identity.ca_der.clone())?;
        state.peers.pin_key(&n.domain_id, &n.key_sha256);
    }
    Ok(())
}

// === master: routes ===

/// Creates or updates route `source-destination` on the master (`venn route create`).
pub async fn create_route(
    state: &NodeState,
    source: &str,
    destination: &str,
    host: &str,
    transit: &str,
) -> Result<RouteRow> {
    check_master(state)?;
    if source == destination {
        return Err(NodeError::Invalid(
            "destination: must differ from source".into(),
        ));
    }
    for (field, d) in [("source", source), ("destination", destination)] {
        if state.store.lite_node(d).await?.is_none() {
            return Err(NodeError::Invalid(format!(
                "{field}: {d:?} is not a domain of this network (venn domain add {d})"
            )));
        }
    }
    Endpoint::parse(host).map_err(|e| NodeError::Invalid(format!("endpoint: {e}")))?;
    if !transit.is_empty() && transit != state.domain_id() {
        return Err(NodeError::Invalid(format!(
            "transit: only the master ({}) can carry routes as transit",
            state.domain_id()
        )));
    }
    state.store.ensure_route(source, destination, host).await?;
    let name = format!("{source}-{destination}");
    state.store.set_route_transit(&name, transit).await?;
    tracing::info!(route = %name, host, transit, "route created");
    state
        .store
        .route(&name)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("route {name}")))
}

/// Deletes route `name` on the master; the lites drop it at their next heartbeat.
pub async fn delete_route(state: &NodeState, name: &str) -> Result<()> {
    check_master(state)?;
    let me = state.domain_id();
    if let Some(r) = state.store.route(name).await?
        && (r.source == me || r.destination == me)
    {
        return Err(NodeError::Invalid(format!(
            "name: {name} is a route between the master and a lite; it exists while the lite is registered"
        )));
    }
    if !state.store.delete_route(name).await? {
        return Err(NodeError::NotFound(format!("route {name}")));
    }
    tracing::info!(route = %name, "route deleted");
    Ok(())
}

// === registration ===

/// What a lite sends to `POST /venn/v1/register`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The lite's domain.
    pub domain_id: String,
    /// CSR for the lite's gateway key, PEM.
    pub csr: String,
    /// The deploy token (empty when re-registering with the current certificate).
    #[serde(default)]
    pub token: String,
    /// The lite's gateway endpoint (for the master's route to it; may be empty).
    #[serde(default)]
    pub endpoint: String,
    /// The lite's version.
    #[serde(default)]
    pub version: String,
}

/// The master's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterAnswer {
    /// The master's domain.
    pub master: String,
    /// The lite's certificate, PEM.
    pub certificate: String,
    /// The network CA, PEM.
    pub ca_cert: String,
}

/// Handles a registration on the master. `caller` is the domain authenticated by the
/// connection's client certificate (if any), `certs` its chain. Every refusal is
/// `Unauthorized`; the reason is logged here, never the token.
pub async fn accept_register(
    state: &NodeState,
    caller: Option<&str>,
    req: RegisterRequest,
) -> Result<RegisterAnswer> {
    let domain = req.domain_id.clone();
    let refuse = |why: &str| {
        tracing::warn!(domain = %domain, "registration refused: {why}");
        NodeError::Unauthorized
    };
    if state.config.mode != Mode::Master {
        return Err(refuse("this node is not a master"));
    }
    let Some(lite) = state.store.lite_node(&domain).await? else {
        return Err(refuse("no such domain"));
    };
    if !req.endpoint.is_empty() && Endpoint::parse(&req.endpoint).is_err() {
        return Err(refuse("bad endpoint"));
    }
    let mut token_id = None;
    if req.token.is_empty() {
        // Renewal: the current certificate (checked with the key pin) and the same key.
        if caller != Some(domain.as_str()) {
            return Err(refuse(
                "no deploy token and no valid certificate of this domain",
            ));
        }
    } else {
        let Ok(token) = DeployToken::decode(&req.token) else {
            return Err(refuse("deploy token damaged"));
        };
        let Some(open) = state.store.open_deploy_token(&token.id).await? else {
            return Err(refuse("deploy token unknown, used, revoked or expired"));
        };
        if !ct_eq_str(&secret_hash(&token.secret), &open.secret_sha256) {
            return Err(refuse("deploy token secret wrong"));
        }
        if open.domain_id != domain || token.domain != domain {
            return Err(refuse("deploy token is for another domain"));
        }
        token_id = Some(token.id);
    }
    let issued = match trust::sign_lite_csr(
        &state.config.data_dir,
        &state.identity.ca_der,
        &domain,
        &req.csr,
    ) {
        Ok(i) => i,
        Err(e) => return Err(refuse(&format!("{e}"))),
    };
    if token_id.is_none() && !ct_eq_str(&issued.key_sha256, &lite.key_sha256) {
        return Err(refuse("renewal for another key (use a deploy token)"));
    }
    if let Some(id) = token_id
        && !state.store.consume_deploy_token(&id).await?
    {
        return Err(refuse("deploy token used concurrently"));
    }
    state
        .store
        .set_lite_key(&domain, &issued.key_sha256)
        .await?;
    state
        .peers
        .insert(&state.identity, &domain, state.identity.ca_der.clone())?;
    state.peers.pin_key(&domain, &issued.key_sha256);
    let mut row = state.store.domain(&domain).await?.unwrap_or(DomainRow {
        domain_id: domain.clone(),
        role: "lite".into(),
        ca_cert: String::new(),
        ca_sha256: String::new(),
        endpoint: String::new(),
        created_at: 0,
        updated_at: 0,
    });
    row.ca_cert = state.identity.ca_pem();
    row.ca_sha256 = state.identity.ca_fingerprint.clone();
    row.endpoint = req.endpoint.clone();
    state.store.upsert_domain(&row).await?;
    let me = state.domain_id().to_owned();
    state.store.ensure_route(&domain, &me, "").await?;
    if !req.endpoint.is_empty() {
        state
            .store
            .ensure_route(&me, &domain, &req.endpoint)
            .await?;
    }
    if !req.version.is_empty() {
        state.store.lite_heartbeat(&domain, &req.version).await?;
    }
    tracing::info!(domain = %domain, key_sha256 = %issued.key_sha256, "lite registered");
    Ok(RegisterAnswer {
        master: me,
        certificate: issued.cert_pem,
        ca_cert: state.identity.ca_pem(),
    })
}

/// Registers this lite with its master: with `token` (first registration) or with the current
/// identity (renewal). Saves the certificate and the network CA in the data dir.
pub async fn register(
    config: &Config,
    token: Option<&DeployToken>,
    current: Option<&Identity>,
) -> Result<()> {
    let endpoint = Endpoint::parse(&config.master_endpoint)
        .map_err(|e| NodeError::Config(vec![format!("master_endpoint: {e}")]))?;
    let csr = trust::lite_csr(&config.data_dir, &config.domain_id)?;
    let (tls, master, ca_sha256) = match (token, current) {
        (Some(t), _) => {
            let tls = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(&t.ca_sha256)))
                .with_no_client_auth();
            (tls, t.master.clone(), t.ca_sha256.clone())
        }
        (None, Some(id)) => {
            let info = network_info(config).ok_or_else(|| {
                NodeError::Config(vec![
                    "keys/network.json is missing: register again with a deploy token".into(),
                ])
            })?;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(id.ca_der.clone())
                .map_err(|e| NodeError::Crypto(format!("network CA: {e}")))?;
            let tls = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_client_auth_cert(id.chain.clone(), id.tls_key()?)?;
            (tls, info.master, info.ca_sha256)
        }
        (None, None) => {
            return Err(NodeError::Config(vec![format!(
                "deploy_token: {} is not registered with its master yet; give the deploy token \
                 from `venn domain add {}` on the master (--deploy-token or deploy_token_file)",
                config.domain_id, config.domain_id
            )]));
        }
    };
    let body = serde_json::to_value(RegisterRequest {
        domain_id: config.domain_id.clone(),
        csr,
        token: token.map(DeployToken::encode).unwrap_or_default(),
        endpoint: config.endpoint.clone(),
        version: VERSION.into(),
    })
    .map_err(|e| NodeError::Invalid(e.to_string()))?;
    let (status, answer) = post_json(
        Arc::new(tls),
        &endpoint,
        config.proxy().as_ref(),
        &master,
        &config.domain_id,
        "/venn/v1/register",
        &body,
    )
    .await
    .map_err(|step| match step {
        Step::NotAuthorized => NodeError::Peer(format!(
            "the master {master} refused the registration of {} (deploy token wrong, used, \
             expired or for another domain; a new one: venn domain token {} on the master)",
            config.domain_id, config.domain_id
        )),
        other => NodeError::Net(format!(
            "registering with the master {master} at {}: {other}",
            config.master_endpoint
        )),
    })?;
    if status != 200 {
        return Err(NodeError::Peer(format!(
            "the master answered HTTP {status} to the registration"
        )));
    }
    let a: RegisterAnswer = serde_json::from_value(answer)
        .map_err(|e| NodeError::Peer(format!("the master answered an unexpected body: {e}")))?;
    if a.master != master {
        return Err(NodeError::Peer(format!(
            "the master answered as {:?}, expected {master:?}",
            a.master
        )));
    }
    trust::save_lite_cert(
        &config.data_dir,
        &config.domain_id,
        &a.certificate,
        &a.ca_cert,
        &ca_sha256,
    )?;
    let info = NetworkInfo { master, ca_sha256 };
    crate::atomic::write_file(
        &network_path(config),
        serde_json::to_string_pretty(&info)
            .unwrap_or_default()
            .as_bytes(),
        false,
    )?;
    Ok(())
}

/// A lite's identity at start: registers first if needed (with the deploy token, retrying
/// while the master cannot be reached), otherwise renews its certificate if the master answers
/// and keeps the current one if not (a lite starts without its master).
pub async fn lite_identity(config: &Config) -> Result<Identity> {
    if let Some(current) = Identity::load_lite(&config.data_dir, &config.domain_id)? {
        match tokio::time::timeout(
            Duration::from_secs(15),
            register(config, None, Some(&current)),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!("certificate renewed by the master");
                if let Some(id) = Identity::load_lite(&config.data_dir, &config.domain_id)? {
                    return Ok(id);
                }
            }
            Ok(Err(NodeError::Peer(m))) if config.deploy_token()?.is_some() => {
                // Refused (e.g. after `venn domain reset`): register with the configured token.
                tracing::warn!("renewing the certificate: {m}; registering with the deploy token");
                register(config, config.deploy_token()?.as_ref(), None).await?;
                tracing::info!("registered with the master");
                if let Some(id) = Identity::load_lite(&config.data_dir, &config.domain_id)? {
                    return Ok(id);
                }
            }
            Ok(Err(e)) => tracing::warn!("renewing the certificate: {e}; keeping the current one"),
            Err(_) => {
                tracing::warn!("renewing the certificate: timed out; keeping the current one")
            }
        }
        return Ok(current);
    }
    let token = config.deploy_token()?;
    let mut wait = Duration::from_secs(1);
    loop {
        match register(config, token.as_ref(), None).await {
            Ok(()) => break,
            Err(NodeError::Net(m)) => {
                tracing::warn!("{m}; retrying in {} s", wait.as_secs());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
    tracing::info!("registered with the master");
    Identity::load_lite(&config.data_dir, &config.domain_id)?.ok_or_else(|| {
        NodeError::Crypto("registered, but the certificate cannot be read back".into())
    })
}

/// At a lite's start: pins the master (network CA) and creates the route to it.
pub async fn lite_start(state: &NodeState) -> Result<()> {
    let master = master_of(state);
    if master.is_empty() {
        return Ok(());
    }
    let row = DomainRow {
        domain_id: master.clone(),
        role: "partner".into(),
        ca_cert: state.identity.ca_pem(),
        ca_sha256: state.identity.ca_fingerprint.clone(),
        endpoint: state.config.master_endpoint.clone(),
        created_at: 0,
        updated_at: 0,
    };
    state.store.upsert_domain(&row).await?;
    state
        .peers
        .insert(&state.identity, &master, state.identity.ca_der.clone())?;
    let me = state.domain_id();
    state
        .store
        .ensure_route(me, &master, &state.config.master_endpoint)
        .await?;
    state.store.ensure_route(&master, me, "").await?;
    Ok(())
}

// === heartbeats between lite and master ===

/// The extra heartbeat body a lite sends to its master: version and outbound route statuses.
pub async fn lite_report(state: &NodeState) -> Value {
    let me = state.domain_id();
    let routes: Vec<Value> = state
        .store
        .all_routes()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.source == me)
        .map(|r| {
            json!({
                "name": r.name,
                "ready": r.ready == 1,
                "reason": r.reason,
                "message": r.message,
                "last_heartbeat": r.last_heartbeat,
            })
        })
        .collect();
    json!({ "version": VERSION, "routes": routes })
}

/// A route as the master sends it to a lite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushedRoute {
    /// Source domain.
    pub source: String,
    /// Destination domain.
    pub destination: String,
    /// Destination endpoint.
    pub host: String,
    /// Transit domain ('' = direct).
    #[serde(default)]
    pub transit: String,
}

/// On the master: records a lite's heartbeat report and answers with its routes and the key
/// pins of the domains at their other ends.
pub async fn ingest_report(state: &NodeState, lite: &str, body: &Value) -> Result<Value> {
    let version = body
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default();
    state.store.lite_heartbeat(lite, version).await?;
    if let Some(routes) = body.get("routes").and_then(Value::as_array) {
        for r in routes {
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            // The lite-to-master route is set by the heartbeat itself.
            if name.is_empty() || name == format!("{lite}-{}", state.domain_id()) {
                continue;
            }
            state
                .store
                .report_route_status(
                    name,
                    lite,
                    r.get("ready").and_then(Value::as_bool).unwrap_or(false),
                    r.get("reason").and_then(Value::as_str).unwrap_or_default(),
                    r.get("message").and_then(Value::as_str).unwrap_or_default(),
                    r.get("last_heartbeat")
                        .and_then(Value::as_i64)
                        .unwrap_or_default(),
                )
                .await?;
        }
    }
    let me = state.domain_id();
    let mut pushed = Vec::new();
    let mut pins = Vec::new();
    for r in state.store.routes_of(lite).await? {
        if r.source == me || r.destination == me {
            continue;
        }
        let other = if r.source == lite {
            &r.destination
        } else {
            &r.source
        };
        if let Some(n) = state.store.lite_node(other).await?
            && !pins.iter().any(|p: &Value| p["domain_id"] == json!(other))
        {
            pins.push(json!({ "domain_id": other, "key_sha256": n.key_sha256 }));
        }
        pushed.push(PushedRoute {
            source: r.source,
            destination: r.destination,
            host: r.host,
            transit: r.transit,
        });
    }
    Ok(json!({ "routes": pushed, "domains": pins }))
}

/// On a lite: installs the routes and key pins the master answered with. Routes between two
/// lites that the master no longer lists are removed.
pub async fn apply_master_answer(state: &NodeState, master: &str, body: &Value) -> Result<()> {
    let Some(routes) = body.get("routes") else {
        return Ok(());
    };
    let routes: Vec<PushedRoute> = serde_json::from_value(routes.clone())
        .map_err(|e| NodeError::Peer(format!("master's routes: {e}")))?;
    let me = state.domain_id().to_owned();
    if let Some(domains) = body.get("domains").and_then(Value::as_array) {
        for d in domains {
            let id = d
                .get("domain_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let key = d
                .get("key_sha256")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if id.is_empty() || id == me || id == master {
                continue;
            }
            if key.is_empty() {
                // Not registered (or reset): no key of it is accepted until it registers.
                state.peers.pin_key(id, "-");
            } else {
                state.peers.pin_key(id, key);
            }
        }
    }
    let mut wanted = Vec::new();
    for r in &routes {
        if (r.source != me && r.destination != me) || r.source == r.destination {
            continue;
        }
        let other = if r.source == me {
            &r.destination
        } else {
            &r.source
        };
        if other == master || check_domain_id(other).is_err() {
            continue;
        }
        let existing = state.store.domain(other).await?;
        let endpoint = if r.source == me {
            r.host.clone()
        } else {
            existing
                .as_ref()
                .map(|d| d.endpoint.clone())
                .unwrap_or_default()
        };
        let known = existing.as_ref().is_some_and(|d| {
            d.role == "partner"
                && d.ca_sha256 == state.identity.ca_fingerprint
                && d.endpoint == endpoint
        });
        if !known {
            state
                .store
                .upsert_domain(&DomainRow {
                    domain_id: other.clone(),
                    role: "partner".into(),
                    ca_cert: state.identity.ca_pem(),
                    ca_sha256: state.identity.ca_fingerprint.clone(),
                    endpoint,
                    created_at: 0,
                    updated_at: 0,
                })
                .await?;
        }
        if state.peers.get(other).is_none() {
            state
                .peers
                .insert(&state.identity, other, state.identity.ca_der.clone())?;
        }
        let host = if r.source == me { r.host.as_str() } else { "" };
        let name = format!("{}-{}", r.source, r.destination);
        let current = state.store.route(&name).await?;
        if current.as_ref().is_none_or(|c| c.host != host) {
            state
                .store
                .ensure_route(&r.source, &r.destination, host)
                .await?;
            tracing::info!(route = %name, "route received from the master");
            state.heartbeat_now.notify_one();
        }
        if current.as_ref().is_none_or(|c| c.transit != r.transit) {
            state.store.set_route_transit(&name, &r.transit).await?;
        }
        wanted.push(name);
    }
    for r in state.store.all_routes().await? {
        if r.source == master || r.destination == master || wanted.contains(&r.name) {
            continue;
        }
        state.store.delete_route(&r.name).await?;
        tracing::info!(route = %r.name, "route removed by the master");
    }
    Ok(())
}

// === master → lite API forwarding ===

/// Forwards an API call to the lite of `domain` (`POST /venn/v1/api` on its gateway) and
/// returns its answer envelope (HTTP status, body).
pub async fn forward_to_lite(
    state: &NodeState,
    domain: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let partner = state.peers.get(domain).ok_or_else(|| {
        NodeError::Invalid(format!(
            "domain_id: {domain} is not a registered lite of this network"
        ))
    })?;
    let row = state
        .store
        .domain(domain)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("domain {domain}")))?;
    let ep = Endpoint::parse(&row.endpoint).map_err(|_| {
        NodeError::Peer(format!(
            "{domain} registered no endpoint this master can reach"
        ))
    })?;
    post_json(
        partner.client_config,
        &ep,
        state.config.proxy().as_ref(),
        domain,
        state.domain_id(),
        "/venn/v1/api",
        &json!({ "path": path, "body": body }),
    )
    .await
    .map_err(|s| NodeError::Peer(format!("forwarding to {domain}: {s}")))
}

/// The API paths a master forwards to a lite, and the body field naming the lite.
pub fn forwarded(path: &str) -> bool {
    path.starts_with("/api/v1/domaindata")
        || path.starts_with("/api/v1/domaindatasource")
        || path.starts_with("/api/v1/domaindatagrant")
        || path.starts_with("/api/v1/job/")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::state::NodeState;
    use crate::trust::PeerSet;

    async fn master(dir: &std::path::Path) -> Arc<NodeState> {
        let config = Config {
            mode: Mode::Master,
            data_dir: dir.to_path_buf(),
            domain_id: "corp-master".into(),
            ..Config::default()
        };
        NodeState::for_tests(config).await
    }

    fn csr(dir: &std::path::Path, domain: &str) -> String {
        trust::lite_csr(dir, domain).unwrap()
    }

    #[test]
    fn csr_signing_gives_a_leaf_for_the_domain_only() {
        let m = tempfile::tempdir().unwrap();
        let l = tempfile::tempdir().unwrap();
        let ep = Endpoint::parse("https://127.0.0.1:1080").unwrap();
        let ca = Identity::load_or_create(m.path(), "corp-master", &ep).unwrap();
        let issued =
            trust::sign_lite_csr(m.path(), &ca.ca_der, "alice", &csr(l.path(), "alice")).unwrap();
        let der = trust::cert_from_pem(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        // CA:FALSE, no certSign / cRLSign, server + client auth, CN and SAN = the domain.
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(trust::common_name(&der).as_deref(), Some("alice"));
        assert!(trust::chain_names_domain(
            std::slice::from_ref(&der),
            &ca.ca_der,
            "alice"
        ));
        assert_eq!(trust::key_sha256(&der).unwrap(), issued.key_sha256);
        // The lite accepts it (right CA fingerprint), and loads it as its identity.
        assert!(Identity::load_lite(l.path(), "alice").unwrap().is_none());
        trust::save_lite_cert(
            l.path(),
            "alice",
            &issued.cert_pem,
            &ca.ca_pem(),
            &ca.ca_fingerprint,
        )
        .unwrap();
        let id = Identity::load_lite(l.path(), "alice").unwrap().unwrap();
        assert_eq!(id.ca_fingerprint, ca.ca_fingerprint);
        // A CA with another fingerprint is refused.
        assert!(
            trust::save_lite_cert(l.path(), "alice", &issued.cert_pem, &ca.ca_pem(), "00").is_err()
        );
        // A CSR naming another domain is refused, as is one for "alice" signed as "bob".
        let other = tempfile::tempdir().unwrap();
        assert!(
            trust::sign_lite_csr(m.path(), &ca.ca_der, "alice", &csr(other.path(), "bob")).is_err()
        );
        assert!(trust::sign_lite_csr(m.path(), &ca.ca_der, "alice", "garbage").is_err());
        // A leaf is no CA: nothing it signs chains to the network CA.
        let peers = PeerSet::default();
        peers.insert(&id, "alice", ca.ca_der.clone()).unwrap();
        assert_eq!(peers.authenticate(&id.chain).as_deref(), Some("alice"));
        peers.pin_key("alice", "another-key");
        assert_eq!(peers.authenticate(&id.chain), None, "key pin enforced");
    }

    #[tokio::test]
    async fn deploy_token_lifecycle() {
        let m = tempfile::tempdir().unwrap();
        let l = tempfile::tempdir().unwrap();
        let st = master(m.path()).await;
        let t1 = add_domain(&st, "alice", DEFAULT_DEPLOY_TOKEN_TTL)
            .await
            .unwrap();
        assert_eq!(t1.ca_sha256, st.identity.ca_fingerprint);
        assert!(t1.secret.len() >= 43, "256 bits of secret");
        assert!(matches!(
            add_domain(&st, "alice", DEFAULT_DEPLOY_TOKEN_TTL).await,
            Err(NodeError::Conflict(_))
        ));
        let req = |token: &DeployToken, domain: &str| RegisterRequest {
            domain_id: domain.into(),
            csr: csr(l.path(), domain),
            token: token.encode(),
            endpoint: String::new(),
            version: VERSION.into(),
        };
        // A new token revokes the first; the first is then refused.
        let t2 = issue_token(&st, "alice", DEFAULT_DEPLOY_TOKEN_TTL)
            .await
            .unwrap();
        assert!(matches!(
            accept_register(&st, None, req(&t1, "alice")).await,
            Err(NodeError::Unauthorized)
        ));
        // A wrong secret, and a token used for another domain, are refused.
        let mut wrong = t2.clone();
        wrong.secret = "x".into();
        assert!(
            accept_register(&st, None, req(&wrong, "alice"))
                .await
                .is_err()
        );
        add_domain(&st, "bob", DEFAULT_DEPLOY_TOKEN_TTL)
            .await
            .unwrap();
        assert!(accept_register(&st, None, req(&t2, "bob")).await.is_err());
        // The right one registers, once.
        let a = accept_register(&st, None, req(&t2, "alice")).await.unwrap();
        assert_eq!(a.master, "corp-master");
        assert!(accept_register(&st, None, req(&t2, "alice")).await.is_err());
        // Renewal without a token: only as the authenticated domain, with the same key.
        let mut renew = req(&t2, "alice");
        renew.token.clear();
        assert!(accept_register(&st, None, renew.clone()).await.is_err());
        assert!(
            accept_register(&st, Some("bob"), renew.clone())
                .await
                .is_err()
        );
        accept_register(&st, Some("alice"), renew.clone())
            .await
            .unwrap();
        // Reset: the registered key is forgotten; renewal no longer works; a new token does.
        let t3 = reset_domain(&st, "alice", DEFAULT_DEPLOY_TOKEN_TTL)
            .await
            .unwrap();
        assert!(accept_register(&st, Some("alice"), renew).await.is_err());
        accept_register(&st, None, req(&t3, "alice")).await.unwrap();
        // Expired tokens are refused.
        let t4 = issue_token(&st, "bob", Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(accept_register(&st, None, req(&t4, "bob")).await.is_err());
        assert!(DeployToken::decode(&t4.encode()).unwrap() == t4);
    }
}

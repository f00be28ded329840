//! Partner onboarding: invitations (one command each side) and the file-based path.
//!
//! Invitation flow (replaces seed 004's eight manual steps):
//! 1. alice: `venn peer invite bob` stores `(id, peer = bob, SHA-256(secret), expiry)` and prints
//!    one word holding alice's endpoint, the SHA-256 of alice's CA, the id and the secret.
//! 2. bob: `venn peer join <word>` connects to alice's gateway with a TLS verifier pinned to that
//!    fingerprint ([`PinnedCaVerifier`]) — no trust on first use — presenting bob's gateway
//!    certificate, and sends bob's CA, domain ID and endpoint with the secret.
//! 3. alice checks the secret (constant time), that the invitation is for `bob`, unused and
//!    unexpired, and that the client certificate of *this TLS connection* is issued by the CA
//!    bob sent and names `bob`; then marks the invitation used (atomically: single use), pins
//!    bob's CA, creates both routes and answers with alice's CA, which bob checks against the
//!    fingerprint before pinning it.
//!
//! Any failure at alice answers 401 `{"reason":"unauthorized"}` (the joiner learns nothing
//! about which check failed); alice's log says which one, without the secret.
//!
//! File path: `venn peer export` gives the CA certificate and endpoint; `venn peer add` pins a
//! partner's CA from such a file after checking that the CA belongs to the named domain.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Endpoint, check_domain_id};
use crate::error::{NodeError, Result};
use crate::gateway::client::post_json;
use crate::state::NodeState;
use crate::store::DomainRow;
use crate::trust::{
    Invitation, PinnedCaVerifier, ca_domain, cert_from_pem, chain_names_domain, ct_eq_str,
    fingerprint, now_unix, provider, random_id, secret_hash,
};

/// Default lifetime of an invitation.
pub const DEFAULT_INVITATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `venn peer export` shows and `venn peer add` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerExport {
    /// Domain ID.
    pub domain_id: String,
    /// Gateway endpoint.
    pub endpoint: String,
    /// CA certificate, PEM.
    pub ca_cert: String,
    /// Hex SHA-256 of the CA certificate.
    pub ca_sha256: String,
}

/// The join request a joining node sends to the inviting node's gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Invitation ID.
    pub invitation_id: String,
    /// Invitation secret.
    pub secret: String,
    /// The joining domain.
    pub domain_id: String,
    /// The joining node's endpoint (may be empty if it cannot be reached).
    pub endpoint: String,
    /// The joining node's CA, PEM.
    pub ca_cert: String,
}

/// Creates a one-time invitation for `peer`.
pub async fn invite(state: &NodeState, peer: &str, ttl: Duration) -> Result<Invitation> {
    check_domain_id(peer).map_err(|e| NodeError::Invalid(format!("peer: {e}")))?;
    if peer == state.domain_id() {
        return Err(NodeError::Invalid(
            "peer: cannot invite this node's own domain".into(),
        ));
    }
    if ttl.as_secs() == 0 || ttl.as_secs() > 30 * 24 * 3600 {
        return Err(NodeError::Invalid(
            "ttl_seconds: must be between 1 and 2592000 (30 days)".into(),
        ));
    }
    let id = random_id(12)?;
    let secret = random_id(32)?;
    let expires = now_unix() + ttl.as_secs() as i64;
    state
        .store
        .insert_invitation(&id, peer, &secret_hash(&secret), expires)
        .await?;
    tracing::info!(peer, invitation = %id, expires, "invitation created");
    Ok(Invitation {
        v: 1,
        domain: state.domain_id().to_owned(),
        endpoint: state.config.endpoint.clone(),
        ca_sha256: state.identity.ca_fingerprint.clone(),
        peer: peer.to_owned(),
        id,
        secret,
        expires,
    })
}

/// This node's export.
pub fn export(state: &NodeState) -> PeerExport {
    PeerExport {
        domain_id: state.domain_id().to_owned(),
        endpoint: state.config.endpoint.clone(),
        ca_cert: state.identity.ca_pem(),
        ca_sha256: state.identity.ca_fingerprint.clone(),
    }
}

/// Pins partner `domain_id`'s CA and creates the routes (outbound only with an endpoint).
pub async fn add_partner(
    state: &NodeState,
    domain_id: &str,
    ca_pem: &str,
    endpoint: &str,
) -> Result<DomainRow> {
    check_domain_id(domain_id).map_err(|e| NodeError::Invalid(format!("domain_id: {e}")))?;
    if domain_id == state.domain_id() {
        return Err(NodeError::Invalid(
            "domain_id: that is this node's own domain".into(),
        ));
    }
    let der = cert_from_pem(ca_pem).map_err(|e| NodeError::Invalid(format!("ca_cert: {e}")))?;
    match ca_domain(&der) {
        Some(d) if d == domain_id => {}
        Some(d) => {
            return Err(NodeError::Invalid(format!(
                "ca_cert: this is the CA of domain {d:?}, not {domain_id:?}"
            )));
        }
        None => {
            return Err(NodeError::Invalid(
                "ca_cert: not a venn node CA certificate (use the file from `venn peer export`)"
                    .into(),
            ));
        }
    }
    if !endpoint.is_empty() {
        Endpoint::parse(endpoint).map_err(|e| NodeError::Invalid(format!("endpoint: {e}")))?;
    }
    let row = DomainRow {
        domain_id: domain_id.to_owned(),
        role: "partner".into(),
        ca_cert: crate::trust::cert_to_pem(&der),
        ca_sha256: fingerprint(&der),
        endpoint: endpoint.to_owned(),
        created_at: 0,
        updated_at: 0,
    };
    state.peers.insert(&state.identity, domain_id, der)?;
    state.store.upsert_domain(&row).await?;
    let me = state.domain_id();
    if !endpoint.is_empty() {
        state.store.ensure_route(me, domain_id, endpoint).await?;
    }
    state.store.ensure_route(domain_id, me, "").await?;
    tracing::info!(partner = domain_id, ca_sha256 = %row.ca_sha256, "partner pinned");
    state.heartbeat_now.notify_one();
    Ok(row)
}

/// Joins the inviting node with `invitation` (runs on the invited node).
pub async fn join(state: &NodeState, invitation: &str) -> Result<DomainRow> {
    let inv = Invitation::decode(invitation)?;
    if inv.peer != state.domain_id() {
        return Err(NodeError::Invalid(format!(
            "invitation: it is for domain {:?}, this node is {:?}",
            inv.peer,
            state.domain_id()
        )));
    }
    if inv.expires <= now_unix() {
        return Err(NodeError::Invalid(
            "invitation: expired; ask for a new one".into(),
        ));
    }
    let endpoint = Endpoint::parse(&inv.endpoint)
        .map_err(|e| NodeError::Invalid(format!("invitation: endpoint {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(&inv.ca_sha256)))
        .with_client_auth_cert(state.identity.chain.clone(), state.identity.tls_key()?)?;
    let body = serde_json::to_value(JoinRequest {
        invitation_id: inv.id.clone(),
        secret: inv.secret.clone(),
        domain_id: state.domain_id().to_owned(),
        endpoint: state.config.endpoint.clone(),
        ca_cert: state.identity.ca_pem(),
    })
    .map_err(|e| NodeError::Invalid(e.to_string()))?;
    let (status, answer) = post_json(
        Arc::new(tls),
        &endpoint,
        state.config.proxy().as_ref(),
        &inv.domain,
        state.domain_id(),
        "/venn/v1/join",
        &body,
    )
    .await
    .map_err(|step| match step {
        crate::gateway::client::Step::NotAuthorized => NodeError::Peer(format!(
            "{} refused the invitation (used already, expired, or not for {})",
            inv.domain,
            state.domain_id()
        )),
        other => NodeError::Peer(format!(
            "contacting {} at {}: {other}",
            inv.domain, inv.endpoint
        )),
    })?;
    if status != 200 {
        return Err(NodeError::Peer(format!(
            "{} answered HTTP {status}",
            inv.domain
        )));
    }
    let exported: PeerExport = serde_json::from_value(answer)
        .map_err(|e| NodeError::Peer(format!("{} answered an unexpected body: {e}", inv.domain)))?;
    let der = cert_from_pem(&exported.ca_cert)?;
    if !ct_eq_str(&fingerprint(&der), &inv.ca_sha256.to_ascii_lowercase())
        || exported.domain_id != inv.domain
    {
        return Err(NodeError::Peer(format!(
            "{} answered with a CA that does not match the invitation",
            inv.domain
        )));
    }
    add_partner(state, &inv.domain, &exported.ca_cert, &inv.endpoint).await
}

/// Accepts a join request on the inviting node. `certs` is the client chain of the connection.
/// Every refusal is `Unauthorized`; the reason is logged here.
pub async fn accept_join(
    state: &NodeState,
    certs: &[rustls::pki_types::CertificateDer<'static>],
    req: JoinRequest,
) -> Result<PeerExport> {
    let refuse = |why: &str| {
        tracing::warn!(invitation = %req.invitation_id, claimed = %req.domain_id, "join refused: {why}");
        NodeError::Unauthorized
    };
    let Some((peer, hash)) = state.store.open_invitation(&req.invitation_id).await? else {
        return Err(refuse("no such open invitation (unknown, used or expired)"));
    };
    if !ct_eq_str(&secret_hash(&req.secret), &hash) {
        return Err(refuse("wrong secret"));
    }
    if peer != req.domain_id {
        return Err(refuse("invitation is for another domain"));
    }
    let Ok(ca) = cert_from_pem(&req.ca_cert) else {
        return Err(refuse("ca_cert is not a certificate"));
    };
    if ca_domain(&ca).as_deref() != Some(peer.as_str()) {
        return Err(refuse("ca_cert is not the CA of the invited domain"));
    }
    if !chain_names_domain(certs, &ca, &peer) {
        return Err(refuse(
            "client certificate not issued by the sent CA for the invited domain",
        ));
    }
    if !req.endpoint.is_empty() && Endpoint::parse(&req.endpoint).is_err() {
        return Err(refuse("bad endpoint"));
    }
    if !state.store.consume_invitation(&req.invitation_id).await? {
        return Err(refuse("invitation used concurrently"));
    }
    add_partner(state, &peer, &req.ca_cert, &req.endpoint).await?;
    tracing::info!(partner = %peer, "partner joined with an invitation");
    Ok(export(state))
}

/// The JSON shape of an invitation answer from the API.
pub fn invitation_json(inv: &Invitation) -> serde_json::Value {
    json!({
        "invitation": inv.encode(),
        "peer": inv.peer,
        "expires_at": inv.expires,
    })
}

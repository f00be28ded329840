//! DomainDataGrants: signed by the grantor, delivered to the grantee's node over the gateway.
//!
//! A grant's canonical form is the JSON of [`GrantPayload`] (fixed field order, maps sorted by
//! key) prefixed with a domain-separation tag; the grantor signs it with its gateway identity
//! key. The grantee verifies the signature with the certificate that authenticated the mutual
//! TLS connection the grant arrived on (so it is the grantor's current, CA-verified identity)
//! and stores the signature and that certificate, so the grant can be re-verified later (the
//! jobs issue checks grants when it admits a task).
//!
//! Delivery is at-least-once: a grant is stored with `delivered = 0`, sent at once, and re-sent
//! by the heartbeat loop until the grantee acknowledges it. Upserts at the grantee make
//! re-delivery harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{NodeError, Result};
use crate::gateway::client::Step;
use crate::state::NodeState;
use crate::store::GrantRow;
use crate::trust::{cert_to_pem, now_unix, verify_signature};

const SIGNATURE_TAG: &[u8] = b"venn-domaindatagrant-v1\n";

/// The signed content of a grant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantPayload {
    /// Grant ID.
    pub domaindatagrant_id: String,
    /// Grantor.
    pub domain_id: String,
    /// Granted data.
    pub domaindata_id: String,
    /// Grantee.
    pub grant_domain: String,
    /// Free-form description.
    pub description: BTreeMap<String, String>,
    /// Unix seconds, 0 = never expires.
    pub expiration_time: i64,
    /// 0 = unlimited.
    pub use_count: i64,
    /// Other limit fields (flow_id, components, initiator, input_config, grant_mode).
    pub limit_extra: Value,
}

impl GrantPayload {
    /// The bytes that are signed: the tag, then the payload as JSON with every object's keys
    /// sorted and no whitespace. Sorting is done here, not left to `serde_json`'s map type,
    /// because a build with serde_json's `preserve_order` feature would otherwise sign a
    /// different byte string for the same grant.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = SIGNATURE_TAG.to_vec();
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        write_canonical(&value, &mut out);
        out
    }

    /// The payload of a stored grant.
    pub fn from_row(g: &GrantRow) -> Self {
        Self {
            domaindatagrant_id: g.domaindatagrant_id.clone(),
            domain_id: g.domain_id.clone(),
            domaindata_id: g.domaindata_id.clone(),
            grant_domain: g.grant_domain.clone(),
            description: serde_json::from_str(&g.description).unwrap_or_default(),
            expiration_time: g.expiration_time,
            use_count: g.use_count,
            limit_extra: serde_json::from_str(&g.limit_extra).unwrap_or(Value::Null),
        }
    }
}

/// Writes `v` as JSON with object keys in byte order.
pub(crate) fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

/// A grant as delivered between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedGrant {
    /// What is granted.
    pub grant: GrantPayload,
    /// Grantor's signature over [`GrantPayload::canonical`], base64url.
    pub signature: String,
}

/// Signs and stores a grant made by this node, then tries to deliver it. Returns the stored row
/// (with `delivered` telling whether the grantee has it already).
pub async fn save_and_deliver(state: &NodeState, payload: GrantPayload) -> Result<GrantRow> {
    let signature = state.identity.sign(&payload.canonical())?;
    let row = GrantRow {
        domaindatagrant_id: payload.domaindatagrant_id.clone(),
        domain_id: payload.domain_id.clone(),
        domaindata_id: payload.domaindata_id.clone(),
        grant_domain: payload.grant_domain.clone(),
        description: serde_json::to_string(&payload.description).unwrap_or_else(|_| "{}".into()),
        expiration_time: payload.expiration_time,
        use_count: payload.use_count,
        used_count: 0,
        limit_extra: payload.limit_extra.to_string(),
        signature,
        signer_cert: cert_to_pem(state.identity.leaf()),
        delivered: 0,
        created_at: 0,
        updated_at: 0,
    };
    state.store.upsert_grant(&row).await?;
    match deliver(state, &row).await {
        Ok(()) => {
            state
                .store
                .mark_grant_delivered(&row.domaindatagrant_id)
                .await?;
            tracing::info!(grant = %row.domaindatagrant_id, to = %row.grant_domain, "grant delivered");
        }
        Err(step) => tracing::warn!(
            grant = %row.domaindatagrant_id, to = %row.grant_domain,
            "grant not delivered yet, will retry: {step}"
        ),
    }
    Ok(state
        .store
        .grant(&row.domaindatagrant_id)
        .await?
        .unwrap_or(row))
}

/// Sends a stored grant to its grantee.
pub async fn deliver(state: &NodeState, row: &GrantRow) -> std::result::Result<(), Step> {
    let body = serde_json::to_value(SignedGrant {
        grant: GrantPayload::from_row(row),
        signature: row.signature.clone(),
    })
    .map_err(|e| Step::Peer(e.to_string()))?;
    let (status, answer) =
        crate::gateway::client::call(state, &row.grant_domain, "/venn/v1/grant", &body).await?;
    if status == 200 {
        Ok(())
    } else {
        Err(Step::Peer(format!("HTTP {status}: {answer}")))
    }
}

/// Tells the grantee that a grant was deleted (best effort; logged when it fails).
pub async fn deliver_revocation(state: &NodeState, row: &GrantRow) {
    let body = json!({ "domaindatagrant_id": row.domaindatagrant_id });
    match crate::gateway::client::call(state, &row.grant_domain, "/venn/v1/grant/revoke", &body)
        .await
    {
        Ok((200, _)) => {}
        Ok((status, _)) => {
            tracing::warn!(grant = %row.domaindatagrant_id, "revocation answered HTTP {status}")
        }
        Err(step) => {
            tracing::warn!(grant = %row.domaindatagrant_id, "revocation not delivered: {step}")
        }
    }
}

/// Re-sends undelivered grants to `partner` (called after a successful heartbeat).
pub async fn redeliver(state: &NodeState, partner: &str) {
    let Ok(rows) = state.store.undelivered_grants(state.domain_id()).await else {
        return;
    };
    for row in rows.iter().filter(|r| r.grant_domain == partner) {
        if deliver(state, row).await.is_ok() {
            let _ = state
                .store
                .mark_grant_delivered(&row.domaindatagrant_id)
                .await;
            tracing::info!(grant = %row.domaindatagrant_id, to = partner, "grant delivered");
        }
    }
}

/// Stores a grant received from `caller` (authenticated by `leaf`, its TLS certificate).
pub async fn receive(
    state: &NodeState,
    caller: &str,
    leaf: &[u8],
    signed: SignedGrant,
) -> Result<()> {
    let g = &signed.grant;
    if g.domain_id != caller {
        return Err(NodeError::Invalid(format!(
            "grant.domain_id: {} is not the calling domain {caller}",
            g.domain_id
        )));
    }
    if g.grant_domain != state.domain_id() {
        return Err(NodeError::Invalid(format!(
            "grant.grant_domain: {} is not this node",
            g.grant_domain
        )));
    }
    verify_signature(leaf, &g.canonical(), &signed.signature)?;
    if let Some(existing) = state.store.grant(&g.domaindatagrant_id).await?
        && existing.domain_id != caller
    {
        return Err(NodeError::Conflict(
            "grant: id taken by another grantor".into(),
        ));
    }
    let row = GrantRow {
        domaindatagrant_id: g.domaindatagrant_id.clone(),
        domain_id: g.domain_id.clone(),
        domaindata_id: g.domaindata_id.clone(),
        grant_domain: g.grant_domain.clone(),
        description: serde_json::to_string(&g.description).unwrap_or_else(|_| "{}".into()),
        expiration_time: g.expiration_time,
        use_count: g.use_count,
        used_count: 0,
        limit_extra: g.limit_extra.to_string(),
        signature: signed.signature.clone(),
        signer_cert: cert_to_pem(leaf),
        delivered: 1,
        created_at: now_unix(),
        updated_at: now_unix(),
    };
    state.store.upsert_grant(&row).await?;
    tracing::info!(grant = %row.domaindatagrant_id, from = caller, data = %row.domaindata_id, "grant received");
    Ok(())
}

/// Deletes a grant received from `caller`.
pub async fn receive_revocation(state: &NodeState, caller: &str, id: &str) -> Result<()> {
    match state.store.grant(id).await? {
        Some(g) if g.domain_id == caller => state.store.delete_grant(id).await,
        Some(_) => Err(NodeError::Unauthorized),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_ignores_key_order() {
        let mut a = GrantPayload {
            domaindatagrant_id: "g".into(),
            domain_id: "alice".into(),
            domaindata_id: "t".into(),
            grant_domain: "bob".into(),
            description: BTreeMap::from([("k".into(), "v".into())]),
            expiration_time: 0,
            use_count: 3,
            limit_extra: serde_json::from_str(r#"{"z":1,"a":[{"y":2,"b":3}]}"#).unwrap(),
        };
        let first = a.canonical();
        a.limit_extra = serde_json::from_str(r#"{"a":[{"b":3,"y":2}],"z":1}"#).unwrap();
        assert_eq!(first, a.canonical());
        let text = String::from_utf8(first).unwrap();
        assert!(
            text.ends_with(r#""limit_extra":{"a":[{"b":3,"y":2}],"z":1},"use_count":3}"#),
            "{text}"
        );
        a.use_count = 4;
        assert_ne!(text.as_bytes(), a.canonical());
    }
}

//! Store functions of the centralized network (schema 5): deploy tokens and lite nodes on a
//! master, and the route bookkeeping that master and lites share.
//!
//! Single use of a deploy token is enforced by [`Store::consume_deploy_token`]: one conditional
//! `UPDATE ... WHERE used_at = 0 AND expires_at > now`, so of two concurrent registrations with
//! the same token exactly one sees a changed row, on every backend.

use serde::Serialize;
use sqlx::FromRow;

use super::Store;
use crate::error::Result;
use crate::trust::now_unix;

/// An open (unused, unexpired) deploy token: its domain and the SHA-256 of its secret.
#[derive(Debug, Clone, FromRow)]
pub struct OpenDeployToken {
    /// The domain the token registers.
    pub domain_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
}

/// The lite node of a domain, as the master knows it.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct LiteNodeRow {
    /// Domain ID.
    pub domain_id: String,
    /// Hex SHA-256 of the registered key (subject public key); empty = not registered.
    pub key_sha256: String,
    /// The venn version the lite last reported.
    pub version: String,
    /// Unix seconds of the lite's last heartbeat (0 = never).
    pub last_heartbeat: i64,
    /// Unix seconds of the last registration (0 = never).
    pub registered_at: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Store {
    // === deploy tokens ===

    /// Stores a new deploy token for `domain_id` and revokes (deletes) every unused earlier one
    /// of that domain, so at most one token per domain is open.
    pub async fn issue_deploy_token(
        &self,
        id: &str,
        domain_id: &str,
        secret_sha256: &str,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.query("DELETE FROM deploy_tokens WHERE domain_id = ? AND used_at = 0")
            .bind(domain_id)
            .execute(&mut *tx)
            .await?;
        self.query(
            "INSERT INTO deploy_tokens (id, domain_id, secret_sha256, expires_at, used_at, created_at) \
             VALUES (?, ?, ?, ?, 0, ?)",
        )
        .bind(id)
        .bind(domain_id)
        .bind(secret_sha256)
        .bind(expires_at)
        .bind(now_unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An unused, unexpired deploy token by ID.
    pub async fn open_deploy_token(&self, id: &str) -> Result<Option<OpenDeployToken>> {
        Ok(self
            .query_as(
                "SELECT domain_id, secret_sha256 FROM deploy_tokens \
                 WHERE id = ? AND used_at = 0 AND expires_at > ?",
            )
            .bind(id)
            .bind(now_unix())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Marks a deploy token used; false if it was used (or expired) meanwhile.
    pub async fn consume_deploy_token(&self, id: &str) -> Result<bool> {
        let now = now_unix();
        let r = self
            .query(
                "UPDATE deploy_tokens SET used_at = ? WHERE id = ? AND used_at = 0 AND expires_at > ?",
            )
            .bind(now)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes every unused deploy token of a domain (domain reset, domain delete).
    pub async fn revoke_deploy_tokens(&self, domain_id: &str) -> Result<u64> {
        let r = self
            .query("DELETE FROM deploy_tokens WHERE domain_id = ? AND used_at = 0")
            .bind(domain_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // === lite nodes ===

    /// Creates the lite node row of a domain if missing (not registered).
    pub async fn ensure_lite_node(&self, domain_id: &str) -> Result<()> {
        let now = now_unix();
        self.query(
            "INSERT INTO lite_nodes (domain_id, key_sha256, version, last_heartbeat, registered_at, created_at, updated_at) \
             VALUES (?, '', '', 0, 0, ?, ?) ON CONFLICT (domain_id) DO NOTHING",
        )
        .bind(domain_id)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a registration: the key the lite's certificate was issued for.
    pub async fn set_lite_key(&self, domain_id: &str, key_sha256: &str) -> Result<()> {
        let now = now_unix();
        self.query(
            "INSERT INTO lite_nodes (domain_id, key_sha256, version, last_heartbeat, registered_at, created_at, updated_at) \
             VALUES (?, ?, '', 0, ?, ?, ?) \
             ON CONFLICT (domain_id) DO UPDATE SET key_sha256 = excluded.key_sha256, \
             registered_at = excluded.registered_at, updated_at = excluded.updated_at",
        )
        .bind(domain_id)
        .bind(key_sha256)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a heartbeat of a lite node (its reported version).
    pub async fn lite_heartbeat(&self, domain_id: &str, version: &str) -> Result<()> {
        let now = now_unix();
        self.query(
            "UPDATE lite_nodes SET version = ?, last_heartbeat = ?, updated_at = ? WHERE domain_id = ?",
        )
        .bind(version)
        .bind(now)
        .bind(now)
        .bind(domain_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One lite node.
    pub async fn lite_node(&self, domain_id: &str) -> Result<Option<LiteNodeRow>> {
        Ok(self
            .query_as("SELECT * FROM lite_nodes WHERE domain_id = ?")
            .bind(domain_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every lite node, by domain ID.
    pub async fn lite_nodes(&self) -> Result<Vec<LiteNodeRow>> {
        Ok(self
            .query_as("SELECT * FROM lite_nodes ORDER BY domain_id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Deletes a lite node row (domain delete).
    pub async fn delete_lite_node(&self, domain_id: &str) -> Result<()> {
        self.query("DELETE FROM lite_nodes WHERE domain_id = ?")
            .bind(domain_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // === routes (centralized) ===

    /// Deletes a route; false if there was none.
    pub async fn delete_route(&self, name: &str) -> Result<bool> {
        let r = self
            .query("DELETE FROM routes WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Every route where `domain_id` is the source or the destination.
    pub async fn routes_of(&self, domain_id: &str) -> Result<Vec<super::RouteRow>> {
        Ok(self
            .query_as("SELECT * FROM routes WHERE source = ? OR destination = ? ORDER BY name")
            .bind(domain_id)
            .bind(domain_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Records the status of route `name` as reported by its source `source`; a route whose
    /// source is another domain is left alone (a lite reports only its own routes). True when
    /// a row changed.
    pub async fn report_route_status(
        &self,
        name: &str,
        source: &str,
        ready: bool,
        reason: &str,
        message: &str,
        last_heartbeat: i64,
    ) -> Result<bool> {
        let r = self
            .query(
                "UPDATE routes SET ready = ?, reason = ?, message = ?, last_heartbeat = ?, updated_at = ? \
                 WHERE name = ? AND source = ?",
            )
            .bind(ready as i64)
            .bind(reason)
            .bind(message)
            .bind(last_heartbeat)
            .bind(now_unix())
            .bind(name)
            .bind(source)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

//! The node's database: typed tables behind one `Store` type.
//!
//! Design decisions:
//! - **sqlx with runtime queries** (`query`/`query_as` + `FromRow`), never the compile-time
//!   macros: those check against one backend and need a database at build time.
//! - **Portable SQL**: `?` placeholders (SQLite and MySQL; PostgreSQL will get its own query
//!   module with `$n`), portable column types, no SQLite-only features, one migrations directory
//!   per backend (`migrations/sqlite/`). A MySQL/PostgreSQL backend is a second implementation of
//!   the same methods; the API layer sees only `Store`.
//! - **Keyset pagination** on the primary key (`page_token` = last key of the previous page):
//!   stable under concurrent inserts and O(page) per call, unlike `OFFSET`.
//! - SQLite runs in WAL mode with a busy timeout, so CLI reads never block the node.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{FromRow, SqlitePool};

use crate::error::{NodeError, Result};
use crate::trust::now_unix;

/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: i64 = 1000;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: i64 = 100;

/// A page of results and the token of the next page (empty when this is the last one).
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `page_token` to get the next page; empty at the end.
    pub next_page_token: String,
}

/// A domain: this node (`role = self`) or a pinned partner.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DomainRow {
    /// Domain ID.
    pub domain_id: String,
    /// `self` or `partner`.
    pub role: String,
    /// CA certificate, PEM.
    pub ca_cert: String,
    /// Hex SHA-256 of the CA certificate.
    pub ca_sha256: String,
    /// Gateway endpoint (may be empty for a partner that only connects to us).
    pub endpoint: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A route between two domains.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct RouteRow {
    /// `<source>-<destination>`.
    pub name: String,
    /// Source domain.
    pub source: String,
    /// Destination domain.
    pub destination: String,
    /// Destination endpoint (outbound routes) or empty (inbound).
    pub host: String,
    /// `MTLS`.
    pub authentication: String,
    /// 1 when ready.
    pub ready: i64,
    /// Why not ready (or `Ready`).
    pub reason: String,
    /// Details of the last failure.
    pub message: String,
    /// Unix seconds of the last successful heartbeat.
    pub last_heartbeat: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A data source.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DataSourceRow {
    /// ID.
    pub datasource_id: String,
    /// Owner domain.
    pub domain_id: String,
    /// Display name.
    pub name: String,
    /// `localfs`.
    pub r#type: String,
    /// localfs root (absolute).
    pub path: String,
    /// Kuscia's `access_directly`.
    pub access_directly: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A DomainData.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct DomainDataRow {
    /// ID.
    pub domaindata_id: String,
    /// Owner domain.
    pub domain_id: String,
    /// Display name.
    pub name: String,
    /// `table`, `model`, ...
    pub r#type: String,
    /// Path inside the data source.
    pub relative_uri: String,
    /// Data source.
    pub datasource_id: String,
    /// JSON object.
    pub attributes: String,
    /// JSON array.
    pub columns: String,
    /// Vendor.
    pub vendor: String,
    /// Author.
    pub author: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A DomainDataGrant.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct GrantRow {
    /// ID.
    pub domaindatagrant_id: String,
    /// Grantor (owner of the data).
    pub domain_id: String,
    /// Granted data.
    pub domaindata_id: String,
    /// Grantee.
    pub grant_domain: String,
    /// JSON object.
    pub description: String,
    /// Unix seconds, 0 = none.
    pub expiration_time: i64,
    /// 0 = unlimited.
    pub use_count: i64,
    /// Uses so far.
    pub used_count: i64,
    /// JSON object of the other limit fields.
    pub limit_extra: String,
    /// Grantor's signature (base64url).
    pub signature: String,
    /// Grantor's gateway certificate, PEM.
    pub signer_cert: String,
    /// 1 once the grantee's node acknowledged it.
    pub delivered: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The store.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: SqlitePool,
}

fn page_size(n: Option<i64>) -> i64 {
    match n {
        Some(n) if n > 0 => n.min(MAX_PAGE_SIZE),
        _ => DEFAULT_PAGE_SIZE,
    }
}

fn paged<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(&key).unwrap_or_default()
    } else {
        String::new()
    };
    Page {
        items,
        next_page_token: next,
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    // === domains ===

    /// Inserts or updates a domain.
    pub async fn upsert_domain(&self, d: &DomainRow) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO domains (domain_id, role, ca_cert, ca_sha256, endpoint, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (domain_id) DO UPDATE SET role = excluded.role, ca_cert = excluded.ca_cert, \
             ca_sha256 = excluded.ca_sha256, endpoint = excluded.endpoint, updated_at = excluded.updated_at",
        )
        .bind(&d.domain_id)
        .bind(&d.role)
        .bind(&d.ca_cert)
        .bind(&d.ca_sha256)
        .bind(&d.endpoint)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One domain.
    pub async fn domain(&self, id: &str) -> Result<Option<DomainRow>> {
        Ok(sqlx::query_as("SELECT * FROM domains WHERE domain_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of domains.
    pub async fn list_domains(&self, after: &str, size: Option<i64>) -> Result<Page<DomainRow>> {
        let limit = page_size(size);
        let rows =
            sqlx::query_as("SELECT * FROM domains WHERE domain_id > ? ORDER BY domain_id LIMIT ?")
                .bind(after)
                .bind(limit + 1)
                .fetch_all(&self.pool)
                .await?;
        Ok(paged(rows, limit, |r: &DomainRow| r.domain_id.clone()))
    }

    /// All partners.
    pub async fn partners(&self) -> Result<Vec<DomainRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM domains WHERE role = 'partner' ORDER BY domain_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    // === routes ===

    /// Creates a route if missing (keeps the status of an existing one), updating its host.
    pub async fn ensure_route(&self, source: &str, destination: &str, host: &str) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO routes (name, source, destination, host, authentication, ready, reason, message, last_heartbeat, updated_at) \
             VALUES (?, ?, ?, ?, 'MTLS', 0, 'Pending', 'no heartbeat yet', 0, ?) \
             ON CONFLICT (name) DO UPDATE SET host = excluded.host, updated_at = excluded.updated_at",
        )
        .bind(format!("{source}-{destination}"))
        .bind(source)
        .bind(destination)
        .bind(host)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the outcome of a heartbeat on a route.
    pub async fn set_route_status(
        &self,
        name: &str,
        ready: bool,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "UPDATE routes SET ready = ?, reason = ?, message = ?, updated_at = ?, \
             last_heartbeat = CASE WHEN ? THEN ? ELSE last_heartbeat END WHERE name = ?",
        )
        .bind(ready as i64)
        .bind(reason)
        .bind(message)
        .bind(now)
        .bind(ready)
        .bind(now)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One route.
    pub async fn route(&self, name: &str) -> Result<Option<RouteRow>> {
        Ok(sqlx::query_as("SELECT * FROM routes WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of routes.
    pub async fn list_routes(&self, after: &str, size: Option<i64>) -> Result<Page<RouteRow>> {
        let limit = page_size(size);
        let rows = sqlx::query_as("SELECT * FROM routes WHERE name > ? ORDER BY name LIMIT ?")
            .bind(after)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(paged(rows, limit, |r: &RouteRow| r.name.clone()))
    }

    /// Every route (for the heartbeat loop).
    pub async fn all_routes(&self) -> Result<Vec<RouteRow>> {
        Ok(sqlx::query_as("SELECT * FROM routes ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    // === invitations ===

    /// Stores a new invitation.
    pub async fn insert_invitation(
        &self,
        id: &str,
        peer: &str,
        secret_sha256: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO invitations (id, peer, secret_sha256, expires_at, used_at, created_at) VALUES (?, ?, ?, ?, 0, ?)",
        )
        .bind(id)
        .bind(peer)
        .bind(secret_sha256)
        .bind(expires_at)
        .bind(now_unix())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An unused, unexpired invitation: `(peer, secret_sha256)`.
    pub async fn open_invitation(&self, id: &str) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT peer, secret_sha256 FROM invitations WHERE id = ? AND used_at = 0 AND expires_at > ?",
        )
        .bind(id)
        .bind(now_unix())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks an invitation used; false if it was used concurrently (single use is enforced here).
    pub async fn consume_invitation(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE invitations SET used_at = ? WHERE id = ? AND used_at = 0")
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // === data sources ===

    /// Inserts a data source; `Conflict` if the ID exists.
    pub async fn insert_datasource(&self, d: &DataSourceRow) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO datasources (datasource_id, domain_id, name, type, path, access_directly, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.datasource_id)
        .bind(&d.domain_id)
        .bind(&d.name)
        .bind(&d.r#type)
        .bind(&d.path)
        .bind(d.access_directly)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_to_conflict(e, "datasource_id", &d.datasource_id))?;
        Ok(())
    }

    /// Updates a data source's mutable fields.
    pub async fn update_datasource(&self, d: &DataSourceRow) -> Result<()> {
        let r = sqlx::query(
            "UPDATE datasources SET name = ?, type = ?, path = ?, access_directly = ?, updated_at = ? WHERE datasource_id = ?",
        )
        .bind(&d.name)
        .bind(&d.r#type)
        .bind(&d.path)
        .bind(d.access_directly)
        .bind(now_unix())
        .bind(&d.datasource_id)
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "datasource", &d.datasource_id)
    }

    /// One data source.
    pub async fn datasource(&self, id: &str) -> Result<Option<DataSourceRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM datasources WHERE datasource_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A page of data sources.
    pub async fn list_datasources(
        &self,
        after: &str,
        size: Option<i64>,
    ) -> Result<Page<DataSourceRow>> {
        let limit = page_size(size);
        let rows = sqlx::query_as(
            "SELECT * FROM datasources WHERE datasource_id > ? ORDER BY datasource_id LIMIT ?",
        )
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(paged(rows, limit, |r: &DataSourceRow| {
            r.datasource_id.clone()
        }))
    }

    /// Deletes a data source; refused while DomainData use it.
    pub async fn delete_datasource(&self, id: &str) -> Result<()> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM domaindata WHERE datasource_id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        if n > 0 {
            return Err(NodeError::Conflict(format!(
                "datasource_id: {id} is used by {n} domaindata; delete them first"
            )));
        }
        let r = sqlx::query("DELETE FROM datasources WHERE datasource_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "datasource", id)
    }

    // === domain data ===

    /// Inserts a DomainData; `Conflict` if the ID exists.
    pub async fn insert_domaindata(&self, d: &DomainDataRow) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO domaindata (domaindata_id, domain_id, name, type, relative_uri, datasource_id, attributes, columns, vendor, author, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.domaindata_id)
        .bind(&d.domain_id)
        .bind(&d.name)
        .bind(&d.r#type)
        .bind(&d.relative_uri)
        .bind(&d.datasource_id)
        .bind(&d.attributes)
        .bind(&d.columns)
        .bind(&d.vendor)
        .bind(&d.author)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_to_conflict(e, "domaindata_id", &d.domaindata_id))?;
        Ok(())
    }

    /// Replaces a DomainData's fields.
    pub async fn update_domaindata(&self, d: &DomainDataRow) -> Result<()> {
        let r = sqlx::query(
            "UPDATE domaindata SET name = ?, type = ?, relative_uri = ?, datasource_id = ?, attributes = ?, columns = ?, \
             vendor = ?, author = ?, updated_at = ? WHERE domaindata_id = ?",
        )
        .bind(&d.name)
        .bind(&d.r#type)
        .bind(&d.relative_uri)
        .bind(&d.datasource_id)
        .bind(&d.attributes)
        .bind(&d.columns)
        .bind(&d.vendor)
        .bind(&d.author)
        .bind(now_unix())
        .bind(&d.domaindata_id)
        .execute(&self.pool)
        .await?;
        not_found_if_zero(r.rows_affected(), "domaindata", &d.domaindata_id)
    }

    /// One DomainData.
    pub async fn domaindata(&self, id: &str) -> Result<Option<DomainDataRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM domaindata WHERE domaindata_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A page of DomainData, optionally of one data source.
    pub async fn list_domaindata(
        &self,
        datasource: &str,
        after: &str,
        size: Option<i64>,
    ) -> Result<Page<DomainDataRow>> {
        let limit = page_size(size);
        let rows = sqlx::query_as(
            "SELECT * FROM domaindata WHERE domaindata_id > ? AND (? = '' OR datasource_id = ?) \
             ORDER BY domaindata_id LIMIT ?",
        )
        .bind(after)
        .bind(datasource)
        .bind(datasource)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(paged(rows, limit, |r: &DomainDataRow| {
            r.domaindata_id.clone()
        }))
    }

    /// Deletes a DomainData (not the file).
    pub async fn delete_domaindata(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM domaindata WHERE domaindata_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "domaindata", id)
    }

    // === grants ===

    /// Inserts or replaces a grant (replacing is how a grantor's update reaches the grantee).
    pub async fn upsert_grant(&self, g: &GrantRow) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO domaindatagrants (domaindatagrant_id, domain_id, domaindata_id, grant_domain, description, \
             expiration_time, use_count, used_count, limit_extra, signature, signer_cert, delivered, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (domaindatagrant_id) DO UPDATE SET domaindata_id = excluded.domaindata_id, \
             grant_domain = excluded.grant_domain, description = excluded.description, \
             expiration_time = excluded.expiration_time, use_count = excluded.use_count, \
             limit_extra = excluded.limit_extra, signature = excluded.signature, signer_cert = excluded.signer_cert, \
             delivered = excluded.delivered, updated_at = excluded.updated_at",
        )
        .bind(&g.domaindatagrant_id)
        .bind(&g.domain_id)
        .bind(&g.domaindata_id)
        .bind(&g.grant_domain)
        .bind(&g.description)
        .bind(g.expiration_time)
        .bind(g.use_count)
        .bind(g.used_count)
        .bind(&g.limit_extra)
        .bind(&g.signature)
        .bind(&g.signer_cert)
        .bind(g.delivered)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a grant delivered.
    pub async fn mark_grant_delivered(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE domaindatagrants SET delivered = 1 WHERE domaindatagrant_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One grant.
    pub async fn grant(&self, id: &str) -> Result<Option<GrantRow>> {
        Ok(
            sqlx::query_as("SELECT * FROM domaindatagrants WHERE domaindatagrant_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A page of grants, filtered by grantor and/or grantee (empty = any).
    pub async fn list_grants(
        &self,
        grantor: &str,
        grantee: &str,
        after: &str,
        size: Option<i64>,
    ) -> Result<Page<GrantRow>> {
        let limit = page_size(size);
        let rows = sqlx::query_as(
            "SELECT * FROM domaindatagrants WHERE domaindatagrant_id > ? AND (? = '' OR domain_id = ?) \
             AND (? = '' OR grant_domain = ?) ORDER BY domaindatagrant_id LIMIT ?",
        )
        .bind(after)
        .bind(grantor)
        .bind(grantor)
        .bind(grantee)
        .bind(grantee)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(paged(rows, limit, |r: &GrantRow| {
            r.domaindatagrant_id.clone()
        }))
    }

    /// Grants made by `grantor` not yet acknowledged by their grantee.
    pub async fn undelivered_grants(&self, grantor: &str) -> Result<Vec<GrantRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM domaindatagrants WHERE domain_id = ? AND delivered = 0 ORDER BY domaindatagrant_id",
        )
        .bind(grantor)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a grant.
    pub async fn delete_grant(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM domaindatagrants WHERE domaindatagrant_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "domaindatagrant", id)
    }
}

fn not_found_if_zero(n: u64, what: &str, id: &str) -> Result<()> {
    if n == 0 {
        Err(NodeError::NotFound(format!("{what} {id}")))
    } else {
        Ok(())
    }
}

fn unique_to_conflict(e: sqlx::Error, field: &str, id: &str) -> NodeError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            NodeError::Conflict(format!("{field}: {id} already exists"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            NodeError::Invalid("datasource_id: no such data source".into())
        }
        _ => NodeError::Store(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paginates_domains() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", d.path().join("t.db").display());
        let s = Store::open(&url).await.unwrap();
        for i in 0..5 {
            s.upsert_domain(&DomainRow {
                domain_id: format!("d{i}"),
                role: "partner".into(),
                ca_cert: String::new(),
                ca_sha256: String::new(),
                endpoint: String::new(),
                created_at: 0,
                updated_at: 0,
            })
            .await
            .unwrap();
        }
        let p1 = s.list_domains("", Some(2)).await.unwrap();
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.next_page_token, "d1");
        let p3 = s.list_domains("d3", Some(2)).await.unwrap();
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.next_page_token, "");
    }
}

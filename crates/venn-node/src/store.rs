//! The node's database: typed tables behind one `Store` type, on SQLite (default), MySQL/MariaDB
//! or PostgreSQL.
//!
//! Design decisions:
//! - **One `Store` over sqlx's `Any` driver**, not three implementations of a trait and not an
//!   enum of pools with a `match` in every method: each query is written once, as a string in
//!   SQLite's dialect, and [`dialect`] rewrites it for the backend in use (`?` → `$n` for
//!   PostgreSQL; `ON CONFLICT … DO UPDATE` → `ON DUPLICATE KEY UPDATE` for MySQL). Both rewrites
//!   are small and unit-tested; the conformance suite (`store/conformance.rs`) runs every store
//!   method against all three servers, so a query that only one dialect accepts fails a test.
//!   `Any` limits column types to integers, floats, text and blobs, which is all the schema uses:
//!   times are Unix seconds (BIGINT), booleans are 0/1 (BIGINT), JSON is text.
//! - **sqlx with runtime queries** (`query`/`query_as` + `FromRow`), never the compile-time
//!   macros: those check against one backend and need a database at build time.
//! - **One migrations directory per backend** (`migrations/{sqlite,mysql,postgres}/`), the same
//!   versions with the same tables; column types are chosen per backend (MySQL: `utf8mb4_bin`
//!   and `MEDIUMTEXT`; PostgreSQL: `COLLATE "C"`), so that keys compare and sort byte-wise as in
//!   SQLite and pagination gives the same pages everywhere.
//! - **One node per database**: the first start claims the database for the node's domain and
//!   CA fingerprint (`node_identity`); another node pointed at it refuses to start
//!   ([`StoreError::OtherNode`]) instead of silently sharing tables.
//! - **Keyset pagination** on the primary key (`page_token` = last key of the previous page):
//!   stable under concurrent inserts and O(page) per call, unlike `OFFSET`.
//! - SQLite runs in WAL mode with a busy timeout, so CLI reads never block the node.
//! - Passwords never leave [`StoreOptions`]: messages carry [`redact`]ed URLs only.

mod central;
#[cfg(test)]
mod conformance;
mod connect;
mod copy;
pub mod dialect;

use serde::Serialize;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::{Query, QueryAs};
use sqlx::{Any, AnyPool, AssertSqlSafe, FromRow};

pub use central::{LiteNodeRow, OpenDeployToken};
pub use connect::{
    DEFAULT_MAX_CONNECTIONS_SERVER, DEFAULT_MAX_CONNECTIONS_SQLITE, StoreError, StoreOptions,
    redact,
};
pub use copy::{CopyReport, copy};
pub use dialect::Backend;

use crate::error::{NodeError, Result};
use crate::trust::now_unix;

/// Largest page a list call returns.
pub const MAX_PAGE_SIZE: i64 = 1000;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: i64 = 100;

/// The migration that creates `node_identity`.
const OWNER_VERSION: i64 = 3;

/// Every table of the schema, parents before children (the order `venn store copy` fills them).
pub const TABLES: &[&str] = &[
    "node_identity",
    "domains",
    "routes",
    "invitations",
    "datasources",
    "domaindata",
    "domaindatagrants",
    "jobs",
    "job_approvals",
    "task_parties",
    "job_messages",
    "deploy_tokens",
    "lite_nodes",
];

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
    /// The domain whose gateway carries this route (transit), or empty for a direct route.
    pub transit: String,
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
    pub(crate) pool: AnyPool,
    backend: Backend,
    opts: StoreOptions,
}

/// Who claimed a database (the `node_identity` row).
#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct NodeClaim {
    /// The domain of the node that keeps its state here.
    pub domain_id: String,
    /// Hex SHA-256 of that node's CA certificate.
    pub ca_sha256: String,
    /// Unix seconds.
    pub claimed_at: i64,
}

/// What `venn store check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// `sqlite`, `mysql` or `postgres`.
    pub backend: String,
    /// The URL, redacted.
    pub url: String,
    /// The server's version string.
    pub server_version: String,
    /// Schema versions applied.
    pub applied: Vec<i64>,
    /// Schema versions this venn would apply (`venn store migrate`, or the next start).
    pub pending: Vec<i64>,
    /// Versions applied that this venn does not know (the database is from a newer venn).
    pub unknown: Vec<i64>,
    /// `None` when the user may create tables; otherwise the server's refusal.
    pub ddl_refused: Option<String>,
    /// The node that claimed this database, if any.
    pub owner: Option<NodeClaim>,
    /// Pool size the node would use.
    pub pool_size: u32,
    /// The server's connection limit (MySQL/PostgreSQL `max_connections`).
    pub server_max_connections: Option<i64>,
}

impl CheckReport {
    /// The problems that stop a node from starting or upgrading, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.unknown.is_empty() {
            v.push(format!(
                "schema versions {:?} were applied by a newer venn; run that version",
                self.unknown
            ));
        }
        if let Some(r) = &self.ddl_refused
            && !self.pending.is_empty()
        {
            v.push(format!(
                "migrations {:?} are pending but the user may not create tables: {r}",
                self.pending
            ));
        }
        if let Some(max) = self.server_max_connections
            && i64::from(self.pool_size) >= max
        {
            v.push(format!(
                "datastore_max_connections ({}) is not below the server's max_connections                  ({max}): lower it",
                self.pool_size
            ));
        }
        v
    }
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
    /// Opens (creating if needed) the database at `url` with default pool settings and brings
    /// its schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(&StoreOptions::new(url)?).await
    }

    /// Connects and brings the schema up to date (what a node does at start).
    pub async fn open_with(opts: &StoreOptions) -> Result<Self> {
        let store = Self::connect(opts).await?;
        if let Err(e) = store.migrate().await {
            // Close now rather than in the background: the caller may drop the database next.
            store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Connects without touching the schema (`venn store check`).
    pub async fn connect(opts: &StoreOptions) -> Result<Self> {
        let pool = connect::connect(opts).await?;
        Ok(Self {
            pool,
            backend: opts.backend(),
            opts: opts.clone(),
        })
    }

    /// Applies pending migrations; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        Ok(connect::migrate(&self.pool, &self.opts).await?)
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, redacted.
    pub fn url(&self) -> String {
        self.opts.redacted()
    }

    /// Closes the pool (waits for connections in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A query written in SQLite's dialect, rewritten for this backend.
    pub(crate) fn query<'q>(&self, sql: &'static str) -> Query<'q, Any, AnyArguments> {
        sqlx::query(AssertSqlSafe(self.backend.rewrite(sql)))
    }

    /// A `query_as` written in SQLite's dialect, rewritten for this backend.
    pub(crate) fn query_as<'q, O>(&self, sql: &'static str) -> QueryAs<'q, Any, O, AnyArguments>
    where
        O: for<'r> FromRow<'r, AnyRow>,
    {
        sqlx::query_as(AssertSqlSafe(self.backend.rewrite(sql)))
    }

    fn query_error(&self, source: sqlx::Error) -> NodeError {
        StoreError::Query {
            url: self.url(),
            source,
        }
        .into()
    }

    // === the node's claim ===

    /// Claims this database for a node, or checks that it already belongs to it: the first
    /// start writes the node's domain and CA fingerprint; a different node gets
    /// [`StoreError::OtherNode`].
    pub async fn claim(&self, domain_id: &str, ca_sha256: &str) -> Result<()> {
        self.query(
            "INSERT INTO node_identity (id, domain_id, ca_sha256, claimed_at) VALUES (1, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(domain_id)
        .bind(ca_sha256)
        .bind(now_unix())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_error(e))?;
        let owner = self
            .owner()
            .await?
            .ok_or_else(|| self.query_error(sqlx::Error::RowNotFound))?;
        if owner.domain_id == domain_id && owner.ca_sha256 == ca_sha256 {
            Ok(())
        } else {
            Err(StoreError::OtherNode {
                url: self.url(),
                owner_domain: owner.domain_id,
                owner_ca: connect::short(&owner.ca_sha256),
                domain: domain_id.to_owned(),
                ca: connect::short(ca_sha256),
            }
            .into())
        }
    }

    /// The node that claimed this database.
    pub async fn owner(&self) -> Result<Option<NodeClaim>> {
        self.query_as("SELECT domain_id, ca_sha256, claimed_at FROM node_identity WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_error(e))
    }

    /// Checks the database without changing it (apart from a scratch table created and
    /// dropped to test DDL rights).
    pub async fn check(&self) -> Result<CheckReport> {
        let version_sql = match self.backend {
            Backend::Sqlite => "SELECT sqlite_version()",
            _ => "SELECT version()",
        };
        let (server_version,): (String,) = sqlx::query_as(version_sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.query_error(e))?;
        let applied = connect::applied_versions(&self.pool, &self.opts).await?;
        let known: Vec<i64> = connect::migrator(self.backend)
            .iter()
            .map(|m| m.version)
            .collect();
        let pending = known
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect();
        let unknown = applied
            .iter()
            .copied()
            .filter(|v| !known.contains(v))
            .collect();
        let ddl_refused = connect::probe_ddl(&self.pool).await.err();
        let owner = if applied.contains(&OWNER_VERSION) {
            self.owner().await?
        } else {
            None
        };
        let server_max_connections = match self.backend {
            Backend::Sqlite => None,
            Backend::MySql => {
                let (n,): (i64,) = sqlx::query_as("SELECT CAST(@@max_connections AS SIGNED)")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.query_error(e))?;
                Some(n)
            }
            Backend::Postgres => {
                let (n,): (String,) = sqlx::query_as("SHOW max_connections")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| self.query_error(e))?;
                n.trim().parse().ok()
            }
        };
        Ok(CheckReport {
            backend: self.backend.name().into(),
            url: self.url(),
            server_version,
            applied,
            pending,
            unknown,
            ddl_refused,
            owner,
            pool_size: self.opts.pool_size(),
            server_max_connections,
        })
    }

    // === domains ===

    /// Inserts or updates a domain.
    pub async fn upsert_domain(&self, d: &DomainRow) -> Result<()> {
        let now = now_unix();
        self.query(
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
        Ok(self
            .query_as("SELECT * FROM domains WHERE domain_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of domains.
    pub async fn list_domains(&self, after: &str, size: Option<i64>) -> Result<Page<DomainRow>> {
        let limit = page_size(size);
        let rows = self
            .query_as("SELECT * FROM domains WHERE domain_id > ? ORDER BY domain_id LIMIT ?")
            .bind(after)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(paged(rows, limit, |r: &DomainRow| r.domain_id.clone()))
    }

    /// All partners.
    pub async fn partners(&self) -> Result<Vec<DomainRow>> {
        Ok(self
            .query_as("SELECT * FROM domains WHERE role = 'partner' ORDER BY domain_id")
            .fetch_all(&self.pool)
            .await?)
    }

    // === routes ===

    /// Sets the transit domain of a route ('' = direct). False when the route does not exist.
    pub async fn set_route_transit(&self, name: &str, transit: &str) -> Result<bool> {
        let done = self
            .query("UPDATE routes SET transit = ?, updated_at = ? WHERE name = ?")
            .bind(transit)
            .bind(now_unix())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates a route if missing (keeps the status of an existing one), updating its host.
    pub async fn ensure_route(&self, source: &str, destination: &str, host: &str) -> Result<()> {
        let now = now_unix();
        self.query(
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
        self.query(
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
        Ok(self
            .query_as("SELECT * FROM routes WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of routes.
    pub async fn list_routes(&self, after: &str, size: Option<i64>) -> Result<Page<RouteRow>> {
        let limit = page_size(size);
        let rows = self
            .query_as("SELECT * FROM routes WHERE name > ? ORDER BY name LIMIT ?")
            .bind(after)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(paged(rows, limit, |r: &RouteRow| r.name.clone()))
    }

    /// Every route (for the heartbeat loop).
    pub async fn all_routes(&self) -> Result<Vec<RouteRow>> {
        Ok(self
            .query_as("SELECT * FROM routes ORDER BY name")
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
        self.query(
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
        Ok(self.query_as(
            "SELECT peer, secret_sha256 FROM invitations WHERE id = ? AND used_at = 0 AND expires_at > ?",
        )
        .bind(id)
        .bind(now_unix())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks an invitation used; false if it was used concurrently (single use is enforced here).
    pub async fn consume_invitation(&self, id: &str) -> Result<bool> {
        let r = self
            .query("UPDATE invitations SET used_at = ? WHERE id = ? AND used_at = 0")
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
        self.query(
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
        let r = self.query(
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
        Ok(self
            .query_as("SELECT * FROM datasources WHERE datasource_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of data sources.
    pub async fn list_datasources(
        &self,
        after: &str,
        size: Option<i64>,
    ) -> Result<Page<DataSourceRow>> {
        let limit = page_size(size);
        let rows = self
            .query_as(
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
        let (n,): (i64,) = self
            .query_as("SELECT COUNT(*) FROM domaindata WHERE datasource_id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        if n > 0 {
            return Err(NodeError::Conflict(format!(
                "datasource_id: {id} is used by {n} domaindata; delete them first"
            )));
        }
        let r = self
            .query("DELETE FROM datasources WHERE datasource_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "datasource", id)
    }

    // === domain data ===

    /// Inserts a DomainData; `Conflict` if the ID exists.
    pub async fn insert_domaindata(&self, d: &DomainDataRow) -> Result<()> {
        let now = now_unix();
        self.query(
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
        let r = self.query(
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
        Ok(self
            .query_as("SELECT * FROM domaindata WHERE domaindata_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A page of DomainData, optionally of one data source.
    pub async fn list_domaindata(
        &self,
        datasource: &str,
        after: &str,
        size: Option<i64>,
    ) -> Result<Page<DomainDataRow>> {
        let limit = page_size(size);
        let rows = self.query_as(
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
        let r = self
            .query("DELETE FROM domaindata WHERE domaindata_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        not_found_if_zero(r.rows_affected(), "domaindata", id)
    }

    // === grants ===

    /// Inserts or replaces a grant (replacing is how a grantor's update reaches the grantee).
    pub async fn upsert_grant(&self, g: &GrantRow) -> Result<()> {
        let now = now_unix();
        self.query(
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
        self.query("UPDATE domaindatagrants SET delivered = 1 WHERE domaindatagrant_id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One grant.
    pub async fn grant(&self, id: &str) -> Result<Option<GrantRow>> {
        Ok(self
            .query_as("SELECT * FROM domaindatagrants WHERE domaindatagrant_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
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
        let rows = self.query_as(
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
        Ok(self.query_as(
            "SELECT * FROM domaindatagrants WHERE domain_id = ? AND delivered = 0 ORDER BY domaindatagrant_id",
        )
        .bind(grantor)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a grant.
    pub async fn delete_grant(&self, id: &str) -> Result<()> {
        let r = self
            .query("DELETE FROM domaindatagrants WHERE domaindatagrant_id = ?")
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

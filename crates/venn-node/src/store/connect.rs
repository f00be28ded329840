//! Opening a store: the datastore URL, the connection pool, migrations, the node's claim on its
//! database, and `venn store check`.
//!
//! Every failure here is a [`StoreError`] that names the `datastore` setting and says what to do.
//! URLs only ever appear redacted ([`redact`]): a password in a URL or in
//! `datastore_password_file` never reaches a log line or an error message.
//!
//! # TLS to the database server
//!
//! sqlx speaks TLS through rustls with the *ring* provider (feature `tls-rustls-ring-webpki`),
//! like the rest of venn: no OpenSSL, no aws-lc, so the static musl build stays as it is. The TLS
//! settings are the URL's own parameters, passed to sqlx unchanged: `sslmode` / `sslrootcert`
//! (PostgreSQL), `ssl-mode` / `ssl-ca` (MySQL/MariaDB), plus client certificates
//! (`sslcert`/`sslkey`, `ssl-cert`/`ssl-key`). Without them sqlx encrypts when the server offers
//! TLS but checks no certificate (`prefer` / `PREFERRED`), as libpq and the MySQL client do.
//!
//! Trusted roots: the Mozilla set compiled into the binary (webpki-roots), not the system's
//! certificate store. venn ships as a static binary, often in a minimal container (scratch,
//! distroless) with no `/etc/ssl/certs`, where native roots would be an empty set and every
//! verifying mode would fail; the compiled-in set verifies publicly trusted database services
//! the same everywhere. A private CA (most managed services' own CAs, a company CA) is named in
//! the URL: `sslrootcert=/path/ca.pem` or `ssl-ca=/path/ca.pem`; sqlx adds it to those roots.
//!
//! A TLS failure is a [`StoreError::Tls`] that says which of these is wrong: the server offers
//! no TLS, its certificate is not from a trusted CA, or it is for another host name.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use super::dialect::Backend;

/// The SQLite migrations (also the reference schema).
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
/// The MySQL/MariaDB migrations.
static MYSQL: Migrator = sqlx::migrate!("./migrations/mysql");
/// The PostgreSQL migrations.
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// Pool size when `datastore_max_connections` is not set: SQLite has one writer anyway, and a
/// database server is often shared by many nodes (MySQL's default `max_connections` is 151).
pub const DEFAULT_MAX_CONNECTIONS_SQLITE: u32 = 4;
/// Pool size for MySQL and PostgreSQL when `datastore_max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS_SERVER: u32 = 10;

/// How to reach a store.
#[derive(Clone)]
pub struct StoreOptions {
    url: String,
    backend: Backend,
    /// Pool size; `None` for the backend's default.
    pub max_connections: Option<u32>,
    /// How long connecting may take before the store counts as unreachable.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("url", &redact(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl StoreOptions {
    /// Options for `url` (`sqlite://…`, `mysql://…`, `mariadb://…`, `postgres://…`).
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let backend = Backend::from_url(url).ok_or_else(|| StoreError::BadUrl {
            url: redact(url),
            reason: "the scheme must be sqlite:, mysql:, mariadb:, postgres: or postgresql:".into(),
        })?;
        let mut url = url.to_owned();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            // Create the file on first start, as the default datastore does.
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("mode=rwc");
        } else if backend != Backend::Sqlite {
            url::Url::parse(&url).map_err(|e| StoreError::BadUrl {
                url: redact(&url),
                reason: e.to_string(),
            })?;
        }
        Ok(Self {
            url,
            backend,
            max_connections: None,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// Sets the password (read from `datastore_password_file`), replacing any in the URL.
    pub fn with_password(mut self, password: &str) -> Result<Self, StoreError> {
        let mut u = url::Url::parse(&self.url).map_err(|e| StoreError::BadUrl {
            url: redact(&self.url),
            reason: e.to_string(),
        })?;
        if u.username().is_empty() {
            return Err(StoreError::BadUrl {
                url: redact(&self.url),
                reason: "a password file needs a user name in the URL (mysql://USER@host/db)"
                    .into(),
            });
        }
        let encoded: String = url::form_urlencoded::byte_serialize(password.as_bytes()).collect();
        u.set_password(Some(&encoded))
            .map_err(|()| StoreError::BadUrl {
                url: redact(&self.url),
                reason: "this URL cannot carry a password".into(),
            })?;
        self.url = u.to_string();
        Ok(self)
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with its password replaced by `***` (for messages).
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The pool size in effect.
    pub fn pool_size(&self) -> u32 {
        self.max_connections.unwrap_or(match self.backend {
            Backend::Sqlite => DEFAULT_MAX_CONNECTIONS_SQLITE,
            _ => DEFAULT_MAX_CONNECTIONS_SERVER,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// `url` with its password (if any) replaced by `***`; something that does not parse as a URL is
/// shown only by its scheme.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:(not shown: not a valid URL)"),
            None => "(not shown: not a valid URL)".into(),
        },
    }
}

/// A store failure that concerns the database itself rather than one request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `datastore` URL is unusable.
    #[error("datastore: {url}: {reason}")]
    BadUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The database server cannot be reached, or refused the login or the database.
    #[error("datastore: cannot connect to {url}: {source}; {hint}")]
    Unreachable {
        /// The URL, redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
        /// What to check.
        hint: &'static str,
    },
    /// TLS to the database server failed: the server offers none, or its certificate was not
    /// accepted.
    #[error("datastore: TLS to {url} failed: {detail}; {hint}")]
    Tls {
        /// The URL, redacted.
        url: String,
        /// What the driver or rustls reported.
        detail: String,
        /// What to change.
        hint: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database user may not create tables, so the schema cannot be created or upgraded.
    #[error(
        "datastore: the user in {url} may not create or change tables ({detail}); grant it \
         those rights on this database (MySQL: GRANT ALL ON venn.* TO 'venn'@'%'; PostgreSQL: make \
         it the owner of the database), or run `venn store migrate` once as a user that has them"
    )]
    NoDdlRights {
        /// The URL, redacted.
        url: String,
        /// The server's message.
        detail: String,
    },
    /// The schema could not be brought up to date.
    #[error("datastore: {url}: schema migration failed: {source}{hint}")]
    Migration {
        /// The URL, redacted.
        url: String,
        /// The migrator's error.
        source: sqlx::migrate::MigrateError,
        /// What to do.
        hint: &'static str,
    },
    /// Another node already keeps its state in this database.
    #[error(
        "datastore: {url} belongs to node {owner_domain} (CA {owner_ca}), not to this node \
         {domain} (CA {ca}); two nodes must never share a database: give each node its own \
         database (or, on PostgreSQL, its own schema), or point `datastore` back at this \
         node's own database"
    )]
    OtherNode {
        /// The URL, redacted.
        url: String,
        /// The domain that claimed the database.
        owner_domain: String,
        /// Its CA fingerprint (hex SHA-256, shortened).
        owner_ca: String,
        /// This node's domain.
        domain: String,
        /// This node's CA fingerprint (shortened).
        ca: String,
    },
    /// `venn store copy` refuses to write into a database that holds data.
    #[error(
        "store copy: the target {url} already holds data (table {table}: {rows} rows); copy \
         only into an empty database"
    )]
    TargetNotEmpty {
        /// The target URL, redacted.
        url: String,
        /// The first table with rows.
        table: &'static str,
        /// How many.
        rows: i64,
    },
    /// A query failed while the store was being opened, checked or copied.
    #[error("datastore: {url}: {source}")]
    Query {
        /// The URL, redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// The server's error code: MySQL's error number (its SQLSTATEs are too coarse: 42000 is both
/// "unknown database" and "command denied"), PostgreSQL's SQLSTATE, SQLite's result code.
fn error_code(db: &dyn sqlx::error::DatabaseError) -> String {
    match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        Some(my) => my.number().to_string(),
        None => db.code().map(|c| c.into_owned()).unwrap_or_default(),
    }
}

fn connect_hint(e: &sqlx::Error) -> &'static str {
    let code = match e {
        sqlx::Error::Database(db) => error_code(db.as_ref()),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
            return "check that the database server runs and that host and port in `datastore` \
                    are right (and reachable from this machine)";
        }
        sqlx::Error::Tls(_) => return TLS_HINT,
        _ => String::new(),
    };
    match code.as_str() {
        // MySQL: access denied; PostgreSQL: authentication failed, no such role.
        "1045" | "28P01" | "28000" => {
            "check the user and password (`datastore`, `datastore_password_file`)"
        }
        // MySQL: unknown database; PostgreSQL: database does not exist.
        "1049" | "3D000" => {
            "create the database first (CREATE DATABASE venn) and give the node's user rights on it"
        }
        // MySQL: no rights on this database.
        "1044" => "grant the user rights on this database (GRANT ALL ON venn.* TO ...)",
        // MySQL: too many connections; PostgreSQL: too_many_connections.
        "1040" | "1203" | "53300" => {
            "the server refuses more connections: lower `datastore_max_connections` (on every \
             node sharing the server) or raise the server's max_connections"
        }
        // SQLite: cannot open the file.
        "14" => {
            "the SQLite file's directory must exist and be writable (`venn start` creates the \
             data dir)"
        }
        _ => "check `datastore`",
    }
}

/// The general advice on a TLS failure.
const TLS_HINT: &str = "check the TLS parameters in `datastore` (PostgreSQL: sslmode, sslrootcert; \
                        MySQL/MariaDB: ssl-mode, ssl-ca)";

/// A TLS failure while connecting, with what to do about it; `None` for other errors.
///
/// sqlx reports a server without TLS as [`sqlx::Error::Tls`], a rejected certificate as the
/// [`rustls::Error`] inside an [`sqlx::Error::Io`] from the handshake.
fn tls_failure(e: &sqlx::Error) -> Option<(String, &'static str)> {
    use rustls::CertificateError as C;
    match e {
        sqlx::Error::Tls(inner) => {
            let detail = inner.to_string();
            let hint = if detail.contains("does not support TLS") {
                "the server offers no TLS but `datastore` requires it (sslmode=require or \
                 stricter, ssl-mode=REQUIRED or stricter): enable TLS on the database server, \
                 or, on a trusted network only, lower sslmode / ssl-mode"
            } else {
                TLS_HINT
            };
            Some((detail, hint))
        }
        sqlx::Error::Io(io) => {
            let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
            let hint = match tls {
                rustls::Error::InvalidCertificate(
                    C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension,
                ) => {
                    "the server's certificate is not signed by a CA this node trusts: name the \
                     CA's certificate file in `datastore` (PostgreSQL: sslrootcert=/path/ca.pem, \
                     MySQL/MariaDB: ssl-ca=/path/ca.pem)"
                }
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => {
                    "the server's certificate is not for the host named in `datastore`: connect \
                     by a name the certificate lists, or check the CA only (sslmode=verify-ca, \
                     ssl-mode=VERIFY_CA)"
                }
                rustls::Error::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => {
                    "the server's certificate is expired or not yet valid: renew it on the \
                     server (and check this machine's clock)"
                }
                _ => TLS_HINT,
            };
            Some((tls.to_string(), hint))
        }
        _ => None,
    }
}

/// The certificate files named in the URL's TLS parameters must be readable: sqlx would report a
/// missing one as a bare I/O error, as if the server were unreachable.
fn check_tls_files(opts: &StoreOptions) -> Result<(), StoreError> {
    if opts.backend == Backend::Sqlite {
        return Ok(());
    }
    let Ok(u) = url::Url::parse(opts.url()) else {
        return Ok(());
    };
    for (key, value) in u.query_pairs() {
        let is_file = matches!(
            key.as_ref(),
            "sslrootcert"
                | "ssl-root-cert"
                | "ssl-ca"
                | "sslca"
                | "sslcert"
                | "ssl-cert"
                | "sslkey"
                | "ssl-key"
        );
        // sqlx also takes the PEM text itself.
        if !is_file || value.trim_start().starts_with("-----BEGIN") {
            continue;
        }
        if let Err(e) = std::fs::File::open(value.as_ref()) {
            return Err(StoreError::BadUrl {
                url: opts.redacted(),
                reason: format!("{key}={value}: cannot read the file: {e}"),
            });
        }
    }
    Ok(())
}

/// True when a driver error means "you may not do DDL here".
fn is_permission_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(
            error_code(db.as_ref()).as_str(),
            // MySQL: command denied, access denied to database, needs SUPER-like privilege;
            // PostgreSQL: insufficient_privilege.
            "1142" | "1044" | "1227" | "42501"
        ),
        _ => false,
    }
}

fn permission_detail(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if is_permission_error(e) => Some(db.message().to_owned()),
        _ => None,
    }
}

pub(crate) fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE,
        Backend::MySql => &MYSQL,
        Backend::Postgres => &POSTGRES,
    }
}

/// Connects a pool (no migration).
pub(crate) async fn connect(opts: &StoreOptions) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let url = opts.redacted();
    let unreachable = |source: sqlx::Error| match tls_failure(&source) {
        Some((detail, hint)) => StoreError::Tls {
            url: url.clone(),
            detail,
            hint,
            source,
        },
        None => StoreError::Unreachable {
            url: url.clone(),
            hint: connect_hint(&source),
            source,
        },
    };
    check_tls_files(opts)?;
    let connect_opts: AnyConnectOptions =
        opts.url()
            .parse()
            .map_err(|e: sqlx::Error| StoreError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
    let mut pool = AnyPoolOptions::new()
        .max_connections(opts.pool_size())
        .acquire_timeout(opts.connect_timeout);
    if opts.backend == Backend::Sqlite {
        pool = pool.after_connect(|conn, _meta| {
            Box::pin(async move {
                // WAL lets CLI reads run beside the node; the busy timeout rides out writers.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        });
    }
    let pool = pool.connect_with(connect_opts).await.map_err(unreachable)?;
    Ok(pool)
}

/// Brings the schema up to date; returns the versions applied now.
pub(crate) async fn migrate(pool: &AnyPool, opts: &StoreOptions) -> Result<Vec<i64>, StoreError> {
    let before = applied_versions(pool, opts).await?;
    let m = migrator(opts.backend);
    if let Err(e) = m.run(pool).await {
        let url = opts.redacted();
        use sqlx::migrate::MigrateError as M;
        let detail = match &e {
            M::Execute(err) | M::ExecuteMigration(err, _) => permission_detail(err),
            _ => None,
        };
        if let Some(detail) = detail {
            return Err(StoreError::NoDdlRights { url, detail });
        }
        let hint = match &e {
            M::VersionMissing(_) => {
                "; the database was written by a newer venn: run that version, or restore a \
                 backup made with this one"
            }
            M::VersionMismatch(_) => "; the database's schema differs from this venn's",
            M::Dirty(_) => {
                "; a migration stopped half-way (MySQL cannot roll back DDL): restore the \
                 database from a backup"
            }
            _ => "",
        };
        return Err(StoreError::Migration {
            url,
            source: e,
            hint,
        });
    }
    let after = applied_versions(pool, opts).await?;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

/// Versions recorded as applied (empty for a fresh database).
pub(crate) async fn applied_versions(
    pool: &AnyPool,
    opts: &StoreOptions,
) -> Result<Vec<i64>, StoreError> {
    let res: Result<Vec<(i64,)>, sqlx::Error> = sqlx::query_as(
        "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
    )
    .fetch_all(pool)
    .await;
    match res {
        Ok(rows) => Ok(rows.into_iter().map(|(v,)| v).collect()),
        // No migrations table yet: nothing applied.
        Err(sqlx::Error::Database(db))
            if matches!(error_code(db.as_ref()).as_str(), "1146" | "42P01")
                || db.message().contains("no such table") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(StoreError::Query {
            url: opts.redacted(),
            source: e,
        }),
    }
}

/// Creates and drops a scratch table: can this user change the schema?
pub(crate) async fn probe_ddl(pool: &AnyPool) -> Result<(), String> {
    let mut suffix = [0u8; 4];
    let _ = getrandom::fill(&mut suffix);
    let table = format!("_venn_ddl_probe_{}", hex::encode(suffix));
    let create = format!("CREATE TABLE {table} (x BIGINT)");
    let drop = format!("DROP TABLE {table}");
    pool.execute(sqlx::AssertSqlSafe(create))
        .await
        .map_err(|e| match permission_detail(&e) {
            Some(d) => d,
            None => e.to_string(),
        })?;
    pool.execute(sqlx::AssertSqlSafe(drop))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Shortens a hex fingerprint for messages.
pub(crate) fn short(fp: &str) -> String {
    fp.chars().take(16).collect()
}

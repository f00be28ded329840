//! The node's error type.
//!
//! One enum for the library, split by who is at fault: the operator's configuration
//! ([`NodeError::Config`]), the caller of an API ([`NodeError::Invalid`], [`NodeError::NotFound`],
//! [`NodeError::Conflict`]), a partner ([`NodeError::Peer`]) or this machine ([`NodeError::Io`],
//! [`NodeError::Store`], [`NodeError::Crypto`]). The API layer maps each kind to one HTTP status in
//! one place (`api::error`), so a new variant cannot silently leak internals to a client.

use std::path::PathBuf;

/// Every failure of the node library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid; each entry names one field.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// A request is invalid; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The object exists already (or another state conflict).
    #[error("{0}")]
    Conflict(String),
    /// The caller is not authorised.
    #[error("unauthorized")]
    Unauthorized,
    /// A partner node failed or refused; the message explains the step.
    #[error("{0}")]
    Peer(String),
    /// File system failure, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Network failure outside a file path.
    #[error("{0}")]
    Net(String),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// Database migration failed.
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The datastore cannot be used (unreachable, no rights, claimed by another node, ...);
    /// the message names the setting and what to do.
    #[error(transparent)]
    Datastore(#[from] crate::store::StoreError),
    /// The Kubernetes API refused or failed a call of the kubernetes runtime; the message
    /// names the object and the API's reason.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
    /// Key, certificate or TLS set-up failure.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl NodeError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rcgen::Error> for NodeError {
    fn from(e: rcgen::Error) -> Self {
        Self::Crypto(e.to_string())
    }
}

impl From<rustls::Error> for NodeError {
    fn from(e: rustls::Error) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// Result alias of the node library.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

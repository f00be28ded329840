//! The engine's error type.
//!
//! One enum, split by who is at fault (as rustls does): the user's input and
//! options ([`PsiError::Input`], [`PsiError::Config`]), the two parties'
//! disagreement ([`PsiError::Mismatch`]), the peer or the link
//! ([`PsiError::Peer`], [`PsiError::Channel`]), and the local machine
//! ([`PsiError::Io`]). Every message says what to do about it.

use std::path::PathBuf;

use crate::channel::ChannelError;

/// Everything that can stop a PSI run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PsiError {
    /// A problem in an input file: names the file, the line and, where known, the column.
    #[error("{path}:{line}{}: {message}", column.as_ref().map(|c| format!(": column '{c}'")).unwrap_or_default())]
    Input {
        /// The input file.
        path: PathBuf,
        /// 1-based line number where the record starts (0 when not tied to a line).
        line: u64,
        /// The key column concerned, if any.
        column: Option<String>,
        /// What is wrong and what to do.
        message: String,
    },
    /// A local option is invalid.
    #[error("invalid option {field}: {message}")]
    Config {
        /// The option (as the user spells it, e.g. `--keys`).
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The two parties' options disagree; found in the handshake, before any key material.
    #[error(
        "the parties' options do not match: {field} is {ours} here but {theirs} at the peer; \
         run both sides with the same {field}"
    )]
    Mismatch {
        /// The option that differs.
        field: &'static str,
        /// Our value.
        ours: String,
        /// The peer's value.
        theirs: String,
    },
    /// The peer sent something the protocol does not allow, or reported an error.
    #[error("peer: {0}")]
    Peer(String),
    /// The link to the peer failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl PsiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PsiError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn peer(msg: impl Into<String>) -> Self {
        PsiError::Peer(msg.into())
    }
}

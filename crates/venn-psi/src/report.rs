//! The JSON report of a run (`--report FILE`, `-o json`).

use serde::{Deserialize, Serialize};

use crate::config::{JoinType, Protocol};

/// What a run did and what it cost. Fields a party may not know are `null`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Report format version.
    pub version: u32,
    /// 0 at the listener, 1 at the connector.
    pub party: u8,
    /// The protocol that ran.
    pub protocol: Protocol,
    /// RR22's low-communication variant ran.
    pub low_comm: bool,
    /// RR22's malicious variant ran.
    pub malicious: bool,
    /// The join.
    pub join: JoinType,
    /// Whether this party received output.
    pub receiver: bool,
    /// This party's input.
    #[serde(rename = "self")]
    pub self_: InputStats,
    /// The peer's input, as far as the protocol reveals it (sizes).
    pub peer: PeerStats,
    /// The intersection, at a receiver; `null` elsewhere.
    pub intersection: Option<Intersection>,
    /// The output file, at a receiver.
    pub output: Option<OutputStats>,
    /// The elliptic-curve code path, for `ecdh` (`avx512ifma`, `avx2` or `serial`).
    pub curve_backend: Option<String>,
    /// Buckets the key space was split into (summed over workers).
    pub buckets: usize,
    /// Protocol batches each bucket ran in (see `session`'s `batch_bits`),
    /// summed over buckets and workers.
    #[serde(default = "one")]
    pub batches: usize,
    /// RR22: the VOLE ran before the sizes were exchanged, beside the
    /// connector's read (the "early VOLE" of `docs/psi.md`).
    #[serde(default)]
    pub early_vole: bool,
    /// Worker pairs that ran (see `workers`); 1 for a single-process run.
    #[serde(default = "one")]
    pub workers: usize,
    /// Bytes sent to the peer.
    pub bytes_sent: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Seconds per phase.
    pub seconds: Phases,
    /// Peak resident memory of this process in MiB (VmHWM; 0 where unknown).
    pub peak_rss_mb: f64,
}

/// This party's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputStats {
    /// The file.
    pub path: String,
    /// Data rows taking part (header and skipped rows not counted).
    pub rows: u64,
    /// Distinct keys among them.
    pub unique_keys: u64,
    /// Rows skipped for an empty key (`--skip-empty-keys`).
    pub skipped_empty_keys: u64,
}

/// The peer's input sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStats {
    /// The peer's rows.
    pub rows: u64,
    /// The peer's distinct keys.
    pub unique_keys: u64,
}

/// The intersection as a receiver sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Intersection {
    /// Distinct keys in both inputs.
    pub keys: u64,
    /// This party's rows with such a key.
    pub rows_self: u64,
    /// The peer's rows with such a key.
    pub rows_peer: u64,
    /// Rows of the inner join (Σ per key of self rows × peer rows).
    pub join_rows: u64,
}

/// The output file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputStats {
    /// Where it was written.
    pub path: String,
    /// Data rows written (header not counted).
    pub rows: u64,
}

/// Seconds per phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    /// Handshake and reading the input.
    pub read: f64,
    /// The PSI protocol, all buckets.
    pub protocol: f64,
    /// Writing the output.
    pub write: f64,
    /// Everything.
    pub total: f64,
}

fn one() -> usize {
    1
}

/// Peak resident set size of this process in MiB, from /proc (Linux).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}

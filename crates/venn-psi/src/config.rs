//! A party's PSI options, as the user gives them.
//!
//! Options are relative to the party ("self", "peer"); the handshake turns
//! them into absolute party numbers (party 0 listens, party 1 connects) so the
//! two sides can be compared byte for byte.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::PsiError;

/// Which PSI protocol runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Diffie–Hellman PSI over ristretto255 (Meadows 1986; Huberman–Franklin–Hogg 1999).
    Ecdh,
    /// VOLE-based PSI of Raghuraman and Rindal (CCS 2022).
    Rr22,
}

/// Who gets the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Receiver {
    /// This party only.
    #[serde(rename = "self")]
    SelfOnly,
    /// The peer only.
    Peer,
    /// Both parties.
    Both,
}

/// How the rows of the two parties are joined on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinType {
    /// Rows whose key is in both inputs.
    Inner,
    /// Inner, plus the left side's rows without a match.
    Left,
    /// Inner, plus the right side's rows without a match.
    Right,
    /// Inner, plus both sides' rows without a match.
    Full,
    /// Each receiver's own rows whose key is not in the other input.
    Difference,
}

/// A side, relative to this party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// This party.
    #[serde(rename = "self")]
    SelfSide,
    /// The other party.
    Peer,
}

/// Optional key normalisation, applied to every key column before matching.
/// Both parties must use the same (checked in the handshake).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Normalize {
    /// Strip leading and trailing ASCII whitespace.
    pub trim: bool,
    /// Fold ASCII letters to lower case.
    pub lowercase: bool,
}

/// Rows per protocol batch where none was given, for a party of `rows`
/// rows: 2^20, and 2^19 past 2^23 rows.
///
/// A batch's working set is RR22's VOLE and OKVS vectors, ~180 bytes an
/// item at its peak (~190 MB at 2^20 items); besides it a party holds its
/// grouped rows, ~24 bytes a row. Up to 2^23 rows the batch is the larger
/// part, and larger batches cost fewer round trips (2^22 rows: 2.12 s in
/// batches of 2^20, 2.23 s in batches of 2^19, medians of three); past it
/// the rows are, and halving the batch keeps a party at 2^24 rows under
/// half of SecretFlow's peak RSS (the listener's protocol phase: ~580 →
/// ~500 MB), at no measured cost in time (16 or 32 batches: 6.9 and 6.5 s
/// of protocol).
pub fn default_batch_rows(rows: u64) -> u64 {
    if rows > 1 << 23 { 1 << 19 } else { 1 << 20 }
}

/// Everything one party needs to take part in a PSI run.
#[derive(Debug, Clone)]
pub struct PsiConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// Key column names in this party's file (the count must match the peer's).
    pub keys: Vec<String>,
    /// Who gets the output.
    pub receiver: Receiver,
    /// The join.
    pub join: JoinType,
    /// Which party is the left side of `left`/`right` joins.
    pub left: Side,
    /// Text written for the columns of a missing row in outer joins.
    pub null_rep: String,
    /// Where spilled buckets and sorted runs go.
    pub tmp_dir: PathBuf,
    /// Memory the run may use for rows; above it, rows are bucketed on disk.
    pub memory_budget: u64,
    /// Rows per protocol batch: a larger bucket runs the protocol in
    /// batches of about this many rows, which bounds the protocol's memory
    /// (see `session`). The smaller of the two parties' values is used.
    /// `None`: [`default_batch_rows`] of this party's rows.
    pub batch_rows: Option<u64>,
    /// Skip rows whose key is empty instead of failing.
    pub skip_empty_keys: bool,
    /// Key normalisation.
    pub normalize: Normalize,
    /// True at the party that listened (party 0), false at the one that connected.
    pub leader: bool,
    /// Statistical security parameter in bits.
    pub stat_sec: u32,
    /// RR22's low-communication variant (subfield VOLE, short OKVS cells).
    pub low_comm: bool,
    /// RR22's malicious variant.
    pub malicious: bool,
}

impl PsiConfig {
    /// A configuration with the documented defaults for the given key columns.
    pub fn new(keys: Vec<String>, leader: bool) -> Self {
        PsiConfig {
            protocol: Protocol::Rr22,
            keys,
            receiver: Receiver::Both,
            join: JoinType::Inner,
            left: Side::SelfSide,
            null_rep: "NULL".into(),
            tmp_dir: std::env::temp_dir(),
            memory_budget: 6 << 30,
            batch_rows: None,
            skip_empty_keys: false,
            normalize: Normalize::default(),
            leader,
            stat_sec: 40,
            low_comm: false,
            malicious: false,
        }
    }

    /// This party's number: 0 for the listener, 1 for the connector.
    pub fn party(&self) -> u8 {
        if self.leader { 0 } else { 1 }
    }

    /// Checks the options that need no peer.
    pub fn validate(&self) -> Result<(), PsiError> {
        if self.keys.is_empty() {
            return Err(PsiError::Config {
                field: "--keys",
                message: "name at least one key column, e.g. --keys id".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for k in &self.keys {
            if k.is_empty() {
                return Err(PsiError::Config {
                    field: "--keys",
                    message: "a key column name is empty (check for a stray comma)".into(),
                });
            }
            if !seen.insert(k) {
                return Err(PsiError::Config {
                    field: "--keys",
                    message: format!("column '{k}' is named twice"),
                });
            }
        }
        if self.keys.len() > 64 {
            return Err(PsiError::Config {
                field: "--keys",
                message: "at most 64 key columns".into(),
            });
        }
        if self.batch_rows == Some(0) {
            return Err(PsiError::Config {
                field: "--batch-rows",
                message: "must be at least 1 (leave it out for the default)".into(),
            });
        }
        if self.memory_budget < (64 << 10) {
            return Err(PsiError::Config {
                field: "--memory-budget",
                message: "must be at least 64KiB".into(),
            });
        }
        if self.protocol != Protocol::Rr22 && (self.low_comm || self.malicious) {
            return Err(PsiError::Config {
                field: if self.low_comm {
                    "--low-comm"
                } else {
                    "--malicious"
                },
                message: "is an option of --protocol rr22 only".into(),
            });
        }
        if self.low_comm && self.malicious {
            return Err(PsiError::Config {
                field: "--low-comm",
                message: "cannot be combined with --malicious: RR22's malicious variant needs \
                          the OKVS over GF(2^128) (RR22 §6.2)"
                    .into(),
            });
        }
        if !(40..=128).contains(&self.stat_sec) {
            return Err(PsiError::Config {
                field: "statistical security",
                message: "must be between 40 and 128 bits".into(),
            });
        }
        Ok(())
    }

    /// Whether this party receives output.
    pub fn self_receives(&self) -> bool {
        matches!(self.receiver, Receiver::SelfOnly | Receiver::Both)
    }

    /// Whether the peer receives output.
    pub fn peer_receives(&self) -> bool {
        matches!(self.receiver, Receiver::Peer | Receiver::Both)
    }

    /// The party number of the left side.
    pub fn left_party(&self) -> u8 {
        match self.left {
            Side::SelfSide => self.party(),
            Side::Peer => 1 - self.party(),
        }
    }

    /// Whether party `p`'s unmatched rows appear in the output.
    pub(crate) fn outer(&self, p: u8) -> bool {
        let left = self.left_party();
        match self.join {
            JoinType::Inner | JoinType::Difference => false,
            JoinType::Left => p == left,
            JoinType::Right => p != left,
            JoinType::Full => true,
        }
    }
}

/// Parses a size such as `2GiB`, `512MiB`, `1.5GB`, `100000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size; write e.g. 2GiB, 512MiB or 1000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0f64.powi(4),
        u => {
            return Err(format!(
                "unknown unit '{u}' in '{s}'; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    Ok((n * mult) as u64)
}

macro_rules! text_enum {
    ($ty:ident { $($name:literal => $v:expr),* $(,)? }) => {
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok($v),)*
                    _ => Err(format!("'{}' is not one of: {}", s, [$($name),*].join(", "))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(if *self == $v { return f.write_str($name); })*
                unreachable!()
            }
        }
    };
}

text_enum!(Protocol { "ecdh" => Protocol::Ecdh, "rr22" => Protocol::Rr22 });
text_enum!(Receiver { "self" => Receiver::SelfOnly, "peer" => Receiver::Peer, "both" => Receiver::Both });
text_enum!(JoinType {
    "inner" => JoinType::Inner, "left" => JoinType::Left, "right" => JoinType::Right,
    "full" => JoinType::Full, "difference" => JoinType::Difference,
});
text_enum!(Side { "self" => Side::SelfSide, "peer" => Side::Peer });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("2XB").is_err());
    }

    #[test]
    fn enums_round_trip() {
        for j in ["inner", "left", "right", "full", "difference"] {
            assert_eq!(j.parse::<JoinType>().unwrap().to_string(), j);
        }
        assert!("outer".parse::<JoinType>().is_err());
        assert_eq!("SELF".parse::<Receiver>().unwrap(), Receiver::SelfOnly);
    }

    #[test]
    fn outer_sides() {
        let mut c = PsiConfig::new(vec!["id".into()], true);
        c.join = JoinType::Left;
        c.left = Side::Peer;
        assert!(!c.outer(0) && c.outer(1));
        c.join = JoinType::Right;
        assert!(c.outer(0) && !c.outer(1));
        c.join = JoinType::Full;
        assert!(c.outer(0) && c.outer(1));
    }
}

//! PSI across many workers: the bucket plan, its negotiation, and the merge.
//!
//! A party may run its side of a PSI as `N` workers (threads of one process
//! for `venn psi --workers N`, processes or pods for a job's `workers: N`).
//! Worker `i` of one party talks only to worker `i` of the other, over its own
//! link; each pair intersects one *worker bucket* of the key space with the
//! ordinary engine (handshake, memory buckets, protocol), and each receiver
//! merges its workers' parts into one output, byte for byte the output of a
//! single worker.
//!
//! # The bucket plan
//!
//! - **Negotiated, never assumed.** The first message on every worker link is
//!   `PLAN`, both ways: this party's worker count, the link's worker index and
//!   a 128-bit random nonce that all workers of the party share (one per run:
//!   the process makes it for its threads, the node writes it into every
//!   worker's task config). Both ends compute the same plan from the two
//!   messages: `pairs = min(N_listener, N_connector)` worker pairs, and a
//!   bucket seed `BLAKE3-derive-key(listener nonce ‖ connector nonce ‖ pairs)`.
//!   9n-mpc's workers each derive a bucket plan from their own settings, so
//!   two parties with different settings silently intersect different key
//!   ranges; here a different worker count is reconciled (below) and anything
//!   that cannot be (crossed links, a peer worker with no partner, counts
//!   out of range) is an error at both ends before any key material moves.
//! - **Different worker counts.** With `N_a ≠ N_b`, only `pairs` workers of
//!   each party run; the surplus workers of the larger side get no link and
//!   end cleanly with a log line saying so. Every key falls in exactly one of
//!   the `pairs` worker buckets, so every key is intersected by exactly one
//!   pair whatever the two counts are.
//! - **Keyed bucketing.** A row's worker bucket is
//!   `mix(item ⊕ seed) · pairs / 2^64`. The seed makes it independent of the
//!   memory buckets inside a worker (which split on `mix(item)`: an unkeyed
//!   worker split on the same bits would leave each worker with a few memory
//!   buckets), and neither party alone chooses where a key goes. It is not a
//!   secret: both parties know it, and what the per-bucket sizes reveal is
//!   what the engine's memory buckets already reveal (docs/psi.md).
//! - **The plan is checked again** in every pair's engine handshake (the
//!   `plan` field: index, pairs, seed), and the merge refuses parts whose
//!   plan is not the merging worker's.
//!
//! # Work split and cost
//!
//! Every worker reads the whole input file and keeps the rows of its bucket:
//! reading is repeated `pairs` times (it is a small part of a run; see the
//! figures in docs/psi.md), while memory, the protocol and the bytes on the
//! wire are divided. No coordinator splits files, so N pods need nothing but
//! the input path.
//!
//! # The merge
//!
//! A worker writes its part as sorted runs (key, this party's rows, the
//! peer's count for matched keys) plus `part.json` (plan, header, the peer's
//! unmatched row count). The merge is the one the engine uses for its memory
//! buckets ([`crate::session`]'s `write_runs`): matched runs of every worker merged by
//! key, then the unmatched sections in party order, null rows counted over
//! all workers. Keys are unique across workers, so the order is the one
//! the single-worker run produces. The output is written under a temporary
//! name and renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::config::PsiConfig;
use crate::error::PsiError;
use crate::item::{Item, mix};
use crate::output::OutWriter;
use crate::report::{Intersection, OutputStats, Report, peak_rss_mb};
use crate::session::{Dest, round3, run_scoped, write_runs};
use crate::wire;

/// Most workers a party may run.
pub const MAX_WORKERS: u32 = 256;

const PLAN: u8 = 0x09;
const PLAN_VERSION: &str = "venn-psi-plan/1";
const SEED_CONTEXT: &str = "venn-psi 2026-11 worker bucket plan v1";

/// One party's workers: how many, and the nonce they all share.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerSet {
    count: u32,
    nonce: [u8; 16],
}

impl std::fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSet")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl WorkerSet {
    /// `count` workers with a fresh random nonce.
    pub fn new(count: u32) -> Result<Self, PsiError> {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        Self::checked(count, nonce)
    }

    /// `count` workers with a nonce made elsewhere (hex, 32 digits): every
    /// worker process of one party must get the same one.
    pub fn with_nonce(count: u32, nonce_hex: &str) -> Result<Self, PsiError> {
        let bad = || PsiError::Config {
            field: "worker plan nonce",
            message: "must be 32 hexadecimal digits".into(),
        };
        if nonce_hex.len() != 32 || !nonce_hex.is_ascii() {
            return Err(bad());
        }
        let mut nonce = [0u8; 16];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = u8::from_str_radix(&nonce_hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Self::checked(count, nonce)
    }

    fn checked(count: u32, nonce: [u8; 16]) -> Result<Self, PsiError> {
        if !(1..=MAX_WORKERS).contains(&count) {
            return Err(PsiError::Config {
                field: "--workers",
                message: format!("must be between 1 and {MAX_WORKERS}"),
            });
        }
        Ok(WorkerSet { count, nonce })
    }

    /// The number of workers.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shared nonce as 32 hex digits (for a worker process's config).
    pub fn nonce_hex(&self) -> String {
        self.nonce.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The agreed plan, as seen by one worker link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    index: u32,
    ours: u32,
    theirs: u32,
    pairs: u32,
    seed: u128,
}

impl Plan {
    /// Worker pairs that run: the smaller of the two worker counts.
    pub fn pairs(&self) -> u32 {
        self.pairs
    }

    /// This link's worker index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// This party's worker count.
    pub fn ours(&self) -> u32 {
        self.ours
    }

    /// The peer's worker count.
    pub fn theirs(&self) -> u32 {
        self.theirs
    }

    /// The same plan as seen by worker `index`.
    pub fn for_index(&self, index: u32) -> Plan {
        Plan {
            index,
            ..self.clone()
        }
    }

    fn shard(&self) -> Shard {
        Shard {
            index: self.index,
            pairs: self.pairs,
            seed: self.seed,
        }
    }
}

/// A worker's share of the key space (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shard {
    index: u32,
    pairs: u32,
    seed: u128,
}

impl Shard {
    pub(crate) fn keeps(&self, item: Item) -> bool {
        bucket_of(item, self.seed, self.pairs) == self.index
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "worker {} of {} pairs, bucket seed {:032x}",
            self.index, self.pairs, self.seed
        )
    }
}

/// The worker bucket of `item` among `pairs`.
fn bucket_of(item: Item, seed: u128, pairs: u32) -> u32 {
    ((mix(item ^ seed) as u128 * pairs as u128) >> 64) as u32
}

#[derive(Serialize, Deserialize)]
struct PlanMsg {
    version: String,
    workers: u32,
    worker: u32,
    nonce: String,
}

/// The first exchange on worker link `index`: both parties' worker counts and
/// nonces, giving the plan. `leader` is true at the listening party.
///
/// Errors (at both ends, since both check the same facts): links paired
/// across indices, a worker index without a partner, counts out of range.
pub fn negotiate(
    chan: &dyn Channel,
    set: &WorkerSet,
    index: u32,
    leader: bool,
) -> Result<Plan, PsiError> {
    let ours = PlanMsg {
        version: PLAN_VERSION.into(),
        workers: set.count,
        worker: index,
        nonce: set.nonce_hex(),
    };
    wire::send(
        chan,
        PLAN,
        &serde_json::to_vec(&ours).expect("plan serialises"),
    )?;
    let raw = wire::recv(chan, PLAN, "the peer's worker plan")?;
    let theirs: PlanMsg = serde_json::from_slice(&raw)
        .map_err(|e| PsiError::peer(format!("unreadable worker plan from the peer: {e}")))?;
    if theirs.version != PLAN_VERSION {
        return Err(PsiError::Mismatch {
            field: "worker plan version",
            ours: PLAN_VERSION.into(),
            theirs: theirs.version,
        });
    }
    let peer_set = WorkerSet::with_nonce(theirs.workers, &theirs.nonce)
        .map_err(|e| PsiError::peer(format!("invalid worker plan: {e}")))?;
    if theirs.worker != index {
        return Err(PsiError::Mismatch {
            field: "the worker index of this link",
            ours: index.to_string(),
            theirs: theirs.worker.to_string(),
        });
    }
    let pairs = set.count.min(peer_set.count);
    if index >= pairs {
        return Err(PsiError::Mismatch {
            field: "the number of workers",
            ours: format!("{} (this link is worker {index})", set.count),
            theirs: format!("{} (no worker {index} may run)", peer_set.count),
        });
    }
    let (first, second) = if leader {
        (&set.nonce, &peer_set.nonce)
    } else {
        (&peer_set.nonce, &set.nonce)
    };
    let mut material = Vec::with_capacity(36);
    material.extend_from_slice(first);
    material.extend_from_slice(second);
    material.extend_from_slice(&pairs.to_le_bytes());
    let key = blake3::derive_key(SEED_CONTEXT, &material);
    let seed = u128::from_le_bytes(key[..16].try_into().expect("16 bytes"));
    Ok(Plan {
        index,
        ours: set.count,
        theirs: peer_set.count,
        pairs,
        seed,
    })
}

/// Runs worker `plan.index()`'s pair: the rows of its bucket, with a
/// receiver's result written as a part in `part_dir` (merged later by
/// [`merge_parts`]). The report counts this worker's bucket only.
pub fn run_part(
    cfg: &PsiConfig,
    plan: &Plan,
    input: &Path,
    part_dir: &Path,
    chan: &dyn Channel,
) -> Result<Report, PsiError> {
    run_scoped(cfg, Some(&plan.shard()), input, Dest::Part(part_dir), chan)
}

/// What a worker leaves in its part directory besides the runs.
#[derive(Serialize, Deserialize)]
pub(crate) struct PartMeta {
    pub(crate) plan: String,
    pub(crate) header: Vec<u8>,
    pub(crate) ncols: usize,
    pub(crate) peer_unmatched: u64,
    pub(crate) matched: Vec<String>,
    pub(crate) unmatched: Vec<String>,
}

const PART_META: &str = "part.json";

pub(crate) fn write_part_meta(dir: &Path, meta: &PartMeta) -> Result<(), PsiError> {
    let path = dir.join(PART_META);
    let tmp = dir.join(".part.json.tmp");
    let text = serde_json::to_vec(meta).expect("part meta serialises");
    std::fs::write(&tmp, text).map_err(|e| PsiError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| PsiError::io(&path, e))
}

fn read_part_meta(dir: &Path) -> Result<PartMeta, PsiError> {
    let path = dir.join(PART_META);
    let text = std::fs::read(&path).map_err(|e| PsiError::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        PsiError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// Merges the parts of workers `0..plan.pairs()` (`parts[i]` is worker `i`'s
/// part directory) into the receiver's output; returns the rows written.
pub fn merge_parts(
    cfg: &PsiConfig,
    plan: &Plan,
    parts: &[PathBuf],
    output: &Path,
) -> Result<u64, PsiError> {
    if parts.len() != plan.pairs as usize {
        return Err(PsiError::Config {
            field: "worker parts",
            message: format!(
                "{} parts for a plan of {} worker pairs",
                parts.len(),
                plan.pairs
            ),
        });
    }
    let mut matched = Vec::new();
    let mut unmatched = Vec::new();
    let mut peer_unmatched = 0u64;
    let mut head: Option<(Vec<u8>, usize)> = None;
    for (i, dir) in parts.iter().enumerate() {
        let meta = read_part_meta(dir)?;
        let want = plan.for_index(i as u32).shard().describe();
        if meta.plan != want {
            return Err(PsiError::Config {
                field: "worker parts",
                message: format!(
                    "{} was made for \"{}\", not \"{want}\"; were the workers given different plans?",
                    dir.display(),
                    meta.plan
                ),
            });
        }
        match &head {
            None => head = Some((meta.header.clone(), meta.ncols)),
            Some((h, n)) if *h == meta.header && *n == meta.ncols => {}
            Some(_) => {
                return Err(PsiError::Config {
                    field: "worker parts",
                    message: format!(
                        "{} has another header than worker 0's part; the workers read different files",
                        dir.display()
                    ),
                });
            }
        }
        let checked = |name: &String| -> Result<PathBuf, PsiError> {
            if name.contains('/') || name.starts_with('.') {
                return Err(PsiError::Config {
                    field: "worker parts",
                    message: format!("{}: bad run name {name:?}", dir.display()),
                });
            }
            Ok(dir.join(name))
        };
        for m in &meta.matched {
            matched.push(checked(m)?);
        }
        for u in &meta.unmatched {
            unmatched.push(checked(u)?);
        }
        peer_unmatched += meta.peer_unmatched;
    }
    let (header, ncols) = head.ok_or_else(|| PsiError::Config {
        field: "worker parts",
        message: "no parts".into(),
    })?;
    let mut w = OutWriter::create(output, &header, ncols, &cfg.null_rep, cfg.party())?;
    write_runs(cfg, &mut w, &matched, &unmatched, peer_unmatched)?;
    w.commit()
}

/// One report for a party's workers: counts and bytes summed, phases the
/// slowest worker's, `total` the given wall time.
pub fn combine_reports(reports: &[Report], total_seconds: f64) -> Option<Report> {
    let mut it = reports.iter();
    let mut r = it.next()?.clone();
    for x in it {
        r.self_.rows += x.self_.rows;
        r.self_.unique_keys += x.self_.unique_keys;
        // every worker reads the whole file and counts the same skipped rows
        r.self_.skipped_empty_keys = r.self_.skipped_empty_keys.max(x.self_.skipped_empty_keys);
        r.peer.rows += x.peer.rows;
        r.peer.unique_keys += x.peer.unique_keys;
        r.intersection = match (r.intersection.take(), &x.intersection) {
            (Some(a), Some(b)) => Some(Intersection {
                keys: a.keys + b.keys,
                rows_self: a.rows_self + b.rows_self,
                rows_peer: a.rows_peer + b.rows_peer,
                join_rows: a.join_rows + b.join_rows,
            }),
            _ => None,
        };
        r.buckets += x.buckets;
        r.batches += x.batches;
        r.early_vole |= x.early_vole;
        r.bytes_sent += x.bytes_sent;
        r.bytes_received += x.bytes_received;
        r.seconds.read = r.seconds.read.max(x.seconds.read);
        r.seconds.protocol = r.seconds.protocol.max(x.seconds.protocol);
        r.seconds.write = r.seconds.write.max(x.seconds.write);
        r.peak_rss_mb = r.peak_rss_mb.max(x.peak_rss_mb);
    }
    r.workers = reports.len();
    r.output = None;
    r.seconds.total = round3(total_seconds);
    Some(r)
}

/// Runs this party's side with one thread per worker pair, in this process:
/// `chans[i]` is worker `i`'s link, already through [`negotiate`] with
/// `plans[i]`. With one pair this is [`crate::run`] exactly. Each worker gets
/// an equal share of `cfg.memory_budget`.
pub fn run_local(
    cfg: &PsiConfig,
    plans: &[Plan],
    input: &Path,
    output: Option<&Path>,
    chans: &[&dyn Channel],
) -> Result<Report, PsiError> {
    let t0 = Instant::now();
    let Some(plan) = plans.first() else {
        return Err(PsiError::Config {
            field: "--workers",
            message: "no worker links".into(),
        });
    };
    let consistent = plans.len() == plan.pairs as usize
        && chans.len() == plans.len()
        && plans
            .iter()
            .enumerate()
            .all(|(i, p)| *p == plan.for_index(i as u32));
    if !consistent {
        let theirs = plans
            .iter()
            .map(|p| format!("{}/{}", p.index, p.pairs))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PsiError::Mismatch {
            field: "the worker plan",
            ours: format!("{} links of one plan", plan.pairs),
            theirs: format!("links with plans {theirs} (the peer's workers disagree)"),
        });
    }
    if plan.pairs == 1 {
        return crate::run(cfg, input, output, chans[0]);
    }
    if cfg.self_receives() && output.is_none() {
        return Err(PsiError::Config {
            field: "--output",
            message: "this party receives the result: name the output file".into(),
        });
    }
    let mut wcfg = cfg.clone();
    wcfg.memory_budget = (cfg.memory_budget / plan.pairs as u64).max(64 << 10);
    std::fs::create_dir_all(&cfg.tmp_dir).map_err(|e| PsiError::io(&cfg.tmp_dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("venn-psi-parts-")
        .tempdir_in(&cfg.tmp_dir)
        .map_err(|e| PsiError::io(&cfg.tmp_dir, e))?;
    let parts: Vec<PathBuf> = (0..plan.pairs)
        .map(|i| tmp.path().join(format!("w{i}")))
        .collect();
    let results: Vec<Result<Report, PsiError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .zip(chans)
            .zip(&parts)
            .map(|((p, c), dir)| {
                let wcfg = &wcfg;
                s.spawn(move || run_part(wcfg, p, input, dir, *c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(PsiError::peer("internal: a worker thread panicked")))
            })
            .collect()
    });
    let reports = first_error(results)?;
    let tw = Instant::now();
    let mut out = None;
    if let (true, Some(o)) = (cfg.self_receives(), output) {
        let rows = merge_parts(cfg, plan, &parts, o)?;
        out = Some(OutputStats {
            path: o.display().to_string(),
            rows,
        });
    }
    drop(tmp);
    let merge = tw.elapsed().as_secs_f64();
    let mut r = combine_reports(&reports, t0.elapsed().as_secs_f64()).expect("pairs > 1");
    r.output = out;
    r.seconds.write = round3(r.seconds.write + merge);
    r.peak_rss_mb = peak_rss_mb();
    Ok(r)
}

/// All reports, or the most telling error: a worker's own failure (bad
/// input, say) rather than the closed links it caused at the other workers.
fn first_error(results: Vec<Result<Report, PsiError>>) -> Result<Vec<Report>, PsiError> {
    let mut errors: Vec<PsiError> = Vec::new();
    let mut ok = Vec::new();
    for r in results {
        match r {
            Ok(r) => ok.push(r),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(ok);
    }
    let pos = errors
        .iter()
        .position(|e| !matches!(e, PsiError::Channel(_) | PsiError::Peer(_)))
        .unwrap_or(0);
    Err(errors.swap_remove(pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_pair;

    fn plans(a: u32, b: u32) -> (Result<Plan, PsiError>, Result<Plan, PsiError>) {
        let (ca, cb) = memory_pair(4);
        let (sa, sb) = (WorkerSet::new(a).unwrap(), WorkerSet::new(b).unwrap());
        std::thread::scope(|s| {
            let h = s.spawn(|| negotiate(&cb, &sb, 0, false));
            (negotiate(&ca, &sa, 0, true), h.join().unwrap())
        })
    }

    #[test]
    fn both_ends_agree_on_the_plan() {
        let (a, b) = plans(2, 3);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.pairs(), a.ours(), a.theirs()), (2, 2, 3));
        assert_eq!((b.pairs(), b.ours(), b.theirs()), (2, 3, 2));
        assert_eq!(a.seed, b.seed);
        // a fresh run draws fresh nonces: another seed
        let (c, _) = plans(2, 3);
        assert_ne!(c.unwrap().seed, a.seed);
    }

    #[test]
    fn crossed_links_fail_at_both_ends() {
        let (ca, cb) = memory_pair(4);
        let (sa, sb) = (WorkerSet::new(3).unwrap(), WorkerSet::new(3).unwrap());
        let (ra, rb) = std::thread::scope(|s| {
            let h = s.spawn(|| negotiate(&cb, &sb, 2, false));
            (negotiate(&ca, &sa, 1, true), h.join().unwrap())
        });
        for r in [ra, rb] {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("worker index"), "{e}");
        }
    }

    #[test]
    fn buckets_cover_the_key_space_once_and_evenly() {
        let seed = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        for pairs in [1u32, 2, 3, 7] {
            let mut n = vec![0u32; pairs as usize];
            for k in 0..30_000u128 {
                let b = bucket_of(crate::item::item_of(format!("{k}").as_bytes()), seed, pairs);
                n[b as usize] += 1;
            }
            let even = 30_000 / pairs;
            assert!(n.iter().all(|&c| c.abs_diff(even) < even / 10), "{n:?}");
        }
    }

    #[test]
    fn nonces_round_trip_and_counts_are_checked() {
        let s = WorkerSet::new(4).unwrap();
        assert_eq!(WorkerSet::with_nonce(4, &s.nonce_hex()).unwrap(), s);
        assert!(WorkerSet::with_nonce(4, "xyz").is_err());
        assert!(WorkerSet::new(0).is_err());
        assert!(WorkerSet::new(MAX_WORKERS + 1).is_err());
    }
}

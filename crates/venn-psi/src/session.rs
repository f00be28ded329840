//! One party's whole run: handshake, read, buckets, protocol, output, report.
//!
//! The order of messages (every frame is tagged, see `wire`):
//!
//! 0. With workers (`crate::workers`), `PLAN` both ways first, on every
//!    worker link; the plan it gives is compared again in `HELLO`.
//! 1. `HELLO` both ways: version and every option both parties must agree on
//!    (protocol, key column count, join, receivers, left side, normalisation,
//!    security parameter). Compared before any input is read or any key
//!    material sent; a difference is an error at both ends naming the option.
//! 2. Each party reads its input (see `store`), then `SIZES` both ways: rows
//!    and the bucket count it needs for its memory budget. The larger count
//!    wins, so neither party ever holds more than its own budget allows.
//! 3. For each bucket: `BUCKET` (unique items, whether any key repeats), the
//!    protocol on the shuffled unique items, then `STATUS` (did the protocol
//!    itself give me the result) and the count/forwarding messages that give
//!    every receiver the peer's row count of each matched key (see
//!    [`exchange_counts`]).
//! 4. `SUMMARY` both ways (unique key totals, for the report), then each
//!    receiver writes its output.
//!
//! What a party learns beyond the protocol itself: the peer's row and unique
//! key counts (total and per bucket); a receiver learns the peer's number of
//! rows for each matched key (needed for SQL-style duplicate expansion); and
//! when the peer is *not* a receiver but has duplicate keys, the receiver
//! learns the multiplicity of each of the peer's keys in the peer's random
//! order — how often keys repeat, not which keys. docs/psi.md lists this per
//! join type.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::channel::Channel;
use crate::config::{JoinType, PsiConfig, Receiver};
use crate::core::{CoreFn, CoreInput, Item};
use crate::csv::{Block, Blocks, CsvReader, plain_records, split_lines};
use crate::error::PsiError;
use crate::item::{item_of, order_class, push_column};
use crate::output::{OutWriter, RunWriter, format_matched, merge_runs};
use crate::report::{
    InputStats, Intersection, OutputStats, PeerStats, Phases, Report, peak_rss_mb,
};
use crate::rr22::prim::{Aes, os_random};
use crate::slices::{split_lens, split_starts};
use crate::store::{Loaded, Rows, Store};
use crate::workers::{PartMeta, Shard};
use crate::{ecdh, rr22, wire};

const HELLO: u8 = 0x01;
const SIZES: u8 = 0x02;
const BUCKET: u8 = 0x03;
const STATUS: u8 = 0x04;
const ALL_COUNTS: u8 = 0x05;
const FORWARD: u8 = 0x06;
const COUNTS: u8 = 0x07;
const SUMMARY: u8 = 0x08;
const EARLY: u8 = 0x09;

/// Bumped whenever a message changes (2: per-batch sizes in `BUCKET`; 3:
/// RR22's `EARLY` proposal after the handshake).
const VERSION: &str = "venn-psi/3";

/// Runs this party's side of a PSI over `chan`.
///
/// `output` is where a receiving party writes its rows (required when this
/// party receives; ignored otherwise). On error the peer is told why.
pub fn run(
    cfg: &PsiConfig,
    input: &Path,
    output: Option<&Path>,
    chan: &dyn Channel,
) -> Result<Report, PsiError> {
    run_scoped(cfg, None, input, Dest::Output(output), chan)
}

/// Reads `input` as a run would (all rows, `cfg`'s key columns) and returns
/// the row count: the read path alone, for `cargo bench -p venn-psi`. With
/// `ahead`, as a party that reads ahead does (a file of keys without its
/// text, [`read_keys_only`]).
#[doc(hidden)]
pub fn bench_read(cfg: &PsiConfig, input: &Path, ahead: bool) -> Result<u64, PsiError> {
    let input = if ahead {
        read_ahead_input(cfg, input)?
    } else {
        read_input(cfg, None, input)?
    };
    Ok(input.loaded.rows)
}

/// A party's input file, read on a thread of its own while the link to the
/// peer is set up ([`ReadAhead::start`], then [`run_read_ahead`]).
///
/// Why: the listening party otherwise idles until its peer connects, and
/// both parties idle through the TLS handshake; reading the file is a fifth
/// of a whole RR22 run at 2^20 rows. The handshake still comes before the
/// file is used, and a bad file is reported at the same point as before
/// (after the handshake), so the peer hears the reason.
pub struct ReadAhead {
    path: PathBuf,
    state: Ahead,
}

enum Ahead {
    Reading(std::thread::JoinHandle<Result<Input, PsiError>>),
    /// Read in place: no thread could be started.
    Done(Box<Result<Input, PsiError>>),
}

impl ReadAhead {
    /// Starts reading `input` as `cfg` says (key columns, normalisation,
    /// memory budget), all rows: for a party that runs as one worker.
    pub fn start(cfg: &PsiConfig, input: &Path) -> Self {
        let path = input.to_path_buf();
        let (c, p) = (cfg.clone(), path.clone());
        // The read and the grouping run as one job of the thread pool
        // (`rayon::scope` from outside the pool runs its body on a pool
        // thread): their parallel steps then split from inside the pool.
        // Started from this plain thread, each step was handed to the pool
        // and waited for: alternated at 2^20 rows, ten runs each, the
        // connector's read took 0.054–0.079 s where it now takes
        // 0.040–0.065 s (medians ~0.061 and ~0.048 s).
        let state = match std::thread::Builder::new()
            .name("venn-psi-read".into())
            .spawn(move || rayon::scope(|_| read_ahead_input(&c, &p).map(|i| work_ahead(&c, i))))
        {
            Ok(h) => Ahead::Reading(h),
            Err(_) => Ahead::Done(Box::new(read_input(cfg, None, input))),
        };
        ReadAhead { path, state }
    }

    fn finish(self) -> Result<Input, PsiError> {
        match self.state {
            Ahead::Reading(h) => h
                .join()
                .unwrap_or_else(|_| Err(PsiError::peer("the input reading thread panicked"))),
            Ahead::Done(r) => *r,
        }
    }
}

/// [`run`] with an input that is already being read ([`ReadAhead`]).
pub fn run_read_ahead(
    cfg: &PsiConfig,
    input: ReadAhead,
    output: Option<&Path>,
    chan: &dyn Channel,
) -> Result<Report, PsiError> {
    let path = input.path.clone();
    run_checked(cfg, None, &path, Dest::Output(output), chan, Some(input))
}

/// Where a receiver's rows go.
#[derive(Clone, Copy)]
pub(crate) enum Dest<'a> {
    /// The final output file (required at a receiver).
    Output(Option<&'a Path>),
    /// A worker's part: sorted runs and `part.json` in this directory, merged
    /// later with the other workers' parts (see `workers`).
    Part(&'a Path),
}

/// [`run`] for the rows of one worker's `shard` (all rows when `None`).
pub(crate) fn run_scoped(
    cfg: &PsiConfig,
    shard: Option<&Shard>,
    input: &Path,
    dest: Dest<'_>,
    chan: &dyn Channel,
) -> Result<Report, PsiError> {
    run_checked(cfg, shard, input, dest, chan, None)
}

/// Checks the configuration, runs, and tells the peer why on a local error.
fn run_checked(
    cfg: &PsiConfig,
    shard: Option<&Shard>,
    input: &Path,
    dest: Dest<'_>,
    chan: &dyn Channel,
    ahead: Option<ReadAhead>,
) -> Result<Report, PsiError> {
    let res = cfg.validate().and_then(|_| {
        if cfg.self_receives() && matches!(dest, Dest::Output(None)) {
            return Err(PsiError::Config {
                field: "--output",
                message: "this party receives the result: name the output file".into(),
            });
        }
        run_inner(cfg, shard, input, ahead, dest, chan)
    });
    if let Err(e) = &res
        && !matches!(
            e,
            PsiError::Channel(_) | PsiError::Peer(_) | PsiError::Mismatch { .. }
        )
    {
        wire::abort(chan, &e.to_string());
    }
    res
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Hello {
    version: String,
    protocol: String,
    key_columns: usize,
    join: String,
    /// Absolute: which parties receive, e.g. [true, false].
    receivers: [bool; 2],
    /// Absolute left party for left/right joins, else None.
    left: Option<u8>,
    trim: bool,
    lowercase: bool,
    stat_sec: u32,
    low_comm: bool,
    malicious: bool,
    /// The worker plan of this link ("single", or the pair's index, the
    /// pair count and the agreed bucket seed), see `workers`.
    plan: String,
}

fn hello_of(cfg: &PsiConfig, shard: Option<&Shard>) -> Hello {
    let p = cfg.party() as usize;
    let mut receivers = [false; 2];
    receivers[p] = cfg.self_receives();
    receivers[1 - p] = cfg.peer_receives();
    Hello {
        version: VERSION.into(),
        protocol: cfg.protocol.to_string(),
        key_columns: cfg.keys.len(),
        join: cfg.join.to_string(),
        receivers,
        left: matches!(cfg.join, JoinType::Left | JoinType::Right).then(|| cfg.left_party()),
        trim: cfg.normalize.trim,
        lowercase: cfg.normalize.lowercase,
        stat_sec: cfg.stat_sec,
        low_comm: cfg.low_comm,
        malicious: cfg.malicious,
        plan: shard.map_or_else(|| "single".to_string(), Shard::describe),
    }
}

fn describe_receivers(r: [bool; 2]) -> String {
    match r {
        [true, true] => "both parties".into(),
        [true, false] => "the listener only".into(),
        [false, true] => "the connector only".into(),
        [false, false] => "nobody".into(),
    }
}

fn handshake(cfg: &PsiConfig, shard: Option<&Shard>, chan: &dyn Channel) -> Result<(), PsiError> {
    let ours = hello_of(cfg, shard);
    wire::send(
        chan,
        HELLO,
        &serde_json::to_vec(&ours).expect("hello serialises"),
    )?;
    let raw = wire::recv(chan, HELLO, "the peer's options")?;
    let theirs: Hello = serde_json::from_slice(&raw)
        .map_err(|e| PsiError::peer(format!("unreadable options from the peer: {e}")))?;
    let mismatch = |field: &'static str, a: String, b: String| {
        Err(PsiError::Mismatch {
            field,
            ours: a,
            theirs: b,
        })
    };
    if ours.version != theirs.version {
        return mismatch("version", ours.version, theirs.version);
    }
    if ours.protocol != theirs.protocol {
        return mismatch("--protocol", ours.protocol, theirs.protocol);
    }
    if ours.key_columns != theirs.key_columns {
        return mismatch(
            "the number of --keys columns",
            ours.key_columns.to_string(),
            theirs.key_columns.to_string(),
        );
    }
    if ours.join != theirs.join {
        return mismatch("--join", ours.join, theirs.join);
    }
    if ours.receivers != theirs.receivers {
        return mismatch(
            "--receiver (who gets the output)",
            describe_receivers(ours.receivers),
            describe_receivers(theirs.receivers),
        );
    }
    if ours.left != theirs.left {
        let side = |l: Option<u8>| match l {
            Some(0) => "the listener".to_string(),
            Some(_) => "the connector".to_string(),
            None => "unset".to_string(),
        };
        return mismatch(
            "--left (the left side of the join)",
            side(ours.left),
            side(theirs.left),
        );
    }
    if (ours.trim, ours.lowercase) != (theirs.trim, theirs.lowercase) {
        let n = |h: &Hello| format!("trim={} lowercase={}", h.trim, h.lowercase);
        return mismatch("--normalize", n(&ours), n(&theirs));
    }
    if ours.stat_sec != theirs.stat_sec {
        return mismatch(
            "statistical security",
            ours.stat_sec.to_string(),
            theirs.stat_sec.to_string(),
        );
    }
    if ours.low_comm != theirs.low_comm {
        return mismatch(
            "--low-comm",
            ours.low_comm.to_string(),
            theirs.low_comm.to_string(),
        );
    }
    if ours.malicious != theirs.malicious {
        return mismatch(
            "--malicious",
            ours.malicious.to_string(),
            theirs.malicious.to_string(),
        );
    }
    if ours.plan != theirs.plan {
        return mismatch("the worker plan", ours.plan, theirs.plan);
    }
    if !ours.receivers.iter().any(|r| *r) {
        return Err(PsiError::Config {
            field: "--receiver",
            message: "nobody would receive the result".into(),
        });
    }
    Ok(())
}

/// An RR22 VOLE run before the sizes ([`rr22::EarlyVole`]), and for what.
struct EarlyRun {
    vole: rr22::EarlyVole,
    /// the receiver's unique items it was run for (n_x)
    n_x: u64,
    /// whether this party is RR22's receiver
    receiver: bool,
}

/// RR22's early VOLE ([`rr22::EarlyVole`]) around reading the input
/// (`read`), right after the handshake. The receiver reads (its input was
/// read ahead, [`ReadAhead`]) and proposes its unique item count if it
/// prepared its work ahead for one batch, else 0; the sender answers
/// whether it takes part, and if so runs its side of the VOLE on a thread
/// while it reads. Each party gets its input and, if the VOLE ran, its
/// side of it. The run uses it only if it is of one bucket and one batch
/// (`run_inner`).
fn early_vole(
    cfg: &PsiConfig,
    chan: &dyn Channel,
    read: impl FnOnce() -> Result<Input, PsiError>,
) -> Result<(Input, Option<EarlyRun>), PsiError> {
    if cfg.protocol != crate::config::Protocol::Rr22 {
        return Ok((read()?, None));
    }
    let fast = !cfg.low_comm && !cfg.malicious;
    match rr22::is_receiver(cfg.self_receives(), cfg.peer_receives(), cfg.leader) {
        Some(true) => {
            let input = read()?;
            let ahead = input
                .pre
                .as_ref()
                .filter(|p| fast && p.kbits == 0)
                .and_then(|p| p.rr22.as_ref());
            let n_x = ahead.and_then(|a| a.early_items());
            wire::send(chan, EARLY, &(n_x.unwrap_or(0) as u64).to_le_bytes())?;
            let (Some(ahead), Some(n_x)) = (ahead, n_x) else {
                return Ok((input, None));
            };
            if wire::recv(chan, EARLY, "the peer's answer to the early VOLE")? != [1] {
                return Ok((input, None));
            }
            // nothing took the work since `early_items` saw it
            let vole = rr22::EarlyVole::receive(chan, ahead)?
                .ok_or_else(|| PsiError::peer("the early VOLE's work ahead is gone"))?;
            let early = EarlyRun {
                vole,
                n_x: n_x as u64,
                receiver: true,
            };
            Ok((input, Some(early)))
        }
        Some(false) => {
            let msg = wire::recv(chan, EARLY, "the peer's early VOLE proposal")?;
            let n_x = u64s(&msg, 1, "early VOLE proposal")?[0];
            if n_x == 0 {
                return Ok((read()?, None));
            }
            // a receiver with more items than a batch holds (by default
            // at most `default_batch_rows` of a small input) runs in
            // batches, where the early VOLE would go unused
            let most = cfg
                .batch_rows
                .unwrap_or_else(|| crate::config::default_batch_rows(0));
            let accept = fast && n_x <= most;
            wire::send(chan, EARLY, &[accept as u8])?;
            if !accept {
                return Ok((read()?, None));
            }
            let send = rr22::EarlySend::new(n_x as usize, cfg.stat_sec);
            // after the read, Δ·H(y) of the items the run will get (one
            // batch of the grouping done ahead), while the VOLE still runs
            let read_and_prepare = || {
                let input = read()?;
                if let Some(p) = input.pre.as_ref().filter(|p| p.kbits == 0) {
                    send.prepare(p.unique.clone());
                }
                Ok::<_, PsiError>(input)
            };
            let (input, k) = std::thread::scope(|s| {
                match std::thread::Builder::new()
                    .name("venn-psi-early".into())
                    .spawn_scoped(s, || send.run(chan))
                {
                    Ok(vole) => {
                        let input = read_and_prepare();
                        // joined before a read error is reported: the VOLE
                        // ends by itself (the receiver sends all it needs)
                        let k = vole.join().unwrap_or_else(|_| {
                            Err(PsiError::peer("the early VOLE's thread panicked"))
                        });
                        (input, k)
                    }
                    // no thread: the VOLE first, then the file
                    Err(_) => {
                        let k = send.run(chan);
                        (read_and_prepare(), k)
                    }
                }
            });
            // the read's error first: it is the cause if both failed
            let input = input?;
            let early = EarlyRun {
                vole: send.finish(k?),
                n_x,
                receiver: false,
            };
            Ok((input, Some(early)))
        }
        None => Ok((read()?, None)),
    }
}

/// The input after reading.
struct Input {
    header: Vec<u8>,
    ncols: usize,
    loaded: Loaded,
    skipped: u64,
    /// Work done before the peer was there ([`work_ahead`]).
    pre: Option<Pre>,
}

/// What [`work_ahead`] did: the whole input grouped as bucket 0 of 1, and
/// the RR22 receiver's noise, A and OKVS for it, computed in the background.
struct Pre {
    /// The grouping, its unique items moved to `unique`.
    g: Grouped,
    unique: std::sync::Arc<Vec<Item>>,
    rr22: Option<crate::rr22::ReceiverAhead>,
    /// The batch bits the grouping used ([`batch_bits`] of this party's rows).
    kbits: u32,
}

/// The work a party that reads ahead ([`ReadAhead`]) does next, before its
/// peer is there: while the link comes up and the peer starts and reads,
/// this party's cores are idle. If its rows are one bucket by its own
/// measure (the usual case; the peer may still ask for more), it groups
/// them, and as RR22's receiver in the fast or malicious mode it prepares
/// all it sends before the tags ([`crate::rr22::ReceiverAhead::spawn`]). Measured at 2^20 rows with
/// `compare.sh` (the listener starts 0.3 s earlier): see docs/psi.md. A run
/// that needs more buckets puts the items back ([`Grouped::items_by_row`]).
fn work_ahead(cfg: &PsiConfig, mut input: Input) -> Input {
    if input.loaded.need_buckets != 1 || !input.loaded.in_memory() {
        return input;
    }
    let Ok(mut br) = input.loaded.bucket(0, 1) else {
        return input;
    };
    // rows without text are never looked up: their groups keep no rows
    let rows = br.rows().has_text() || br.idx.is_some();
    let (items, idx) = (std::mem::take(&mut br.items), std::mem::take(&mut br.idx));
    // the peer's size may still ask for other batches (then this is undone)
    let kbits = batch_bits(input.loaded.rows, batch_rows_of(cfg, input.loaded.rows));
    let mut g = Grouped::new(items, idx, os_random(), kbits, rows);
    let mut unique = std::mem::take(&mut g.unique);
    if sorts_ahead(cfg, &g, kbits, &unique) {
        sort_items_in_place(&mut unique);
    }
    let unique = std::sync::Arc::new(unique);
    let rr22 = rr22_ahead(cfg, &unique, g.batch(0));
    input.pre = Some(Pre {
        g,
        unique,
        rr22,
        kbits,
    });
    input
}

/// Whether [`work_ahead`] puts the groups of `g` (unique items `unique`)
/// in the items' own order instead of the grouping's pseudorandom one: for
/// RR22's receiver whose matches will be written from their items (one
/// batch, no repeated key, rows without text that are their keys, every
/// item in one order class). Its matches then come out of the protocol
/// already sorted ([`matched_items_sorted`] sees that and only moves them
/// together, in place), and the sort of the matches at the end of the run,
/// 8–15 ms at 2^20 rows while the peer does the same on the same cores, is
/// done here instead, while this party waits for its peer.
///
/// Only the receiver: its group positions never leave it (the join's
/// result goes to the sender as the *sender's* positions, see
/// [`exchange_counts`]), and its OKVS, tags and join do not depend on the
/// order of its items. The sender's positions do reach the receiver, so
/// its groups stay in the pseudorandom order.
fn sorts_ahead(cfg: &PsiConfig, g: &Grouped, kbits: u32, unique: &[Item]) -> bool {
    kbits == 0
        && rr22_receiver(cfg)
        && !writes_unmatched(cfg)
        && !g.has_dups()
        && g.order.is_empty()
        && g.starts.is_empty()
        && one_order_class(unique)
}

/// RR22's receiver work ahead ([`crate::rr22::ReceiverAhead::spawn`]) for
/// the batch `range` of `unique`, if this party is RR22's receiver in the
/// fast or malicious mode.
fn rr22_ahead(
    cfg: &PsiConfig,
    unique: &std::sync::Arc<Vec<Item>>,
    range: std::ops::Range<usize>,
) -> Option<crate::rr22::ReceiverAhead> {
    (rr22_receiver(cfg) && !cfg.low_comm)
        .then(|| {
            crate::rr22::ReceiverAhead::spawn(unique.clone(), range, cfg.stat_sec, cfg.malicious)
        })
        .flatten()
}

/// Whether this party runs RR22 as its receiver.
fn rr22_receiver(cfg: &PsiConfig) -> bool {
    cfg.protocol == crate::config::Protocol::Rr22
        && crate::rr22::is_receiver(cfg.self_receives(), cfg.peer_receives(), cfg.leader)
            == Some(true)
}

/// This party's rows per batch: as configured, or the default for its
/// `rows` ([`crate::config::default_batch_rows`]).
fn batch_rows_of(cfg: &PsiConfig, rows: u64) -> u64 {
    cfg.batch_rows
        .unwrap_or_else(|| crate::config::default_batch_rows(rows))
}

/// Batch bits for a bucket of at most `rows` rows at either party, with
/// `batch` rows per batch ([`PsiConfig::batch_rows`], the smaller of the
/// two parties'): both parties compute it from the sizes they exchanged, so
/// they agree.
///
/// A bucket with more rows than `batch` at either party runs the protocol
/// in batches ([`crate::store::batch_of`]), one after another, on one
/// grouping and one output: the protocol's working set (RR22's VOLE and
/// OKVS vectors, ~200 bytes per item at their peak) is then that of a
/// batch, not of the bucket. Buckets (`store`) bound the rows a party holds
/// and go through files; batches bound only the protocol's memory and cost
/// a few round trips and a base-OT set-up each. The default
/// ([`crate::config::default_batch_rows`]) keeps RR22 under half of
/// SecretFlow's peak RSS up to 2^24 rows.
fn batch_bits(rows: u64, batch: u64) -> u32 {
    let k = rows.div_ceil(batch.max(1)).max(1).next_power_of_two();
    k.trailing_zeros().min(crate::store::MAX_BATCH_BITS)
}

fn normalize_into(out: &mut Vec<u8>, field: &[u8], cfg: &PsiConfig) {
    let f = if cfg.normalize.trim {
        field.trim_ascii()
    } else {
        field
    };
    let start = out.len();
    out.extend_from_slice(f);
    if cfg.normalize.lowercase {
        out[start..].make_ascii_lowercase();
    }
}

/// Matched keys formatted per parallel window of the output.
const WRITE_WINDOW: usize = 1 << 18;
/// Matched keys between a row's prefetch and its use (see the writer).
const PREFETCH_ROWS: usize = 8;

/// A matched key of a bucket: its group, the peer's row count, our row
/// count and our first row (in file order).
#[derive(Clone, Copy, Default)]
struct Matched {
    gi: u32,
    peer: u32,
    n: u32,
    first: u32,
}

impl Matched {
    /// Our rows of this key, in file order.
    fn rows<'a>(
        &'a self,
        g: &'a Grouped,
        rows: &'a Rows,
    ) -> impl ExactSizeIterator<Item = &'a [u8]> + Clone + 'a {
        let own = if self.n == 1 {
            std::slice::from_ref(&self.first)
        } else {
            g.rows(self.gi as usize)
        };
        own.iter().map(|&r| rows.raw(r as usize))
    }
}

/// Bytes of input parsed per block (see [`Blocks`]). In memory a block is
/// read into the rows' arena and costs nothing besides; once the rows spill,
/// a block and its parsed rows (~2.5× its size for short records) are held
/// besides: 8 MiB keeps that under 30 MB, where 32 MiB blocks held ~120 MB
/// at the read's peak, and reads no slower (`VENN_BENCH=read`, 2^20 rows:
/// 89 against 93 ms, when every block went through its own buffer).
const READ_BLOCK: usize = 8 << 20;

/// Turns a record's fields into its canonical key.
struct KeyCols<'a> {
    cfg: &'a PsiConfig,
    /// Key column positions, in `--keys` order.
    cols: &'a [usize],
    /// Fields in the header.
    ncols: usize,
    /// Only rows of this worker's bucket are kept.
    shard: Option<&'a Shard>,
}

impl KeyCols<'_> {
    /// Whether a row with this item belongs to this run (its worker's bucket).
    fn keeps(&self, item: Item) -> bool {
        self.shard.is_none_or(|s| s.keeps(item))
    }

    /// Writes the key of a record with `nfields` fields into `key`.
    /// `Ok(false)`: an empty key to skip (`--skip-empty-keys`). `Err`: the
    /// index into `--keys` of the field at fault (if one) and what to do.
    fn key<'f>(
        &self,
        nfields: usize,
        field: impl Fn(usize) -> &'f [u8],
        key: &mut Vec<u8>,
    ) -> Result<bool, (Option<usize>, String)> {
        let (cfg, ncols) = (self.cfg, self.ncols);
        if nfields != ncols {
            return Err((
                None,
                format!(
                    "this row has {nfields} fields but the header has {ncols}; quote fields that contain commas"
                ),
            ));
        }
        key.clear();
        for (ci, &c) in self.cols.iter().enumerate() {
            let field = field(c);
            if field.is_empty() || (cfg.normalize.trim && field.trim_ascii().is_empty()) {
                if cfg.skip_empty_keys {
                    return Ok(false);
                }
                return Err((
                    Some(ci),
                    "the key is empty; fill it in, or pass --skip-empty-keys to leave such rows out"
                        .into(),
                ));
            }
            if std::str::from_utf8(field).is_err() {
                return Err((
                    Some(ci),
                    "the key is not valid UTF-8; convert the file to UTF-8 (e.g. iconv -f GBK -t UTF-8)"
                        .into(),
                ));
            }
            if self.cols.len() == 1 {
                normalize_into(key, field, cfg);
            } else {
                let mut col = Vec::with_capacity(field.len());
                normalize_into(&mut col, field, cfg);
                push_column(key, &col);
            }
        }
        Ok(true)
    }

    /// Where the key of a quote-free record lies in `raw`, when it is one
    /// field used as it stands: one key column, the right field count, not
    /// empty after trimming, ASCII (so valid UTF-8) and, with `lowercase`,
    /// no capitals. `None` sends the record down [`Self::key`], which also
    /// reports what is wrong with it.
    #[inline]
    fn field_as_key(
        &self,
        raw: &[u8],
        fields: &[std::ops::Range<usize>],
    ) -> Option<std::ops::Range<usize>> {
        let &[c] = self.cols else { return None };
        if fields.len() != self.ncols {
            return None;
        }
        let mut r = fields[c].clone();
        let norm = &self.cfg.normalize;
        if norm.trim {
            while r.start < r.end && raw[r.start].is_ascii_whitespace() {
                r.start += 1;
            }
            while r.end > r.start && raw[r.end - 1].is_ascii_whitespace() {
                r.end -= 1;
            }
        }
        let f = &raw[r.clone()];
        let plain = !f.is_empty()
            && f.is_ascii()
            && !(norm.lowercase && f.iter().any(u8::is_ascii_uppercase));
        plain.then_some(r)
    }

    /// Parses the quote-free `text`, which lies at `off` in the arena, into
    /// `items` and `recs` (one slot per line at least) when every row's key
    /// is a field as it stands ([`Self::field_as_key`]): the rows keep their
    /// text where it is. Returns the rows written and whether some row's
    /// text is more than its key, or `None` at the first row that needs
    /// more (then [`Self::parse_plain`] takes the piece, errors included).
    fn parse_in_place(
        &self,
        text: &[u8],
        off: u64,
        items: &mut [Item],
        recs: &mut [crate::store::Rec],
    ) -> Option<(usize, bool)> {
        let (mut n, mut raw_not_key) = (0, false);
        self.each_key_in_place(text, |at, raw, r, item| {
            let rec = crate::store::Rec::key_in_raw(off + at as u64, raw.len(), r.start, r.len())
                .ok_or(())?;
            raw_not_key |= r.start != 0 || r.len() != raw.len();
            items[n] = item;
            recs[n] = rec;
            n += 1;
            Ok(())
        })?;
        Some((n, raw_not_key))
    }

    /// [`Self::parse_in_place`] for a file read without its text
    /// ([`read_keys_only`]): the items alone, and `None` also at a row
    /// whose text is more than its key.
    fn items_in_place(&self, text: &[u8], items: &mut [Item]) -> Option<usize> {
        let mut n = 0;
        self.each_key_in_place(text, |_, raw, r, item| {
            if r.start != 0 || r.len() != raw.len() {
                return Err(());
            }
            items[n] = item;
            n += 1;
            Ok(())
        })?;
        Some(n)
    }

    /// Calls `f(at, raw, key range, item)` for each row of the quote-free
    /// `text` that this run keeps, while every row's key is a field as it
    /// stands ([`Self::field_as_key`]); `None` at the first row whose key is
    /// not, or where `f` fails.
    fn each_key_in_place(
        &self,
        text: &[u8],
        mut f: impl FnMut(usize, &[u8], std::ops::Range<usize>, Item) -> Result<(), ()>,
    ) -> Option<()> {
        plain_records(text, |_, at, raw, fields| {
            let r = self.field_as_key(raw, fields).ok_or(())?;
            let item = item_of(&raw[r.clone()]);
            if self.keeps(item) {
                f(at, raw, r, item)?;
            }
            Ok::<(), ()>(())
        })
        .ok()
    }

    /// Parses quote-free lines into rows: (rows, skipped rows, lines).
    /// Errors carry line numbers counted from 1 at the start of `text`.
    /// Parses into `rows` (emptied first; a buffer of an earlier block, so
    /// that its memory is reused rather than faulted in again).
    fn parse_plain(
        &self,
        text: &[u8],
        path: &Path,
        mut rows: Rows,
    ) -> Result<(Rows, u64, u64), PsiError> {
        // Sized up front: a row takes its line plus its key (at most the
        // line again, plus two bytes per column of framing for tuples), so
        // the vectors never grow and copy while parsing.
        let lines = memchr::memchr_iter(b'\n', text).count() as u64;
        let rows_max = lines as usize + 1;
        let framing = if self.cols.len() > 1 {
            2 * self.cols.len()
        } else {
            0
        };
        rows.clear();
        rows.reserve(rows_max, 2 * text.len() + rows_max * framing);
        let mut key = Vec::with_capacity(64);
        let mut skipped = 0u64;
        plain_records(text, |line, _, raw, fields| {
            // One key column that is its own key (no case change needed):
            // the item comes from the field in place, the key stays in the
            // row. Everything else (and every error) takes the general path.
            if let Some(r) = self.field_as_key(raw, fields) {
                let item = item_of(&raw[r.clone()]);
                if self.keeps(item) {
                    rows.push_key_in_raw(item, raw, r.start, r.len());
                }
                return Ok(());
            }
            let field = |i: usize| &raw[fields[i].clone()];
            match self.key(fields.len(), field, &mut key) {
                Ok(true) => {
                    let item = item_of(&key);
                    if self.keeps(item) {
                        rows.push(item, raw, &key)
                    }
                }
                Ok(false) => skipped += 1,
                Err((col, message)) => {
                    return Err(PsiError::Input {
                        path: path.to_path_buf(),
                        line,
                        column: col.map(|c| self.cfg.keys[c].clone()),
                        message,
                    });
                }
            }
            Ok(())
        })?;
        Ok((rows, skipped, lines))
    }
}

/// How a piece of a block was parsed by [`parse_in_arena`].
enum Piece {
    /// Its first `rows` slots hold its rows, which point into the block.
    InPlace { rows: usize, raw_not_key: bool },
    /// Some row needed more than a field in place (a normalised key, a key
    /// of several columns, an empty key to skip): the piece went down
    /// [`KeyCols::parse_plain`] into rows with their own arena (handed back
    /// with the result), and `skipped` rows were left out.
    Parsed { skipped: u64 },
}

/// A block of text cut for every thread (four pieces a thread, each ending
/// with a newline), and each piece's newlines.
fn pieces_of(text: &[u8]) -> (Vec<&[u8]>, Vec<u64>) {
    let pieces = split_lines(text, rayon::current_num_threads() * 4);
    let lines = pieces
        .par_iter()
        .map(|p| memchr::memchr_iter(b'\n', p).count() as u64)
        .collect();
    (pieces, lines)
}

/// Row slots for pieces with these newline counts: a piece has at most one
/// row more than its newlines (the file's last line).
fn slots_of(lines: &[u64]) -> Vec<usize> {
    lines.iter().map(|&l| l as usize + 1).collect()
}

/// Parses the quote-free block `arena[start..]` of the store's in-memory
/// rows where it lies: rows whose key is a field as it stands (nearly every
/// key file) keep their text where it was read, and their items and
/// records are written straight into the store's vectors, each piece of the
/// block into slots sized by its line count. Returns the rows skipped.
///
/// Why: reading into a block buffer, parsing each piece into rows of its
/// own and appending those to the store copied every byte twice and touched
/// ~80 MB of fresh pages for a 20 MB file of 2^20 IDs (the block, the
/// pieces' rows, the store's rows), and the sequential append was a third
/// of the read. Here the text is read once, from the page cache into the
/// arena, and the rows' pages are touched once, on all threads.
///
/// A piece with any other row is parsed the general way and its rows are
/// put in its slots afterwards (their own copy of the text goes to the end
/// of the arena); slots left over (empty lines, skipped rows, rows of other
/// workers) are closed up in a pass over the row vectors. Such a piece's
/// text is then in the arena twice, so the caller reads the rest of the
/// file the other way once a block had one (see `read_input`). Returns
/// also whether every piece was parsed in place.
fn parse_in_arena(
    keys: &KeyCols<'_>,
    store: &mut Store,
    start: usize,
    first_line: u64,
    spare: &mut Vec<Rows>,
    path: &Path,
) -> Result<(u64, bool), PsiError> {
    let rows = store.direct().expect("the rows are in memory");
    let arena_before = rows.arena_mut().len();
    let text_len = arena_before - start;
    // the pieces (offsets into the arena) and their newlines
    let (bounds, lines): (Vec<(usize, usize)>, Vec<u64>) = {
        let (pieces, lines) = pieces_of(&rows.arena_mut()[start..]);
        let mut at = start;
        let bounds = pieces
            .iter()
            .map(|p| {
                at += p.len();
                (at - p.len(), at)
            })
            .collect();
        (bounds, lines)
    };
    let slots = slots_of(&lines);
    let total: usize = slots.iter().sum();
    store.reserve_rows(total, text_len as u64);
    let rows = store.direct().expect("the rows are in memory");
    let first_slot = rows.len();
    if spare.len() < bounds.len() {
        spare.resize_with(bounds.len(), Rows::default);
    }
    let parsed: Vec<Result<(Piece, Rows), PsiError>> = {
        let (arena, items, recs) = rows.grow(total);
        let mut work = Vec::with_capacity(bounds.len());
        let mut line = first_line;
        let carved = split_lens(items, slots.iter().copied())
            .into_iter()
            .zip(split_lens(recs, slots.iter().copied()));
        for ((&(from, to), &l), (it, rc)) in bounds.iter().zip(&lines).zip(carved) {
            work.push((from as u64, &arena[from..to], it, rc, line));
            line += l;
        }
        work.into_par_iter()
            .zip(spare.par_drain(..bounds.len()))
            .map(|((off, text, items, recs, line), own)| {
                if let Some((n, raw_not_key)) = keys.parse_in_place(text, off, items, recs) {
                    let piece = Piece::InPlace {
                        rows: n,
                        raw_not_key,
                    };
                    return Ok((piece, own));
                }
                match keys.parse_plain(text, path, own) {
                    Ok((own, skipped, _)) => Ok((Piece::Parsed { skipped }, own)),
                    Err(mut e) => {
                        if let PsiError::Input { line: l, .. } = &mut e {
                            *l += line - 1;
                        }
                        Err(e)
                    }
                }
            })
            .collect()
    };
    // close up the slots, in file order (rows only move down)
    let (mut skipped, mut all_in_place) = (0, true);
    let (mut to, mut slot) = (first_slot, first_slot);
    for (res, n) in parsed.into_iter().zip(&slots) {
        let (piece, own) = res?;
        match piece {
            Piece::InPlace {
                rows: k,
                raw_not_key,
            } => {
                rows.shift_down(slot, k, to);
                if raw_not_key {
                    rows.note_raw_not_key();
                }
                to += k;
            }
            Piece::Parsed { skipped: k } => {
                rows.place(&own, to);
                to += own.len();
                skipped += k;
                all_in_place = false;
            }
        }
        spare.push(own);
        slot += n;
    }
    rows.truncate(to);
    let arena_added = (rows.arena_mut().len() - start) as u64;
    store.added_direct(to - first_slot, text_len as u64, arena_added)?;
    Ok((skipped, all_in_place))
}

fn read_input(cfg: &PsiConfig, shard: Option<&Shard>, path: &Path) -> Result<Input, PsiError> {
    read_input_in_blocks(cfg, shard, path, READ_BLOCK)
}

/// An input file opened past its header.
struct Opened {
    reader: CsvReader<File>,
    /// the header row as it stands
    header: Vec<u8>,
    /// fields in the header
    ncols: usize,
    /// the key columns' positions, in `--keys` order
    cols: Vec<usize>,
    file_len: u64,
}

/// Opens `path` and reads its header: the key columns must be in it.
fn open_input(cfg: &PsiConfig, path: &Path) -> Result<Opened, PsiError> {
    let f = File::open(path).map_err(|e| PsiError::io(path, e))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // the header alone is read here; the rows go through blocks
    let mut r = CsvReader::with_buffer(f, path, 64 << 10);
    if !r.read()? {
        return Err(PsiError::Input {
            path: path.to_path_buf(),
            line: 1,
            column: None,
            message: "the file is empty; it needs a header row naming the columns".into(),
        });
    }
    let header = r.raw().to_vec();
    let names: Vec<String> = (0..r.len())
        .map(|i| String::from_utf8_lossy(r.field(i)).into_owned())
        .collect();
    let mut cols = Vec::with_capacity(cfg.keys.len());
    for k in &cfg.keys {
        match names.iter().position(|n| n == k) {
            Some(i) => cols.push(i),
            None => {
                return Err(r.error(
                    Some(k),
                    format!(
                        "no such column in the header; the columns are: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(Opened {
        reader: r,
        header,
        ncols: names.len(),
        cols,
        file_len,
    })
}

/// What a party that reads ahead ([`ReadAhead`]) reads: its rows' items
/// alone where every row may be written from its item
/// ([`read_keys_only`]), else the whole rows.
fn read_ahead_input(cfg: &PsiConfig, path: &Path) -> Result<Input, PsiError> {
    if keys_only_candidate(cfg)
        && let Some(input) = read_keys_only(cfg, path, KEYS_BLOCK)?
    {
        return Ok(input);
    }
    read_input(cfg, None, path)
}

/// Whether this party writes rows of its own without a match (a
/// difference, or its outer side of a join): those are written from their
/// text, never from their items.
fn writes_unmatched(cfg: &PsiConfig) -> bool {
    cfg.self_receives() && (cfg.join == JoinType::Difference || cfg.outer(cfg.party()))
}

/// Whether [`read_keys_only`] may be tried: one key column, and no rows
/// of this party's own written without a match.
fn keys_only_candidate(cfg: &PsiConfig) -> bool {
    cfg.keys.len() == 1 && !writes_unmatched(cfg)
}

/// Block size of [`read_keys_only`]: its block buffer is reused block
/// after block and holds no row, so it can be smaller than [`READ_BLOCK`]
/// and fault in fewer pages (a quarter of it: still ~100k rows a block for
/// the threads to share).
const KEYS_BLOCK: usize = 2 << 20;

/// Reads a file of one column, the key, into its rows' items alone, on
/// the bet that the run will write every row from its item (the text-drop
/// of the bucket loop below: one bucket, rows that are their keys, one
/// order class). Returns `None`, keeping nothing, as soon as the file
/// breaks the bet: more than one column, a quote, a row that is more than
/// its key (spaces, a case change, an empty key), keys of several order
/// classes, or a file that may not fit the memory budget. The caller then
/// reads the file the usual way, which also reports what is wrong with it.
/// If the run needs the text after all (it needs buckets: the peer's rows
/// or these do not fit one), the run reads the file again.
///
/// Why: the usual read keeps the file's text and a 16-byte record a row
/// until the bucket count is agreed, and only then drops them: at 2^20
/// rows that is ~36 MB of pages faulted in (at ~2.3 µs a page here) while
/// the peer, which read its file earlier, waits.
fn read_keys_only(cfg: &PsiConfig, path: &Path, block: usize) -> Result<Option<Input>, PsiError> {
    let o = open_input(cfg, path)?;
    if o.ncols != 1 || o.file_len.saturating_mul(2) >= cfg.memory_budget / 2 {
        return Ok(None);
    }
    let keys = KeyCols {
        cfg,
        cols: &o.cols,
        ncols: o.ncols,
        shard: None,
    };
    let mut blocks = Blocks::new(o.reader.into_rest(), block);
    let (mut buf, mut items, mut consumed) = (Vec::new(), Vec::<Item>::new(), 0u64);
    // the first key's order class, which every key must share
    let mut class = None;
    loop {
        buf.clear();
        let Some(b) = blocks.next_into(&mut buf)? else {
            break;
        };
        let Block::Plain { start, .. } = b else {
            return Ok(None);
        };
        let text = &buf[start..];
        consumed += text.len() as u64;
        let (pieces, lines) = pieces_of(text);
        let slots = slots_of(&lines);
        let first = items.len();
        let total: usize = slots.iter().sum();
        if first + total > items.capacity() {
            // for the whole file: no reallocation by doubling
            let est = crate::store::rows_in_file((first + total) as u64, consumed, o.file_len);
            items.reserve_exact(est.max(first + total) - first);
        }
        items.par_extend(rayon::iter::repeat_n(0, total));
        let filled: Option<Vec<usize>> = split_lens(&mut items[first..], slots.iter().copied())
            .into_par_iter()
            .zip(pieces.par_iter())
            .map(|(dst, text)| keys.items_in_place(text, dst))
            .collect();
        let Some(filled) = filled else {
            return Ok(None);
        };
        // close up the slots not filled (empty lines), in file order
        let (mut to, mut slot) = (first, first);
        for (&k, &n) in filled.iter().zip(&slots) {
            items.copy_within(slot..slot + k, to);
            to += k;
            slot += n;
        }
        items.truncate(to);
        // checked block by block, so that a file of hashed keys (no class)
        // or of mixed ones is given up at once, not after a whole read
        if let Some(&head) = items.get(first) {
            let c = *class.get_or_insert(order_class(head));
            if c.is_none() || !items[first..].iter().all(|&x| order_class(x) == c) {
                return Ok(None);
            }
        }
    }
    let mut store = Store::new(cfg.memory_budget, &cfg.tmp_dir);
    store.keys_only(items, consumed);
    Ok(Some(Input {
        header: o.header,
        ncols: o.ncols,
        loaded: store.finish()?,
        skipped: 0,
        pre: None,
    }))
}

/// [`read_input`] in blocks of `block` bytes (small ones in tests).
fn read_input_in_blocks(
    cfg: &PsiConfig,
    shard: Option<&Shard>,
    path: &Path,
    block: usize,
) -> Result<Input, PsiError> {
    let Opened {
        reader: r,
        header,
        ncols,
        cols,
        file_len,
    } = open_input(cfg, path)?;
    let mut store = Store::new(cfg.memory_budget, &cfg.tmp_dir);
    store.reserve_for(file_len);
    let keys = KeyCols {
        cfg,
        cols: &cols,
        ncols,
        shard,
    };
    let mut skipped = 0u64;
    let threads = rayon::current_num_threads();
    let mut blocks = Blocks::new(r.into_rest(), block);
    // In memory, each block is read onto the end of the rows' arena and
    // parsed there ([`parse_in_arena`]). Once the rows spill, or once a block
    // had rows that needed their own copy of the text, blocks go through
    // `scratch` and one Rows per piece, appended to the store. Both are
    // reused block after block, as are the pieces' Rows: a 2^24-row file is
    // forty blocks, and fresh buffers each time cost ~0.8 GB of page faults
    // (kernel page clearing).
    let mut spare: Vec<Rows> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    // whether blocks go to the arena: until one has rows that need their own
    // copy of the text (normalised or multi-column keys), which would hold
    // the file twice there
    let mut in_place = true;
    loop {
        let direct = in_place && store.direct().is_some();
        let block = match store.direct() {
            Some(rows) if direct => blocks.next_into(rows.arena_mut())?,
            _ => {
                scratch.clear();
                blocks.next_into(&mut scratch)?
            }
        };
        let Some(block) = block else { break };
        match block {
            Block::Plain { first_line, start } if direct => {
                let (skip, all) =
                    parse_in_arena(&keys, &mut store, start, first_line, &mut spare, path)?;
                skipped += skip;
                in_place = all;
            }
            Block::Plain { first_line, start } => {
                // cut into pieces for every thread; each becomes a Rows chunk,
                // appended in file order
                let pieces = split_lines(&scratch[start..], threads * 4);
                if spare.len() < pieces.len() {
                    spare.resize_with(pieces.len(), Rows::default);
                }
                let parsed: Vec<_> = pieces
                    .par_iter()
                    .zip(spare.par_drain(..pieces.len()))
                    .map(|(text, rows)| keys.parse_plain(text, path, rows))
                    .collect();
                let mut line = first_line;
                for (res, text) in parsed.into_iter().zip(&pieces) {
                    match res {
                        Ok((rows, skip, lines)) => {
                            store.append(&rows, text.len() as u64)?;
                            spare.push(rows);
                            skipped += skip;
                            line += lines;
                        }
                        Err(mut e) => {
                            if let PsiError::Input { line: l, .. } = &mut e {
                                *l += line - 1;
                            }
                            return Err(e);
                        }
                    }
                }
            }
            Block::Quoted(mut r) => {
                let mut key = Vec::with_capacity(64);
                while r.read()? {
                    let field = |i: usize| r.field(i);
                    match keys.key(r.len(), field, &mut key) {
                        Ok(true) => {
                            let item = item_of(&key);
                            if keys.keeps(item) {
                                store.push(item, r.raw(), &key)?
                            }
                        }
                        Ok(false) => skipped += 1,
                        Err((col, msg)) => {
                            return Err(r.error(col.map(|c| cfg.keys[c].as_str()), msg));
                        }
                    }
                }
            }
        }
    }
    Ok(Input {
        header,
        ncols,
        loaded: store.finish()?,
        skipped,
        pre: None,
    })
}

/// One bucket's rows grouped by item.
struct Grouped {
    /// Row indices sorted by (batch, keyed item, file order); empty once
    /// forgotten ([`Grouped::forget_rows`]).
    order: Vec<u32>,
    /// Rows grouped (`order`'s length, kept when it is forgotten).
    rows: usize,
    /// Group g is `order[starts[g]..starts[g+1]]`; empty when no item
    /// repeats (group g is then `order[g]` alone): 4 bytes a row less
    /// through the protocol, in the usual case.
    starts: Vec<u32>,
    unique: Vec<Item>,
    /// Batch k is groups `batches[k]..batches[k+1]` (see [`batch_bits`]).
    batches: Vec<u32>,
}

impl Grouped {
    /// Groups equal items, rows of a group in file order, in `1 << kbits`
    /// batches ([`crate::store::batch_of`]). Inside a batch the groups come
    /// out in the order of AES_key(item), a pseudorandom permutation under
    /// this party's secret `key`: the protocols need their items in an
    /// order that says nothing about the keys (positions are revealed to the
    /// peer), and sorting by the keyed value gives that order for free,
    /// where a random shuffle afterwards gathered every item and count at
    /// random (0.6 s of cache misses at 2^22 rows).
    ///
    /// Radix partitioning first: (keyed item, row) pairs are partitioned
    /// by their batch and the top bits of the keyed item, scattered into
    /// copies on every core ([`Grouped::partitioned_into_copies`]) or, from
    /// [`IN_PLACE_GROUPING`] rows, in place
    /// ([`Grouped::partitioned_in_place`]); then each partition — small
    /// enough for the cache — is sorted on its own, in parallel. No step
    /// reads memory at random.
    /// The unique items are the group heads' keyed values, decrypted.
    /// `idx[k]` is the row of `items[k]`; `None` when row k is `items[k]`.
    ///
    /// Without `rows` the groups keep their counts but not their rows
    /// (`idx` must be `None`), as after [`Grouped::forget_rows`]: for rows
    /// read without their text, which are never looked up. The partition
    /// and sort then move the items alone, and no order array is made (4 MB
    /// at 2^20 rows, on the connector's way to its first message).
    fn new(items: Vec<Item>, idx: Option<Vec<u32>>, key: u128, kbits: u32, rows: bool) -> Self {
        let in_place = items.len() >= IN_PLACE_GROUPING;
        Self::with_partition(items, idx, key, kbits, rows, in_place)
    }

    /// [`Grouped::new`], partitioned in place or into copies as told: both
    /// give the same groups.
    fn with_partition(
        items: Vec<Item>,
        idx: Option<Vec<u32>>,
        key: u128,
        kbits: u32,
        rows: bool,
        in_place: bool,
    ) -> Self {
        debug_assert!(idx.as_ref().is_none_or(|idx| items.len() == idx.len()));
        debug_assert!(rows || idx.is_none(), "rows given but not kept");
        let n = items.len();
        let t0 = Instant::now();
        let aes = Aes::new(key);
        // ~8k pairs per partition over all batches
        let bits = ((n as f64 / 8192.0).log2().ceil().max(0.0) as u32)
            .saturating_sub(kbits)
            .min(16);
        let (keyed, order, bounds) = if rows {
            let (mut keyed, mut order, bounds) = if in_place {
                let rows = idx.unwrap_or_else(|| (0..n as u32).collect());
                Self::partitioned_in_place(items, rows, &aes, kbits, bits)
            } else {
                // the closure owns `idx`: freed with the items, before the sort
                let row = move |k: usize| idx.as_ref().map_or(k as u32, |idx| idx[k]);
                Self::partitioned_into_copies(items, row, &aes, kbits, bits)
            };
            sort_partitions(&mut keyed, &mut order, &bounds, bits);
            (keyed, order, bounds)
        } else {
            let (mut keyed, mut none, bounds) = if in_place {
                Self::partitioned_in_place(items, vec![(); n], &aes, kbits, bits)
            } else {
                Self::partitioned_into_copies(items, |_| (), &aes, kbits, bits)
            };
            sort_partitions(&mut keyed, &mut none, &bounds, bits);
            (keyed, Vec::new(), bounds)
        };
        tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, "grouping: sorted");
        // `unique` is `keyed` with repeats removed, in place: no fresh pages.
        // Equal items share a partition: counting each partition's distinct
        // items on every thread tells the usual case (no repeats, nothing to
        // move) from the one that needs the pass below.
        let nb = 1usize << kbits;
        let distinct: usize = bounds
            .par_windows(2)
            .map(|w| {
                let part = &keyed[w[0]..w[1]];
                part.len().min(1) + part.windows(2).filter(|p| p[0] != p[1]).count()
            })
            .sum();
        if distinct == n {
            let mut unique = keyed;
            unique
                .par_chunks_mut(1 << 12)
                .for_each(|c| aes.dec_inplace(c));
            let batches = (0..nb)
                .map(|k| bounds[k << bits] as u32)
                .chain([n as u32])
                .collect();
            tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, "grouping: done");
            return Grouped {
                rows: n,
                order,
                starts: Vec::new(),
                unique,
                batches,
            };
        }
        let mut starts = Vec::with_capacity(n + 1);
        let mut unique = keyed;
        let mut batches = Vec::with_capacity(nb + 1);
        let mut u = 0;
        for k in 0..nb {
            // equal items share a batch, so a batch starts a new group
            let (from, to) = (bounds[k << bits], bounds[(k + 1) << bits]);
            batches.push(u as u32);
            for p in from..to {
                let it = unique[p];
                if p == from || unique[u - 1] != it {
                    unique[u] = it;
                    u += 1;
                    starts.push(p as u32);
                }
            }
        }
        unique.truncate(u);
        batches.push(u as u32);
        starts.push(n as u32);
        if u == n {
            starts = Vec::new();
        }
        unique
            .par_chunks_mut(1 << 12)
            .for_each(|c| aes.dec_inplace(c));
        tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, "grouping: done");
        Grouped {
            rows: n,
            order,
            starts,
            unique,
            batches,
        }
    }

    /// [`Grouped::new`]'s partition, scattered into fresh arrays: the
    /// (keyed item, row) pairs by their batch and the top `bits` bits of
    /// the keyed item ([`crate::slices::partition`]: every thread scatters
    /// a range of the rows, each range sequentially). Returns the keyed
    /// items, their rows (`row(k)` for item k; `()` where no rows are kept)
    /// and the partitions' starts.
    fn partitioned_into_copies<V: Copy + Default + Send + Sync>(
        mut items: Vec<Item>,
        row: impl Fn(usize) -> V + Sync,
        aes: &Aes,
        kbits: u32,
        bits: u32,
    ) -> (Vec<Item>, Vec<V>, Vec<usize>) {
        let n = items.len();
        let t0 = Instant::now();
        // each item's batch, from the item itself (public), before keying
        let mut batch = vec![0u8; if kbits == 0 { 0 } else { n }];
        if kbits > 0 {
            items
                .par_chunks_mut(1 << 12)
                .zip(batch.par_chunks_mut(1 << 12))
                .for_each(|(c, b)| {
                    for (x, b) in c.iter().zip(b.iter_mut()) {
                        *b = crate::store::batch_of(*x, kbits) as u8;
                    }
                    aes.enc_inplace(c)
                });
        } else {
            items
                .par_chunks_mut(1 << 12)
                .for_each(|c| aes.enc_inplace(c));
        }
        tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, "grouping: keyed");
        let part_of = |k: usize, it: Item| {
            let b = if kbits == 0 { 0 } else { batch[k] as usize };
            (b << bits) | top_bits(it, bits)
        };
        // the keyed items and their rows in two arrays (20 bytes a row; a
        // vector of pairs takes 32 with a u128's alignment)
        let mut keyed: Vec<Item> = vec![0; n];
        let mut order: Vec<V> = vec![V::default(); n];
        let bounds = crate::slices::partition(
            |k| part_of(k, items[k]),
            1 << (bits + kbits),
            &mut keyed,
            &mut order,
            &mut [],
            |k| (items[k], row(k)),
        );
        (keyed, order, bounds)
    }

    /// [`Grouped::new`]'s partition, in place: the items' own vector, with
    /// their rows beside it ([`crate::slices::partition_in_place`]), by
    /// batch first (the batch is the item's own, public, so it is taken
    /// before keying), then each batch by the top `bits` bits of its keyed
    /// items. No copy of the items is faulted in, which at 2^24 rows was the
    /// grouping's 256 MB above the read's peak; but the moves run on one
    /// thread per batch, where [`Grouped::partitioned_into_copies`]
    /// scatters on every core, and time-to-result matters more than memory
    /// for inputs below [`IN_PLACE_GROUPING`].
    fn partitioned_in_place<V: Copy + Send>(
        mut items: Vec<Item>,
        mut order: Vec<V>,
        aes: &Aes,
        kbits: u32,
        bits: u32,
    ) -> (Vec<Item>, Vec<V>, Vec<usize>) {
        let n = items.len();
        let t0 = Instant::now();
        let key_all = |items: &mut [Item]| {
            items
                .par_chunks_mut(1 << 12)
                .for_each(|c| aes.enc_inplace(c));
            tracing::trace!(ms = t0.elapsed().as_secs_f64() * 1e3, "grouping: keyed");
        };
        let top = |it: &Item| top_bits(*it, bits);
        let bounds = if kbits == 0 {
            key_all(&mut items);
            crate::slices::partition_in_place(&mut items, &mut order, 1 << bits, top)
        } else {
            let by_batch =
                crate::slices::partition_in_place(&mut items, &mut order, 1 << kbits, |x| {
                    crate::store::batch_of(*x, kbits)
                });
            key_all(&mut items);
            let within: Vec<Vec<usize>> = split_starts(&mut items, &by_batch)
                .into_par_iter()
                .zip(split_starts(&mut order, &by_batch))
                .map(|(s, r)| crate::slices::partition_in_place(s, r, 1 << bits, top))
                .collect();
            let mut bounds = Vec::with_capacity((1 << (bits + kbits)) + 1);
            for (k, st) in within.iter().enumerate() {
                bounds.extend(st[..1 << bits].iter().map(|s| by_batch[k] + s));
            }
            bounds.push(n);
            bounds
        };
        (items, order, bounds)
    }

    /// Number of groups (unique items).
    fn len(&self) -> usize {
        if self.starts.is_empty() {
            self.rows
        } else {
            self.starts.len() - 1
        }
    }

    /// Where group g's rows start in `order`.
    fn start(&self, g: usize) -> usize {
        if self.starts.is_empty() {
            g
        } else {
            self.starts[g] as usize
        }
    }

    fn count(&self, g: usize) -> u32 {
        (self.start(g + 1) - self.start(g)) as u32
    }

    fn rows(&self, g: usize) -> &[u32] {
        debug_assert_eq!(self.order.len(), self.rows, "rows forgotten");
        &self.order[self.start(g)..self.start(g + 1)]
    }

    /// Frees the groups' rows, keeping their counts: for rows read without
    /// their text ([`read_keys_only`]), which are written from their items
    /// and never looked up. At 2^24 rows that is 64 MB through the
    /// protocol and the end of the run. [`Grouped::rows`] may not be called
    /// afterwards; [`Grouped::first_row`] gives `None`.
    fn forget_rows(&mut self) {
        self.order = Vec::new();
    }

    /// Group g's first row (`None` once the rows are forgotten).
    fn first_row(&self, g: usize) -> Option<u32> {
        self.order.get(self.start(g)).copied()
    }

    /// The groups of batch `k`.
    fn batch(&self, k: usize) -> std::ops::Range<usize> {
        self.batches[k] as usize..self.batches[k + 1] as usize
    }

    /// Each row's item, by row index (rows `0..n`): the input of
    /// [`Grouped::new`] for one whole bucket, back from the groups and
    /// their `unique` items.
    ///
    /// Groups without their rows ([`Grouped::forget_rows`], or made
    /// without) give each group's item as often as it has rows, in group
    /// order: such rows have no text, so no identity beyond their item.
    fn items_by_row(&self, unique: &[Item]) -> Vec<Item> {
        if self.order.len() != self.rows {
            let mut out = Vec::with_capacity(self.rows);
            for (gi, &item) in unique.iter().enumerate() {
                out.extend(std::iter::repeat_n(item, self.count(gi) as usize));
            }
            return out;
        }
        let mut out = vec![0; self.rows];
        for (gi, &item) in unique.iter().enumerate() {
            for &r in self.rows(gi) {
                out[r as usize] = item;
            }
        }
        out
    }

    fn has_dups(&self) -> bool {
        self.rows > self.len()
    }
}

/// Sorts each partition of `keyed` (`bounds`, as [`Grouped::new`]'s
/// partition returns them), its rows `vals` beside it ([`sort_keyed`]).
fn sort_partitions<V: Copy + Ord + Default + Send>(
    keyed: &mut [Item],
    vals: &mut [V],
    bounds: &[usize],
    bits: u32,
) {
    split_starts(keyed, bounds)
        .into_par_iter()
        .zip(split_starts(vals, bounds))
        .for_each_init(Vec::new, |tmp, (s, r)| sort_keyed(s, r, bits, tmp));
}

/// Inputs of this many rows or more are grouped in place
/// ([`Grouped::partitioned_in_place`]): 2^23, where the copy the scatter
/// fills would be 128 MB. Below it the scatter, on every core, is the
/// faster (2^22 rows: 1.73 against 1.79 s for the whole run), and its copy
/// is not the run's peak.
const IN_PLACE_GROUPING: usize = 1 << 23;

/// The top `bits` bits of `it` (0 when `bits` is 0).
fn top_bits(it: Item, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (it >> (128 - bits)) as usize
    }
}

/// Sorts one radix partition of (keyed item, row) pairs, given as the items
/// `s` and their rows `r`, whose top `used` bits are equal, by (item, row).
/// The keyed items are uniformly random, so a counting sort on the next
/// ~log2(len) bits leaves runs of one or two entries, which a comparison
/// sort then finishes: about a third of `sort_unstable`'s time on
/// partitions of 8k entries. `tmp` is scratch, kept between calls.
fn sort_keyed<V: Copy + Ord + Default>(
    s: &mut [Item],
    r: &mut [V],
    used: u32,
    tmp: &mut Vec<(Item, V)>,
) {
    let n = s.len();
    debug_assert_eq!(n, r.len());
    tmp.clear();
    if n < 64 {
        tmp.extend(s.iter().copied().zip(r.iter().copied()));
        tmp.sort_unstable();
    } else {
        let b = n.next_power_of_two().trailing_zeros().min(16);
        let shift = 128 - used - b;
        let mask = (1usize << b) - 1;
        let sub = |it: Item| ((it >> shift) as usize) & mask;
        let mut starts = vec![0u32; (1 << b) + 1];
        for &e in s.iter() {
            starts[sub(e) + 1] += 1;
        }
        for k in 0..1 << b {
            starts[k + 1] += starts[k];
        }
        let mut fill = starts.clone();
        tmp.resize(n, (0, V::default()));
        for (&e, &row) in s.iter().zip(r.iter()) {
            let k = sub(e);
            tmp[fill[k] as usize] = (e, row);
            fill[k] += 1;
        }
        for w in starts.windows(2) {
            let run = &mut tmp[w[0] as usize..w[1] as usize];
            if run.len() > 1 {
                run.sort_unstable();
            }
        }
    }
    for ((d, dr), &(e, row)) in s.iter_mut().zip(r.iter_mut()).zip(tmp.iter()) {
        (*d, *dr) = (e, row);
    }
}

/// Below this many elements [`sorted_by_item`] is a plain parallel sort.
const RADIX_MIN: usize = 1 << 14;
/// [`sorted_by_item`]'s target bucket size, and its most digit bits.
const RADIX_BUCKET: usize = 1 << 13;
const RADIX_MAX_BITS: u32 = 8;

/// `(item(s), value(s))` for every `s` of `src`, sorted by item (items
/// distinct, or ties in any order).
///
/// Building the entries and then sorting them (a parallel comparison sort
/// of 32-byte entries) was most of the post-protocol phase: ~190–240 ms for
/// 2^21 matches at 2^22 rows, while the peer does the same on the same two
/// vCPUs. Instead each entry is written straight into its place in one
/// most-significant-digit radix partition, and each bucket is then sorted
/// in cache:
/// - the digit is the top bits of item − lo over the span of a sample's
///   [lo, hi], clamped, so items outside the sample's span go to the first
///   or last bucket: the digit stays monotone, which is all the order needs;
/// - up to 2^[`RADIX_MAX_BITS`] buckets of ~[`RADIX_BUCKET`] entries (a few
///   hundred write streams per chunk: more made the scatter slower);
/// - each range of `src` counts its digits, and the prefix sums carve the
///   output into one slice per (bucket, range), which that range fills in
///   order: parallel and without `unsafe` ([`crate::slices::partition`]).
///
/// The output is the only buffer, as the entries' vector was before. At
/// 2^22 rows, alternated runs: 445–586 against 568–610 ms (receiver) from
/// the protocol's end to the committed output.
fn sorted_by_item<S: Sync, V: Copy + Default + Send + Sync>(
    src: &[S],
    item: impl Fn(&S) -> Item + Sync,
    value: impl Fn(&S) -> V + Sync,
) -> Vec<(Item, V)> {
    let n = src.len();
    // already in order (the groups of a receiver that sorted them ahead,
    // `sorts_ahead`, whose peer repeats keys): a check that stops at the
    // first pair out of order, then a gather
    if src.windows(2).all(|w| item(&w[0]) <= item(&w[1])) {
        return src.par_iter().map(|s| (item(s), value(s))).collect();
    }
    if n < RADIX_MIN {
        let mut v: Vec<(Item, V)> = src.par_iter().map(|s| (item(s), value(s))).collect();
        v.par_sort_unstable_by_key(|e| e.0);
        return v;
    }
    let d = SpanDigit::of_sample(src.iter().step_by(61).map(&item), n);
    let mut out = vec![(0 as Item, V::default()); n];
    let starts = crate::slices::partition_one(
        |i| d.of(item(&src[i])),
        d.parts(),
        &mut out,
        &mut [],
        |i| (item(&src[i]), value(&src[i])),
    );
    split_starts(&mut out, &starts)
        .into_par_iter()
        .for_each_init(Vec::new, |tmp, b| sort_bucket_by(b, |e| e.0, tmp));
    out
}

/// The digit of the radix partitions of [`sorted_by_item`] and
/// [`sort_items_in_place`]: the top bits of item − lo over the span of a
/// sample's [lo, hi], clamped, so that items outside the sample's span go
/// to the first or last part. The digit stays monotone, which is all the
/// order needs; up to 2^[`RADIX_MAX_BITS`] parts of ~[`RADIX_BUCKET`].
struct SpanDigit {
    lo: Item,
    shift: u32,
    bits: u32,
}

impl SpanDigit {
    fn of_sample(sample: impl Iterator<Item = Item>, n: usize) -> Self {
        let (lo, hi) = sample.fold((Item::MAX, 0), |a, x| (a.0.min(x), a.1.max(x)));
        let span = Item::BITS - hi.saturating_sub(lo).leading_zeros();
        let bits = (n / RADIX_BUCKET)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, RADIX_MAX_BITS)
            .min(span);
        SpanDigit {
            lo,
            shift: span - bits,
            bits,
        }
    }

    fn parts(&self) -> usize {
        1 << self.bits
    }

    fn of(&self, x: Item) -> usize {
        ((x.saturating_sub(self.lo) >> self.shift) as usize).min(self.parts() - 1)
    }
}

/// Sorts `v` in place, on every thread: [`sorted_by_item`]'s radix
/// partition, done in place ([`crate::slices::partition_in_place`]), then
/// each part in cache. For the matched items of a run whose rows are their
/// keys, where the entries to sort are the items alone: no second buffer of
/// the items (134 MB at 2^24 rows) is faulted in.
fn sort_items_in_place(v: &mut [Item]) {
    let n = v.len();
    if v.is_sorted() {
        return;
    }
    if n < RADIX_MIN {
        v.par_sort_unstable();
        return;
    }
    let d = SpanDigit::of_sample(v.iter().step_by(61).copied(), n);
    let starts = crate::slices::partition_in_place(v, &mut vec![(); n], d.parts(), |&x| d.of(x));
    split_starts(v, &starts)
        .into_par_iter()
        .for_each_init(Vec::new, |tmp, b| sort_bucket_by(b, |&x| x, tmp));
}

/// Sorts one bucket of [`sorted_by_item`] (~[`RADIX_BUCKET`] entries, in
/// cache) by item: a counting sort on the top ~log2(len) bits of the
/// bucket's own span [min, max] spreads the entries about one to a slot, and
/// each slot's run is then finished by an insertion sort (a comparison sort
/// past 16 entries, so that clustered or repeated items cannot make it
/// quadratic). `tmp` is scratch, kept between calls. Against
/// `sort_unstable_by_key` on the whole bucket: ~a third of its time at 8k
/// entries, which was most of the sort at 2^20 rows.
fn sort_bucket_by<T: Copy + Default>(b: &mut [T], item: impl Fn(&T) -> Item, tmp: &mut Vec<T>) {
    let n = b.len();
    if n < 64 {
        b.sort_unstable_by_key(&item);
        return;
    }
    let (lo, hi) = b
        .iter()
        .map(&item)
        .fold((Item::MAX, 0), |a, x| (a.0.min(x), a.1.max(x)));
    let span = Item::BITS - (hi - lo).leading_zeros();
    let bits = n.next_power_of_two().trailing_zeros().min(16).min(span);
    let shift = span - bits;
    let slot = |x: Item| ((x - lo) >> shift) as usize;
    let mut starts = vec![0u32; (1 << bits) + 1];
    for e in b.iter() {
        starts[slot(item(e)) + 1] += 1;
    }
    for k in 0..1 << bits {
        starts[k + 1] += starts[k];
    }
    let mut fill = starts.clone();
    tmp.clear();
    tmp.resize(n, T::default());
    for e in b.iter() {
        let k = slot(item(e));
        tmp[fill[k] as usize] = *e;
        fill[k] += 1;
    }
    // slots ascend: only the entries of one slot can be out of order
    for w in starts.windows(2) {
        let run = &mut tmp[w[0] as usize..w[1] as usize];
        if run.len() > 16 {
            run.sort_unstable_by_key(&item);
            continue;
        }
        for i in 1..run.len() {
            let e = run[i];
            let mut j = i;
            while j > 0 && item(&run[j - 1]) > item(&e) {
                run[j] = run[j - 1];
                j -= 1;
            }
            run[j] = e;
        }
    }
    b.copy_from_slice(tmp);
}

/// Sorts `v` by the key bytes of each element's group, bytewise.
///
/// Comparing keys through the row arena costs a cache miss per comparison;
/// instead each element gets its key's first 16 bytes as a big-endian `u128`
/// (zero padded), and only elements whose prefixes tie compare full keys.
fn sort_by_key_bytes<'k, T: Copy + Send + Sync>(
    v: &mut [T],
    group: impl Fn(&T) -> u32 + Sync,
    key_of: &(impl Fn(u32) -> &'k [u8] + Sync),
) {
    let prefix = |k: &[u8]| {
        let mut b = [0u8; 16];
        let n = k.len().min(16);
        b[..n].copy_from_slice(&k[..n]);
        u128::from_be_bytes(b)
    };
    let mut keyed: Vec<(u128, T)> = v
        .par_iter()
        .map(|x| (prefix(key_of(group(x))), *x))
        .collect();
    keyed.par_sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| key_of(group(&a.1)).cmp(key_of(group(&b.1))))
    });
    for (dst, (_, x)) in v.iter_mut().zip(keyed) {
        *dst = x;
    }
}

/// Sorts (group, peer count) pairs by group. Pairs that come sorted (the
/// forwarded result is read from a bitmap) are left as they are. Where every
/// peer count is 1 (the peer repeats no key), the groups are marked in a
/// bitmap and read back in order, in place: two sequential passes and a
/// bitmap of one bit a group (128 KB at 2^20 rows), where the partition
/// below took 8–11 ms at 2^20 rows for the receiver. Otherwise, with many
/// matches, a counting pass on every thread: the pairs are partitioned by
/// the high bits of their group ([`crate::slices::partition`]), and each
/// part places its pairs at their groups' slots of its own dense table,
/// which it then reads in order (sequential, no comparisons). Few matches,
/// a repeated group (two equal tags, ~2^-40) or a zero count (which marks
/// an empty slot) take the comparison sort.
fn into_group_order(result: &mut Vec<(u32, u32)>, groups: usize) {
    if result.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    if result.len() * 16 < groups || result.iter().any(|&(_, c)| c == 0) {
        result.par_sort_unstable_by_key(|&(gi, _)| gi);
        return;
    }
    if result.iter().all(|&(_, c)| c == 1) {
        let Some(hit) = group_bitmap(result, groups) else {
            // a repeated group
            result.par_sort_unstable_by_key(|&(gi, _)| gi);
            return;
        };
        let mut k = 0;
        for (w, &word) in hit.iter().enumerate() {
            let mut x = word;
            while x != 0 {
                result[k] = ((w * 64) as u32 + x.trailing_zeros(), 1);
                k += 1;
                x &= x - 1;
            }
        }
        return;
    }
    // parts of at most 2^16 groups (a 256 KiB table each)
    let shift = 16;
    let parts = (groups >> shift) + 1;
    let n = result.len();
    let mut out = vec![(0u32, 0u32); n];
    let starts = crate::slices::partition_one(
        |i| (result[i].0 >> shift) as usize,
        parts,
        &mut out,
        &mut [],
        |i| result[i],
    );
    let placed = split_starts(&mut out, &starts)
        .into_par_iter()
        .enumerate()
        .all(|(p, part)| {
            let lo = p << shift;
            let mut at = vec![0u32; (groups - lo).min(1 << shift)];
            for &(gi, c) in part.iter() {
                let slot = &mut at[gi as usize - lo];
                if *slot != 0 {
                    return false; // a repeated group
                }
                *slot = c;
            }
            let filled = at.iter().enumerate().filter(|&(_, &c)| c != 0);
            for (dst, (g, &c)) in part.iter_mut().zip(filled) {
                *dst = ((lo + g) as u32, c);
            }
            true
        });
    if placed {
        *result = out;
    } else {
        result.par_sort_unstable_by_key(|&(gi, _)| gi);
    }
}

/// The groups of `result` as a bitmap of `groups` bits (bit g of word
/// g / 64), or `None` if a group comes twice (two equal tags, ~2^-40).
fn group_bitmap(result: &[(u32, u32)], groups: usize) -> Option<Vec<u64>> {
    let mut hit = vec![0u64; groups.div_ceil(64)];
    for &(gi, _) in result {
        let (w, bit) = (gi as usize / 64, 1u64 << (gi % 64));
        if hit[w] & bit != 0 {
            return None;
        }
        hit[w] |= bit;
    }
    Some(hit)
}

/// Whether every item is packed in one order class
/// ([`crate::item::order_class`]): then the items sort like their keys and
/// each renders back to its key ([`crate::item::key_of`]).
fn one_order_class(items: &[Item]) -> bool {
    let Some(&first) = items.first() else {
        return true;
    };
    let class = order_class(first);
    class.is_some() && items.par_iter().all(|&x| order_class(x) == class)
}

fn u64s(buf: &[u8], n: usize, what: &str) -> Result<Vec<u64>, PsiError> {
    if buf.len() < n * 8 {
        return Err(PsiError::peer(format!("{what}: message too short")));
    }
    Ok(buf[..n * 8]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
        .collect())
}

/// The forwarded result's positions (in [0, n)): a bitmap of n bits when
/// that is shorter than 4 bytes per position (at 2^20 items and 50%
/// overlap: 128 KiB instead of 2 MiB), else the plain list with its length.
/// The first byte says which. A bitmap lists the positions in ascending
/// order, so it is used only when that loses nothing: no position repeats,
/// and they are ascending already unless `any_order` (no per-position
/// values travel beside them).
fn encode_positions(pos: &[u32], n: usize, any_order: bool) -> Vec<u8> {
    let mut msg = Vec::new();
    if n.div_ceil(8) < 4 * pos.len() {
        // set straight from the positions, in whatever order they come
        msg.push(1);
        msg.resize(1 + n.div_ceil(8), 0);
        let mut fits = true;
        let mut prev: Option<u32> = None;
        for &j in pos {
            let (byte, bit) = (1 + j as usize / 8, 1u8 << (j % 8));
            fits &= msg[byte] & bit == 0 && (any_order || prev.is_none_or(|p| p < j));
            msg[byte] |= bit;
            prev = Some(j);
        }
        if fits {
            return msg;
        }
        msg.clear();
    }
    msg.push(0);
    msg.extend_from_slice(&(pos.len() as u64).to_le_bytes());
    wire::put_u32s(&mut msg, pos);
    msg
}

/// Reads [`encode_positions`]'s output for `n` items; returns the positions
/// and the rest of the message.
fn decode_positions(msg: &[u8], n: usize) -> Result<(Vec<u32>, &[u8]), PsiError> {
    let bad = || PsiError::peer("malformed forwarded result");
    match msg.split_first() {
        Some((1, rest)) => {
            let len = n.div_ceil(8);
            if rest.len() < len {
                return Err(bad());
            }
            let (bits, rest) = rest.split_at(len);
            let mut pos = Vec::new();
            for (b, &byte) in bits.iter().enumerate() {
                let mut x = byte;
                while x != 0 {
                    pos.push((b * 8) as u32 + x.trailing_zeros());
                    x &= x - 1;
                }
            }
            Ok((pos, rest))
        }
        Some((0, rest)) if rest.len() >= 8 => {
            let k = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            let rest = &rest[8..];
            if rest.len() / 4 < k {
                return Err(bad());
            }
            let (list, rest) = rest.split_at(4 * k);
            Ok((wire::get_u32s(list, "forwarded result")?, rest))
        }
        _ => Err(bad()),
    }
}

/// Gives every receiver, for each matched key, the peer's row count.
///
/// `native` is the protocol's own result at this party: (my position, peer
/// position) in the shuffled orders. `mine` is this party's grouping (its
/// row count per group).
/// Returns (my position, peer count) at a receiver, `None` elsewhere.
fn exchange_counts(
    chan: &dyn Channel,
    native: Option<Vec<(u32, u32)>>,
    self_learns: bool,
    peer_learns: bool,
    mine: &Grouped,
    peer_len: usize,
    peer_dups: bool,
) -> Result<Option<Vec<(u32, u32)>>, PsiError> {
    wire::send(chan, STATUS, &[native.is_some() as u8])?;
    let st = wire::recv(chan, STATUS, "the peer's status")?;
    let peer_native = st.first().copied().unwrap_or(0) == 1;
    if peer_native && !peer_learns {
        return Err(PsiError::peer(
            "the peer claims a result it should not have",
        ));
    }
    // The peer's counts for `n` positions: sent only when it has duplicates
    // (`None`: every count is 1).
    let recv_counts = |tag: u8, n: usize| -> Result<Option<Vec<u32>>, PsiError> {
        if !peer_dups {
            return Ok(None);
        }
        let c = wire::get_u32s(&wire::recv(chan, tag, "the peer's counts")?, "counts")?;
        if c.len() != n {
            return Err(PsiError::peer("count list of the wrong length"));
        }
        Ok(Some(c))
    };
    // (group, peer position) pairs become (group, peer count) in place: at
    // 2^24 rows a second vector of pairs and one of counts were 100 MB
    // above the run's peak
    let with_counts = |mut m: Vec<(u32, u32)>, pc: Option<Vec<u32>>| {
        match pc {
            None => m.iter_mut().for_each(|e| e.1 = 1),
            Some(pc) => m.iter_mut().zip(pc).for_each(|(e, c)| e.1 = c),
        }
        m
    };
    let (groups, my_dups) = (mine.len(), mine.has_dups());
    let count = |i: u32| mine.count(i as usize);
    let counts_of = |m: &[(u32, u32)]| -> Vec<u32> { m.iter().map(|&(i, _)| count(i)).collect() };
    match native {
        Some(mut m) => {
            if !self_learns {
                return Err(PsiError::peer(
                    "internal: a protocol gave a result to a non-receiver",
                ));
            }
            if m.iter()
                .any(|&(i, j)| i as usize >= groups || j as usize >= peer_len)
            {
                return Err(PsiError::peer("protocol result out of range"));
            }
            if peer_learns && !peer_native {
                // forward the result: peer positions, with our counts. The
                // positions need an order only when counts travel (ours
                // beside them, or the peer's back in their order).
                let any_order = !my_dups && !peer_dups;
                if !any_order {
                    m.sort_unstable_by_key(|&(_, j)| j);
                }
                let pos: Vec<u32> = m.iter().map(|&(_, j)| j).collect();
                let mut msg = encode_positions(&pos, peer_len, any_order);
                if my_dups {
                    wire::put_u32s(&mut msg, &counts_of(&m));
                }
                wire::send(chan, FORWARD, &msg)?;
                drop(pos);
                let pc = recv_counts(COUNTS, m.len())?;
                Ok(Some(with_counts(m, pc)))
            } else if peer_learns {
                // both have the result: swap counts, each ordered by the receiver's positions
                m.sort_unstable_by_key(|&(_, j)| j);
                if my_dups {
                    let mut msg = Vec::new();
                    wire::put_u32s(&mut msg, &counts_of(&m));
                    wire::send(chan, COUNTS, &msg)?;
                }
                m.sort_unstable_by_key(|&(i, _)| i);
                let pc = recv_counts(COUNTS, m.len())?;
                Ok(Some(with_counts(m, pc)))
            } else {
                let all = recv_counts(ALL_COUNTS, peer_len)?;
                if let Some(all) = all {
                    m.iter_mut().for_each(|e| e.1 = all[e.1 as usize]);
                } else {
                    m.iter_mut().for_each(|e| e.1 = 1);
                }
                Ok(Some(m))
            }
        }
        None if self_learns => {
            if !peer_native {
                return Err(PsiError::peer("neither party has the protocol's result"));
            }
            let msg = wire::recv(chan, FORWARD, "the forwarded result")?;
            let (pos, rest) = decode_positions(&msg, groups)?;
            let counts = if peer_dups {
                wire::get_u32s(rest, "forwarded result")?
            } else {
                Vec::new()
            };
            if (peer_dups && counts.len() != pos.len())
                || (!peer_dups && !rest.is_empty())
                || pos.iter().any(|&i| i as usize >= groups)
            {
                return Err(PsiError::peer("malformed forwarded result"));
            }
            let pos = &pos[..];
            let out: Vec<(u32, u32)> = pos
                .iter()
                .enumerate()
                .map(|(k, &i)| (i, if peer_dups { counts[k] } else { 1 }))
                .collect();
            if my_dups {
                let c: Vec<u32> = pos.iter().map(|&i| count(i)).collect();
                let mut m = Vec::new();
                wire::put_u32s(&mut m, &c);
                wire::send(chan, COUNTS, &m)?;
            }
            Ok(Some(out))
        }
        None => {
            if peer_learns && my_dups {
                let mut m = Vec::new();
                let all: Vec<u32> = (0..groups).map(|i| mine.count(i)).collect();
                wire::put_u32s(&mut m, &all);
                wire::send(chan, ALL_COUNTS, &m)?;
            }
            Ok(None)
        }
    }
}

fn core_of(cfg: &PsiConfig) -> CoreFn {
    match cfg.protocol {
        crate::config::Protocol::Ecdh => ecdh::intersect,
        crate::config::Protocol::Rr22 => rr22::intersect,
    }
}

/// Where a receiver's per-bucket results go until the output is written.
enum Sink {
    /// Single bucket: write straight from memory (no runs).
    Direct,
    /// Several buckets, or a worker's part: sorted run files in `dir` (a
    /// temporary directory, `_tmp`, unless it is the worker's part directory).
    Runs {
        dir: std::path::PathBuf,
        _tmp: Option<tempfile::TempDir>,
        matched: Vec<std::path::PathBuf>,
        unmatched: Vec<std::path::PathBuf>,
    },
}

#[derive(Default)]
struct Totals {
    unique: u64,
    keys: u64,
    rows_self: u64,
    rows_peer: u64,
    join_rows: u64,
    unmatched_self: u64,
}

fn run_inner(
    cfg: &PsiConfig,
    shard: Option<&Shard>,
    input_path: &Path,
    ahead: Option<ReadAhead>,
    dest: Dest<'_>,
    chan: &dyn Channel,
) -> Result<Report, PsiError> {
    let t0 = Instant::now();
    handshake(cfg, shard, chan)?;
    let read = || match ahead {
        Some(a) => a.finish(),
        None => read_input(cfg, shard, input_path),
    };
    let (mut input, early) = early_vole(cfg, chan, read)?;
    let (output, part_dir) = match dest {
        Dest::Output(o) => (o, None),
        Dest::Part(d) => (None, Some(d)),
    };
    tracing::debug!(
        rows = input.loaded.rows,
        t = t0.elapsed().as_secs_f64(),
        "input read"
    );
    let rows = input.loaded.rows;
    let mut msg = Vec::new();
    msg.extend_from_slice(&rows.to_le_bytes());
    msg.extend_from_slice(&(input.loaded.need_buckets as u64).to_le_bytes());
    let batch_rows = batch_rows_of(cfg, rows);
    msg.extend_from_slice(&batch_rows.to_le_bytes());
    wire::send(chan, SIZES, &msg)?;
    let v = u64s(&wire::recv(chan, SIZES, "the peer's sizes")?, 3, "sizes")?;
    let (peer_rows, peer_need, peer_batch) = (v[0], v[1] as usize, v[2]);
    if !peer_need.is_power_of_two() || peer_need > crate::store::PARTS {
        return Err(PsiError::peer(format!("invalid bucket count {peer_need}")));
    }
    if peer_batch == 0 {
        return Err(PsiError::peer("invalid batch size 0"));
    }
    let buckets = input.loaded.need_buckets.max(peer_need);
    let t_read = t0.elapsed().as_secs_f64();

    let self_learns = cfg.self_receives();
    let peer_learns = cfg.peer_receives();
    let party = cfg.party();
    let core = core_of(cfg);
    let mut sink = if !self_learns || (buckets == 1 && part_dir.is_none()) {
        Sink::Direct
    } else if let Some(d) = part_dir {
        std::fs::create_dir_all(d).map_err(|e| PsiError::io(d, e))?;
        Sink::Runs {
            dir: d.to_path_buf(),
            _tmp: None,
            matched: Vec::new(),
            unmatched: Vec::new(),
        }
    } else {
        std::fs::create_dir_all(&cfg.tmp_dir).map_err(|e| PsiError::io(&cfg.tmp_dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix("venn-psi-runs-")
            .tempdir_in(&cfg.tmp_dir)
            .map_err(|e| PsiError::io(&cfg.tmp_dir, e))?;
        Sink::Runs {
            dir: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
            matched: Vec::new(),
            unmatched: Vec::new(),
        }
    };
    let mut out = match (self_learns, output) {
        (true, Some(p)) => Some(OutWriter::create(
            p,
            &input.header,
            input.ncols,
            &cfg.null_rep,
            party,
        )?),
        _ => None,
    };
    let mut tot = Totals::default();
    let mut peer_unique_seen = 0u64;
    let mut batches_run = 0;
    let mut t_write = 0.0;
    // The protocols size their tags from the totals; rows bound unique keys.
    let total_len = (rows, peer_rows);

    // protocol batches per bucket (sizes as the peer computes them)
    let kbits = batch_bits(
        rows.max(peer_rows).div_ceil(buckets as u64),
        batch_rows.min(peer_batch),
    );
    // work done ahead: used with one bucket in these batches, undone else
    let mut pre = input.pre.take();
    // the early VOLE serves a run of one bucket and one batch whose
    // receiver kept the items it proposed it for; both parties know that
    // from the sizes alike (see `early_vole`)
    let early = early.filter(|_| buckets == 1 && kbits == 0 && rows > 0 && peer_rows > 0);
    let early_vole = early.is_some();
    if (buckets > 1 || pre.as_ref().is_some_and(|p| p.kbits != kbits))
        && let Some(p) = pre.take()
    {
        if let Some(o) = p.rr22 {
            o.cancel();
        }
        input.loaded.restore_items(p.g.items_by_row(&p.unique));
    }
    // The rows' text is not needed by a party that writes nothing, nor
    // where every row will be written from its item: one bucket written
    // directly, no section of unmatched rows, rows that are their keys, and
    // every key packed in one order class (then the matches sort by item and
    // each is rendered by `key_of`, see the writing below). Without it, what
    // the text took (the file, plus 16 bytes a row) is reused by the
    // protocol instead of faulted in afresh: 36 MB a party at 2^20 rows.
    let writes_unmatched = writes_unmatched(cfg);
    let direct = matches!(sink, Sink::Direct);
    // a receiver's one bucket, all of its items in one order class: checked
    // here, and then not again per match
    let one_class = direct
        && self_learns
        && !writes_unmatched
        && input.loaded.rows_are_keys()
        // rows read without their text were checked as they were read
        && pre
            .as_ref()
            .map_or(!input.loaded.has_text(), |p| one_order_class(&p.unique));
    if direct && (!self_learns || one_class) {
        input.loaded.drop_text();
    } else if !input.loaded.has_text() {
        // read without its text on the bet that every row would be written
        // from its item ([`read_keys_only`]); the run needs buckets (the
        // peer's rows or ours do not fit one), so the rows need their text
        // after all: the file is read again
        input.loaded = read_input(cfg, shard, input_path)?.loaded;
    }
    for b in 0..buckets {
        let mut br = input.loaded.bucket(b, buckets)?;
        let (mut g, shuffled, ahead) = match pre.take() {
            // one bucket: its items went into the grouping ahead
            Some(p) => (p.g, p.unique, p.rr22),
            None => {
                let rows = br.rows().has_text() || br.idx.is_some();
                let (items, idx) = (std::mem::take(&mut br.items), std::mem::take(&mut br.idx));
                let mut g = Grouped::new(items, idx, os_random(), kbits, rows);
                let unique = std::sync::Arc::new(std::mem::take(&mut g.unique));
                (g, unique, None)
            }
        };
        let rws = br.rows();
        if !rws.has_text() {
            g.forget_rows();
        }
        tracing::debug!(
            bucket = b,
            t = t0.elapsed().as_secs_f64(),
            "sorted and grouped"
        );
        // unique items, whether any repeats, and the unique items per batch
        let nb = g.batches.len() - 1;
        batches_run += nb;
        let mut m = Vec::with_capacity(8 * (2 + nb));
        m.extend_from_slice(&(g.len() as u64).to_le_bytes());
        m.extend_from_slice(&(g.has_dups() as u64).to_le_bytes());
        for k in 0..nb {
            m.extend_from_slice(&(g.batch(k).len() as u64).to_le_bytes());
        }
        wire::send(chan, BUCKET, &m)?;
        let v = u64s(
            &wire::recv(chan, BUCKET, "the peer's bucket size")?,
            2 + nb,
            "bucket",
        )?;
        let (peer_len, peer_dups) = (v[0] as usize, v[1] == 1);
        let peer_batches = &v[2..];
        if peer_batches.iter().sum::<u64>() != v[0] {
            return Err(PsiError::peer(
                "the peer's batch sizes disagree with its bucket size",
            ));
        }
        if let Some(e) = early.as_ref().filter(|e| !e.receiver)
            && peer_len as u64 != e.n_x
        {
            return Err(PsiError::peer(format!(
                "the peer proposed the early VOLE for {} items but has {peer_len}",
                e.n_x
            )));
        }
        peer_unique_seen += peer_len as u64;
        tot.unique += g.len() as u64;

        // the groups are in pseudorandom order already (Grouped::new)
        tracing::debug!(
            bucket = b,
            unique = g.len(),
            peer_len,
            batches = nb,
            t = t0.elapsed().as_secs_f64(),
            "grouped"
        );
        // the protocol, batch by batch; positions back to the bucket's
        let batches_hint = (nb > 1).then(crate::memory::Batches::start);
        let mut matches: Option<Vec<crate::core::Match>> = None;
        let (mut ahead, mut peer_off) = (ahead, 0u32);
        for (k, &peer_k) in peer_batches.iter().enumerate() {
            let mine = g.batch(k);
            // the next batch's work ahead overlaps this batch's waits
            let next = (k + 1 < nb)
                .then(|| rr22_ahead(cfg, &shuffled, g.batch(k + 1)))
                .flatten();
            let cin = CoreInput {
                items: &shuffled[mine.clone()],
                peer_len: peer_k as usize,
                self_learns,
                peer_learns,
                leader: cfg.leader,
                total_len,
                stat_sec: cfg.stat_sec,
                low_comm: cfg.low_comm,
                malicious: cfg.malicious,
                rr22_ahead: ahead.as_ref(),
                rr22_early: early.as_ref().map(|e| &e.vole),
            };
            let res = core(chan, &cin)?;
            if let Some(found) = res.matches {
                let at = mine.start as u32;
                let all = matches.get_or_insert_with(Vec::new);
                if all.is_empty() {
                    all.reserve(found.len() * nb);
                }
                all.extend(found.into_iter().map(|(p, q)| (p + at, q + peer_off)));
            }
            peer_off += peer_k as u32;
            ahead = next;
            tracing::debug!(
                bucket = b,
                batch = k,
                t = t0.elapsed().as_secs_f64(),
                "batch done"
            );
        }
        drop((ahead, batches_hint));
        tracing::debug!(bucket = b, t = t0.elapsed().as_secs_f64(), "protocol done");
        let result = exchange_counts(
            chan,
            matches,
            self_learns,
            peer_learns,
            &g,
            peer_len,
            peer_dups,
        )?;
        let Some(mut result) = result else { continue };
        tracing::trace!(t = t0.elapsed().as_secs_f64(), "counts exchanged");

        let tw = Instant::now();
        let class = result
            .first()
            .map(|&(p, _)| order_class(shuffled[p as usize]));
        let by_item = class.is_some_and(|c| {
            c.is_some()
                && (one_class
                    || result
                        .par_iter()
                        .all(|&(p, _)| order_class(shuffled[p as usize]) == c))
        });
        // The usual PSI of keys: rows that are their keys, no key repeated
        // on either side, the matches written from their items. Each match
        // is then its item alone (the sort key and the row), and the
        // matched items are sorted as such, in the unique items' own vector
        // from 2^22 matches ([`matched_items_sorted`]): at 2^24 rows the general path below
        // held the unique items, the grouping order, the result and a
        // 32-byte entry per match at once, the run's peak (~0.74 GB).
        if direct
            && by_item
            && !writes_unmatched
            && rws.rows_are_keys()
            && !g.has_dups()
            && result.par_iter().all(|&(_, c)| c == 1)
        {
            let groups = g.len() as u64;
            drop(g);
            let unique = std::sync::Arc::try_unwrap(shuffled).unwrap_or_else(|a| a.to_vec());
            let keys = matched_items_sorted(unique, result);
            tracing::debug!(
                bucket = b,
                matched = keys.len(),
                t = t0.elapsed().as_secs_f64(),
                "counts exchanged, matches sorted"
            );
            let m = keys.len() as u64;
            tot.keys += m;
            tot.rows_self += m;
            tot.rows_peer += m;
            tot.join_rows += m;
            tot.unmatched_self += groups - m;
            let w = out.as_mut().expect("receivers have an output");
            let party = w.party();
            write_in_windows(w, &keys, |keys, buf| {
                let mut text = [0u8; crate::item::KEY_BUF];
                keys.iter()
                    .map(|&item| {
                        let key = crate::item::key_of(item, &mut text)
                            .expect("an item of an order class renders its key");
                        format_matched(buf, party, std::iter::once(key), 1)
                    })
                    .sum()
            })?;
            write_unmatched_sections(
                cfg,
                w,
                party,
                &[],
                &|_| std::iter::empty(),
                peer_rows - tot.rows_peer,
            )?;
            t_write += tw.elapsed().as_secs_f64();
            tracing::debug!(bucket = b, t = t0.elapsed().as_secs_f64(), "bucket written");
            continue;
        }
        // In group order, what each matched key needs is read sequentially:
        // its item, its row count and its first row. The output then reads
        // no grouping array at random, only the rows themselves.
        into_group_order(&mut result, g.len());
        let matched_of = |&(gi, c): &(u32, u32)| Matched {
            gi,
            peer: c,
            n: g.count(gi as usize),
            // rows are looked up only where they have their text
            first: g.first_row(gi as usize).unwrap_or(0),
        };
        let key_of = |gi: u32| rws.key(g.rows(gi as usize)[0] as usize);
        // each match with its item (the sort key of the by-item path; kept
        // rather than copied out, which would need a second vector)
        let matched: Vec<(Item, Matched)> = if by_item {
            // the items sort like the keys (item::order_class): no walk to
            // the key bytes. The other receiver gets the same order either
            // way, since both sort the same keys.
            // each match's facts are read here, in group order
            // (sequential); after the sort they would be random reads
            let keyed = sorted_by_item(&result, |m| shuffled[m.0 as usize], matched_of);
            drop(shuffled);
            keyed
        } else {
            drop(shuffled);
            let mut m: Vec<(Item, Matched)> =
                result.par_iter().map(|r| (0, matched_of(r))).collect();
            sort_by_key_bytes(&mut m, |m| m.1.first, &|r| rws.key(r as usize));
            m
        };
        drop(result);
        tracing::debug!(
            bucket = b,
            matched = matched.len(),
            t = t0.elapsed().as_secs_f64(),
            "counts exchanged, matches sorted"
        );
        let mut is_matched = vec![false; g.len()];
        for (_, m) in &matched {
            is_matched[m.gi as usize] = true;
            tot.keys += 1;
            tot.rows_self += m.n as u64;
            tot.rows_peer += m.peer as u64;
            tot.join_rows += m.n as u64 * m.peer as u64;
        }
        let mut unmatched: Vec<u32> = Vec::new();
        if writes_unmatched {
            unmatched = (0..g.len() as u32)
                .filter(|&gi| !is_matched[gi as usize])
                .collect();
            sort_by_key_bytes(&mut unmatched, |&gi| gi, &key_of);
        }
        tot.unmatched_self += (0..g.len())
            .filter(|&gi| !is_matched[gi])
            .map(|gi| g.count(gi) as u64)
            .sum::<u64>();
        let row_iter = |gi: u32| g.rows(gi as usize).iter().map(|&r| rws.raw(r as usize));
        match &mut sink {
            Sink::Direct => {
                let w = out.as_mut().expect("receivers have an output");
                if cfg.join != JoinType::Difference {
                    // Each matched key's rows are scattered over the arena;
                    // gathering them is random access, so threads format
                    // windows of keys into buffers that are written in order.
                    // Rows that are nothing but their key are written from
                    // the matched items (sorted by item here): no gather.
                    let party = w.party();
                    let from_items = by_item && rws.rows_are_keys();
                    // dropped only where every row is written from its item
                    assert!(
                        from_items || rws.has_text() || matched.is_empty(),
                        "rows without text"
                    );
                    write_in_windows(w, &matched, |keys, buf| {
                        let mut n = 0;
                        let mut text = [0u8; crate::item::KEY_BUF];
                        for (k, (item, m)) in keys.iter().enumerate() {
                            if let Some(key) = from_items
                                .then(|| crate::item::key_of(*item, &mut text))
                                .flatten()
                            {
                                let own = std::iter::repeat_n(key, m.n as usize);
                                n += format_matched(buf, party, own, m.peer);
                                continue;
                            }
                            // two cache misses per row (its record
                            // entry, then its bytes): fetch both
                            // ahead, in two stages
                            if let Some((_, a)) = keys.get(k + 2 * PREFETCH_ROWS) {
                                rws.prefetch_rec(a.first as usize);
                            }
                            if let Some((_, a)) = keys.get(k + PREFETCH_ROWS) {
                                rws.prefetch_raw(a.first as usize);
                            }
                            n += format_matched(buf, party, m.rows(&g, rws), m.peer);
                        }
                        n
                    })?;
                }
                // sections 2/3 and difference are written after all buckets
                // in the runs case; with one bucket they follow directly.
                write_unmatched_sections(
                    cfg,
                    w,
                    party,
                    &unmatched,
                    &row_iter,
                    peer_rows - tot.rows_peer,
                )?;
            }
            Sink::Runs {
                dir,
                matched: mr,
                unmatched: ur,
                ..
            } => {
                let mut w = RunWriter::create(dir.join(format!("m{b:03}")))?;
                for (_, m) in &matched {
                    w.push(rws.key(m.first as usize), m.peer, m.rows(&g, rws))?;
                }
                mr.push(w.finish()?);
                let mut w = RunWriter::create(dir.join(format!("u{b:03}")))?;
                for &gi in &unmatched {
                    w.push(key_of(gi), 0, row_iter(gi))?;
                }
                ur.push(w.finish()?);
            }
        }
        t_write += tw.elapsed().as_secs_f64();
        tracing::debug!(bucket = b, t = t0.elapsed().as_secs_f64(), "bucket written");
    }
    let t_proto_end = t0.elapsed().as_secs_f64();

    wire::send(chan, SUMMARY, &tot.unique.to_le_bytes())?;
    let peer_unique = u64s(
        &wire::recv(chan, SUMMARY, "the peer's summary")?,
        1,
        "summary",
    )?[0];
    if peer_unique != peer_unique_seen {
        return Err(PsiError::peer(
            "the peer's summary disagrees with its bucket sizes",
        ));
    }

    let tw = Instant::now();
    let mut out_stats = None;
    if let (
        Some(d),
        Sink::Runs {
            matched, unmatched, ..
        },
    ) = (part_dir, &sink)
    {
        crate::workers::write_part_meta(
            d,
            &PartMeta {
                plan: shard.map_or_else(|| "single".to_string(), Shard::describe),
                header: input.header.clone(),
                ncols: input.ncols,
                peer_unmatched: peer_rows - tot.rows_peer,
                matched: file_names(matched),
                unmatched: file_names(unmatched),
            },
        )?;
    }
    if let Some(mut w) = out {
        if let Sink::Runs {
            matched, unmatched, ..
        } = &sink
        {
            write_runs(cfg, &mut w, matched, unmatched, peer_rows - tot.rows_peer)?;
        }
        tracing::debug!(t = t0.elapsed().as_secs_f64(), "committing output");
        crate::memory::finishing();
        let rows_out = w.commit()?;
        tracing::debug!(t = t0.elapsed().as_secs_f64(), "output committed");
        out_stats = Some(OutputStats {
            path: output.map(|p| p.display().to_string()).unwrap_or_default(),
            rows: rows_out,
        });
    }
    drop(sink);
    t_write += tw.elapsed().as_secs_f64();
    let total = t0.elapsed().as_secs_f64();
    Ok(Report {
        version: 1,
        party,
        protocol: cfg.protocol,
        low_comm: cfg.low_comm,
        malicious: cfg.malicious,
        join: cfg.join,
        receiver: self_learns,
        self_: InputStats {
            path: input_path.display().to_string(),
            rows,
            unique_keys: tot.unique,
            skipped_empty_keys: input.skipped,
        },
        peer: PeerStats {
            rows: peer_rows,
            unique_keys: peer_unique,
        },
        intersection: self_learns.then_some(Intersection {
            keys: tot.keys,
            rows_self: tot.rows_self,
            rows_peer: tot.rows_peer,
            join_rows: tot.join_rows,
        }),
        output: out_stats,
        curve_backend: (cfg.protocol == crate::config::Protocol::Ecdh)
            .then(|| ecdh::curve_backend().to_string()),
        buckets,
        batches: batches_run,
        early_vole,
        workers: 1,
        bytes_sent: chan.bytes_sent(),
        bytes_received: chan.bytes_received(),
        seconds: Phases {
            read: round3(t_read),
            protocol: round3(t_proto_end - t_read - t_write.min(t_proto_end - t_read)),
            write: round3(t_write),
            total: round3(total),
        },
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Writes `entries` in order through `w`, formatted by threads: windows of
/// [`WRITE_WINDOW`] entries, each cut into pieces that `format` renders
/// into a buffer of its own (returning the lines it wrote), then written in
/// order. Gathering a window's rows reads the arena at random; many threads
/// hide that latency, and the writer still sees one ordered stream.
fn write_in_windows<T: Sync>(
    w: &mut OutWriter,
    entries: &[T],
    format: impl Fn(&[T], &mut Vec<u8>) -> u64 + Sync,
) -> Result<(), PsiError> {
    for window in entries.chunks(WRITE_WINDOW) {
        let texts: Vec<(Vec<u8>, u64)> = window
            .par_chunks(WRITE_WINDOW / 64)
            .map(|part| {
                let mut buf = Vec::with_capacity(part.len() * 32);
                let n = format(part, &mut buf);
                (buf, n)
            })
            .collect();
        for (text, n) in texts {
            w.lines(&text, n)?;
        }
    }
    Ok(())
}

/// The matched items of `unique` (the groups in `result`), sorted.
///
/// Up to [`IN_PLACE_MATCHES`] matches, as the general path does it: the
/// result in group order ([`into_group_order`]), then its items scattered
/// by [`sorted_by_item`] into a vector of their own (16 bytes a match, and
/// the unique items are freed). From there on, in `unique`'s own vector:
/// the groups are marked in a bitmap, each range of `unique` moves its
/// matched items to its front (in parallel), the ranges' fronts are moved
/// together, and the vector is cut to them and sorted in place
/// ([`sort_items_in_place`]); its capacity is kept (shrinking would copy).
/// At 2^24 rows (2^23 matches) the copy would have been 134 MB above the
/// unique items' 256 MB, and the result in group order another 64 MB.
/// Unique items that are sorted already ([`sorts_ahead`]) take the second
/// way at any size, where the sort then finds nothing to do.
fn matched_items_sorted(unique: Vec<Item>, result: Vec<(u32, u32)>) -> Vec<Item> {
    // sorted items (a receiver's, [`sorts_ahead`]) stay sorted when the
    // matched ones are moved to the front: no copy to fault in, no sort
    let in_place = result.len() >= IN_PLACE_MATCHES || unique.is_sorted();
    matched_items_sorted_with(unique, result, in_place)
}

/// [`matched_items_sorted`], in place or through a copy as told: both
/// give the same items.
fn matched_items_sorted_with(
    mut unique: Vec<Item>,
    mut result: Vec<(u32, u32)>,
    in_place: bool,
) -> Vec<Item> {
    // a repeated group (~2^-40) takes the copy, which writes it twice as
    // the general path does
    let hit = if in_place {
        group_bitmap(&result, unique.len())
    } else {
        None
    };
    let Some(hit) = hit else {
        into_group_order(&mut result, unique.len());
        let keyed = sorted_by_item(&result, |r| unique[r.0 as usize], |_| ());
        // (Item, ()) and Item have one layout: the allocation is reused
        return keyed.into_iter().map(|(item, ())| item).collect();
    };
    let t0 = Instant::now();
    drop(result);
    const RANGE: usize = 1 << 16;
    let kept: Vec<usize> = unique
        .par_chunks_mut(RANGE)
        .zip(hit.par_chunks(RANGE / 64))
        .map(|(c, h)| {
            // without a branch: about half the items match, in no pattern
            let mut m = 0;
            for i in 0..c.len() {
                c[m] = c[i];
                m += (h[i / 64] >> (i % 64) & 1) as usize;
            }
            m
        })
        .collect();
    let mut m = 0;
    for (k, &len) in kept.iter().enumerate() {
        unique.copy_within(k * RANGE..k * RANGE + len, m);
        m += len;
    }
    unique.truncate(m);
    tracing::trace!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "matched items: compacted"
    );
    sort_items_in_place(&mut unique);
    tracing::trace!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "matched items: sorted"
    );
    unique
}

/// From this many matches on, [`matched_items_sorted`] sorts in place: a
/// copy would be 64 MB or more.
const IN_PLACE_MATCHES: usize = 1 << 22;

/// Writes a receiver's output from sorted runs (of buckets, or of workers'
/// parts): the matches merged in key order, then the sections of unmatched
/// rows (this party's merged runs, or null rows for the peer's) in party order.
pub(crate) fn write_runs(
    cfg: &PsiConfig,
    w: &mut OutWriter,
    matched: &[std::path::PathBuf],
    unmatched: &[std::path::PathBuf],
    peer_unmatched: u64,
) -> Result<(), PsiError> {
    let party = w.party();
    if cfg.join != JoinType::Difference {
        merge_runs(matched, |e| {
            w.matched(e.rows.iter().map(|r| r.as_slice()), e.peer_count)
        })?;
    }
    let own_section =
        |w: &mut OutWriter| merge_runs(unmatched, |e| e.rows.iter().try_for_each(|r| w.own(r)));
    if cfg.join == JoinType::Difference {
        return own_section(w);
    }
    for p in 0..2u8 {
        if cfg.outer(p) {
            if p == party {
                own_section(w)?
            } else {
                w.nulls(peer_unmatched)?
            }
        }
    }
    Ok(())
}

/// With a single bucket, the sections after the matches: this party's own
/// unmatched rows, or null rows for the peer's, in party order.
fn write_unmatched_sections<'a, I: Iterator<Item = &'a [u8]>>(
    cfg: &PsiConfig,
    w: &mut OutWriter,
    party: u8,
    unmatched: &[u32],
    rows_of: &impl Fn(u32) -> I,
    peer_unmatched: u64,
) -> Result<(), PsiError> {
    let own = |w: &mut OutWriter| -> Result<(), PsiError> {
        for &gi in unmatched {
            for r in rows_of(gi) {
                w.own(r)?;
            }
        }
        Ok(())
    };
    if cfg.join == JoinType::Difference {
        return own(w);
    }
    for p in 0..2u8 {
        if cfg.outer(p) {
            if p == party {
                own(w)?
            } else {
                w.nulls(peer_unmatched)?
            }
        }
    }
    Ok(())
}

fn file_names(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect()
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Which parties receive, as (listener, connector), for `receiver` given at party `party`.
pub fn receivers_of(receiver: Receiver, party: u8) -> [bool; 2] {
    let mut r = [false; 2];
    let p = party as usize;
    r[p] = matches!(receiver, Receiver::SelfOnly | Receiver::Both);
    r[1 - p] = matches!(receiver, Receiver::Peer | Receiver::Both);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A row of a two-column file `id,v` for the read tests: plain IDs,
    /// IDs that need trimming or lower-casing, empty keys, blank lines and
    /// (rarely) a row with a field too many.
    fn read_test_line() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[0-9]{1,12},[a-z]{0,3}",
            2 => " [0-9A-C]{1,5} ,x",
            2 => "[a-cA-C]{1,4},",
            1 => Just(",v".to_string()),
            1 => Just(String::new()),
            1 => Just("1,2,3".to_string()),
        ]
    }

    /// A row as read: item, raw text, key.
    type ReadRow = (Item, Vec<u8>, Vec<u8>);

    /// (item, raw, key) of every kept row, in file order, or the line of
    /// the first bad row: CsvReader record by record and `KeyCols::key`,
    /// the definition the block reader must match.
    fn read_naively(cfg: &PsiConfig, text: &str) -> Result<Vec<ReadRow>, u64> {
        let mut r = CsvReader::new(text.as_bytes(), Path::new("t.csv"));
        assert!(r.read().unwrap());
        let names: Vec<Vec<u8>> = (0..r.len()).map(|i| r.field(i).to_vec()).collect();
        let cols: Vec<usize> = cfg
            .keys
            .iter()
            .map(|k| names.iter().position(|n| n == k.as_bytes()).unwrap())
            .collect();
        let keys = KeyCols {
            cfg,
            cols: &cols,
            ncols: names.len(),
            shard: None,
        };
        let (mut out, mut key) = (Vec::new(), Vec::new());
        while r.read().unwrap() {
            match keys.key(r.len(), |i| r.field(i), &mut key) {
                Ok(true) => out.push((item_of(&key), r.raw().to_vec(), key.clone())),
                Ok(false) => {}
                Err(_) => return Err(r.line()),
            }
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn rows_read_in_place_equal_a_naive_read(
            lines in prop::collection::vec(read_test_line(), 0..300),
            crlf in any::<bool>(),
            block in 1usize..400,
            both_columns in any::<bool>(),
            trim in any::<bool>(),
            lowercase in any::<bool>(),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = format!("id,v{nl}");
            for l in &lines {
                text.push_str(l);
                text.push_str(nl);
            }
            let keys = if both_columns { vec!["id".into(), "v".into()] } else { vec!["id".into()] };
            let mut cfg = PsiConfig::new(keys, true);
            cfg.skip_empty_keys = true;
            cfg.normalize.trim = trim;
            cfg.normalize.lowercase = lowercase;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.csv");
            std::fs::write(&path, &text).unwrap();
            let got = read_input_in_blocks(&cfg, None, &path, block);
            match read_naively(&cfg, &text) {
                Err(line) => {
                    let Err(PsiError::Input { line: l, .. }) = got else {
                        panic!("the bad row on line {line} was not reported");
                    };
                    prop_assert_eq!(l, line);
                }
                Ok(want) => {
                    let mut input = got.unwrap();
                    prop_assert_eq!(input.loaded.rows, want.len() as u64);
                    let b = input.loaded.bucket(0, 1).unwrap();
                    let rows = b.rows();
                    let got: Vec<_> = (0..rows.len())
                        .map(|i| (b.items[i], rows.raw(i).to_vec(), rows.key(i).to_vec()))
                        .collect();
                    let all_keys = want.iter().all(|(_, raw, key)| raw == key);
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(rows.rows_are_keys(), all_keys);
                }
            }
        }
    }

    /// One line to put among a key file's lines: a key of either class,
    /// or a row that is more than its key (spaces, capitals), a blank line,
    /// or a quoted key (the general reader).
    fn odd_key_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[0-9]{1,5}",
            "[a-c]{1,4}",
            " [0-9]{1,3}",
            "[0-9]{1,3} ",
            "A[a-c]{0,2}",
            Just("\"7\"".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// `read_keys_only` takes a file exactly when every row is its key
        /// (by the naive read) in one order class, and then gives the items
        /// of the usual read, in file order, with no text.
        #[test]
        fn keys_only_read_takes_exactly_the_files_of_keys(
            letters in any::<bool>(),
            keys in prop::collection::vec("[0-9]{1,18}", 0..300),
            odd in prop::option::of((any::<prop::sample::Index>(), odd_key_line())),
            crlf in any::<bool>(),
            block in 1usize..400,
            trim in any::<bool>(),
            lowercase in any::<bool>(),
            two_columns in any::<bool>(),
        ) {
            // the keys of one class (18 digits, or up to 4 letters), then
            // maybe one odd line somewhere
            let mut lines: Vec<String> = if letters {
                keys.iter().map(|k| k.chars().take(4).map(|c| (b'a' + c as u8 % 3) as char).collect()).collect()
            } else {
                keys
            };
            if let Some((at, line)) = odd {
                lines.insert(at.index(lines.len() + 1), line);
            }
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = if two_columns { format!("id,v{nl}") } else { format!("id{nl}") };
            for l in &lines {
                text.push_str(l);
                if two_columns && !l.is_empty() {
                    text.push_str(",x");
                }
                text.push_str(nl);
            }
            let mut cfg = PsiConfig::new(vec!["id".into()], true);
            cfg.normalize.trim = trim;
            cfg.normalize.lowercase = lowercase;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.csv");
            std::fs::write(&path, &text).unwrap();
            let want = read_naively(&cfg, &text);
            let items: Vec<Item> = want.iter().flatten().map(|r| r.0).collect();
            let qualifies = !two_columns
                && want.as_ref().is_ok_and(|w| w.iter().all(|(_, raw, key)| raw == key))
                && one_order_class(&items);
            match read_keys_only(&cfg, &path, block).unwrap() {
                Some(mut input) => {
                    prop_assert!(qualifies, "took a file that is not all keys of one class");
                    prop_assert_eq!(input.loaded.rows, items.len() as u64);
                    prop_assert!(!input.loaded.has_text());
                    prop_assert!(input.loaded.rows_are_keys());
                    prop_assert_eq!(input.loaded.need_buckets, 1);
                    let b = input.loaded.bucket(0, 1).unwrap();
                    prop_assert_eq!(&b.items, &items);
                }
                None => prop_assert!(!qualifies, "refused a file of keys of one class"),
            }
        }
    }

    #[test]
    fn a_header_longer_than_the_first_read_is_read_whole() {
        // the header is read through a 64 KiB buffer that must grow: one
        // key column of a 70,000-byte name, then many columns before it
        let dir = tempfile::tempdir().unwrap();
        let long = "k".repeat(70_000);
        let many: String = (0..12_000).map(|i| format!("c{i},")).collect();
        for (header, row) in [
            (long.clone(), "7".to_string()),
            (format!("{many}{long}"), format!("{}7", ",".repeat(12_000))),
        ] {
            let path = dir.path().join("t.csv");
            let text = format!("{header}\n{row}\n{row}\n{row}\n");
            std::fs::write(&path, &text).unwrap();
            let cfg = PsiConfig::new(vec![long.clone()], true);
            let input = read_input(&cfg, None, &path).unwrap();
            assert_eq!(input.header, header.as_bytes());
            assert_eq!(input.loaded.rows, 3);
            if !header.contains(',') {
                let keys_only = read_keys_only(&cfg, &path, KEYS_BLOCK).unwrap().unwrap();
                assert_eq!(keys_only.loaded.rows, 3);
            }
        }
    }

    /// A party that read its keys alone, whose peer then asks for buckets,
    /// reads its file again with the text (the rows go through buckets and
    /// runs): both outputs are still the inner join, in key order.
    #[test]
    fn keys_only_party_reads_its_text_again_when_buckets_are_needed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = |from: u64, n: u64| {
            let mut t = String::from("id\n");
            for i in from..from + n {
                t.push_str(&format!("{}\n", 100_000_000 + i * 7));
            }
            t
        };
        let (pa, pb) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&pa, keys(0, 3000)).unwrap();
        std::fs::write(&pb, keys(1000, 3000)).unwrap();
        let mut ca = PsiConfig::new(vec!["id".into()], true);
        let mut cb = PsiConfig::new(vec!["id".into()], false);
        for c in [&mut ca, &mut cb] {
            c.protocol = crate::config::Protocol::Rr22;
            c.tmp_dir = dir.path().to_path_buf();
        }
        // the connector's rows need buckets; the listener's fit
        cb.memory_budget = 64 << 10;
        assert!(read_keys_only(&ca, &pa, READ_BLOCK).unwrap().is_some());
        let (oa, ob) = (dir.path().join("oa.csv"), dir.path().join("ob.csv"));
        // each thread owns its end of the link: a party that fails or
        // panics hangs up, and its peer stops too
        let (x, y) = crate::channel::memory_pair(16);
        let (ca, cb, pa, pb, oa2, ob2) = (&ca, &cb, &pa, &pb, &oa, &ob);
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(move || {
                let ahead = ReadAhead::start(ca, pa);
                run_read_ahead(ca, ahead, Some(oa2), &x)
            });
            let hb = s.spawn(move || run(cb, pb, Some(ob2), &y));
            (ha.join(), hb.join())
        });
        let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
        assert!(ra.buckets > 1 && rb.buckets > 1, "the run was not bucketed");
        let want = format!(
            "id\n{}",
            (1000..3000u64)
                .map(|i| format!("{}\n", 100_000_000 + i * 7))
                .collect::<String>()
        );
        assert_eq!(std::fs::read_to_string(&oa).unwrap(), want);
        assert_eq!(std::fs::read_to_string(&ob).unwrap(), want);
    }

    #[test]
    fn grouping_matches_a_naive_grouping_in_keyed_order() {
        // items with duplicates (every 7th row repeats an earlier item) or
        // none; enough rows for several radix partitions; in 1, 4 and 256
        // batches
        let cases = [
            (0usize, 0u32),
            (0, 3),
            (1, 0),
            (5, 0),
            (5, 2),
            (20_001, 0),
            (20_000, 2),
            (70_000, 0),
            (70_000, 8),
        ];
        for (n, kbits, dups) in cases
            .iter()
            .flat_map(|&(n, k)| [(n, k, true), (n, k, false)])
        {
            let items: Vec<Item> = (0..n as u128)
                .map(|i| {
                    let x = if dups && i % 7 == 3 { i / 2 } else { i };
                    x.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                })
                .collect();
            // rows given (every third), or row k for item k
            let given = n % 2 == 1;
            let idx: Vec<u32> = (0..n as u32)
                .map(|i| if given { i * 3 } else { i })
                .collect();
            let g = Grouped::new(items.clone(), given.then(|| idx.clone()), 11, kbits, true);
            // the in-place partition (large inputs) groups the same
            let h = Grouped::with_partition(
                items.clone(),
                given.then(|| idx.clone()),
                11,
                kbits,
                true,
                true,
            );
            assert_eq!(
                (&h.order, &h.starts, &h.unique, &h.batches),
                (&g.order, &g.starts, &g.unique, &g.batches),
                "n={n} kbits={kbits}"
            );
            if !given {
                // without rows, either partition: the same groups, counts
                // and batches, no order; each item back as often as it was
                for in_place in [false, true] {
                    let r =
                        Grouped::with_partition(items.clone(), None, 11, kbits, false, in_place);
                    assert!(r.order.is_empty());
                    assert_eq!(
                        (r.rows, &r.starts, &r.unique, &r.batches),
                        (n, &g.starts, &g.unique, &g.batches),
                        "n={n} kbits={kbits} in_place={in_place}"
                    );
                    assert_eq!(r.has_dups(), g.has_dups());
                    let mut back = r.items_by_row(&r.unique);
                    let mut want = items.clone();
                    back.sort_unstable();
                    want.sort_unstable();
                    assert!(back == want, "n={n} kbits={kbits} in_place={in_place}");
                }
            }
            // naive: rows of each item in file order
            let mut naive: std::collections::HashMap<Item, Vec<u32>> = Default::default();
            for (it, i) in items.iter().zip(&idx) {
                naive.entry(*it).or_default().push(*i);
            }
            assert_eq!(g.len(), naive.len());
            assert_eq!(g.has_dups(), dups && n > 3, "n={n}");
            assert_eq!(g.order.len(), n);
            assert_eq!(g.batches.len(), (1 << kbits) + 1);
            assert_eq!(*g.batches.last().unwrap() as usize, g.len());
            let aes = Aes::new(11);
            for k in 0..1 << kbits {
                let r = g.batch(k);
                for gi in r.clone() {
                    assert_eq!(g.rows(gi), &naive[&g.unique[gi]][..], "n={n} group {gi}");
                    assert_eq!(crate::store::batch_of(g.unique[gi], kbits), k);
                    if gi > r.start {
                        // inside a batch, groups ascend by the keyed item
                        assert!(aes.enc(g.unique[gi - 1]) < aes.enc(g.unique[gi]));
                    }
                }
            }
            if kbits == 8 {
                // every batch has its share (70k / 256 ≈ 270 groups)
                assert!((0..256).all(|k| g.batch(k).len() > 150), "uneven batches");
            }
            if n > 1000 && kbits == 0 {
                // another key, another order; neither is the items' order
                let h = Grouped::new(items.clone(), Some(idx), 12, 0, true);
                assert_ne!(g.unique[..50], h.unique[..50]);
                let mut sorted = g.unique.clone();
                sorted.sort_unstable();
                assert_ne!(sorted[..50], g.unique[..50]);
            }
        }
    }

    #[test]
    fn matched_items_sorted_equal_a_naive_selection() {
        // random, clustered (one order class of short digit keys) and
        // repeated items; none, some, all matched; in place and by copy
        let mix = |i: u128| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        for n in [0usize, 1, 100, 20_000, 200_001] {
            for (shape, item) in [
                ("random", &(|i: u128| mix(i)) as &dyn Fn(u128) -> Item),
                ("clustered", &|i: u128| ((i * 7 % 1000) << 8) | 35),
                ("repeated", &|i: u128| mix(i % 3)),
            ] {
                let unique: Vec<Item> = (0..n as u128).map(item).collect();
                for every in [1usize, 3, n + 1] {
                    // groups matched in a scrambled order, as a protocol
                    // gives them
                    let mut result: Vec<(u32, u32)> = (0..n as u32)
                        .filter(|&g| (g as usize).is_multiple_of(every))
                        .map(|g| (g, 1))
                        .collect();
                    let len = result.len();
                    for k in 0..len {
                        result.swap(k, (mix(k as u128) % len as u128) as usize);
                    }
                    if every == 3 && len > 0 {
                        // a group matched twice (two equal tags): written
                        // twice, as the general path does
                        result.push(result[len / 2]);
                    }
                    let mut want: Vec<Item> =
                        result.iter().map(|&(g, _)| unique[g as usize]).collect();
                    want.sort_unstable();
                    for in_place in [false, true] {
                        let got =
                            matched_items_sorted_with(unique.clone(), result.clone(), in_place);
                        assert!(
                            got == want,
                            "{shape} n={n} every={every} in_place={in_place}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn keyed_partition_sort_equals_a_plain_sort() {
        for (n, used) in [
            (0usize, 0u32),
            (10, 3),
            (63, 0),
            (64, 0),
            (1000, 5),
            (9000, 9),
        ] {
            let mut prg = crate::rr22::prim::Prg::new(n as u128);
            // random keyed items with the top `used` bits equal, some repeated
            let mut v: Vec<(Item, u32)> = (0..n as u32)
                .map(|i| {
                    let it = prg.block() >> used;
                    (it, i)
                })
                .collect();
            for i in (0..n).step_by(7).skip(1) {
                v[i].0 = v[i / 2].0;
            }
            let mut want = v.clone();
            want.sort_unstable();
            let mut tmp = Vec::new();
            let (mut s, mut r): (Vec<Item>, Vec<u32>) = v.into_iter().unzip();
            sort_keyed(&mut s, &mut r, used, &mut tmp);
            let got: Vec<(Item, u32)> = s.into_iter().zip(r).collect();
            assert_eq!(got, want, "n={n}");
        }
    }

    #[test]
    fn radix_sort_by_item_equals_a_plain_sort() {
        let mut prg = crate::rr22::prim::Prg::new(7);
        let digits = |v: u64, len: u128| ((v as u128 % 10u128.pow(18)) << 8) | (16 + len);
        for (name, n) in [
            ("uniform", 40_000usize),
            ("narrow", 50_000),
            ("outliers", 50_000),
            ("clusters", 60_000),
            ("equal", 20_000),
            ("18 digits", 100_000),
            ("small", 1_000),
        ] {
            let src: Vec<(Item, u32)> = (0..n as u32)
                .map(|i| {
                    let r = prg.block();
                    let it = match name {
                        "narrow" => (1 << 100) + (r >> 108),
                        // a few far outside the span a sample sees
                        "outliers" if i % 997 == 3 => [0, Item::MAX, 1 << 127][i as usize % 3],
                        "outliers" => (5 << 80) + (r >> 90),
                        // two dense clusters far apart
                        "clusters" => {
                            [(1 << 40) + (r >> 100), (1 << 120) + (r >> 100)][i as usize % 2]
                        }
                        "equal" => 42,
                        "18 digits" => digits(r as u64, 18),
                        _ => r,
                    };
                    (it, i)
                })
                .collect();
            let got = sorted_by_item(&src, |e| e.0, |e| e.1);
            assert!(
                got.windows(2).all(|w| w[0].0 <= w[1].0),
                "{name}: not sorted"
            );
            let (mut a, mut b) = (got, src);
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{name}: not the same entries");
        }
    }

    #[test]
    fn group_order_equals_a_sort() {
        let mut prg = 12345u64;
        let mut next = || {
            prg ^= prg << 13;
            prg ^= prg >> 7;
            prg ^= prg << 17;
            prg
        };
        for case in [
            (1000, 900, false, false),
            (1000, 10, false, false),
            (1000, 900, true, false),
            (1000, 900, false, true),
            (0, 0, false, false),
            // several parts of 2^16 groups, the last one short
            (300_000, 200_000, false, false),
            (300_000, 200_000, false, true),
        ]
        .into_iter()
        // counts of 1..5, or all 1 (the peer repeats no key: the bitmap)
        .flat_map(|c| [(c, false), (c, true)])
        {
            let ((groups, k, zero, repeat), ones) = case;
            let mut gis: Vec<u32> = (0..groups as u32).collect();
            for i in (1..gis.len()).rev() {
                gis.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut v: Vec<(u32, u32)> = gis[..k]
                .iter()
                .map(|&g| (g, if ones { 1 } else { 1 + (next() % 5) as u32 }))
                .collect();
            if zero {
                v[3].1 = 0;
            }
            if repeat {
                let first = v[0];
                v.push((first.0, if ones { 1 } else { 7 }));
            }
            let mut want = v.clone();
            want.sort_by_key(|&(g, _)| g);
            into_group_order(&mut v, groups);
            // equal groups (the repeat) may come in either order
            let key = |x: &Vec<(u32, u32)>| {
                let mut x = x.clone();
                x.sort_unstable();
                x
            };
            assert!(v.windows(2).all(|w| w[0].0 <= w[1].0));
            assert_eq!(key(&v), key(&want));
        }
    }

    #[test]
    fn forwarded_positions_roundtrip() {
        let cases: Vec<(Vec<u32>, usize)> = vec![
            (vec![], 0),
            (vec![], 100),
            (vec![0], 1),
            (vec![3], 1000),                        // sparse: list
            ((0..1000).step_by(2).collect(), 1000), // dense: bitmap
            ((0..1000).collect(), 1000),
            (vec![1, 1, 5], 8), // repeated (a tag collision): list
            (vec![7, 9, 63, 64], 65),
        ];
        for (pos, n) in cases {
            let mut msg = encode_positions(&pos, n, false);
            let dense = n.div_ceil(8) < 4 * pos.len() && pos.windows(2).all(|w| w[0] < w[1]);
            assert_eq!(msg[0], dense as u8, "{pos:?}");
            msg.extend_from_slice(&[9, 0, 0, 0]);
            let (got, rest) = decode_positions(&msg, n).unwrap();
            assert_eq!(got, pos);
            assert_eq!(rest, &[9, 0, 0, 0]);
        }
        // in any order: a duplicate-free set still goes as a bitmap (and
        // comes back ascending); a repeated position forces the list
        let msg = encode_positions(&[9, 2, 7, 0, 5], 10, true);
        assert_eq!(msg[0], 1);
        assert_eq!(decode_positions(&msg, 10).unwrap().0, vec![0, 2, 5, 7, 9]);
        let msg = encode_positions(&[9, 2, 7, 0, 5], 10, false);
        assert_eq!(msg[0], 0);
        assert_eq!(decode_positions(&msg, 10).unwrap().0, vec![9, 2, 7, 0, 5]);
        let msg = encode_positions(&[9, 2, 9, 0, 5], 10, true);
        assert_eq!(msg[0], 0);
        assert_eq!(decode_positions(&msg, 10).unwrap().0, vec![9, 2, 9, 0, 5]);
        assert!(decode_positions(&[], 5).is_err());
        assert!(decode_positions(&[1, 0], 100).is_err());
        assert!(decode_positions(&[0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 2], 100).is_err());
        assert!(decode_positions(&[2], 5).is_err());
    }

    /// A listener whose read and RR22 work ahead are done before the run
    /// (as when it started first), for [`early_vole_cases`].
    fn ready_ahead(cfg: &PsiConfig, input: &Path) -> ReadAhead {
        let ahead = ReadAhead::start(cfg, input);
        let path = ahead.path.clone();
        let read = ahead.finish();
        if let Ok(i) = &read {
            let work = i.pre.as_ref().and_then(|p| p.rr22.as_ref());
            let t = Instant::now();
            while work.is_some_and(|w| w.early_items().is_none()) {
                assert!(t.elapsed().as_secs() < 60, "the work ahead never finished");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        ReadAhead {
            path,
            state: Ahead::Done(Box::new(read)),
        }
    }

    /// RR22's receiver reading ahead a file of keys puts its groups in the
    /// items' order (`sorts_ahead`); its sender keeps the pseudorandom one,
    /// and so does a receiver whose keys repeat. The run's outputs are
    /// checked in `early_vole_cases`, which goes through the same path.
    #[test]
    fn only_a_receiver_of_unique_keys_sorts_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (unique, repeated) = (dir.path().join("u.csv"), dir.path().join("r.csv"));
        let ids = |n: u64, modulo: u64| -> String {
            let rows: String = (0..n)
                .map(|i| format!("{}\n", 1_000_000 + (i * 7919) % modulo))
                .collect();
            format!("id\n{rows}")
        };
        std::fs::write(&unique, ids(5000, 10_007)).unwrap();
        std::fs::write(&repeated, ids(5000, 4001)).unwrap();
        let sorted_ahead = |listener: bool, path: &Path| {
            let mut c = PsiConfig::new(vec!["id".into()], listener);
            c.protocol = crate::config::Protocol::Rr22;
            let input = ready_ahead(&c, path).finish().unwrap();
            let p = input.pre.expect("one bucket, grouped ahead");
            assert!(!p.unique.is_empty());
            p.unique.is_sorted()
        };
        assert!(sorted_ahead(true, &unique), "the receiver's groups");
        assert!(!sorted_ahead(false, &unique), "the sender's groups");
        assert!(!sorted_ahead(true, &repeated), "a receiver with repeats");
    }

    /// RR22's early VOLE: run when the receiver's work ahead is ready, and
    /// used when the run is of one batch; proposed and accepted but dropped
    /// when the peer's size asks for batches; refused by a sender that
    /// would batch. The outputs equal the intersection every time.
    #[test]
    fn early_vole_cases() {
        // (listener rows, connector rows, batch rows at each party (the
        // connector refuses proposals above its own), whether the early
        // VOLE is used, whether the connector reads ahead too (it computes
        // Δ·H(y) during the VOLE) or inside the run, whether both learn or
        // the listener alone)
        let cases = [
            (3000u64, 2500u64, [None, None], true, true, true),
            (3000, 2500, [None, None], true, false, true),
            (3000, 2500, [None, None], true, true, false),
            (1, 7, [None, None], true, true, true),
            (500, 5000, [Some(1000), Some(1000)], false, true, true),
            (3000, 2000, [None, Some(1000)], false, true, true),
        ];
        for (na, nb, batch, used, b_ahead, both) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (pa, pb) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
            // the listener has 0, 2, 4, …; the connector 0, 3, 6, …
            let ids = |n: u64, step: u64| {
                let rows: String = (0..n)
                    .map(|i| format!("{}\n", 1_000_000 + i * step))
                    .collect();
                format!("id\n{rows}")
            };
            std::fs::write(&pa, ids(na, 2)).unwrap();
            std::fs::write(&pb, ids(nb, 3)).unwrap();
            let mut ca = PsiConfig::new(vec!["id".into()], true);
            let mut cb = PsiConfig::new(vec!["id".into()], false);
            for (c, b) in [(&mut ca, batch[0]), (&mut cb, batch[1])] {
                c.protocol = crate::config::Protocol::Rr22;
                c.tmp_dir = dir.path().to_path_buf();
                c.batch_rows = b;
            }
            if !both {
                ca.receiver = Receiver::SelfOnly;
                cb.receiver = Receiver::Peer;
            }
            let (oa, ob) = (dir.path().join("oa.csv"), dir.path().join("ob.csv"));
            let (x, y) = crate::channel::memory_pair(16);
            let (ca, cb, pa, pb, oa2, ob2) = (&ca, &cb, &pa, &pb, &oa, &ob);
            let (ra, rb) = std::thread::scope(|s| {
                let ha = s.spawn(move || {
                    let ahead = ready_ahead(ca, pa);
                    run_read_ahead(ca, ahead, Some(oa2), &x)
                });
                let hb = s.spawn(move || match b_ahead {
                    true => run_read_ahead(cb, ReadAhead::start(cb, pb), both.then_some(ob2), &y),
                    false => run(cb, pb, both.then_some(ob2), &y),
                });
                (ha.join(), hb.join())
            });
            let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
            let case = format!(
                "{na} × {nb} rows, batches {batch:?}, connector ahead {b_ahead}, both learn {both}"
            );
            assert_eq!((ra.early_vole, rb.early_vole), (used, used), "{case}");
            // common: multiples of 6 below both ends
            let top = (2 * na).min(3 * nb);
            let want: String = (0..top.div_ceil(6))
                .map(|i| format!("{}\n", 1_000_000 + 6 * i))
                .collect();
            let want = format!("id\n{want}");
            assert_eq!(std::fs::read_to_string(&oa).unwrap(), want, "{case}");
            match both {
                true => assert_eq!(std::fs::read_to_string(&ob).unwrap(), want, "{case}"),
                false => assert!(!ob.exists(), "{case}"),
            }
        }
    }
}

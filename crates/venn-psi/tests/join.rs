//! The engine against a naive reference join, over memory channels.
//!
//! The reference is the output specification written as plainly as possible:
//! parse both files, find common keys, expand duplicates listener-major, add
//! the outer sections. Property tests compare the engine's files with it
//! byte for byte, for every join, receiver choice, duplicates, multi-column
//! keys, quoting, CRLF, BOM, empty inputs, and the bucketed (spilled) path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use venn_psi::csv::CsvReader;
use venn_psi::item::push_column;
use venn_psi::workers::{self, WorkerSet};
use venn_psi::{
    Channel, JoinType, Protocol, PsiConfig, PsiError, Receiver, Report, Side, memory_pair, run,
};

/// (canonical key, raw record) per data row, and the header's column count.
/// (canonical key, raw record) rows.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;
/// Each party's report and output bytes.
type Outcome = Result<[(Report, Option<Vec<u8>>); 2], PsiError>;

fn parse(path: &Path, keys: &[String]) -> (Rows, usize) {
    let mut r = CsvReader::new(
        std::io::BufReader::new(std::fs::File::open(path).unwrap()),
        path,
    );
    assert!(r.read().unwrap());
    let names: Vec<String> = (0..r.len())
        .map(|i| String::from_utf8(r.field(i).to_vec()).unwrap())
        .collect();
    let cols: Vec<usize> = keys
        .iter()
        .map(|k| names.iter().position(|n| n == k).unwrap())
        .collect();
    let mut rows = Vec::new();
    while r.read().unwrap() {
        let key = if cols.len() == 1 {
            r.field(cols[0]).to_vec()
        } else {
            let mut k = Vec::new();
            for &c in &cols {
                push_column(&mut k, r.field(c));
            }
            k
        };
        rows.push((key, r.raw().to_vec()));
    }
    (rows, names.len())
}

/// The expected output text of `party` (header excluded), or None if it is not a receiver.
fn reference(
    a: &[(Vec<u8>, Vec<u8>)],
    b: &[(Vec<u8>, Vec<u8>)],
    ncols: [usize; 2],
    join: JoinType,
    left: u8,
    party: u8,
) -> Vec<Vec<u8>> {
    let group = |rows: &[(Vec<u8>, Vec<u8>)]| {
        let mut m: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, r) in rows {
            m.entry(k.clone()).or_default().push(r.clone());
        }
        m
    };
    let (ga, gb) = (group(a), group(b));
    let g = [&ga, &gb];
    let mine = g[party as usize];
    let nulls = |p: usize| vec![b"NULL".to_vec(); ncols[p]].join(&b","[..]);
    let mut out = Vec::new();
    if join == JoinType::Difference {
        let other = g[1 - party as usize];
        for (k, rs) in mine {
            if !other.contains_key(k) {
                out.extend(rs.iter().cloned());
            }
        }
        return out;
    }
    for (k, ra) in &ga {
        if let Some(rb) = gb.get(k) {
            for x in ra {
                for y in rb {
                    out.push(if party == 0 { x.clone() } else { y.clone() });
                }
            }
        }
    }
    let outer = |p: u8| match join {
        JoinType::Left => p == left,
        JoinType::Right => p != left,
        JoinType::Full => true,
        _ => false,
    };
    for p in 0..2u8 {
        if !outer(p) {
            continue;
        }
        let (own, other) = (g[p as usize], g[1 - p as usize]);
        for (k, rs) in own {
            if other.contains_key(k) {
                continue;
            }
            for r in rs {
                out.push(if p == party {
                    r.clone()
                } else {
                    nulls(party as usize)
                });
            }
        }
    }
    out
}

struct Case {
    a: String,
    b: String,
    keys_a: Vec<String>,
    keys_b: Vec<String>,
    join: JoinType,
    /// receiver as given at party 0
    receiver0: Receiver,
    left0: Side,
    budget: u64,
    protocol: Protocol,
    /// RR22 variant: 0 fast, 1 low-communication, 2 malicious
    mode: u8,
    /// `batch_rows` at (party 0, party 1); the smaller one is used
    batch: [u64; 2],
}

/// The default batch size at both parties.
const ONE_BATCH: [u64; 2] = [1 << 20, 1 << 20];

fn configs(c: &Case, dir: &Path) -> (PsiConfig, PsiConfig) {
    let cfg = |keys: &Vec<String>, leader: bool| {
        let mut k = PsiConfig::new(keys.clone(), leader);
        k.protocol = c.protocol;
        k.low_comm = c.mode == 1;
        k.malicious = c.mode == 2;
        k.join = c.join;
        k.memory_budget = c.budget;
        k.batch_rows = Some(c.batch[usize::from(!leader)]);
        k.tmp_dir = dir.to_path_buf();
        let flip = |r| match r {
            Receiver::SelfOnly => Receiver::Peer,
            Receiver::Peer => Receiver::SelfOnly,
            Receiver::Both => Receiver::Both,
        };
        k.receiver = if leader {
            c.receiver0
        } else {
            flip(c.receiver0)
        };
        k.left = if leader {
            c.left0
        } else if c.left0 == Side::SelfSide {
            Side::Peer
        } else {
            Side::SelfSide
        };
        k
    };
    (cfg(&c.keys_a, true), cfg(&c.keys_b, false))
}

/// Both parties of one run over a memory link, each on a thread. Party 0
/// reads ahead of the handshake, as `venn psi` does (its rows are grouped
/// early and may drop their text), party 1 inside the run: both paths in
/// every case. Each thread owns its end of the link, so a party that
/// panics hangs up and its peer stops too.
fn run_pair(
    cfg: [&PsiConfig; 2],
    input: [&Path; 2],
    output: [&Path; 2],
) -> (Result<Report, PsiError>, Result<Report, PsiError>) {
    let (ca, cb) = memory_pair(16);
    std::thread::scope(|s| {
        let ha = s.spawn(move || {
            let ahead = venn_psi::ReadAhead::start(cfg[0], input[0]);
            venn_psi::run_read_ahead(cfg[0], ahead, Some(output[0]), &ca)
        });
        let hb = s.spawn(move || run(cfg[1], input[1], Some(output[1]), &cb));
        (ha.join().unwrap(), hb.join().unwrap())
    })
}

fn run_case(c: &Case) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.csv");
    let pb = dir.path().join("b.csv");
    std::fs::write(&pa, &c.a).unwrap();
    std::fs::write(&pb, &c.b).unwrap();
    let (c0, c1) = configs(c, dir.path());
    let oa: PathBuf = dir.path().join("oa.csv");
    let ob: PathBuf = dir.path().join("ob.csv");
    let (ra, rb) = run_pair([&c0, &c1], [&pa, &pb], [&oa, &ob]);
    let read = |p: &Path| std::fs::read(p).ok();
    Ok([(ra?, read(&oa)), (rb?, read(&ob))])
}

/// [`run_case`] with `workers[p]` workers at party p: one memory link per
/// worker pair, each negotiated, then [`workers::run_local`] at each party.
fn run_case_workers(c: &Case, workers: [u32; 2]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.csv");
    let pb = dir.path().join("b.csv");
    std::fs::write(&pa, &c.a).unwrap();
    std::fs::write(&pb, &c.b).unwrap();
    let pairs = workers[0].min(workers[1]);
    let links: Vec<_> = (0..pairs).map(|_| memory_pair(16)).collect();
    let (c0, c1) = configs(c, dir.path());
    let oa: PathBuf = dir.path().join("oa.csv");
    let ob: PathBuf = dir.path().join("ob.csv");
    let party = |cfg: &PsiConfig, n: u32, input: &Path, out: &Path, chans: Vec<&dyn Channel>| {
        let set = WorkerSet::new(n).unwrap();
        let plans = chans
            .iter()
            .enumerate()
            .map(|(i, ch)| workers::negotiate(*ch, &set, i as u32, cfg.leader))
            .collect::<Result<Vec<_>, _>>()?;
        assert!(plans.iter().all(|p| p.pairs() == pairs));
        workers::run_local(cfg, &plans, input, Some(out), &chans)
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            let chans: Vec<&dyn Channel> = links.iter().map(|l| &l.0 as &dyn Channel).collect();
            party(&c0, workers[0], &pa, &oa, chans)
        });
        let hb = s.spawn(|| {
            let chans: Vec<&dyn Channel> = links.iter().map(|l| &l.1 as &dyn Channel).collect();
            party(&c1, workers[1], &pb, &ob, chans)
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let read = |p: &Path| std::fs::read(p).ok();
    let (ra, rb) = (ra?, rb?);
    assert_eq!(ra.workers, pairs as usize);
    assert_eq!(rb.workers, pairs as usize);
    Ok([(ra, read(&oa)), (rb, read(&ob))])
}

fn check(c: &Case) {
    check_outcome(c, run_case(c));
}

fn check_outcome(c: &Case, outcome: Outcome) {
    let [(ra, oa), (rb, ob)] = outcome.expect("run succeeds");
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&pa, &c.a).unwrap();
    std::fs::write(&pb, &c.b).unwrap();
    let (a, na) = parse(&pa, &c.keys_a);
    let (b, nb) = (parse(&pb, &c.keys_b).0, parse(&pb, &c.keys_b).1);
    let left = if c.left0 == Side::SelfSide { 0 } else { 1 };
    let receivers = venn_psi::receivers_of(c.receiver0, 0);
    for (party, (rep, out)) in [(0u8, (&ra, &oa)), (1u8, (&rb, &ob))] {
        assert_eq!(rep.receiver, receivers[party as usize]);
        if !receivers[party as usize] {
            assert!(out.is_none(), "a non-receiver wrote output");
            assert!(rep.intersection.is_none());
            continue;
        }
        let want = reference(&a, &b, [na, nb], c.join, left, party);
        let text = out.as_ref().expect("a receiver writes output");
        let mut lines = split_records(text);
        lines.remove(0); // header
        assert_eq!(
            lines, want,
            "party {party} output differs from the reference"
        );
        assert_eq!(rep.output.as_ref().unwrap().rows, want.len() as u64);
    }
}

/// Splits an output file into records (outputs contain quoted newlines).
fn split_records(text: &[u8]) -> Vec<Vec<u8>> {
    let mut r = CsvReader::new(text, Path::new("out"));
    let mut v = Vec::new();
    while r.read().unwrap() {
        v.push(r.raw().to_vec());
    }
    v
}

fn csv_text(header: &str, rows: &[(String, String)], crlf: bool, bom: bool) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut s = String::new();
    if bom {
        s.push('\u{feff}');
    }
    s.push_str(header);
    s.push_str(nl);
    for (k, p) in rows {
        s.push_str(k);
        s.push(',');
        s.push_str(p);
        s.push_str(nl);
    }
    s
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..12).prop_map(|i| format!("{:018}", 100_000_000_000_000_000u64 + i as u64 * 7919)),
        prop::sample::select(vec![
            "é",
            "ключ",
            "鍵",
            "a,b",
            "say \"x\"",
            "multi\nline",
            "long-key-longer-than-fifteen-bytes"
        ])
        .prop_map(String::from),
    ]
}

fn arb_table() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((arb_key(), "[a-z ,\"]{0,6}"), 0..25)
        .prop_map(|v| v.into_iter().map(|(k, p)| (quote(&k), quote(&p))).collect())
}

/// A column of keys: 18-digit keys without repeats (in any order: the
/// usual PSI of IDs, whose matches are written from their items alone),
/// or with repeats: 18-digit keys only, short keys only (some of them
/// multi-byte), or `arb_key`'s mix (quoted keys among them).
fn arb_key_column() -> impl Strategy<Value = Vec<String>> {
    let id = |i: u64| format!("{:018}", 100_000_000_000_000_000u64 + i * 7919);
    let digits = (0u64..12).prop_map(id);
    let unique = prop::collection::btree_set(0u64..60, 0..40)
        .prop_map(move |s| s.into_iter().map(id).collect::<Vec<_>>())
        .prop_shuffle();
    let short =
        prop::sample::select(vec!["7", "a", "ключ", "鍵", "0012", "z y"]).prop_map(String::from);
    prop_oneof![
        unique,
        prop::collection::vec(digits, 0..40),
        prop::collection::vec(short, 0..40),
        prop::collection::vec(arb_key().prop_map(|k| quote(&k)), 0..40),
    ]
}

fn arb_join() -> impl Strategy<Value = JoinType> {
    prop::sample::select(vec![
        JoinType::Inner,
        JoinType::Left,
        JoinType::Right,
        JoinType::Full,
        JoinType::Difference,
    ])
}

/// Batch sizes at the two parties: mostly one batch, else down to one row
/// per batch (the run splits into as many batches as it may, with empty
/// ones among them).
fn arb_batch() -> impl Strategy<Value = [u64; 2]> {
    let one = prop::sample::select(vec![1u64 << 20, 1 << 20, 1, 3, 16]);
    [one.clone(), one]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn ecdh_equals_reference(a in arb_table(), b in arb_table(), join in arb_join(),
                             receiver0 in prop::sample::select(vec![Receiver::SelfOnly, Receiver::Peer, Receiver::Both]),
                             left_peer in any::<bool>(), crlf in any::<bool>(), bom in any::<bool>(), small in any::<bool>(),
                             batch in arb_batch()) {
        check(&Case {
            a: csv_text("id,pa", &a, crlf, bom),
            b: csv_text("key,pb", &b, !crlf, false),
            keys_a: vec!["id".into()],
            keys_b: vec!["key".into()],
            join,
            receiver0,
            left0: if left_peer { Side::Peer } else { Side::SelfSide },
            budget: if small { 64 << 10 } else { 1 << 30 },
            protocol: Protocol::Ecdh,
            mode: 0,
            batch,
        });
    }

    #[test]
    fn rr22_equals_reference(a in arb_table(), b in arb_table(), join in arb_join(),
                             receiver0 in prop::sample::select(vec![Receiver::SelfOnly, Receiver::Peer, Receiver::Both]),
                             left_peer in any::<bool>(), small in any::<bool>(), mode in 0u8..3,
                             batch in arb_batch()) {
        check(&Case {
            a: csv_text("id,pa", &a, false, true),
            b: csv_text("key,pb", &b, true, false),
            keys_a: vec!["id".into()],
            keys_b: vec!["key".into()],
            join,
            receiver0,
            left0: if left_peer { Side::Peer } else { Side::SelfSide },
            budget: if small { 64 << 10 } else { 1 << 30 },
            protocol: Protocol::Rr22,
            mode,
            batch,
        });
    }

    #[test]
    fn workers_equal_reference(a in arb_table(), b in arb_table(), join in arb_join(),
                               receiver0 in prop::sample::select(vec![Receiver::SelfOnly, Receiver::Peer, Receiver::Both]),
                               left_peer in any::<bool>(), small in any::<bool>(), rr22 in any::<bool>(),
                               wa in 1u32..4, wb in 1u32..4, batch in arb_batch()) {
        let c = Case {
            a: csv_text("id,pa", &a, false, true),
            b: csv_text("key,pb", &b, true, false),
            keys_a: vec!["id".into()],
            keys_b: vec!["key".into()],
            join,
            receiver0,
            left0: if left_peer { Side::Peer } else { Side::SelfSide },
            budget: if small { 64 << 10 } else { 1 << 30 },
            protocol: if rr22 { Protocol::Rr22 } else { Protocol::Ecdh },
            mode: 0,
            batch,
        };
        check_outcome(&c, run_case_workers(&c, [wa, wb]));
    }

    /// Files of one column, the key: their rows are written from the
    /// matched items when every row is its key unquoted (digit keys alone,
    /// short keys alone), and read back from the rows otherwise (a quoted
    /// key, or digit and short keys mixed).
    #[test]
    fn key_only_files_equal_reference(a in arb_key_column(), b in arb_key_column(), join in arb_join(),
                                      receiver0 in prop::sample::select(vec![Receiver::SelfOnly, Receiver::Peer, Receiver::Both]),
                                      crlf in any::<bool>(), small in any::<bool>(), rr22 in any::<bool>(),
                                      batch in arb_batch()) {
        let text = |keys: &[String], crlf: bool| {
            let nl = if crlf { "\r\n" } else { "\n" };
            std::iter::once("id").chain(keys.iter().map(String::as_str)).map(|k| format!("{k}{nl}")).collect::<String>()
        };
        check(&Case {
            a: text(&a, crlf),
            b: text(&b, !crlf),
            keys_a: vec!["id".into()],
            keys_b: vec!["id".into()],
            join,
            receiver0,
            left0: Side::SelfSide,
            budget: if small { 64 << 10 } else { 1 << 30 },
            protocol: if rr22 { Protocol::Rr22 } else { Protocol::Ecdh },
            mode: 0,
            batch,
        });
    }

    #[test]
    fn multi_column_keys(a in arb_table(), b in arb_table(), join in arb_join()) {
        // key = (first column, second column); a few second-column values so keys repeat
        let nonempty = |t: Vec<(String, String)>| -> Vec<(String, String)> {
            t.into_iter().map(|(k, p)| (k, if p.len() % 2 == 0 { "x".to_string() } else { "\"y,\"".to_string() })).collect()
        };
        let (a, b) = (nonempty(a), nonempty(b));
        check(&Case {
            a: csv_text("k1,k2", &a, false, false),
            b: csv_text("x1,x2", &b, true, false),
            keys_a: vec!["k1".into(), "k2".into()],
            keys_b: vec!["x1".into(), "x2".into()],
            join,
            receiver0: Receiver::Both,
            left0: Side::SelfSide,
            budget: 1 << 30,
            protocol: Protocol::Ecdh,
            mode: 0,
            batch: ONE_BATCH,
        });
    }
}

fn numbered(n: usize, start: usize, payload: &str) -> String {
    let mut s = String::from("id,payload\n");
    for i in start..start + n {
        s.push_str(&format!(
            "{:018},{payload}{i}\n",
            300_000_000_000_000_000u64 + i as u64
        ));
    }
    s
}

/// A case on two `numbered` files keyed by `id`, the listener on the left.
#[allow(clippy::too_many_arguments)] // one per field that the tests vary
fn id_case(
    a: &str,
    b: &str,
    join: JoinType,
    receiver0: Receiver,
    budget: u64,
    protocol: Protocol,
    mode: u8,
    batch: [u64; 2],
) -> Case {
    Case {
        a: a.to_string(),
        b: b.to_string(),
        keys_a: vec!["id".into()],
        keys_b: vec!["id".into()],
        join,
        receiver0,
        left0: Side::SelfSide,
        budget,
        protocol,
        mode,
        batch,
    }
}

#[test]
fn spilled_buckets_give_the_same_result() {
    // 6000 rows of ~40 B plus overhead exceed 256 KiB: several buckets.
    let a = numbered(6000, 0, "alpha-");
    let b = numbered(6000, 3000, "beta-");
    for (join, budget, protocol, mode) in [
        (JoinType::Inner, 256 << 10, Protocol::Ecdh, 0),
        (JoinType::Full, 256 << 10, Protocol::Ecdh, 0),
        (JoinType::Inner, 1 << 30, Protocol::Ecdh, 0),
        (JoinType::Full, 256 << 10, Protocol::Rr22, 0),
        (JoinType::Inner, 1 << 30, Protocol::Rr22, 0),
        (JoinType::Full, 256 << 10, Protocol::Rr22, 1),
        (JoinType::Full, 256 << 10, Protocol::Rr22, 2),
    ] {
        let c = id_case(
            &a,
            &b,
            join,
            Receiver::Both,
            budget,
            protocol,
            mode,
            ONE_BATCH,
        );
        let [(ra, _), (rb, _)] = run_case(&c).unwrap();
        if budget < (1 << 20) {
            assert!(
                ra.buckets > 1 && ra.buckets == rb.buckets,
                "budget must force buckets"
            );
        } else {
            assert_eq!(ra.buckets, 1);
        }
        assert_eq!(ra.intersection.as_ref().unwrap().keys, 3000);
        check(&c);
    }
}

/// Phases the allocator hook heard ([`batches_give_the_same_result`]).
static PHASES: std::sync::Mutex<Vec<venn_psi::memory::Phase>> = std::sync::Mutex::new(Vec::new());

#[test]
fn batches_give_the_same_result() {
    // 6000 rows, batches of 1000 at party 1 (the smaller wins): 8 batches
    // per bucket, in one bucket and in several; every protocol and mode
    venn_psi::memory::set_hook(|p| PHASES.lock().unwrap().push(p));
    let a = numbered(6000, 0, "alpha-");
    let b = numbered(6000, 3000, "beta-");
    for (join, budget, protocol, mode, receiver0) in [
        (JoinType::Inner, 1 << 30, Protocol::Rr22, 0, Receiver::Both),
        (
            JoinType::Full,
            1 << 30,
            Protocol::Rr22,
            1,
            Receiver::SelfOnly,
        ),
        (JoinType::Left, 1 << 30, Protocol::Rr22, 2, Receiver::Peer),
        (JoinType::Full, 256 << 10, Protocol::Rr22, 0, Receiver::Both),
        (
            JoinType::Difference,
            1 << 30,
            Protocol::Ecdh,
            0,
            Receiver::Both,
        ),
    ] {
        let c = id_case(
            &a,
            &b,
            join,
            receiver0,
            budget,
            protocol,
            mode,
            [1 << 20, 1000],
        );
        let [(ra, _), (rb, _)] = run_case(&c).unwrap();
        // 6000 rows in `buckets` buckets: ⌈6000 / buckets / 1000⌉ batches,
        // to a power of two, in each
        let per = (6000u64.div_ceil(ra.buckets as u64))
            .div_ceil(1000)
            .next_power_of_two();
        assert_eq!(
            ra.batches,
            ra.buckets * per as usize,
            "{join:?} {protocol:?} mode {mode}"
        );
        assert_eq!(rb.batches, ra.batches);
        assert!(ra.batches >= 8);
        check(&c);
    }
    // the allocator heard every party's batches start and end (other tests
    // may run batches meanwhile, so at least ours)
    let phases = PHASES.lock().unwrap();
    let n = |p| phases.iter().filter(|&&x| x == p).count();
    assert!(n(venn_psi::memory::Phase::Batches) >= 10);
    assert!(n(venn_psi::memory::Phase::BatchesDone) >= 10);
}

#[test]
fn no_overlap_and_full_overlap() {
    for (start, keys) in [(10_000, 0), (0, 500)] {
        let c = Case {
            a: numbered(500, 0, "a"),
            b: numbered(500, start, "b"),
            keys_a: vec!["id".into()],
            keys_b: vec!["id".into()],
            join: JoinType::Inner,
            receiver0: Receiver::Both,
            left0: Side::SelfSide,
            budget: 1 << 30,
            protocol: Protocol::Ecdh,
            mode: 0,
            batch: ONE_BATCH,
        };
        let [(ra, _), (rb, _)] = run_case(&c).unwrap();
        assert_eq!(ra.intersection.unwrap().keys, keys);
        assert_eq!(rb.intersection.unwrap().keys, keys);
        check(&c);
    }
}

fn mismatch_case(join_b: JoinType, keys_b: Vec<String>) -> Outcome {
    let c = Case {
        a: numbered(10, 0, "a"),
        b: numbered(10, 0, "b"),
        keys_a: vec!["id".into()],
        keys_b,
        join: JoinType::Inner,
        receiver0: Receiver::Both,
        left0: Side::SelfSide,
        budget: 1 << 30,
        protocol: Protocol::Ecdh,
        mode: 0,
        batch: ONE_BATCH,
    };
    let _ = join_b;
    run_case(&c)
}

#[test]
fn key_count_mismatch_fails_clearly() {
    let e = mismatch_case(JoinType::Inner, vec!["id".into(), "payload".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("number of --keys columns"), "{e}");
}

#[test]
fn input_errors_name_file_line_and_column() {
    let c = |a: &str| Case {
        a: a.into(),
        b: numbered(3, 0, "b"),
        keys_a: vec!["id".into()],
        keys_b: vec!["id".into()],
        join: JoinType::Inner,
        receiver0: Receiver::Both,
        left0: Side::SelfSide,
        budget: 1 << 30,
        protocol: Protocol::Ecdh,
        mode: 0,
        batch: ONE_BATCH,
    };
    let e = run_case(&c("id,x\n1,a\n,b\n")).unwrap_err().to_string();
    assert!(
        e.contains("a.csv:3: column 'id'") && e.contains("--skip-empty-keys"),
        "{e}"
    );
    // deep in a file parsed in parallel pieces: the line is still exact
    let mut big = String::from("id,x\n");
    for i in 0..50_000 {
        if i == 40_000 {
            big.push_str(",b\n");
        } else {
            big.push_str(&format!("{i},a\r\n"));
        }
    }
    let e = run_case(&c(&big)).unwrap_err().to_string();
    assert!(e.contains("a.csv:40002: column 'id'"), "{e}");
    let e = run_case(&c("id,x\n1,a,extra\n")).unwrap_err().to_string();
    assert!(
        e.contains("a.csv:2") && e.contains("3 fields but the header has 2"),
        "{e}"
    );
    let e = run_case(&c("ident,x\n1,a\n")).unwrap_err().to_string();
    assert!(e.contains("column 'id'") && e.contains("ident, x"), "{e}");
    let mut bad = b"id,x\n".to_vec();
    bad.extend_from_slice(b"\xff\xfe,a\n");
    let e = run_case(&c(&String::from_utf8_lossy(&bad)))
        .map(|_| ())
        .map_err(|e| e.to_string());
    // lossy conversion made it valid UTF-8 replacement chars; write raw bytes instead
    let _ = e;
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("raw.csv");
    std::fs::write(&pa, &bad).unwrap();
    let (ca, cb) = memory_pair(16);
    let pb = dir.path().join("b.csv");
    std::fs::write(&pb, numbered(3, 0, "b")).unwrap();
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            run(
                &PsiConfig {
                    protocol: Protocol::Ecdh,
                    ..PsiConfig::new(vec!["id".into()], true)
                },
                &pa,
                Some(&dir.path().join("o1")),
                &ca,
            )
        });
        let hb = s.spawn(|| {
            run(
                &PsiConfig {
                    protocol: Protocol::Ecdh,
                    ..PsiConfig::new(vec!["id".into()], false)
                },
                &pb,
                Some(&dir.path().join("o2")),
                &cb,
            )
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let ea = ra.unwrap_err().to_string();
    assert!(
        ea.contains("raw.csv:2: column 'id'") && ea.contains("UTF-8"),
        "{ea}"
    );
    // the peer is told why
    let eb = rb.unwrap_err().to_string();
    assert!(
        eb.contains("the peer stopped") && eb.contains("UTF-8"),
        "{eb}"
    );
    assert!(
        !dir.path().join("o2").exists(),
        "no output after a failed run"
    );
}

#[test]
fn skip_empty_keys_leaves_rows_out() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.csv");
    let pb = dir.path().join("b.csv");
    std::fs::write(&pa, "id,x\n1,a\n,b\n2,c\n").unwrap();
    std::fs::write(&pb, "id\n1\n2\n").unwrap();
    let mut c0 = PsiConfig::new(vec!["id".into()], true);
    c0.protocol = Protocol::Ecdh;
    c0.skip_empty_keys = true;
    let mut c1 = PsiConfig::new(vec!["id".into()], false);
    c1.protocol = Protocol::Ecdh;
    let (oa, ob) = (dir.path().join("oa"), dir.path().join("ob"));
    let (ra, rb) = run_pair([&c0, &c1], [&pa, &pb], [&oa, &ob]);
    let ra = ra.unwrap();
    rb.unwrap();
    assert_eq!(ra.self_.skipped_empty_keys, 1);
    assert_eq!(ra.self_.rows, 2);
    assert_eq!(std::fs::read_to_string(&oa).unwrap(), "id,x\n1,a\n2,c\n");
    assert_eq!(std::fs::read_to_string(&ob).unwrap(), "id\n1\n2\n");
}

#[test]
fn options_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.csv");
    std::fs::write(&pa, "id\n1\n").unwrap();
    let (ca, cb) = memory_pair(16);
    let mut c0 = PsiConfig::new(vec!["id".into()], true);
    c0.protocol = Protocol::Ecdh;
    c0.join = JoinType::Left;
    let mut c1 = PsiConfig::new(vec!["id".into()], false);
    c1.protocol = Protocol::Ecdh;
    c1.join = JoinType::Left;
    // both claim to be the left side
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| run(&c0, &pa, Some(&dir.path().join("o1")), &ca));
        let hb = s.spawn(|| run(&c1, &pa, Some(&dir.path().join("o2")), &cb));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    for e in [ra.unwrap_err().to_string(), rb.unwrap_err().to_string()] {
        assert!(
            e.contains("--left") && e.contains("the listener") && e.contains("the connector"),
            "{e}"
        );
    }
}

#[test]
fn rr22_modes_must_agree_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.csv");
    std::fs::write(&pa, "id\n1\n2\n").unwrap();
    for (field, set) in [
        (
            "--low-comm",
            (|c: &mut PsiConfig| c.low_comm = true) as fn(&mut PsiConfig),
        ),
        ("--malicious", |c: &mut PsiConfig| c.malicious = true),
    ] {
        let (ca, cb) = memory_pair(16);
        let c0 = PsiConfig::new(vec!["id".into()], true);
        let mut c1 = PsiConfig::new(vec!["id".into()], false);
        set(&mut c1);
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| run(&c0, &pa, Some(&dir.path().join("o1")), &ca));
            let hb = s.spawn(|| run(&c1, &pa, Some(&dir.path().join("o2")), &cb));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        for e in [ra.unwrap_err().to_string(), rb.unwrap_err().to_string()] {
            assert!(e.contains(field), "{e}");
        }
    }
    // both agree: the report says which variant ran
    for mode in [1u8, 2] {
        let (ca, cb) = memory_pair(16);
        let mk = |leader| {
            let mut c = PsiConfig::new(vec!["id".into()], leader);
            c.low_comm = mode == 1;
            c.malicious = mode == 2;
            c
        };
        let (c0, c1) = (mk(true), mk(false));
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| run(&c0, &pa, Some(&dir.path().join("o1")), &ca));
            let hb = s.spawn(|| run(&c1, &pa, Some(&dir.path().join("o2")), &cb));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let j = serde_json::to_value(&ra).unwrap();
        assert_eq!(j["low_comm"], mode == 1);
        assert_eq!(j["malicious"], mode == 2);
        assert_eq!(ra.intersection.unwrap().keys, 2);
        assert_eq!(rb.intersection.unwrap().keys, 2);
    }
    // ECDH has no such variants
    let mut c = PsiConfig::new(vec!["id".into()], true);
    c.protocol = Protocol::Ecdh;
    c.low_comm = true;
    assert!(c.validate().unwrap_err().to_string().contains("--low-comm"));
    let mut c = PsiConfig::new(vec!["id".into()], true);
    c.low_comm = true;
    c.malicious = true;
    assert!(c.validate().unwrap_err().to_string().contains("--low-comm"));
}

/// Rows with duplicate keys at both parties and keys only one side has.
fn with_duplicates(n: usize, start: usize, payload: &str) -> String {
    let mut s = String::from("id,payload\n");
    for i in start..start + n {
        for d in 0..1 + i % 3 {
            s.push_str(&format!(
                "{:018},{payload}{i}-{d}\n",
                300_000_000_000_000_000u64 + i as u64
            ));
        }
    }
    s
}

#[test]
fn one_two_and_three_workers_write_identical_outputs() {
    let a = with_duplicates(900, 0, "alpha-");
    let b = with_duplicates(900, 450, "beta-");
    let mut cases = 0;
    for (protocol, mode) in [
        (Protocol::Ecdh, 0),
        (Protocol::Rr22, 0),
        (Protocol::Rr22, 1),
        (Protocol::Rr22, 2),
    ] {
        for join in [
            JoinType::Inner,
            JoinType::Left,
            JoinType::Right,
            JoinType::Full,
            JoinType::Difference,
        ] {
            // rr22's modes only on the two joins that exercise most of the output
            if mode != 0 && !matches!(join, JoinType::Full | JoinType::Difference) {
                continue;
            }
            let c = Case {
                a: a.clone(),
                b: b.clone(),
                keys_a: vec!["id".into()],
                keys_b: vec!["id".into()],
                join,
                receiver0: Receiver::Both,
                left0: Side::Peer,
                // small enough that workers spill into memory buckets too
                budget: 256 << 10,
                protocol,
                mode,
                batch: ONE_BATCH,
            };
            let [(r1, a1), (_, b1)] = run_case(&c).unwrap();
            for n in [1, 2, 3] {
                let [(ra, an), (rb, bn)] = run_case_workers(&c, [n, n]).unwrap();
                assert_eq!(an, a1, "{protocol:?}/{mode} {join:?} listener, {n} workers");
                assert_eq!(
                    bn, b1,
                    "{protocol:?}/{mode} {join:?} connector, {n} workers"
                );
                assert_eq!(
                    ra.intersection.as_ref().unwrap().keys,
                    r1.intersection.as_ref().unwrap().keys
                );
                assert_eq!(ra.self_.rows, r1.self_.rows);
                assert_eq!(rb.peer.unique_keys, r1.self_.unique_keys);
                cases += 1;
            }
            check(&c);
        }
    }
    assert_eq!(cases, 3 * (5 + 5 + 2 + 2));
}

#[test]
fn two_workers_against_three_give_the_right_answer() {
    let c = Case {
        a: with_duplicates(700, 0, "a"),
        b: with_duplicates(700, 300, "b"),
        keys_a: vec!["id".into()],
        keys_b: vec!["id".into()],
        join: JoinType::Full,
        receiver0: Receiver::Both,
        left0: Side::SelfSide,
        budget: 1 << 30,
        protocol: Protocol::Ecdh,
        mode: 0,
        batch: ONE_BATCH,
    };
    let [(_, a1), (_, b1)] = run_case(&c).unwrap();
    for w in [[2, 3], [3, 2], [1, 3]] {
        let outcome = run_case_workers(&c, w).unwrap();
        assert_eq!(outcome[0].0.workers, w[0].min(w[1]) as usize);
        assert_eq!(outcome[0].1, a1, "{w:?}");
        assert_eq!(outcome[1].1, b1, "{w:?}");
        check_outcome(&c, Ok(outcome));
    }
}

#[test]
fn a_worker_input_error_stops_every_worker_clearly() {
    let c = Case {
        a: numbered(50, 0, "a") + "1,2,3\n",
        b: numbered(50, 0, "b"),
        keys_a: vec!["id".into()],
        keys_b: vec!["id".into()],
        join: JoinType::Inner,
        receiver0: Receiver::Both,
        left0: Side::SelfSide,
        budget: 1 << 30,
        protocol: Protocol::Ecdh,
        mode: 0,
        batch: ONE_BATCH,
    };
    let e = run_case_workers(&c, [2, 2]).unwrap_err().to_string();
    assert!(e.contains("a.csv:52") && e.contains("3 fields"), "{e}");
}

//! `cargo bench -p venn-psi`: the engine's hot paths, timed one by one.
//!
//! A plain timing harness (no criterion: it would double the build time of
//! CI's `clippy --all-targets`). Each line prints the best of five runs and
//! the cost per element; compare runs on the same machine only. Whole
//! two-process runs are `venn bench psi`.

use std::time::Instant;

fn best<T>(label: &str, n: usize, mut f: impl FnMut() -> T) -> T {
    let mut out = None;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        out = Some(std::hint::black_box(f()));
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{label:<40} {:>10.3} ms  {:>9.1} ns/elem",
        best * 1e3,
        best * 1e9 / n as f64
    );
    out.expect("ran")
}

/// The silent VOLE of a 2^20-row PSI (m = 1.35·2^20), both parties here.
fn vole() {
    let m = 1_416_832;
    best("rr22 vole (sender + receiver threads)", m, || {
        venn_psi::rr22::bench::vole(m)
    });
}

/// The receiver's tag join at 2^20 tags a side, half of them matching.
fn join() {
    let n = 1 << 20;
    let (mine, idx, theirs) = venn_psi::rr22::bench::join_data(n);
    let found = best("rr22 tag join (receiver)", n, || {
        venn_psi::rr22::bench::join(&mine, &idx, &theirs)
    });
    assert_eq!(found, n / 2, "the join missed matches");
}

/// The code's convolution: 2^20 rows (the tail half of 2^21 entries).
fn convolution() {
    let n = 1 << 20;
    let (mut a, _) = venn_psi::rr22::bench::data(2 * n, 128);
    best("rr22 exconv convolution (one vector)", n, || {
        venn_psi::rr22::bench::convolve(&mut a)
    });
}

fn main() {
    // `VENN_BENCH=vole`: only the VOLE (for profiling it alone)
    if std::env::var("VENN_BENCH").as_deref() == Ok("vole") {
        return vole();
    }
    // `VENN_BENCH=conv`: only the code's convolution (one thread)
    if std::env::var("VENN_BENCH").as_deref() == Ok("conv") {
        return convolution();
    }
    // `VENN_BENCH=okvs`: only the fast OKVS (for profiling it alone)
    if std::env::var("VENN_BENCH").as_deref() == Ok("okvs") {
        return okvs();
    }
    // `VENN_BENCH=join`: only the receiver's tag join
    if std::env::var("VENN_BENCH").as_deref() == Ok("join") {
        return join();
    }
    // `VENN_BENCH=read`: only the input read path
    if std::env::var("VENN_BENCH").as_deref() == Ok("read") {
        return read();
    }
    let n = 1 << 14;
    println!("curve backend: {}", venn_psi::ecdh::curve_backend());
    let pts = best("ecdh: hash to ristretto255", n, || {
        venn_psi::ecdh::bench::hash(n as u128)
    });
    let comp = best("ecdh: mul + batch compress", n, || {
        venn_psi::ecdh::bench::mul_compress_all(&pts)
    });
    best("ecdh: decompress", n, || {
        venn_psi::ecdh::bench::decompress(&comp)
    });

    // RR22 OKVS: fast shape (GF(2^128) dense part, 2^14-key bins) and the
    // low-communication shape (binary dense part, 2^18-key bins, 60-bit cells)
    let n = 1 << 20;
    use venn_psi::rr22::bench as rr;
    for (label, low, vbits) in [("fast", false, 128), ("low-comm", true, 60)] {
        let (keys, vals) = rr::data(n, vbits);
        let e = best(&format!("rr22 okvs encode ({label})"), n, || {
            rr::okvs_encode(&keys, &vals, low)
        });
        best(&format!("rr22 okvs decode ({label})"), n, || {
            rr::okvs_decode(&e, &keys)
        });
        let m = rr::cells(&e);
        let packed = best(&format!("rr22 pack {vbits}-bit cells"), m, || {
            rr::pack(&e, vbits)
        });
        best(&format!("rr22 unpack {vbits}-bit cells"), m, || {
            rr::unpack(&packed, m, vbits)
        });
    }
    let (items, vs) = rr::data(n, 128);
    best("rr22 output hash (fixed-key AES)", n, || {
        let mut v = vs.clone();
        rr::tags(&mut v);
        v
    });
    best("rr22 output hash H_o(x, v) (malicious)", n, || {
        let mut v = vs.clone();
        rr::malicious_tags(&items, &mut v);
        v
    });

    join();

    // silent VOLE, both parties in this process (m as for 2^20 PSI rows)
    vole();
    convolution();

    let rows = 1 << 20;
    let mut csv = String::from("id,payload\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{:018},{i}\n",
            100_000_000_000_000_000u64 + i as u64 * 7919
        ));
    }
    best("csv: parse + item (1 MiB-row file)", rows, || {
        let mut r =
            venn_psi::csv::CsvReader::new(csv.as_bytes(), std::path::Path::new("bench.csv"));
        let mut acc = 0u128;
        while r.read().expect("valid csv") {
            acc ^= venn_psi::item::item_of(r.field(0));
        }
        acc
    });

    read();
}

/// The whole read path of a run on a 2^20-row file of 18-digit IDs.
fn read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ids.csv");
    let mut ids = String::from("id\n");
    let rows = 1 << 20;
    for i in 0..rows {
        ids.push_str(&format!(
            "{:018}\n",
            100_000_000_000_000_000u64 + i as u64 * 7919
        ));
    }
    std::fs::write(&path, &ids).expect("write the bench file");
    let cfg = venn_psi::PsiConfig::new(vec!["id".into()], true);
    best("read_input: 18-digit ids (2^20 rows)", rows, || {
        venn_psi::bench_read(&cfg, &path, false).expect("reads")
    });
    best("read ahead, keys only: the same file", rows, || {
        venn_psi::bench_read(&cfg, &path, true).expect("reads")
    });
}

/// The fast OKVS alone, encode and decode of 2^20 keys.
fn okvs() {
    use venn_psi::rr22::bench as rr;
    let n = 1 << 20;
    let (keys, vals) = rr::data(n, 128);
    let e = best("rr22 okvs encode (fast)", n, || {
        rr::okvs_encode(&keys, &vals, false)
    });
    best("rr22 okvs decode (fast)", n, || rr::okvs_decode(&e, &keys));
}

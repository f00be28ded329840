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

fn main() {
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
}

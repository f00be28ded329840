//! `venn gen`: deterministic test data for PSI.
//!
//! IDs are 18-digit numbers: `10^17 + f(i)` where `f` is a seeded bijection
//! on 59-bit integers (multiply by an odd constant, xor-shift, repeat: each
//! step is invertible modulo 2^59), so distinct indices give distinct IDs
//! without a hash set. Party A holds indices `0..n`, party B the first
//! `round(n·overlap)` of those plus fresh ones; rows are shuffled; `--dup`
//! turns a fraction of rows into copies of other rows' IDs. The expected
//! intersection is counted exactly from the generated columns.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

const EXAMPLE: &str = "\
Example:
  venn gen --rows 1000000 --overlap 0.5 --seed 1 alice.csv bob.csv
  # prints the expected intersection: keys and inner-join rows";

/// Arguments of `venn gen`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLE)]
pub(crate) struct GenArgs {
    /// Rows in each file.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    /// Fraction of distinct IDs the files share (0..=1).
    #[arg(long, default_value_t = 0.5)]
    overlap: f64,
    /// Fraction of rows in each file that repeat another row's ID (0..1).
    #[arg(long, default_value_t = 0.0)]
    dup: f64,
    /// Payload columns after the ID.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the expectation as one JSON line.
    #[arg(short = 'o', long = "format", default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Party A's file.
    a: PathBuf,
    /// Party B's file.
    b: PathBuf,
}

const MASK: u64 = (1 << 59) - 1;

fn bij(x: u64, seed: u64) -> u64 {
    let mut z = (x.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))) & MASK;
    for _ in 0..3 {
        z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9) & MASK;
        z ^= z >> 29;
        z = z.wrapping_mul(0x94D0_49BB_1331_11EB) & MASK;
        z ^= z >> 31;
    }
    z
}

/// splitmix64
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_5EED)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// The expected result of a generated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    pub(crate) keys: u64,
    pub(crate) join_rows: u64,
}

fn ids(indices: impl Iterator<Item = u64>, seed: u64, dup: f64, rng: &mut Rng) -> Vec<u64> {
    let mut v: Vec<u64> = indices
        .map(|i| 100_000_000_000_000_000 + bij(i, seed))
        .collect();
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    let n = v.len() as u64;
    let d = ((dup * n as f64).round() as u64).min(n.saturating_sub(1));
    // rows 0..d become copies of rows d..n (already shuffled)
    for i in 0..d as usize {
        let src = d + rng.below(n - d);
        v[i] = v[src as usize];
    }
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn write_file(path: &Path, ids: &[u64], payload: usize, rng: &mut Rng) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.venn-tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut line = String::from("id");
    for k in 0..payload {
        line.push_str(&format!(",f{k}"));
    }
    writeln!(w, "{line}")?;
    for id in ids {
        write!(w, "{id}")?;
        for _ in 0..payload {
            write!(w, ",{}", rng.below(1_000_000_000))?;
        }
        w.write_all(b"\n")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn expected(a: &[u64], b: &[u64]) -> Expected {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    let (mut i, mut j) = (0, 0);
    let mut e = Expected {
        keys: 0,
        join_rows: 0,
    };
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let k = a[i];
                let (si, sj) = (i, j);
                while i < a.len() && a[i] == k {
                    i += 1;
                }
                while j < b.len() && b[j] == k {
                    j += 1;
                }
                e.keys += 1;
                e.join_rows += ((i - si) * (j - sj)) as u64;
            }
        }
    }
    e
}

/// Generates both files; returns the expectation.
pub(crate) fn generate(
    rows: u64,
    overlap: f64,
    dup: f64,
    payload: usize,
    seed: u64,
    a: &Path,
    b: &Path,
) -> anyhow::Result<Expected> {
    if !(0.0..=1.0).contains(&overlap) {
        bail!("--overlap must be between 0 and 1, got {overlap}");
    }
    if !(0.0..1.0).contains(&dup) {
        bail!("--dup must be at least 0 and below 1, got {dup}");
    }
    if rows > 1 << 32 {
        bail!("--rows: at most 2^32 rows");
    }
    let m = (rows as f64 * overlap).round() as u64;
    let mut rng = Rng::new(seed);
    let ia = ids(0..rows, seed, dup, &mut rng);
    let ib = ids((0..m).chain(rows..2 * rows - m), seed, dup, &mut rng);
    write_file(a, &ia, payload, &mut rng)?;
    write_file(b, &ib, payload, &mut rng)?;
    Ok(expected(&ia, &ib))
}

pub(crate) fn run(g: GenArgs) -> anyhow::Result<()> {
    let e = generate(g.rows, g.overlap, g.dup, g.payload, g.seed, &g.a, &g.b)?;
    if g.format == "json" {
        println!(
            "{}",
            serde_json::json!({"rows": g.rows, "a": g.a, "b": g.b, "intersection_keys": e.keys, "inner_join_rows": e.join_rows})
        );
    } else {
        println!(
            "wrote {} and {} ({} rows each); expected intersection: {} keys, {} inner-join rows",
            g.a.display(),
            g.b.display(),
            g.rows,
            e.keys,
            e.join_rows
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bijection_has_no_collisions() {
        let mut v: Vec<u64> = (0..200_000).map(|i| bij(i, 7)).collect();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 200_000);
        assert!(v.iter().all(|&x| x <= MASK));
    }

    #[test]
    fn generated_files_meet_the_expectation() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.csv"), d.path().join("b.csv"));
        let e = generate(1000, 0.3, 0.0, 2, 5, &a, &b).unwrap();
        assert_eq!(
            e,
            Expected {
                keys: 300,
                join_rows: 300
            }
        );
        let text = std::fs::read_to_string(&a).unwrap();
        assert!(text.starts_with("id,f0,f1\n"));
        assert_eq!(text.lines().count(), 1001);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .len()
                == 18
        );
        // deterministic
        let e2 = generate(
            1000,
            0.3,
            0.0,
            2,
            5,
            &d.path().join("a2.csv"),
            &d.path().join("b2.csv"),
        )
        .unwrap();
        assert_eq!(e, e2);
        assert_eq!(
            text,
            std::fs::read_to_string(d.path().join("a2.csv")).unwrap()
        );
        let e3 = generate(1000, 0.5, 0.1, 0, 5, &a, &b).unwrap();
        assert!(e3.join_rows >= e3.keys && e3.keys <= 500);
    }
}

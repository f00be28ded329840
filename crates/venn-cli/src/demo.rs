//! `venn demo`: the whole PSI flow on one machine, on generated sample data.
//!
//! It writes two parties' CSV files (alice and bob, with payload columns and
//! a few duplicate IDs), starts two real `venn psi` processes that meet over
//! TLS on loopback with a random token, prints both reports, checks that the
//! two outputs are aligned row by row, and says where everything is. The node
//! platform's demo (nodes, routes, a job) builds on this.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::{bench, gen_cmd};

const EXAMPLE: &str = "\
Example:
  venn demo                       # 10,000 rows each, ECDH-PSI, files in ./venn-demo
  venn demo --rows 100000 --dir /tmp/d";

/// Arguments of `venn demo`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLE)]
pub(crate) struct DemoArgs {
    /// Rows per party.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    /// Folder for the sample data, outputs and logs.
    #[arg(long, default_value = "venn-demo")]
    dir: PathBuf,
    /// PSI protocol.
    #[arg(long, default_value = "ecdh", value_parser = ["ecdh", "rr22"])]
    protocol: String,
}

pub(crate) fn run(a: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let (fa, fb) = (dir.join("alice.csv"), dir.join("bob.csv"));
    let (oa, ob) = (dir.join("alice_out.csv"), dir.join("bob_out.csv"));
    println!(
        "venn demo: alice and bob each hold {} customer rows; which customers do they share?",
        a.rows
    );
    let exp = gen_cmd::generate(a.rows, 0.3, 0.01, 2, 42, &fa, &fb)?;
    println!("  data:   {} and {}", fa.display(), fb.display());
    println!(
        "  running two venn psi processes over TLS on loopback ({}) ...",
        a.protocol
    );
    let common = vec![
        "--protocol".to_string(),
        a.protocol,
        "--keys".into(),
        "id".into(),
    ];
    let r = bench::two_parties(
        &common,
        &bench::io_args(&fa, &oa),
        &bench::io_args(&fb, &ob),
        &dir,
    )?;
    for (name, rep) in ["alice", "bob"].iter().zip(&r.reports) {
        println!("\n{name}'s report:\n{}", serde_json::to_string_pretty(rep)?);
    }
    // the two outputs must be aligned: same number of rows, same key on every row
    let ka = keys(&oa)?;
    let kb = keys(&ob)?;
    if ka != kb {
        bail!(
            "the outputs are not aligned: {} vs {} rows or differing keys",
            ka.len(),
            kb.len()
        );
    }
    if ka.len() as u64 != exp.join_rows {
        bail!("expected {} joined rows, got {}", exp.join_rows, ka.len());
    }
    println!(
        "\nresult: {} shared customers ({} joined rows, duplicates expanded), expected {} — correct.",
        exp.keys, exp.join_rows, exp.keys
    );
    println!(
        "  alice's rows: {}\n  bob's rows:   {}",
        oa.display(),
        ob.display()
    );
    println!(
        "  row i of each file is the same customer; logs are in {}",
        dir.display()
    );
    println!("  both parties took {:.2} s in all.", r.wall);
    Ok(())
}

fn keys(p: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut v = Vec::new();
    for line in BufReader::new(f).lines().skip(1) {
        let line = line?;
        v.push(line.split(',').next().unwrap_or_default().to_string());
    }
    Ok(v)
}

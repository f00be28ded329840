//! `venn bench psi`: whole PSI runs between two local `venn psi` processes,
//! and the helper that `venn demo` shares for starting the two parties.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::gen_cmd;

const EXAMPLE: &str = "\
Example:
  venn bench psi --rows 1048576 --protocol ecdh
  venn bench psi --rows 1048576 --protocol rr22 --workers 2
  # one JSON line: wall seconds, bytes, peak RSS of each party, correctness";

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Two `venn psi` processes on generated data; prints one JSON line.
    #[command(after_help = EXAMPLE)]
    Psi(BenchPsiArgs),
    /// Platform overhead: the same PSI as two `venn psi` processes and as a job between two
    /// local nodes; prints one JSON line (submit → both tasks running, both totals, ratio).
    #[command(after_help = "Example:\n  venn bench job --rows 1048576 --protocol ecdh")]
    Job(BenchJobArgs),
}

/// Arguments of `venn bench job`.
#[derive(Args, Debug)]
pub(crate) struct BenchJobArgs {
    /// Rows per party.
    #[arg(long, default_value_t = 1 << 16)]
    rows: u64,
    /// PSI protocol.
    #[arg(long, default_value = "rr22", value_parser = ["ecdh", "rr22"])]
    protocol: String,
    /// Folder for data, node data dirs and logs.
    #[arg(long, default_value = "venn-bench-job")]
    dir: PathBuf,
}

/// Arguments of `venn bench psi`.
#[derive(Args, Debug)]
pub(crate) struct BenchPsiArgs {
    /// Rows per party.
    #[arg(long, default_value_t = 1 << 16)]
    rows: u64,
    /// PSI protocol.
    #[arg(long, default_value = "rr22", value_parser = ["ecdh", "rr22"])]
    protocol: String,
    /// RR22's low-communication variant (passed to both parties).
    #[arg(long)]
    low_comm: bool,
    /// RR22's malicious variant (passed to both parties).
    #[arg(long, conflicts_with = "low_comm")]
    malicious: bool,
    /// Fraction of shared IDs.
    #[arg(long, default_value_t = 0.5)]
    overlap: f64,
    /// Threads per party (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Workers per party (`venn psi --workers`).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Where data and outputs go (data is reused across runs).
    #[arg(long, default_value = "venn-bench")]
    dir: PathBuf,
    /// Repetitions; the JSON line reports each and the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Extra arguments passed to both `venn psi` processes.
    #[arg(last = true)]
    extra: Vec<String>,
}

/// The outcome of two parties' processes.
pub(crate) struct PairRun {
    pub(crate) wall: f64,
    pub(crate) reports: [serde_json::Value; 2],
}

/// `--input IN --output OUT` for one party.
pub(crate) fn io_args(input: &Path, output: &Path) -> Vec<String> {
    vec![
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        output.display().to_string(),
    ]
}

/// Picks a free loopback port.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Runs `venn psi` twice (listener with `a_args`, connector with `b_args`),
/// each with `common` too, and returns both JSON reports.
pub(crate) fn two_parties(
    common: &[String],
    a_args: &[String],
    b_args: &[String],
    logs: &Path,
) -> anyhow::Result<PairRun> {
    let exe = std::env::current_exe().context("locating the venn binary")?;
    let port = free_port()?;
    let token: String = (0..32)
        .map(|_| format!("{:x}", rand::random::<u8>() & 15))
        .collect();
    let spawn =
        |role: &[String], side: &[String], log: &str| -> anyhow::Result<std::process::Child> {
            let logf = std::fs::File::create(logs.join(log))
                .with_context(|| format!("creating {}", logs.join(log).display()))?;
            Command::new(&exe)
                .arg("psi")
                .args(role)
                .args(common)
                .args(side)
                .args(["-o", "json"])
                .env("VENN_PSI_TOKEN", &token)
                .stdout(Stdio::piped())
                .stderr(Stdio::from(logf))
                .spawn()
                .context("starting venn psi")
        };
    let t0 = Instant::now();
    let a = spawn(
        &["--listen".into(), format!("127.0.0.1:{port}")],
        a_args,
        "listener.log",
    )?;
    let b = spawn(
        &["--connect".into(), format!("127.0.0.1:{port}")],
        b_args,
        "connector.log",
    )?;
    let oa = a.wait_with_output()?;
    let ob = b.wait_with_output()?;
    let wall = t0.elapsed().as_secs_f64();
    let parse = |o: &std::process::Output, log: &str| -> anyhow::Result<serde_json::Value> {
        if !o.status.success() {
            let text = std::fs::read_to_string(logs.join(log)).unwrap_or_default();
            bail!(
                "the {} party failed ({}):\n{}",
                log.trim_end_matches(".log"),
                o.status,
                text.trim_end()
            );
        }
        let line = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(line.trim()).with_context(|| format!("reading the report of {log}"))
    };
    Ok(PairRun {
        wall,
        reports: [parse(&oa, "listener.log")?, parse(&ob, "connector.log")?],
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(crate) fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let a = match cmd {
        BenchCommand::Psi(a) => a,
        BenchCommand::Job(a) => return bench_job(a),
    };
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let tag = format!("n{}_o{}", a.rows, a.overlap);
    let (fa, fb) = (
        a.dir.join(format!("{tag}_a.csv")),
        a.dir.join(format!("{tag}_b.csv")),
    );
    let exp_path = a.dir.join(format!("{tag}.expected"));
    let exp: u64 = match std::fs::read_to_string(&exp_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(e) if fa.exists() && fb.exists() => e,
        _ => {
            let e = gen_cmd::generate(a.rows, a.overlap, 0.0, 0, 1, &fa, &fb)?;
            crate::write_atomic(&exp_path, e.join_rows.to_string().as_bytes())?;
            e.join_rows
        }
    };
    let mut common = vec![
        "--protocol".to_string(),
        a.protocol.clone(),
        "--keys".into(),
        "id".into(),
    ];
    if a.low_comm {
        common.push("--low-comm".into());
    }
    if a.malicious {
        common.push("--malicious".into());
    }
    if let Some(t) = a.threads {
        common.extend(["--threads".into(), t.to_string()]);
    }
    common.extend(["--workers".into(), a.workers.to_string()]);
    common.extend(a.extra.iter().cloned());
    let (oa, ob) = (a.dir.join("out_a.csv"), a.dir.join("out_b.csv"));
    let mut walls = Vec::new();
    let mut last = None;
    for _ in 0..a.repeat.max(1) {
        let r = two_parties(&common, &io_args(&fa, &oa), &io_args(&fb, &ob), &a.dir)?;
        walls.push(r.wall);
        last = Some(r);
    }
    let r = last.expect("at least one run");
    let rows = |p: &Path| {
        std::fs::read(p)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64 - 1)
            .unwrap_or(0)
    };
    let correct = rows(&oa) == exp && rows(&ob) == exp;
    let pick = |i: usize, k: &str| r.reports[i].get(k).cloned().unwrap_or_default();
    let out = serde_json::json!({
        "rows": a.rows,
        "protocol": a.protocol,
        "low_comm": a.low_comm,
        "malicious": a.malicious,
        "workers": pick(0, "workers"),
        "wall_s": walls,
        "median_wall_s": median(&mut walls.clone()),
        "bytes_sent": [pick(0, "bytes_sent"), pick(1, "bytes_sent")],
        "peak_rss_mb": [pick(0, "peak_rss_mb"), pick(1, "peak_rss_mb")],
        "seconds": [pick(0, "seconds"), pick(1, "seconds")],
        "expected_rows": exp,
        "correct": correct,
    });
    println!("{out}");
    if !correct {
        bail!("the outputs do not have the expected {exp} rows");
    }
    Ok(())
}

fn bench_job(a: BenchJobArgs) -> anyhow::Result<()> {
    use crate::demo::{LocalNode, onboard, psi_job, wait_job};
    use serde_json::json;
    use std::time::Duration;
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let (fa, fb) = (dir.join("a.csv"), dir.join("b.csv"));
    let exp = gen_cmd::generate(a.rows, 0.5, 0.0, 0, 1, &fa, &fb)?;
    // Standalone first, on the same files.
    let common = vec![
        "--protocol".to_string(),
        a.protocol.clone(),
        "--keys".into(),
        "id".into(),
    ];
    let (oa, ob) = (dir.join("standalone_a.csv"), dir.join("standalone_b.csv"));
    let standalone = two_parties(&common, &io_args(&fa, &oa), &io_args(&fb, &ob), &dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut alice = LocalNode::start(&dir, "alice", |_| {})?;
        let mut bob = LocalNode::start(&dir, "bob", |_| {})?;
        alice.ready().await?;
        bob.ready().await?;
        onboard(&alice, &bob).await?;
        alice.api()?.upload(&fa, "a-table", "a").await?;
        bob.api()?.upload(&fb, "b-table", "b").await?;
        alice
            .api()?
            .post(
                "/api/v1/domaindatagrant/create",
                &json!({"domaindata_id": "a-table", "grant_domain": "bob"}),
            )
            .await?;
        bob.api()?
            .post(
                "/api/v1/domaindatagrant/create",
                &json!({"domaindata_id": "b-table", "grant_domain": "alice"}),
            )
            .await?;
        let t0 = Instant::now();
        while !alice
            .api()?
            .post(
                "/api/v1/domaindatagrant/list",
                &json!({"grant_domain": "alice"}),
            )
            .await?
            .to_string()
            .contains("b-table")
        {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("grant not delivered");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let submitted = Instant::now();
        alice
            .api()?
            .post(
                "/api/v1/job/create",
                &psi_job("bench", "alice", "a-table", "bob", "b-table", &a.protocol),
            )
            .await?;
        // Both parties' task processes started: both party rows Running at alice's node.
        let running = loop {
            let j = alice
                .api()?
                .post("/api/v1/job/query", &json!({"job_id": "bench"}))
                .await?;
            let parties = j["status"]["tasks"][0]["parties"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if parties.len() == 2 && parties.iter().all(|p| p["state"] != "Pending") {
                break submitted.elapsed().as_secs_f64();
            }
            if submitted.elapsed() > Duration::from_secs(60) {
                bail!("tasks not running after 60 s: {j}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let j = wait_job(alice.api()?, "bench", Duration::from_secs(3600)).await?;
        let total = submitted.elapsed().as_secs_f64();
        if j["status"]["state"] != "Succeeded" {
            bail!(
                "the job ended {}: {}",
                j["status"]["state"],
                j["status"]["err_msg"]
            );
        }
        let rows = |p: &Path| {
            std::fs::read(p)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64 - 1)
                .unwrap_or(0)
        };
        let correct = rows(&alice.data_file("bench-out.csv")) == exp.join_rows
            && rows(&bob.data_file("bench-out.csv")) == exp.join_rows;
        println!(
            "{}",
            json!({
                "rows": a.rows,
                "protocol": a.protocol,
                "standalone_wall_s": standalone.wall,
                "job_submit_to_both_running_s": running,
                "job_submit_to_succeeded_s": total,
                "job_over_standalone": total / standalone.wall,
                "correct": correct,
            })
        );
        alice.stop();
        bob.stop();
        if !correct {
            bail!(
                "the job's outputs do not have the expected {} rows",
                exp.join_rows
            );
        }
        Ok(())
    })
}

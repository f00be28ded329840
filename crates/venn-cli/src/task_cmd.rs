//! `venn task run --config FILE`: one party of a task, started by its node (internal).
//!
//! The task contract is in docs/apps.md: read the task config the node wrote, reach the peer
//! party through the node's gateway task port ([`Link::via_relay`]), report progress there,
//! run the PSI, write the output under a temporary name and rename it, and leave a
//! `result.json` for the node. Uses venn-psi and venn-link only; the config type comes from
//! venn-node's runtime module (it is the contract).
//!
//! With `workers` > 1 in the config, this process is one worker of its party: it asks the
//! gateway for the link of its worker index, agrees the bucket plan with the peer's worker
//! (venn_psi::workers), and writes its part under `parts_dir`. Workers 1.. leave their
//! result for worker 0 ([`worker_result`]); worker 0 waits for every one of them, merges the
//! parts into the output (temporary name, renamed when complete) and writes the party's
//! result with the combined report. Only worker 0 reports progress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use venn_link::{Link, LinkOptions};
use venn_node::runtime::{TaskConfig, TaskHello, TaskResult, worker_part, worker_result};
use venn_psi::workers::{self, Plan, WorkerSet};
use venn_psi::{JoinType, Protocol, PsiConfig, Receiver, Report, Side};

use crate::psi_cmd::LinkChannel;

/// `venn task` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Run one party of a task (started by the node; see docs/apps.md).
    #[command(
        after_help = "Example (the node runs this; by hand only to debug):\n  venn task run --config venn-data/jobs/job-1/job-1-psi/task.json"
    )]
    Run(RunArgs),
}

/// `venn task run` arguments.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The task config written by the node.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn run(cmd: TaskCommand) -> anyhow::Result<()> {
    let TaskCommand::Run(a) = cmd;
    let text =
        std::fs::read(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let cfg: TaskConfig = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a task config", a.config.display()))?;
    if cfg.version != 1 {
        bail!(
            "{}: task config version {} is not supported (1)",
            a.config.display(),
            cfg.version
        );
    }
    tracing::info!(job = %cfg.job_id, task = %cfg.task_id, party = %cfg.party, peer = %cfg.peer, attempt = cfg.attempt, worker = cfg.worker, workers = cfg.workers, "task starting");
    let outcome = execute(&cfg);
    let result = match &outcome {
        Ok(report) => TaskResult {
            ok: true,
            error: String::new(),
            report: report.clone(),
        },
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let c = c.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            TaskResult {
                ok: false,
                error: msg,
                report: Value::Null,
            }
        }
    };
    crate::write_atomic(&cfg.result, &serde_json::to_vec(&result)?)?;
    match outcome {
        Ok(_) => {
            tracing::info!(worker = cfg.worker, "task succeeded");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn hello(cfg: &TaskConfig, kind: &str, progress: f64, step: &str) -> Vec<u8> {
    serde_json::to_vec(&TaskHello {
        v: 1,
        kind: kind.into(),
        job_id: cfg.job_id.clone(),
        task_id: cfg.task_id.clone(),
        secret: cfg.secret.clone(),
        progress,
        step: step.into(),
        worker: cfg.worker,
    })
    .unwrap_or_default()
}

/// Reports progress to the node (best effort: a lost report only delays the display).
fn progress(cfg: &TaskConfig, fraction: f64, step: &str) {
    if cfg.worker != 0 {
        return;
    }
    let send = || -> std::io::Result<()> {
        let mut s = TcpStream::connect(&cfg.gateway)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let h = hello(cfg, "progress", fraction, step);
        s.write_all(&(h.len() as u32).to_le_bytes())?;
        s.write_all(&h)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(())
    };
    if let Err(e) = send() {
        tracing::warn!("progress report not delivered: {e}");
    }
}

fn temp_output(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    out.with_file_name(format!(".{name}.venn-partial-{}", std::process::id()))
}

fn execute(cfg: &TaskConfig) -> anyhow::Result<Value> {
    let t0 = std::time::Instant::now();
    let mut pc = PsiConfig::new(cfg.psi.keys.clone(), cfg.leader);
    pc.protocol = cfg
        .psi
        .protocol
        .parse::<Protocol>()
        .map_err(anyhow::Error::msg)?;
    pc.receiver = cfg
        .psi
        .receiver
        .parse::<Receiver>()
        .map_err(anyhow::Error::msg)?;
    pc.join = cfg
        .psi
        .join
        .parse::<JoinType>()
        .map_err(anyhow::Error::msg)?;
    pc.left = cfg.psi.left.parse::<Side>().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.work_dir)
        .with_context(|| format!("creating {}", cfg.work_dir.display()))?;
    pc.tmp_dir = cfg.work_dir.clone();
    pc.validate()?;
    // a single worker reads its whole input while the link comes up
    crate::alloc::fit_to_input(&cfg.input);
    let ahead = (cfg.workers <= 1).then(|| venn_psi::ReadAhead::start(&pc, &cfg.input));
    progress(cfg, 0.02, "connecting");
    // The link token is not a secret here: the gateways authenticate both hops (task secret on
    // loopback, mutual TLS between nodes). It makes both ends prove they run the same task.
    let mut opts =
        LinkOptions::new(format!("venn-task-link\n{}\n{}", cfg.job_id, cfg.task_id).into_bytes());
    opts.insecure = true;
    opts.wait = Duration::from_secs(150);
    let link = Link::via_relay(
        &cfg.gateway,
        &hello(cfg, "link", 0.0, ""),
        cfg.leader,
        &opts,
    )
    .with_context(|| format!("linking to {} through the gateway", cfg.peer))?;
    tracing::info!(peer = %cfg.peer, "linked through the gateway");
    let set = if cfg.plan_nonce.is_empty() {
        WorkerSet::new(cfg.workers)?
    } else {
        WorkerSet::with_nonce(cfg.workers, &cfg.plan_nonce)?
    };
    let chan = LinkChannel(link);
    let plan = workers::negotiate(&chan, &set, cfg.worker, cfg.leader)?;
    progress(cfg, 0.1, "intersecting");
    if plan.pairs() > 1 {
        return execute_worker(cfg, &pc, &plan, chan, t0);
    }
    let tmp = cfg.output.as_deref().map(temp_output);
    let report = match ahead {
        Some(ahead) => venn_psi::run_read_ahead(&pc, ahead, tmp.as_deref(), &chan),
        None => venn_psi::run(&pc, &cfg.input, tmp.as_deref(), &chan),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e.into());
        }
    };
    chan.0.close().context("closing the link")?;
    if let (Some(t), Some(out)) = (&tmp, &cfg.output) {
        progress(cfg, 0.95, "writing output");
        std::fs::rename(t, out)
            .with_context(|| format!("moving the output to {}", out.display()))?;
    }
    report_value(cfg, &report)
}

fn report_value(cfg: &TaskConfig, report: &Report) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(report)?;
    if let (Some(out), Some(o)) = (&cfg.output, v.get_mut("output"))
        && let Some(obj) = o.as_object_mut()
    {
        obj.insert("path".into(), Value::String(out.display().to_string()));
    }
    tracing::info!("{}", serde_json::to_string(&v)?);
    Ok(v)
}

/// One worker of several: its pair's part; at worker 0 also the merge.
fn execute_worker(
    cfg: &TaskConfig,
    pc: &PsiConfig,
    plan: &Plan,
    chan: LinkChannel,
    t0: std::time::Instant,
) -> anyhow::Result<Value> {
    let Some(parts) = &cfg.parts_dir else {
        bail!(
            "the task config names no parts_dir for its {} workers",
            cfg.workers
        );
    };
    let part = worker_part(parts, cfg.worker);
    let report = workers::run_part(pc, plan, &cfg.input, &part, &chan)?;
    chan.0.close().context("closing the link")?;
    if cfg.worker != 0 {
        return Ok(serde_json::to_value(&report)?);
    }
    progress(cfg, 0.9, "waiting for the other workers");
    let mut reports = vec![report];
    for i in 1..plan.pairs() {
        let path = worker_result(parts, i);
        let r = loop {
            match std::fs::read(&path) {
                Ok(b) => {
                    break serde_json::from_slice::<TaskResult>(&b)
                        .with_context(|| format!("{}: not a worker result", path.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // a worker that dies without a result gets the whole group stopped by the
                    // node, this process included: no time limit needed here
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        };
        if !r.ok {
            bail!("worker {i} failed: {}", r.error);
        }
        reports.push(
            serde_json::from_value::<Report>(r.report)
                .with_context(|| format!("{}: not a PSI report", path.display()))?,
        );
    }
    let mut combined = workers::combine_reports(&reports, 0.0).expect("worker 0's report");
    if let (true, Some(out)) = (pc.self_receives(), &cfg.output) {
        progress(cfg, 0.95, "merging the workers' outputs");
        let tw = std::time::Instant::now();
        let tmp = temp_output(out);
        let dirs: Vec<PathBuf> = (0..plan.pairs()).map(|i| worker_part(parts, i)).collect();
        let rows = workers::merge_parts(pc, plan, &dirs, &tmp)?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("moving the output to {}", out.display()))?;
        combined.output = Some(venn_psi::report::OutputStats {
            path: out.display().to_string(),
            rows,
        });
        combined.seconds.write += tw.elapsed().as_secs_f64();
    }
    // worker 0 started with the others: its wall time is the party's
    combined.seconds.total = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    combined.seconds.write = (combined.seconds.write * 1000.0).round() / 1000.0;
    let _ = std::fs::remove_dir_all(parts);
    report_value(cfg, &combined)
}

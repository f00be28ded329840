//! `venn job ...`: create, get, watch, stop, cancel, restart, delete, approve, reject, logs.
//!
//! Thin: each command is one call to the node's API (`/api/v1/job/*`); the table and the
//! progress bars are rendered here. `-o json` prints the API's answer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use venn_node::client::LocalClient;

use crate::node_cmd::{ConfigArg, Output, print_json};

/// `venn job` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Create a job from a Kuscia CreateJobRequest JSON file (see docs/apps.md).
    #[command(after_help = "Example:\n  venn job create -f psi-job.json -c alice.yaml")]
    Create {
        /// The request body (JSON).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List jobs (JOB_ID INITIATOR STATE TASKS PROGRESS AGE), or show one.
    #[command(
        after_help = "Examples:\n  venn job get -c alice.yaml\n  venn job get job-alice-bob-001 -o json"
    )]
    Get {
        /// One job (default: all).
        job_id: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Follow a job: state and a progress bar per task, until it ends.
    #[command(after_help = "Example:\n  venn job watch job-alice-bob-001 -c alice.yaml")]
    Watch {
        /// The job.
        job_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Stop a job at every party (it ends Failed; restartable).
    #[command(after_help = "Example:\n  venn job stop job-alice-bob-001 --reason 'wrong input'")]
    Stop(CommandArgs),
    /// Cancel a job at every party (terminal).
    #[command(after_help = "Example:\n  venn job cancel job-alice-bob-001")]
    Cancel(CommandArgs),
    /// Re-run the failed tasks of a Failed or Suspended job.
    #[command(after_help = "Example:\n  venn job restart job-alice-bob-001")]
    Restart(CommandArgs),
    /// Delete a finished job at every party (outputs stay).
    #[command(after_help = "Example:\n  venn job delete job-alice-bob-001")]
    Delete(CommandArgs),
    /// Accept a job held for manual approval at this node.
    #[command(after_help = "Example:\n  venn job approve job-alice-bob-001 -c bob.yaml")]
    Approve(CommandArgs),
    /// Reject a job held for manual approval at this node.
    #[command(
        after_help = "Example:\n  venn job reject job-alice-bob-001 --reason 'not agreed' -c bob.yaml"
    )]
    Reject(CommandArgs),
    /// Print this node's task logs of a job.
    #[command(
        after_help = "Examples:\n  venn job logs job-alice-bob-001\n  venn job logs job-alice-bob-001 --task psi"
    )]
    Logs {
        /// The job.
        job_id: String,
        /// One task (ID or alias).
        #[arg(long)]
        task: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Arguments of the one-job commands.
#[derive(Debug, Args)]
pub(crate) struct CommandArgs {
    /// The job.
    job_id: String,
    /// Why (recorded and shown to the other parties).
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    config: ConfigArg,
}

pub(crate) fn run(cmd: JobCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(online(cmd))
}

async fn online(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Create { file, config } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let c = config.client()?;
            let data = c.post("/api/v1/job/create", &body).await?;
            println!("{}", data["job_id"].as_str().unwrap_or_default());
            Ok(())
        }
        JobCommand::Get {
            job_id,
            output,
            config,
        } => {
            let c = config.client()?;
            let jobs = fetch(&c, job_id.as_deref()).await?;
            match output {
                Output::Json => print_json(&if job_id.is_some() {
                    jobs[0].clone()
                } else {
                    Value::Array(jobs)
                }),
                Output::Table => {
                    print!("{}", table(&jobs));
                    Ok(())
                }
            }
        }
        JobCommand::Watch { job_id, config } => watch(&config.client()?, &job_id).await,
        JobCommand::Stop(a) => simple(a, "/api/v1/job/stop", "stopped").await,
        JobCommand::Cancel(a) => simple(a, "/api/v1/job/cancel", "cancelled").await,
        JobCommand::Restart(a) => simple(a, "/api/v1/job/restart", "restarted").await,
        JobCommand::Delete(a) => simple(a, "/api/v1/job/delete", "deleted").await,
        JobCommand::Approve(a) => approve(a, true).await,
        JobCommand::Reject(a) => approve(a, false).await,
        JobCommand::Logs {
            job_id,
            task,
            config,
        } => {
            let c = config.client()?;
            let data = c
                .post(
                    "/api/v1/log/task/query",
                    &json!({"job_id": job_id, "task_id": task.unwrap_or_default()}),
                )
                .await?;
            for t in data["tasks"].as_array().cloned().unwrap_or_default() {
                println!("==> task {} <==", t["task_id"].as_str().unwrap_or_default());
                print!("{}", t["log"].as_str().unwrap_or_default());
            }
            Ok(())
        }
    }
}

async fn simple(a: CommandArgs, path: &str, done: &str) -> Result<()> {
    let c = a.config.client()?;
    c.post(path, &json!({"job_id": a.job_id, "reason": a.reason}))
        .await?;
    println!("job {} {done}", a.job_id);
    Ok(())
}

async fn approve(a: CommandArgs, accept: bool) -> Result<()> {
    let c = a.config.client()?;
    let result = if accept {
        "APPROVE_RESULT_ACCEPT"
    } else {
        "APPROVE_RESULT_REJECT"
    };
    c.post(
        "/api/v1/job/approve",
        &json!({"job_id": a.job_id, "result": result, "reason": a.reason}),
    )
    .await?;
    println!(
        "job {} {}",
        a.job_id,
        if accept { "approved" } else { "rejected" }
    );
    Ok(())
}

/// One job (`Some`) or all.
pub(crate) async fn fetch(c: &LocalClient, job: Option<&str>) -> Result<Vec<Value>> {
    Ok(match job {
        Some(id) => vec![
            c.post("/api/v1/job/query", &json!({ "job_id": id }))
                .await?,
        ],
        None => c.post("/api/v1/job/list", &json!({})).await?["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    })
}

fn age(created: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - created).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The `kubectl get kj`-style table.
pub(crate) fn table(jobs: &[Value]) -> String {
    let header = ["JOB_ID", "INITIATOR", "STATE", "TASKS", "PROGRESS", "AGE"];
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let tasks = j["status"]["tasks"].as_array().cloned().unwrap_or_default();
            let done = tasks.iter().filter(|t| t["state"] == "Succeeded").count();
            let progress = if tasks.is_empty() {
                0.0
            } else {
                tasks
                    .iter()
                    .map(|t| t["progress"].as_f64().unwrap_or(0.0))
                    .sum::<f64>()
                    / tasks.len() as f64
            };
            vec![
                j["job_id"].as_str().unwrap_or_default().to_owned(),
                j["initiator"].as_str().unwrap_or_default().to_owned(),
                j["status"]["state"].as_str().unwrap_or_default().to_owned(),
                format!("{done}/{}", tasks.len()),
                format!("{:.0}%", progress * 100.0),
                age(j["status"]["create_time"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(s.join("   ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn bar(fraction: f64) -> String {
    let n = (fraction.clamp(0.0, 1.0) * 30.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(n),
        ".".repeat(30 - n),
        fraction * 100.0
    )
}

async fn watch(c: &LocalClient, job: &str) -> Result<()> {
    let mut last = String::new();
    loop {
        let j = c
            .post("/api/v1/job/query", &json!({ "job_id": job }))
            .await?;
        let state = j["status"]["state"].as_str().unwrap_or_default().to_owned();
        let mut text = format!("job {job}: {state}");
        if let Some(r) = j["status"]["err_msg"].as_str().filter(|r| !r.is_empty()) {
            text.push_str(&format!(" ({r})"));
        }
        text.push('\n');
        for t in j["status"]["tasks"].as_array().cloned().unwrap_or_default() {
            let steps: Vec<String> = t["parties"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p["domain_id"].as_str().unwrap_or(""),
                        p["step"].as_str().unwrap_or("")
                    )
                })
                .collect();
            text.push_str(&format!(
                "  {:<20} {:<10} {}  {}\n",
                t["alias"].as_str().unwrap_or(""),
                t["state"].as_str().unwrap_or(""),
                bar(t["progress"].as_f64().unwrap_or(0.0)),
                steps.join(", ")
            ));
            if let Some(r) = t["err_msg"].as_str().filter(|r| !r.is_empty()) {
                text.push_str(&format!("    {r}\n"));
            }
        }
        if text != last {
            print!("{text}");
            last = text;
        }
        if matches!(
            state.as_str(),
            "Succeeded" | "Failed" | "Cancelled" | "Suspended" | "ApprovalReject"
        ) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

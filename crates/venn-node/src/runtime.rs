//! The process runtime: runs this node's party of a task as a child `venn task run` process.
//!
//! The task contract (docs/apps.md) in short: the node writes a [`TaskConfig`] (JSON, mode
//! 0600: it holds the task's gateway secret) to `<data dir>/jobs/<job>/<task>/task.json` and
//! starts `venn task run --config <that file>` in its own process group, with stdout and stderr
//! appended to `task.log` next to it. The task reaches the node only through the loopback task
//! port of the gateway (`gateway` in the config): a [`TaskHello`] of kind `link` asks for the
//! link to the peer party, kind `progress` reports progress. When it ends, the task writes a
//! [`TaskResult`] to `result.json` (temp file + rename) and exits 0 on success.
//!
//! Decisions:
//! - **Process group**: the child gets its own group (`setpgid` through
//!   `CommandExt::process_group`), so `stop` ends the task and anything it started with one
//!   signal to the group (SIGTERM, SIGKILL 3 s later), and a Ctrl-C meant for the node does
//!   not reach the task. Signals go through `nix`'s `killpg` (a safe wrapper; the workspace
//!   denies `unsafe`).
//! - **Results on disk**, not over a pipe: a task outlives a node restart, and its result must
//!   still be found afterwards. A task that ends without a result (kill -9, crash) is Failed
//!   with the exit status or signal in the reason.
//! - **Re-attach**: at start, each of this node's parties still Running is looked up by PID;
//!   when `/proc/<pid>/cmdline` is still `venn task run` with this task's config file, the node
//!   polls it until it exits and then reads its result; otherwise the party is Failed with a
//!   reason. Nothing stays Running for ever. (A task's link runs through the gateway of the
//!   node that restarted, so in practice a re-attached task ends Failed "connection lost" and
//!   `venn job restart` runs it again.)
//! - **Workers** (`workers: N` in the task's PSI config): the party runs N `venn task run`
//!   processes, one config each (`task.json` for worker 0, `task-w<i>.json`), all with the
//!   same plan nonce and secret. Workers 1.. join worker 0's process group, so the party is
//!   still one group to stop and one PID to track and re-attach (worker 0's). Each worker
//!   links to the peer's worker of the same index (the index is in its [`TaskHello`]; the
//!   gateway pairs links by it) and writes its part under `parts/`; worker 1.. leave their
//!   result in [`worker_result`]; worker 0 waits for them, merges the parts into the output
//!   and writes the party's `result.json`. A worker that fails makes worker 0 fail with its
//!   reason; a worker that dies without a result gets the whole group stopped. The
//!   per-worker configs come from one function, [`worker_config`], which the kubernetes
//!   runtime uses too (N pods per party there).
//! - Outputs are written by the task to a temporary name next to the target and renamed when
//!   the PSI has succeeded; the node then registers the file as DomainData (columns from the
//!   header) in the data source that holds the party's input.
//!
//! With `runtime: kubernetes` the same [`TaskConfig`]s go to pods instead ([`kubernetes`]),
//! one pod per worker: the functions below branch to it where launching, stopping,
//! re-attaching and reading logs differ, and share the rest (the configs, `finish`,
//! progress).

pub mod kubernetes;

use std::collections::HashMap;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{NodeError, Result};
use crate::jobs::store::TaskPartyRow;
use crate::jobs::{Manifest, TaskSpec, report_party};
use crate::state::{NodeState, SharedState};
use crate::store::DomainDataRow;
use crate::trust::{now_unix, random_bytes};

/// What a task process is told (`task.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Contract version (1).
    pub version: u32,
    /// Job.
    pub job_id: String,
    /// Task.
    pub task_id: String,
    /// Attempt (restart adds one).
    pub attempt: i64,
    /// This party's domain.
    pub party: String,
    /// The other party.
    pub peer: String,
    /// Every party of the task.
    pub parties: Vec<String>,
    /// Whether this party leads the PSI handshake and listens on the link.
    pub leader: bool,
    /// The input CSV (resolved by the node; never sent to the peer).
    pub input: PathBuf,
    /// Where the result goes at a receiver.
    pub output: Option<PathBuf>,
    /// The PSI.
    pub psi: TaskPsi,
    /// The node's loopback task port, `127.0.0.1:port`.
    pub gateway: String,
    /// Proves to the gateway that the caller is this task (hex; keep secret).
    pub secret: String,
    /// Scratch directory (spilled buckets).
    pub work_dir: PathBuf,
    /// Where the task writes its [`TaskResult`].
    pub result: PathBuf,
    /// This process's worker index (0 when the party runs one worker).
    #[serde(default)]
    pub worker: u32,
    /// The party's worker count (`workers` of the task's PSI config).
    #[serde(default = "one")]
    pub workers: u32,
    /// The worker plan nonce (32 hex digits) every worker of the party shares; empty: the
    /// task draws one (a single worker).
    #[serde(default)]
    pub plan_nonce: String,
    /// Where workers leave their parts and results (with more than one worker).
    #[serde(default)]
    pub parts_dir: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

/// Where worker `i` (> 0) of a party leaves its [`TaskResult`] for worker 0.
pub fn worker_result(parts_dir: &Path, i: u32) -> PathBuf {
    parts_dir.join(format!("w{i}.result.json"))
}

/// The config of worker `w` of a party whose worker 0 gets `base` (`dir` is the task
/// directory): the same secret, plan nonce and worker count, `worker: w`, its own scratch
/// directory `tmp-w<w>`, and for `w` ≥ 1 the result under `parts_dir` ([`worker_result`]).
/// Both runtimes derive their per-worker configs here: the process runtime writes them to
/// `task.json` / `task-w<w>.json`, the kubernetes runtime puts each in its pod's Secret.
pub fn worker_config(base: &TaskConfig, dir: &Path, w: u32) -> TaskConfig {
    let mut config = base.clone();
    if w == 0 {
        return config;
    }
    config.worker = w;
    config.work_dir = dir.join(format!("tmp-w{w}"));
    if let Some(p) = &base.parts_dir {
        config.result = worker_result(p, w);
    }
    config
}

/// Where worker `i` of a party writes its part.
pub fn worker_part(parts_dir: &Path, i: u32) -> PathBuf {
    parts_dir.join(format!("w{i}"))
}

/// The PSI parameters of a task party.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPsi {
    /// `ecdh` or `rr22`.
    pub protocol: String,
    /// This party's key columns.
    pub keys: Vec<String>,
    /// `self`, `peer` or `both`.
    pub receiver: String,
    /// `inner`, `left`, `right`, `full`, `difference`.
    pub join: String,
    /// `self` or `peer`: the left side.
    pub left: String,
}

/// What a task sends first on a connection to its gateway task port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskHello {
    /// Version (1).
    pub v: u32,
    /// `link` or `progress`.
    pub kind: String,
    /// Job.
    pub job_id: String,
    /// Task.
    pub task_id: String,
    /// The task's secret from its config.
    pub secret: String,
    /// For `progress`: 0.0 to 1.0.
    #[serde(default)]
    pub progress: f64,
    /// For `progress`: what the task is doing.
    #[serde(default)]
    pub step: String,
    /// For `link`: the worker index; the gateways pair worker i with the peer's worker i.
    #[serde(default)]
    pub worker: u32,
}

/// What a task leaves in `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// Success.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub error: String,
    /// The engine's report.
    #[serde(default)]
    pub report: Value,
}

/// The running task processes of this node.
#[derive(Default)]
pub struct Runtime {
    pids: Mutex<HashMap<(String, String), u32>>,
    last_report: Mutex<HashMap<(String, String), (Instant, String)>>,
    /// Set at start with `runtime: kubernetes`: tasks run as pods.
    kubernetes: std::sync::OnceLock<kubernetes::Kubernetes>,
}

impl Runtime {
    /// Switches this runtime to pods (once, at node start).
    pub fn use_kubernetes(&self, k: kubernetes::Kubernetes) -> Result<()> {
        self.kubernetes
            .set(k)
            .map_err(|_| NodeError::Conflict("the kubernetes runtime is set already".into()))
    }

    /// The kubernetes runtime, when configured.
    pub fn kubernetes(&self) -> Option<&kubernetes::Kubernetes> {
        self.kubernetes.get()
    }
}

/// `<data dir>/jobs/<job>`.
pub fn job_dir(state: &NodeState, job: &str) -> PathBuf {
    state.data_dir().join("jobs").join(job)
}

/// `<data dir>/jobs/<job>/<task>`.
pub fn task_dir(state: &NodeState, job: &str, task: &str) -> PathBuf {
    job_dir(state, job).join(task)
}

/// The SHA-256 (hex) of a task secret, as stored.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::io(path, e)
}

/// The jobs for which this node runs a task process.
pub fn running_jobs(state: &NodeState) -> Vec<String> {
    let mut v: Vec<String> = state
        .runtime
        .pids
        .lock()
        .map(|m| m.keys().map(|(j, _)| j.clone()).collect())
        .unwrap_or_default();
    if let Some(k) = state.runtime.kubernetes() {
        v.extend(k.tracked().into_iter().map(|(j, _)| j));
    }
    v.sort();
    v.dedup();
    v
}

/// Starts this node's party of task `t` (its row is `row`, Pending).
pub async fn start_task(
    state: &SharedState,
    m: &Manifest,
    t: &TaskSpec,
    row: &TaskPartyRow,
) -> Result<()> {
    let me = state.domain_id().to_owned();
    let input = t
        .psi
        .inputs
        .get(&me)
        .ok_or_else(|| NodeError::Invalid(format!("task {}: no input for {me}", t.task_id)))?;
    let input_path =
        crate::jobs::own_input(state, &input.domaindata_id, &input.keys, "input").await?;
    let dd = state
        .store
        .domaindata(&input.domaindata_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("domaindata {}", input.domaindata_id)))?;
    let ds = state
        .store
        .datasource(&dd.datasource_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("datasource {}", dd.datasource_id)))?;
    let peer = t
        .parties
        .iter()
        .map(|p| p.domain_id.clone())
        .find(|p| p != &me)
        .ok_or_else(|| NodeError::Invalid("task has no peer".into()))?;
    let output = match t.psi.outputs.get(&me) {
        Some(o) if t.psi.receivers.contains(&me) => {
            let rel = crate::catalog::check_relative(&o.relative_uri)?;
            let path = Path::new(&ds.path).join(rel);
            if path.exists() {
                return Err(NodeError::Invalid(format!(
                    "output {} exists already; move it away or name another output",
                    path.display()
                )));
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            Some(path)
        }
        _ => None,
    };
    let receiver = match (
        t.psi.receivers.contains(&me),
        t.psi.receivers.contains(&peer),
    ) {
        (true, true) => "both",
        (true, false) => "self",
        _ => "peer",
    };
    let dir = task_dir(state, &m.job_id, &t.task_id);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let result = dir.join("result.json");
    let _ = std::fs::remove_file(&result);
    let secret = hex::encode(random_bytes(32)?);
    let workers = t.psi.workers.max(1);
    let parts_dir = (workers > 1).then(|| dir.join("parts"));
    if let Some(p) = &parts_dir {
        // parts of an earlier attempt must not be merged into this one
        let _ = std::fs::remove_dir_all(p);
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    let base = TaskConfig {
        version: 1,
        job_id: m.job_id.clone(),
        task_id: t.task_id.clone(),
        attempt: row.attempt,
        party: me.clone(),
        peer: peer.clone(),
        parties: t.parties.iter().map(|p| p.domain_id.clone()).collect(),
        // The party whose domain sorts first leads; both ends agree without a message.
        leader: me < peer,
        input: input_path,
        output,
        psi: TaskPsi {
            protocol: t.psi.protocol.clone(),
            keys: input.keys.clone(),
            receiver: receiver.into(),
            join: t.psi.join_type.clone(),
            left: if t.psi.left_side == me {
                "self"
            } else {
                "peer"
            }
            .into(),
        },
        gateway: state.task_addr.to_string(),
        secret: secret.clone(),
        work_dir: dir.join("tmp"),
        result: result.clone(),
        worker: 0,
        workers,
        plan_nonce: hex::encode(random_bytes(16)?),
        parts_dir,
    };
    if let Some(k) = state.runtime.kubernetes() {
        return kubernetes::start(state, k, m, t, row, base).await;
    }
    let mut cmds = Vec::with_capacity(workers as usize);
    for w in 0..workers {
        let config = worker_config(&base, &dir, w);
        let config_path = if w == 0 {
            dir.join("task.json")
        } else {
            dir.join(format!("task-w{w}.json"))
        };
        let text =
            serde_json::to_vec_pretty(&config).map_err(|e| NodeError::Invalid(e.to_string()))?;
        crate::atomic::write_file(&config_path, &text, true)?;
        cmds.push(task_command(&dir, &config_path)?);
    }
    // The row first: the task may report before spawn returns.
    let mut r = mark_starting(state, m, t, row, &secret, "starting".into()).await?;
    let mut cmds = cmds.into_iter();
    let mut first = cmds.next().expect("at least one worker");
    first.process_group(0);
    let mut child = match first.spawn() {
        Ok(c) => c,
        Err(e) => return Err(NodeError::io("venn task run", e)),
    };
    let pid = child.id().unwrap_or(0);
    // Workers 1.. join worker 0's group: one group to signal, one PID to track.
    for (i, mut cmd) in cmds.enumerate() {
        cmd.process_group(pid as i32);
        let w = i + 1;
        match cmd.spawn() {
            Ok(mut c) => {
                let (job, task) = (m.job_id.clone(), t.task_id.clone());
                tokio::spawn(async move {
                    let status = c.wait().await;
                    if !status.as_ref().is_ok_and(|s| s.success()) {
                        let why = status.map_or_else(|e| e.to_string(), exit_text);
                        tracing::warn!(%job, %task, worker = w, "worker failed ({why}); stopping the party's workers");
                        signal_group(pid, Signal::SIGTERM);
                    }
                });
            }
            Err(e) => {
                signal_group(pid, Signal::SIGTERM);
                return Err(NodeError::io("venn task run (worker)", e));
            }
        }
    }
    r.pid = pid as i64;
    state
        .store
        .set_task_process(&m.job_id, &t.task_id, &me, r.pid, &r.secret_sha256)
        .await?;
    let key = (m.job_id.clone(), t.task_id.clone());
    if let Ok(mut pids) = state.runtime.pids.lock() {
        pids.insert(key.clone(), pid);
    }
    report_party(state, &r).await?;
    tracing::info!(job = %m.job_id, task = %t.task_id, pid, workers, "task started");
    let st = state.clone();
    let attempt = r.attempt;
    tokio::spawn(async move {
        let status = child.wait().await;
        let ok = status.as_ref().is_ok_and(|s| s.success());
        let why = match status {
            Ok(s) => exit_text(s),
            Err(e) => format!("waiting for the task process failed: {e}"),
        };
        if workers > 1 && !ok {
            // worker 0 failed: its workers must not run on alone
            signal_group(pid, Signal::SIGTERM);
        }
        finish(&st, &key.0, &key.1, attempt, &why).await;
    });
    Ok(())
}

/// Records this node's party Running at `step`, with the hash of the task's gateway secret
/// and no process yet, before either runtime launches anything (the task may report before
/// the launch call returns). Returns the row as recorded.
async fn mark_starting(
    state: &SharedState,
    m: &Manifest,
    t: &TaskSpec,
    row: &TaskPartyRow,
    secret: &str,
    step: String,
) -> Result<TaskPartyRow> {
    let mut r = row.clone();
    r.phase = "Running".into();
    r.reason = String::new();
    r.progress = 0;
    r.step = step;
    r.secret_sha256 = secret_hash(secret);
    r.start_time = now_unix();
    r.end_time = 0;
    r.pid = 0;
    state.store.update_task_party(&r).await?;
    state
        .store
        .set_task_process(
            &m.job_id,
            &t.task_id,
            state.domain_id(),
            0,
            &r.secret_sha256,
        )
        .await?;
    Ok(r)
}

/// `venn task run --config <config>`, logging to the task's `task.log`.
fn task_command(dir: &Path, config_path: &Path) -> Result<tokio::process::Command> {
    let log_path = dir.join("task.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let exe = std::env::current_exe().map_err(|e| NodeError::io("current executable", e))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["task", "run", "--config"])
        .arg(config_path)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .env("VENN_LOG", "info")
        .kill_on_drop(false);
    Ok(cmd)
}

fn exit_text(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("the task process exited with status {c}"),
        (None, Some(9)) => "the task process was killed (signal 9, SIGKILL)".into(),
        (None, Some(sig)) => format!("the task process was killed by signal {sig}"),
        _ => "the task process ended".into(),
    }
}

/// This node's party of `job`/`task` if `attempt` is still its current attempt, after
/// dropping the task links waiting for it; `None` (links kept) when a newer attempt runs:
/// those links are the new attempt's own, and dropping them would fail it ("the peer closed
/// the connection during the relay's answer"). With no party row, the links go too.
async fn attempt_ended(
    state: &SharedState,
    job: &str,
    task: &str,
    attempt: i64,
) -> Option<TaskPartyRow> {
    let me = state.domain_id().to_owned();
    let row = state.store.task_party(job, task, &me).await.ok().flatten();
    if row.as_ref().is_some_and(|r| r.attempt != attempt) {
        return None;
    }
    state.links.forget(job, task);
    row
}

/// Called when a task process has ended: reads its result, registers the output, records
/// the party's final state.
async fn finish(state: &SharedState, job: &str, task: &str, attempt: i64, exit: &str) {
    if let Ok(mut pids) = state.runtime.pids.lock() {
        pids.remove(&(job.to_owned(), task.to_owned()));
    }
    let Some(mut row) = attempt_ended(state, job, task, attempt).await else {
        return;
    };
    if row.phase != "Running" {
        return; // stopped (and recorded) already
    }
    let dir = task_dir(state, job, task);
    let result: Option<TaskResult> = std::fs::read(dir.join("result.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    row.end_time = now_unix();
    row.pid = 0;
    match result {
        Some(r) if r.ok => match register_output(state, job, task).await {
            Ok(()) => {
                row.phase = "Succeeded".into();
                row.reason = String::new();
                row.progress = 1000;
                row.step = "done".into();
                row.report = r.report.to_string();
            }
            Err(e) => {
                row.phase = "Failed".into();
                row.reason = format!("registering the output failed: {e}");
                row.report = r.report.to_string();
            }
        },
        Some(r) => {
            row.phase = "Failed".into();
            row.reason = r.error;
        }
        None => {
            row.phase = "Failed".into();
            row.reason = worker_failure(&dir).unwrap_or_else(|| {
                format!("{exit} without writing a result; see venn job logs {job}")
            });
        }
    }
    tracing::info!(job, task, phase = %row.phase, reason = %row.reason, "task ended");
    if let Err(e) = report_party(state, &row).await {
        tracing::error!(job, task, "recording the task result: {e}");
    }
}

/// Records this node's party of a task Failed with `why`, when it is still Running in
/// `attempt` (the kubernetes runtime, when one worker pod of several fails). True when it
/// was recorded; the caller then ends the party's remaining workers.
async fn fail_party(state: &SharedState, job: &str, task: &str, attempt: i64, why: &str) -> bool {
    let Some(mut row) = attempt_ended(state, job, task, attempt).await else {
        return false;
    };
    if row.phase != "Running" {
        return false;
    }
    row.phase = "Failed".into();
    row.reason = why.to_owned();
    row.end_time = now_unix();
    row.pid = 0;
    tracing::info!(job, task, reason = %row.reason, "task failed");
    if let Err(e) = report_party(state, &row).await {
        tracing::error!(job, task, "recording the task failure: {e}");
    }
    true
}

/// The worker count of a task's parties (`workers` of its PSI config; 1 when the job or the
/// task cannot be read).
async fn party_workers(state: &NodeState, job: &str, task: &str) -> u32 {
    let Ok(Some(j)) = state.store.job(job).await else {
        return 1;
    };
    serde_json::from_str::<Manifest>(&j.manifest)
        .ok()
        .and_then(|m| m.task(task).map(|t| t.psi.workers.max(1)))
        .unwrap_or(1)
}

/// The first failed worker's reason, when a party's workers left results.
fn worker_failure(dir: &Path) -> Option<String> {
    let mut results: Vec<PathBuf> = std::fs::read_dir(dir.join("parts"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".result.json"))
        .collect();
    results.sort();
    results
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| serde_json::from_slice::<TaskResult>(&b).ok())
        .find(|r| !r.ok)
        .map(|r| r.error)
}

async fn register_output(state: &NodeState, job: &str, task: &str) -> Result<()> {
    let me = state.domain_id().to_owned();
    let j = state
        .store
        .job(job)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("job {job}")))?;
    let m: Manifest =
        serde_json::from_str(&j.manifest).map_err(|e| NodeError::Invalid(e.to_string()))?;
    let t = m
        .task(task)
        .ok_or_else(|| NodeError::NotFound(format!("task {task}")))?;
    let (Some(out), Some(input)) = (t.psi.outputs.get(&me), t.psi.inputs.get(&me)) else {
        return Ok(());
    };
    if !t.psi.receivers.contains(&me) {
        return Ok(());
    }
    let dd = state
        .store
        .domaindata(&input.domaindata_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("domaindata {}", input.domaindata_id)))?;
    let ds = state
        .store
        .datasource(&dd.datasource_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("datasource {}", dd.datasource_id)))?;
    let file = crate::catalog::confined_existing(Path::new(&ds.path), &out.relative_uri)?;
    let header = crate::catalog::csv_header(&file)?;
    let columns: Vec<Value> = header
        .iter()
        .map(|c| json!({"name": c, "type": "str", "comment": "", "not_nullable": false}))
        .collect();
    state
        .store
        .insert_domaindata(&DomainDataRow {
            domaindata_id: out.domaindata_id.clone(),
            domain_id: me.clone(),
            name: format!("PSI output of {job}/{}", t.alias),
            r#type: "table".into(),
            relative_uri: out.relative_uri.clone(),
            datasource_id: dd.datasource_id.clone(),
            attributes: json!({"job_id": job, "task_id": task}).to_string(),
            columns: Value::Array(columns).to_string(),
            vendor: "venn".into(),
            author: me,
            created_at: 0,
            updated_at: 0,
        })
        .await
}

fn signal_group(pid: u32, sig: Signal) {
    // pid 0 would be our own group; a pid that does not fit an i32 is no process of ours
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid <= 0 {
        return;
    }
    // ESRCH (the group is gone already) is the outcome we want anyway
    let _ = killpg(Pid::from_raw(pid), sig);
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // state is the field after the ")" that closes the command name
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// Stops this node's party of a task: records it Failed with `why`, then signals its group.
pub async fn stop_task(state: &SharedState, job: &str, task: &str, why: &str) {
    let me = state.domain_id().to_owned();
    if let Ok(Some(mut row)) = state.store.task_party(job, task, &me).await
        && row.phase == "Running"
    {
        row.phase = "Failed".into();
        row.reason = why.to_owned();
        row.end_time = now_unix();
        let pid = row.pid as u32;
        row.pid = 0;
        if let Err(e) = report_party(state, &row).await {
            tracing::error!(job, task, "recording the stop: {e}");
        }
        if let Some(k) = state.runtime.kubernetes() {
            state.links.forget(job, task);
            tracing::info!(job, task, "stopping task pod: {why}");
            kubernetes::stop(state, k, job, task, row.attempt).await;
            return;
        }
        let pid = state
            .runtime
            .pids
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(job.to_owned(), task.to_owned())))
            .unwrap_or(pid);
        state.links.forget(job, task);
        tracing::info!(job, task, pid, "stopping task: {why}");
        signal_group(pid, Signal::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if alive(pid) {
                signal_group(pid, Signal::SIGKILL);
            }
        });
    }
}

/// Stops every party of `job` this node runs.
pub async fn stop_job(state: &SharedState, job: &str, why: &str) {
    let mut tasks: Vec<String> = state
        .runtime
        .pids
        .lock()
        .map(|m| {
            m.keys()
                .filter(|(j, _)| j == job)
                .map(|(_, t)| t.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(k) = state.runtime.kubernetes() {
        tasks.extend(
            k.tracked()
                .into_iter()
                .filter(|(j, _)| j == job)
                .map(|(_, t)| t),
        );
    }
    for t in tasks {
        stop_task(state, job, &t, why).await;
    }
}

/// After a node start: re-attaches to task processes that still run, fails the others.
pub async fn reattach(state: &SharedState) -> Result<()> {
    if let Some(k) = state.runtime.kubernetes() {
        return kubernetes::reattach(state, k).await;
    }
    for row in state.store.running_parties(state.domain_id()).await? {
        let pid = row.pid as u32;
        let config = task_dir(state, &row.job_id, &row.task_id).join("task.json");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = pid != 0
            && alive(pid)
            && String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy());
        if ours {
            tracing::info!(job = %row.job_id, task = %row.task_id, pid, "re-attached to a running task");
            if let Ok(mut pids) = state.runtime.pids.lock() {
                pids.insert((row.job_id.clone(), row.task_id.clone()), pid);
            }
            let st = state.clone();
            tokio::spawn(async move {
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                finish(
                    &st,
                    &row.job_id,
                    &row.task_id,
                    row.attempt,
                    "the task process ended (re-attached after a node restart)",
                )
                .await;
            });
        } else {
            let mut r = row.clone();
            r.phase = "Failed".into();
            r.reason = format!(
                "the node restarted and the task process (pid {pid}) is gone; run venn job restart {}",
                row.job_id
            );
            r.end_time = now_unix();
            r.pid = 0;
            report_party(state, &r).await?;
        }
    }
    Ok(())
}

/// A progress report from a task (through the gateway task port). Broadcast to the other
/// parties when the step changes, and at most once a second otherwise.
pub async fn progress(
    state: &SharedState,
    job: &str,
    task: &str,
    fraction: f64,
    step: &str,
) -> Result<()> {
    let me = state.domain_id().to_owned();
    let Some(mut row) = state.store.task_party(job, task, &me).await? else {
        return Err(NodeError::NotFound(format!("task {task}")));
    };
    if row.phase != "Running" {
        return Ok(());
    }
    row.progress = (fraction.clamp(0.0, 1.0) * 1000.0) as i64;
    row.step = step.chars().take(64).collect();
    let key = (job.to_owned(), task.to_owned());
    let send = {
        let mut last = state
            .runtime
            .last_report
            .lock()
            .map_err(|_| NodeError::Invalid("runtime lock".into()))?;
        let due = match last.get(&key) {
            Some((t, s)) => s != &row.step || t.elapsed() >= Duration::from_secs(1),
            None => true,
        };
        if due {
            last.insert(key, (Instant::now(), row.step.clone()));
        }
        due
    };
    state
        .store
        .set_task_progress(job, task, &me, row.progress, &row.step)
        .await?;
    if send {
        // Re-read: the runtime may have changed other columns meanwhile.
        if let Some(fresh) = state.store.task_party(job, task, &me).await? {
            report_party(state, &fresh).await?;
        }
    }
    Ok(())
}

/// The end of a task's log (at most `max` bytes): the live pods' log with the kubernetes
/// runtime while the pods run (with several workers each worker's log under a header,
/// [`kubernetes::Kubernetes::party_logs`]), else `task.log`.
pub async fn task_log(state: &NodeState, job: &str, task: &str, max: u64) -> Result<String> {
    if let Some(k) = state.runtime.kubernetes()
        && let Some(pods) = k.pods_of(job, task)
    {
        match k.party_logs(&pods, max).await {
            Ok(log) => return Ok(log),
            Err(e) => tracing::warn!(job, task, "pod log: {e}; showing task.log"),
        }
    }
    log_tail(state, job, task, max)
}

/// The end of a task's log file (at most `max` bytes).
pub fn log_tail(state: &NodeState, job: &str, task: &str, max: u64) -> Result<String> {
    let path = task_dir(state, job, task).join("task.log");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(NodeError::io(&path, e)),
    };
    let start = bytes.len().saturating_sub(max as usize);
    Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// Tests: `domain`'s party of task job-1-psi of job-1, recorded Running in `attempt`.
#[cfg(test)]
pub(crate) async fn running_party_for_tests(state: &SharedState, domain: &str, attempt: i64) {
    state
        .store
        .ensure_task_party("job-1", "job-1-psi", domain)
        .await
        .unwrap();
    let mut r = state
        .store
        .task_party("job-1", "job-1-psi", domain)
        .await
        .unwrap()
        .unwrap();
    r.phase = "Running".into();
    r.attempt = attempt;
    state.store.update_task_party(&r).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Node bob with its party of task job-1-psi Running in attempt `attempt`, and one task
    /// link connection parked in its broker (as the non-dialing side parks it).
    async fn bob_with_a_waiting_link(
        dir: &std::path::Path,
        attempt: i64,
    ) -> (SharedState, tokio::net::TcpStream) {
        let state = crate::state::NodeState::for_tests(Config {
            data_dir: dir.to_path_buf(),
            domain_id: "bob".into(),
            ..Config::default()
        })
        .await;
        running_party_for_tests(&state, "bob", attempt).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (parked, _) = l.accept().await.unwrap();
        let key = ("job-1".into(), "job-1-psi".into(), "alice".into(), 0);
        state.links.offer_task(key, parked);
        (state, client)
    }

    /// The end of an earlier attempt's process (a restart raced with it) must not drop the
    /// links the new attempt's task is waiting on: that failed restarted jobs with "the peer
    /// closed the connection during the relay's answer". The current attempt's end does.
    #[tokio::test]
    async fn an_earlier_attempts_end_keeps_the_new_attempts_links() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mut client) = bob_with_a_waiting_link(dir.path(), 2).await;
        finish(&state, "job-1", "job-1-psi", 1, "the task process ended").await;
        assert_eq!(state.links.waiting(), 1);
        let row = state
            .store
            .task_party("job-1", "job-1-psi", "bob")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.phase, "Running");
        assert!(!fail_party(&state, "job-1", "job-1-psi", 1, "worker 1 failed").await);
        assert_eq!(state.links.waiting(), 1);

        finish(&state, "job-1", "job-1-psi", 2, "the task process ended").await;
        assert_eq!(state.links.waiting(), 0);
        // the parked connection was closed: the task sees the end of the stream
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut b))
            .await
            .expect("the parked link is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}

//! Task links through the gateways, and the loopback task port.
//!
//! A task process reaches its node only through the **task port** (`gateway.task_listen`,
//! loopback): it connects, sends a length-prefixed JSON [`TaskHello`] with its secret, and
//! either reports progress (`progress`) or asks for its link to the peer party (`link`).
//!
//! **Mechanism chosen for links: one HTTP/1.1 Upgrade per task link, on a fresh mutual-TLS
//! connection to the partner's gateway port.** The party whose domain sorts first (the
//! *dialer*, also the PSI leader) opens `POST /venn/v1/link` with `Upgrade: venn-link` and the
//! job and task in headers; the partner's gateway authenticates it like every partner call
//! (pinned CA, certificate naming the domain), checks that the caller is the other party of a
//! live task of that job, waits (up to 2 minutes) for its own task to connect to its task port,
//! answers `101 Switching Protocols`, and from then on both gateways copy bytes between the
//! task's loopback socket and the upgraded TLS stream. Why this and not a multiplexed stream:
//! - one TCP connection per link gives each link its own TCP flow control: a slow job cannot
//!   stall another job's bytes (HTTP/2 streams on one connection share one TCP window and
//!   suffer head-of-line blocking on loss), and back-pressure is end to end with no buffering
//!   of the dataset: a gateway reads from one side only as fast as it can write to the other
//!   (a fixed 256 KiB buffer per direction);
//! - it needs no new port: any number of concurrent links share the one gateway port, and the
//!   upgrade passes through the same gate (401 for strangers) as every other partner call;
//! - a link's TCP connection ends with its task, so nothing outlives a job.
//!
//! Pairing is by (job, task, peer domain, worker index): a party running its PSI as N workers
//! opens N links, worker i's hello and the dialer's `venn-worker` header carry i, and worker i
//! meets only the peer's worker i (the engine checks the index again in its first message). A
//! waiting task connection is held in the
//! [`Broker`] until the partner's upgrade arrives (or the other way round on the dialer side,
//! where the task's connection triggers the dial). The task then runs venn-link's framed
//! protocol end to end over the relayed bytes (`venn_link::Link::via_relay`); the node hop is
//! protected by the gateways' mutual TLS, the loopback hop by the task secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Extension;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::Partner;
use crate::jobs::{JobPhase, Manifest};
use crate::runtime::{TaskHello, secret_hash};
use crate::state::SharedState;
use crate::trust::ct_eq_str;

/// How long one end of a link waits for the other.
const PAIR_WAIT: Duration = Duration::from_secs(120);
/// Copy buffer per direction.
const COPY_BUF: usize = 256 << 10;
/// Largest hello.
const MAX_HELLO: usize = 16 << 10;

/// (job, task, peer domain, worker index).
pub(crate) type Key = (String, String, String, u32);

enum Slot {
    /// Our task connected first; the partner's upgrade takes it.
    Task(TcpStream),
    /// The partner's upgrade arrived first and waits for our task.
    Peer(oneshot::Sender<TcpStream>),
}

/// Task connections and partner upgrades waiting for each other.
#[derive(Default)]
pub struct Broker {
    slots: Mutex<HashMap<Key, Slot>>,
}

impl Broker {
    /// Hands our task's connection to a waiting partner upgrade, or parks it.
    pub(crate) fn offer_task(&self, key: Key, stream: TcpStream) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let stream = match slots.remove(&key) {
            Some(Slot::Peer(tx)) => match tx.send(stream) {
                Ok(()) => return,
                Err(s) => s,
            },
            _ => stream,
        };
        slots.insert(key, Slot::Task(stream));
    }

    /// How many task connections and partner upgrades wait (tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Drops whatever waits for the links of `job`/`task` (the task was stopped or ended).
    pub fn forget(&self, job: &str, task: &str) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|(j, t, _, _), _| !(j == job && t == task));
        }
    }

    /// Takes our task's connection for a partner upgrade, waiting for it up to [`PAIR_WAIT`].
    async fn take_task(&self, key: Key) -> Option<TcpStream> {
        let rx = {
            let mut slots = self.slots.lock().ok()?;
            if let Some(Slot::Task(s)) = slots.remove(&key) {
                return Some(s);
            }
            let (tx, rx) = oneshot::channel();
            slots.insert(key.clone(), Slot::Peer(tx));
            rx
        };
        match tokio::time::timeout(PAIR_WAIT, rx).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                if let Ok(mut slots) = self.slots.lock()
                    && matches!(slots.get(&key), Some(Slot::Peer(_)))
                {
                    slots.remove(&key);
                }
                None
            }
        }
    }
}

/// Serves the loopback task port until `shutdown`.
pub async fn serve_tasks(
    listener: TcpListener,
    state: SharedState,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("task port accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = task_connection(st, tcp).await {
                tracing::debug!(%addr, "task port: {e}");
            }
        });
    }
}

async fn answer(s: &mut TcpStream, line: &str) {
    let _ = s.write_all(format!("{line}\n").as_bytes()).await;
    let _ = s.flush().await;
}

async fn read_hello(s: &mut TcpStream) -> Result<TaskHello, String> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len))
        .await
        .map_err(|_| "no hello in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_HELLO {
        return Err("hello too large".into());
    }
    let mut buf = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .map_err(|_| "no hello in time".to_owned())?
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&buf).map_err(|e| format!("bad hello: {e}"))
}

async fn task_connection(state: SharedState, mut s: TcpStream) -> Result<(), String> {
    let _ = s.set_nodelay(true);
    let hello = read_hello(&mut s).await?;
    let me = state.domain_id().to_owned();
    let row = state
        .store
        .task_party(&hello.job_id, &hello.task_id, &me)
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = row.filter(|r| {
        !r.secret_sha256.is_empty() && ct_eq_str(&r.secret_sha256, &secret_hash(&hello.secret))
    }) else {
        answer(&mut s, "ERR unknown task or wrong secret").await;
        return Err("refused a task connection (unknown task or wrong secret)".into());
    };
    if row.phase != "Running" {
        answer(
            &mut s,
            &format!("ERR the task is {} at this node", row.phase),
        )
        .await;
        return Ok(());
    }
    match hello.kind.as_str() {
        "progress" => {
            let r = crate::runtime::progress(
                &state,
                &hello.job_id,
                &hello.task_id,
                hello.progress,
                &hello.step,
            )
            .await;
            answer(
                &mut s,
                if r.is_ok() {
                    "OK"
                } else {
                    "ERR progress not recorded"
                },
            )
            .await;
            Ok(())
        }
        "link" => {
            let peer = peer_of(&state, &hello.job_id, &hello.task_id).await?;
            let key = (
                hello.job_id.clone(),
                hello.task_id.clone(),
                peer.clone(),
                hello.worker,
            );
            if me < peer {
                match dial(&state, &peer, &hello.job_id, &hello.task_id, hello.worker).await {
                    Ok(remote) => {
                        answer(&mut s, "OK").await;
                        splice(s, remote, &key).await;
                        Ok(())
                    }
                    Err(e) => {
                        answer(&mut s, &format!("ERR {e}")).await;
                        Err(e)
                    }
                }
            } else {
                state.links.offer_task(key, s);
                Ok(())
            }
        }
        other => {
            answer(&mut s, &format!("ERR unknown kind {other:?}")).await;
            Ok(())
        }
    }
}

async fn peer_of(state: &SharedState, job: &str, task: &str) -> Result<String, String> {
    let j = state
        .store
        .job(job)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such job")?;
    let m: Manifest = serde_json::from_str(&j.manifest).map_err(|e| e.to_string())?;
    let t = m.task(task).ok_or("no such task")?;
    t.parties
        .iter()
        .map(|p| p.domain_id.clone())
        .find(|p| p != state.domain_id())
        .ok_or_else(|| "the task has no other party".to_owned())
}

/// Copies bytes both ways until both sides are closed.
async fn splice<A, B>(mut a: A, mut b: B, key: &Key)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF).await {
        Ok((up, down)) => {
            tracing::info!(job = %key.0, task = %key.1, peer = %key.2, worker = key.3, sent = up, received = down, "task link closed")
        }
        Err(e) => {
            tracing::info!(job = %key.0, task = %key.1, peer = %key.2, worker = key.3, "task link ended: {e}")
        }
    }
}

/// Opens the link's upgraded connection to `peer`'s gateway (directly or through the route's
/// transit domain: [`super::transit::open`]).
async fn dial(
    state: &SharedState,
    peer: &str,
    job: &str,
    task: &str,
    worker: u32,
) -> Result<super::client::GatewayStream, String> {
    let mut tls = super::transit::open(state, peer)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /venn/v1/link HTTP/1.1\r\nHost: {peer}\r\nvenn-source: {}\r\nvenn-job: {job}\r\n\
         venn-task: {task}\r\nvenn-worker: {worker}\r\nConnection: Upgrade\r\nUpgrade: venn-link\r\nContent-Length: 0\r\n\r\n",
        state.domain_id()
    );
    match super::client::request_upgrade(&mut tls, &req, PAIR_WAIT + Duration::from_secs(10)).await
    {
        Ok(()) => Ok(tls),
        Err((status, reason)) if status.is_empty() => {
            Err(format!("{peer} did not answer the link request: {reason}"))
        }
        Err((status, reason)) => Err(format!("{peer} refused the link: HTTP {status}: {reason}")),
    }
}

fn refuse(code: StatusCode, reason: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "reason": reason.into() }))).into_response()
}

/// `POST /venn/v1/link` (with `Upgrade: venn-link`): the partner's end of a task link.
pub async fn upgrade(
    Extension(state): Extension<SharedState>,
    Partner(domain, _): Partner,
    mut req: Request,
) -> Response {
    let (job, task, upgrade, worker) = {
        let h = req.headers();
        let header = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        (
            header("venn-job"),
            header("venn-task"),
            header("upgrade"),
            header("venn-worker"),
        )
    };
    // absent from a dialer without workers: worker 0
    let worker = if worker.is_empty() {
        Ok(0)
    } else {
        worker.parse::<u32>()
    };
    let Ok(worker) = worker else {
        return refuse(StatusCode::BAD_REQUEST, "venn-worker: not a worker index");
    };
    if !upgrade.eq_ignore_ascii_case("venn-link") {
        return refuse(StatusCode::BAD_REQUEST, "Upgrade: venn-link required");
    }
    let me = state.domain_id().to_owned();
    let j = match state.store.job(&job).await {
        Ok(Some(j)) => j,
        _ => return refuse(StatusCode::NOT_FOUND, format!("job {job} not found")),
    };
    if JobPhase::parse(&j.phase).is_some_and(JobPhase::is_final) {
        return refuse(StatusCode::CONFLICT, format!("job {job} is {}", j.phase));
    }
    let Ok(m) = serde_json::from_str::<Manifest>(&j.manifest) else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let Some(t) = m.task(&task) else {
        return refuse(StatusCode::NOT_FOUND, format!("task {task} not found"));
    };
    let parties: Vec<&str> = t.parties.iter().map(|p| p.domain_id.as_str()).collect();
    if !parties.contains(&domain.as_str()) || !parties.contains(&me.as_str()) || domain >= me {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{domain} is not the dialing party of task {task}"),
        );
    }
    if worker >= t.psi.workers.max(1) {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "task {task} has no worker {worker} (workers: {})",
                t.psi.workers
            ),
        );
    }
    let key = (job.clone(), task.clone(), domain.clone(), worker);
    let Some(mut local) = state.links.take_task(key.clone()).await else {
        return refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the task {task} of {me} did not connect within {} s",
                PAIR_WAIT.as_secs()
            ),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                answer(&mut local, "OK").await;
                splice(local, TokioIo::new(upgraded), &key).await;
            }
            Err(e) => {
                answer(&mut local, &format!("ERR the link upgrade failed: {e}")).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "venn-link")
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// Binds the task port.
pub async fn bind_task_port(addr: &str) -> crate::Result<(TcpListener, SocketAddr)> {
    let a: SocketAddr = addr.parse().map_err(|e| {
        crate::NodeError::Config(vec![format!("gateway.task_listen: {addr:?}: {e}")])
    })?;
    let l = TcpListener::bind(a).await.map_err(|e| {
        crate::NodeError::Config(vec![format!(
            "gateway.task_listen: cannot listen on {a}: {e}"
        )])
    })?;
    let local = l
        .local_addr()
        .map_err(|e| crate::NodeError::Net(e.to_string()))?;
    Ok((l, local))
}

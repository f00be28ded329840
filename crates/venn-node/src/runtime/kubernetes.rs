//! The kubernetes runtime: runs this node's party of a task as a pod, through the Kubernetes
//! API (kube-rs over rustls; no OpenSSL, so the static musl build is unchanged).
//!
//! What a task pod is (see [`pod_spec`] and [`secret_spec`]):
//! - **The task config comes from a Secret** (`task.json`, the same [`TaskConfig`] the process
//!   runtime writes, with `gateway` set to `kubernetes.task_address`), mounted read-only with
//!   mode 0400 — never an environment variable or a ConfigMap, since it holds the task's
//!   gateway secret. The Secret is created before the pod and deleted with it.
//! - **The node's gateway is the pod's only cross-domain path**: the task dials the node's task
//!   port over the pod network (`gateway.task_listen` is then a non-loopback address, still
//!   guarded by the per-task secret) and gets its link to the peer party from there. The
//!   NetworkPolicy in `deploy/k8s/*/networkpolicy.yaml` lets task pods talk to the node only.
//! - **Data**: the pod mounts the node's data volume claim at the same path as the node
//!   (`kubernetes.data_mount_path`), so the input, output, scratch and result paths in the
//!   config are valid in both. The claim must be ReadWriteMany, or ReadWriteOnce with the task
//!   pods scheduled on the node's machine.
//! - **Restricted**: non-root (65532), read-only root filesystem (an `emptyDir` on `/tmp`),
//!   all capabilities dropped, seccomp `RuntimeDefault`, no ServiceAccount token,
//!   `restartPolicy: Never` (a failed PSI is restarted by `venn job restart`, not by the
//!   kubelet).
//! - **Resources** from the job's party (`resources` of Kuscia's CreateJob: `cpu`, `memory`,
//!   `min_cpu`, `max_cpu`, `min_memory`, `max_memory`), else `kubernetes.default_resources`.
//! - **Labels** `venn.dev/party`, `venn.dev/job`, `venn.dev/task`, `venn.dev/attempt`,
//!   `venn.dev/worker` (for selection; values shortened with a hash when a label cannot hold
//!   them) and annotations with the exact IDs, the worker index and the worker count (for
//!   matching).
//!
//! **Workers** (`workers: N`): the party runs N pods, worker i's with worker i's config from
//! [`super::worker_config`] (exactly the process runtime's configs; `parts_dir` is on the data
//! volume, so worker 0 sees the others' parts). Each pod has its own Secret of its own name
//! (`venn-<task>-w<i>-<hash>`; worker 0 keeps the single-worker name), not one Secret with N
//! keys: a pod then mounts only its own config, pod and Secret stay one name created,
//! refused, listed and deleted together (as with one worker), and the Secrets stay immutable
//! with nothing to add after the first pod is created. Each pod asks for the party's
//! resources, so a party asks for N times them. [`party_state`] folds the pods' states into
//! the party's: worker 0's end decides (it merges and writes `result.json`); a worker ≥ 1 that
//! fails or is deleted first fails the party with its index in the reason, and the party's
//! other pods are deleted (the process runtime's SIGTERM to the group). `venn job logs` shows
//! every worker's log under a header (a failing worker's log is the one to read, and it is
//! rarely worker 0's); clean-up appends each to `task.log` under such a header.
//!
//! Decisions:
//! - **One watch per pod** (`fieldSelector=metadata.name=...`; a party's N watches run in
//!   one task, [`Kubernetes::follow_party`]), started from a `get` and
//!   re-opened from a fresh `get` whenever it ends (server timeout, 410 Gone, network), so a
//!   missed event costs one extra request, never a stuck task. The pod is re-evaluated every
//!   few seconds without events too, because "image not pulled after the grace period" is a
//!   matter of the clock, not of a new event. The mapping of a pod object to a state is one
//!   pure function, [`pod_state`], tested against recorded API objects.
//! - **Finished pods are deleted** with their Secret once the node has read the result from
//!   the data volume, after their log has been appended to `task.log` in the task directory,
//!   so `venn job logs` works during the run (pods/log) and after it (the file).
//! - **Re-attach by label** after a node restart: pods of this domain are listed, grouped by
//!   the annotations (job, task, attempt; [`group_pods`]) and matched to Running parties; a
//!   party's pods are watched again when every worker's pod is there ([`party_pods`]), else
//!   the party is Failed with a reason naming the missing worker and its other pods are
//!   cleaned up, as are pods of parties that are no longer Running.
//!
//! Not verified here: no Kubernetes API server runs on the project's machines. The API calls
//! are exercised against a local imitation of the API paths serving recorded objects (tests
//! below); see docs/deploy-kubernetes.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::TaskConfig;
use crate::config::{KubernetesConfig, PodResources, is_quantity};
use crate::error::{NodeError, Result};
use crate::jobs::store::TaskPartyRow;
use crate::jobs::{Manifest, TaskSpec, report_party};
use crate::state::SharedState;
use crate::trust::now_unix;

/// Where the task config Secret is mounted in a task pod.
pub const TASK_CONFIG_DIR: &str = "/etc/venn-task";
/// The key of the task config in the Secret (and the file name under [`TASK_CONFIG_DIR`]).
pub const TASK_CONFIG_KEY: &str = "task.json";
/// The task container's name.
pub const CONTAINER: &str = "task";
/// The uid and gid of the venn image.
const UID: i64 = 65532;
/// How often a pod is re-evaluated while no event arrives.
const RECHECK: Duration = Duration::from_secs(5);
/// The most of a pod log kept in `task.log` when the pod is cleaned up.
const LOG_KEEP: u64 = 8 << 20;

/// The labels of every task pod and Secret.
pub mod labels {
    /// `venn-task` (the NetworkPolicy selects task pods by it; the node's own pods are
    /// `venn`, so the node's Services never select a task pod).
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `task`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `venn`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// This node's domain.
    pub const PARTY: &str = "venn.dev/party";
    /// The job (shortened when needed).
    pub const JOB: &str = "venn.dev/job";
    /// The task (shortened when needed).
    pub const TASK: &str = "venn.dev/task";
    /// The attempt.
    pub const ATTEMPT: &str = "venn.dev/attempt";
    /// Annotation: the exact job ID.
    pub const JOB_ID: &str = "venn.dev/job-id";
    /// Annotation: the exact task ID.
    pub const TASK_ID: &str = "venn.dev/task-id";
    /// Label and annotation: the pod's worker index (0 with one worker; absent on pods of
    /// older versions, read as 0).
    pub const WORKER: &str = "venn.dev/worker";
    /// Annotation: the party's worker count (absent: 1).
    pub const WORKERS: &str = "venn.dev/workers";
}

/// True when `v` can be a Kubernetes label value (at most 63 characters of `[A-Za-z0-9-_.]`,
/// starting and ending with a letter or digit, or empty).
pub fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..5])
}

/// `v` itself when it is a label value, else a readable prefix and a hash of it.
fn label_value(v: &str) -> String {
    if is_label_value(v) {
        return v.to_owned();
    }
    let prefix: String = v
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let prefix = prefix.trim_matches('-');
    format!("{prefix}-{}", short_hash(&[v]))
        .trim_start_matches('-')
        .to_owned()
}

/// One task party to launch as a pod.
#[derive(Debug, Clone)]
pub struct Launch {
    /// This node's domain (the party).
    pub party: String,
    /// The task config, `gateway` already pointing at `kubernetes.task_address`.
    pub config: TaskConfig,
    /// The pod's resources.
    pub resources: PodResources,
}

impl Launch {
    /// The name of the pod and of its Secret: `venn-<task>-<hash>` for worker 0 and
    /// `venn-<task>-w<i>-<hash>` for worker i ≥ 1, an RFC 1123 label (at most 5 + 40 + 5 + 11
    /// characters) unique per (party, job, task, attempt, worker).
    pub fn name(&self) -> String {
        pod_name(
            &self.party,
            &self.config.job_id,
            &self.config.task_id,
            self.config.attempt,
            self.config.worker,
        )
    }
}

/// See [`Launch::name`]. Worker 0's name is the name a single-worker pod always had, so pods
/// of older versions are still found by name.
pub fn pod_name(party: &str, job: &str, task: &str, attempt: i64, worker: u32) -> String {
    let attempt = attempt.to_string();
    let w = format!("w{worker}");
    let hash = if worker == 0 {
        short_hash(&[party, job, task, &attempt])
    } else {
        short_hash(&[party, job, task, &attempt, &w])
    };
    let readable: String = task
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let mut readable = readable.trim_matches('-').to_owned();
    if worker > 0 {
        if !readable.is_empty() {
            readable.push('-');
        }
        readable.push_str(&w);
    }
    if readable.is_empty() {
        format!("venn-{hash}")
    } else {
        format!("venn-{readable}-{hash}")
    }
}

fn object_labels(l: &Launch, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut m = extra.clone();
    m.insert(labels::NAME.into(), "venn-task".into());
    m.insert(labels::COMPONENT.into(), "task".into());
    m.insert(labels::MANAGED_BY.into(), "venn".into());
    m.insert(labels::PARTY.into(), label_value(&l.party));
    m.insert(labels::JOB.into(), label_value(&l.config.job_id));
    m.insert(labels::TASK.into(), label_value(&l.config.task_id));
    m.insert(labels::ATTEMPT.into(), l.config.attempt.to_string());
    m.insert(labels::WORKER.into(), l.config.worker.to_string());
    m
}

fn object_meta(l: &Launch, namespace: &str, extra: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(l.name()),
        namespace: Some(namespace.to_owned()),
        labels: Some(object_labels(l, extra)),
        annotations: Some(BTreeMap::from([
            (labels::JOB_ID.to_owned(), l.config.job_id.clone()),
            (labels::TASK_ID.to_owned(), l.config.task_id.clone()),
            (labels::WORKER.to_owned(), l.config.worker.to_string()),
            (
                labels::WORKERS.to_owned(),
                l.config.workers.max(1).to_string(),
            ),
        ])),
        ..ObjectMeta::default()
    }
}

/// The Secret holding the task config of `l`.
pub fn secret_spec(l: &Launch, k: &KubernetesConfig, namespace: &str) -> Result<Secret> {
    let json = serde_json::to_vec_pretty(&l.config)
        .map_err(|e| NodeError::Invalid(format!("task config: {e}")))?;
    Ok(Secret {
        metadata: object_meta(l, namespace, &k.pod_labels),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            TASK_CONFIG_KEY.to_owned(),
            ByteString(json),
        )])),
        ..Secret::default()
    })
}

fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    let m: BTreeMap<String, Quantity> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// The pod that runs `l`.
pub fn pod_spec(l: &Launch, k: &KubernetesConfig, namespace: &str) -> Pod {
    let name = l.name();
    let data_mount = k.data_mount_path.display().to_string();
    let r = &l.resources;
    let container = Container {
        name: CONTAINER.into(),
        image: Some(k.image.clone()),
        image_pull_policy: Some(k.image_pull_policy.clone()),
        command: Some(vec![
            "venn".into(),
            "task".into(),
            "run".into(),
            "--config".into(),
            format!("{TASK_CONFIG_DIR}/{TASK_CONFIG_KEY}"),
        ]),
        env: Some(vec![EnvVar {
            name: "VENN_LOG".into(),
            value: Some("info".into()),
            ..EnvVar::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
            limits: quantities(&[("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(UID),
            run_as_group: Some(UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "task-config".into(),
                mount_path: TASK_CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: data_mount,
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    Pod {
        metadata: object_meta(l, namespace, &k.pod_labels),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            service_account_name: (!k.service_account.is_empty())
                .then(|| k.service_account.clone()),
            enable_service_links: Some(false),
            image_pull_secrets: (!k.image_pull_secret.is_empty()).then(|| {
                vec![LocalObjectReference {
                    name: k.image_pull_secret.clone(),
                }]
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(UID),
                run_as_group: Some(UID),
                fs_group: Some(UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "task-config".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(name),
                        default_mode: Some(0o400),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: k.data_volume_claim.clone(),
                        read_only: None,
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("1Gi".into())),
                        ..EmptyDirVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The resources of a party: from the job's `resources` (Kuscia's CreateJob party field:
/// `cpu` and `memory`, or `min_cpu`/`max_cpu`/`min_memory`/`max_memory`), each missing or
/// malformed value from `defaults`.
pub fn party_resources(job: Option<&Value>, defaults: &PodResources) -> PodResources {
    let get = |keys: &[&str]| -> Option<String> {
        let v = job?;
        keys.iter().find_map(|k| {
            let s = match &v[*k] {
                Value::String(s) => s.trim().to_owned(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            is_quantity(&s).then_some(s)
        })
    };
    PodResources {
        cpu_request: get(&["min_cpu", "cpu"]).unwrap_or_else(|| defaults.cpu_request.clone()),
        cpu_limit: get(&["max_cpu", "cpu"]).unwrap_or_else(|| defaults.cpu_limit.clone()),
        memory_request: get(&["min_memory", "memory"])
            .unwrap_or_else(|| defaults.memory_request.clone()),
        memory_limit: get(&["max_memory", "memory"])
            .unwrap_or_else(|| defaults.memory_limit.clone()),
    }
}

/// A task pod's state, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Not running yet; the reason when the API gives one (`ContainerCreating`,
    /// `ImagePullBackOff` within the grace period, `Unschedulable: ...`).
    Pending(String),
    /// The task container runs.
    Running,
    /// The task container exited 0.
    Succeeded,
    /// The pod failed or cannot start; why, for the party's reason.
    Failed(String),
    /// The pod does not exist (any more).
    Gone,
}

impl PodState {
    /// Succeeded, Failed or Gone.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed(_) | Self::Gone)
    }

    /// The text handed to the runtime's `finish` (used when the task wrote no result).
    pub fn exit_text(&self) -> String {
        match self {
            Self::Succeeded => "the task pod succeeded".into(),
            Self::Failed(why) => format!("the task pod failed ({why})"),
            Self::Gone => "the task pod was deleted".into(),
            Self::Pending(r) => format!("the task pod is pending ({r})"),
            Self::Running => "the task pod runs".into(),
        }
    }
}

/// What the worker pods of a party amount to (see [`party_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyState {
    /// A pod is not running yet: why (with several workers, `worker <i>: why`).
    Pending(String),
    /// Worker 0 runs, and every other worker runs or has succeeded.
    Running,
    /// Worker 0's pod ended: the party's result is what worker 0 left in `result.json`; the
    /// text is for the runtime's `finish` (used when there is no result).
    Ended(String),
    /// Worker `worker` (≥ 1) failed or was deleted while worker 0 still ran: the party
    /// fails with `why` (which names the worker) and its other pods are deleted.
    Failed {
        /// The worker index.
        worker: u32,
        /// The party's reason.
        why: String,
    },
}

impl PartyState {
    /// Ended or Failed: the party's pods are done with.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Ended(_) | Self::Failed { .. })
    }
}

/// The state of a party from the states of its worker pods (index = worker). Worker 0 merges
/// the parts and writes the party's result, so its end decides; before that, a worker ≥ 1
/// that failed or is gone fails the party (worker 0 would wait for its part in vain).
pub fn party_state(pods: &[PodState]) -> PartyState {
    let n = pods.len();
    let Some(first) = pods.first() else {
        return PartyState::Ended(PodState::Gone.exit_text());
    };
    let named = |i: usize, text: &str| {
        if n > 1 {
            format!("worker {i} of {n}: {text}")
        } else {
            text.to_owned()
        }
    };
    if first.is_final() {
        return PartyState::Ended(named(0, &first.exit_text()));
    }
    for (i, p) in pods.iter().enumerate().skip(1) {
        if matches!(p, PodState::Failed(_) | PodState::Gone) {
            return PartyState::Failed {
                worker: i as u32,
                why: named(i, &p.exit_text()),
            };
        }
    }
    match pods.iter().enumerate().find_map(|(i, p)| match p {
        PodState::Pending(why) => Some((i, why)),
        _ => None,
    }) {
        Some((i, why)) if n > 1 => PartyState::Pending(format!("worker {i}: {why}")),
        Some((_, why)) => PartyState::Pending(why.clone()),
        None => PartyState::Running,
    }
}

/// The pods found for each (job, task, attempt).
pub type PodGroups = BTreeMap<(String, String, i64), Vec<FoundPod>>;

/// Groups the pods found at re-attach by (job, task, attempt), each group by worker index.
pub fn group_pods(found: Vec<FoundPod>) -> PodGroups {
    let mut groups = PodGroups::new();
    for p in found {
        groups
            .entry((p.job_id.clone(), p.task_id.clone(), p.attempt))
            .or_default()
            .push(p);
    }
    for g in groups.values_mut() {
        g.sort_by_key(|p| p.worker);
    }
    groups
}

/// The pod names of a party's workers 0..N (by index) from its group of found pods, where N
/// is the larger of `workers` (the task's) and the count the pods carry; else why the party
/// cannot go on (which workers' pods are missing).
pub fn party_pods(group: &[FoundPod], workers: u32) -> std::result::Result<Vec<String>, String> {
    let n = group
        .iter()
        .map(|p| p.workers)
        .fold(workers.max(1), u32::max);
    let names: Vec<Option<&FoundPod>> = (0..n)
        .map(|w| group.iter().find(|p| p.worker == w))
        .collect();
    let missing: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_none())
        .map(|(w, _)| w.to_string())
        .collect();
    match missing.len() {
        0 => Ok(names
            .into_iter()
            .flatten()
            .map(|p| p.name.clone())
            .collect()),
        _ if n == 1 => Err("the task pod is gone".into()),
        m if m == n as usize => Err(format!("the task pods of all {n} workers are gone")),
        1 => Err(format!(
            "the task pod of worker {} (of {n}) is gone",
            missing[0]
        )),
        _ => Err(format!(
            "the task pods of workers {} (of {n}) are gone",
            missing.join(", ")
        )),
    }
}

/// Waiting reasons that never resolve by themselves.
const FATAL_WAITING: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];
/// Waiting reasons that fail the pod once the grace period is over.
const PULL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Maps a pod object to a [`PodState`] at unix time `now`; image pull problems become Failed
/// `grace_seconds` after the pod's creation.
pub fn pod_state(pod: &Pod, now: i64, grace_seconds: u64) -> PodState {
    let Some(status) = pod.status.as_ref() else {
        return PodState::Pending("created".into());
    };
    let container = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == CONTAINER);
    let terminated = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match status.phase.as_deref() {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") => {
            let mut why = match terminated {
                Some(t) => {
                    let reason = t.reason.as_deref().unwrap_or("Error");
                    let mut s = format!("{reason}, exit code {}", t.exit_code);
                    if reason == "OOMKilled" {
                        s.push_str(": the task ran out of memory; raise the memory limit");
                    }
                    s
                }
                None => status.reason.clone().unwrap_or_else(|| "Failed".into()),
            };
            if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
                why.push_str(": ");
                why.push_str(m);
            }
            PodState::Failed(why)
        }
        Some("Running") => PodState::Running,
        Some("Unknown") => PodState::Pending("Unknown: the pod's machine does not report".into()),
        _ => {
            // Pending (or a phase this version does not know).
            let waiting = container
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting {
                let reason = w.reason.as_deref().unwrap_or("Waiting");
                let detail = match w.message.as_deref() {
                    Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                    _ => reason.to_owned(),
                };
                if FATAL_WAITING.contains(&reason) {
                    return PodState::Failed(detail);
                }
                if PULL_WAITING.contains(&reason) {
                    let created = pod
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map_or(now, |t| t.0.as_second());
                    let waited = now.saturating_sub(created);
                    if waited >= grace_seconds as i64 {
                        return PodState::Failed(format!(
                            "{detail} (still after {waited} s; check kubernetes.image and the \
                             registry credentials)"
                        ));
                    }
                }
                return PodState::Pending(detail);
            }
            let unschedulable = status
                .conditions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            match unschedulable {
                Some(c) => PodState::Pending(format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or("Unschedulable"),
                    c.message.as_deref().unwrap_or_default()
                )),
                None => PodState::Pending(status.reason.clone().unwrap_or_default()),
            }
        }
    }
}

fn kube_err(what: &str) -> impl FnOnce(kube::Error) -> NodeError + '_ {
    move |e| NodeError::Kubernetes(format!("{what}: {e}"))
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A pod of this node found by [`Kubernetes::list_pods`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPod {
    /// Pod (and Secret) name.
    pub name: String,
    /// Exact job ID (annotation).
    pub job_id: String,
    /// Exact task ID (annotation).
    pub task_id: String,
    /// Attempt (label).
    pub attempt: i64,
    /// Worker index (annotation; absent: 0).
    pub worker: u32,
    /// The party's worker count (annotation; absent: 1).
    pub workers: u32,
}

/// The Kubernetes side of the runtime: a client, the settings, the pods being watched.
pub struct Kubernetes {
    client: kube::Client,
    namespace: String,
    settings: KubernetesConfig,
    party: String,
    /// (job, task) → the pod names of its workers (by index), for every party this node
    /// watches.
    pods: Mutex<HashMap<(String, String), Vec<String>>>,
}

impl Kubernetes {
    /// Connects with the configured kubeconfig, else in-cluster, else the usual kubeconfig
    /// search (`KUBECONFIG`, `~/.kube/config`). Makes no API call.
    pub async fn connect(settings: &KubernetesConfig, party: &str) -> Result<Self> {
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    NodeError::Config(vec![format!(
                        "kubernetes.kubeconfig: cannot read {}: {e}",
                        path.display()
                    )])
                })?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| {
                    NodeError::Config(vec![format!(
                        "kubernetes.kubeconfig: {}: {e}",
                        path.display()
                    )])
                })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                NodeError::Config(vec![format!(
                    "kubernetes: not in a cluster and no kubeconfig found ({e}); set \
                     kubernetes.kubeconfig"
                )])
            })?,
        };
        Self::with_config(config, settings, party)
    }

    /// A runtime on an explicit client configuration (tests point it at an imitation API).
    pub fn with_config(
        config: kube::Config,
        settings: &KubernetesConfig,
        party: &str,
    ) -> Result<Self> {
        let namespace = if settings.namespace.is_empty() {
            config.default_namespace.clone()
        } else {
            settings.namespace.clone()
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| NodeError::Config(vec![format!("kubernetes: client: {e}")]))?;
        Ok(Self {
            client,
            namespace,
            settings: settings.clone(),
            party: party.to_owned(),
            pods: Mutex::new(HashMap::new()),
        })
    }

    /// The namespace of the task pods.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The settings.
    pub fn settings(&self) -> &KubernetesConfig {
        &self.settings
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets_api(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates the Secret, then the pod; when the pod is refused the Secret is deleted again.
    /// Returns the pod name.
    pub async fn create(&self, l: &Launch) -> Result<String> {
        let name = l.name();
        let secret = secret_spec(l, &self.settings, &self.namespace)?;
        let pod = pod_spec(l, &self.settings, &self.namespace);
        let pp = PostParams::default();
        self.secrets_api()
            .create(&pp, &secret)
            .await
            .map_err(kube_err(&format!(
                "creating secret {}/{name}",
                self.namespace
            )))?;
        if let Err(e) = self.pods_api().create(&pp, &pod).await {
            self.delete_secret(&name).await;
            return Err(kube_err(&format!("creating pod {}/{name}", self.namespace))(e));
        }
        Ok(name)
    }

    async fn delete_secret(&self, name: &str) {
        match self
            .secrets_api()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(secret = name, "deleting the task secret: {e}"),
        }
    }

    /// Deletes a task pod and its Secret (missing ones are fine).
    pub async fn delete(&self, name: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(5),
            ..DeleteParams::default()
        };
        match self.pods_api().delete(name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(pod = name, "deleting the task pod: {e}"),
        }
        self.delete_secret(name).await;
    }

    /// The end of a pod's log (at most `max` bytes).
    pub async fn logs(&self, name: &str, max: u64) -> Result<String> {
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            limit_bytes: None,
            tail_lines: None,
            ..LogParams::default()
        };
        let text = self
            .pods_api()
            .logs(name, &lp)
            .await
            .map_err(kube_err(&format!("log of pod {}/{name}", self.namespace)))?;
        let start = text.len().saturating_sub(max as usize);
        let start = (start..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        Ok(text[start..].to_owned())
    }

    /// The logs of a party's worker pods, at most `max` bytes in all: one pod's log as it is;
    /// with several workers each worker's log (its last `max / N` bytes) under a header line
    /// `--- worker <i> of <N> (pod <name>)`, so a failing worker's log is not hidden behind
    /// worker 0's. A pod whose log cannot be read gets the error under its header.
    pub async fn party_logs(&self, names: &[String], max: u64) -> Result<String> {
        let n = names.len();
        if n <= 1 {
            let Some(name) = names.first() else {
                return Ok(String::new());
            };
            return self.logs(name, max).await;
        }
        let each = max / n as u64;
        let mut out = String::new();
        for (i, name) in names.iter().enumerate() {
            out.push_str(&format!("--- worker {i} of {n} (pod {name})\n"));
            match self.logs(name, each).await {
                Ok(log) => out.push_str(&log),
                Err(e) => out.push_str(&format!("(no log: {e})")),
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// The pods of this party (label selector), for re-attaching.
    pub async fn list_pods(&self) -> Result<Vec<FoundPod>> {
        let lp = ListParams::default().labels(&format!(
            "{}=venn,{}={}",
            labels::MANAGED_BY,
            labels::PARTY,
            label_value(&self.party)
        ));
        let list = self
            .pods_api()
            .list(&lp)
            .await
            .map_err(kube_err(&format!("listing pods in {}", self.namespace)))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| {
                let ann = p.metadata.annotations.as_ref()?;
                Some(FoundPod {
                    name: p.metadata.name.clone()?,
                    job_id: ann.get(labels::JOB_ID)?.clone(),
                    task_id: ann.get(labels::TASK_ID)?.clone(),
                    attempt: p
                        .metadata
                        .labels
                        .as_ref()?
                        .get(labels::ATTEMPT)?
                        .parse()
                        .ok()?,
                    worker: ann
                        .get(labels::WORKER)
                        .map_or(Some(0), |w| w.parse().ok())?,
                    workers: ann
                        .get(labels::WORKERS)
                        .map_or(Some(1), |w| w.parse().ok())?,
                })
            })
            .collect())
    }

    /// Follows pod `name` until it is final; `on_change` sees every non-final state change.
    pub async fn follow(&self, name: &str, mut on_change: impl FnMut(&PodState)) -> PodState {
        let api = self.pods_api();
        let grace = self.settings.image_pull_grace_seconds;
        let mut last_state: Option<PodState> = None;
        let mut seen = |s: PodState, last: &mut Option<PodState>| -> Option<PodState> {
            if s.is_final() {
                return Some(s);
            }
            if last.as_ref() != Some(&s) {
                on_change(&s);
                *last = Some(s);
            }
            None
        };
        loop {
            let pod = match api.get_opt(name).await {
                Ok(Some(p)) => p,
                Ok(None) => return PodState::Gone,
                Err(e) => {
                    tracing::warn!(pod = name, "reading the task pod: {e}; retrying");
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            };
            if let Some(done) = seen(pod_state(&pod, now_unix(), grace), &mut last_state) {
                return done;
            }
            let version = pod.metadata.resource_version.clone().unwrap_or_default();
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290);
            let stream = match api.watch(&wp, &version).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(pod = name, "watching the task pod: {e}; retrying");
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            let mut current = pod;
            let opened = std::time::Instant::now();
            loop {
                match tokio::time::timeout(RECHECK, stream.next()).await {
                    // No event: the clock may have moved a pull problem past its grace.
                    Err(_) => {}
                    Ok(Some(Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)))) => current = p,
                    Ok(Some(Ok(WatchEvent::Deleted(_)))) => return PodState::Gone,
                    Ok(Some(Ok(WatchEvent::Bookmark(_)))) => continue,
                    // 410 Gone (too old a version), a server timeout, a dropped connection:
                    // start over from a fresh get.
                    Ok(Some(Ok(WatchEvent::Error(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                }
                if let Some(done) = seen(pod_state(&current, now_unix(), grace), &mut last_state) {
                    return done;
                }
            }
            // A watch that the server keeps closing at once must not become a busy loop.
            if opened.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Follows the worker pods `names` (index = worker) of one party until [`party_state`]
    /// is final; `on_change` sees every non-final change of the party's state. Returns the
    /// final party state and the last state of each pod. Pods still running then are left
    /// alone (the caller deletes them).
    pub async fn follow_party(
        &self,
        names: &[String],
        mut on_change: impl FnMut(&PartyState),
    ) -> (PartyState, Vec<PodState>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, PodState)>();
        let mut follows: futures_util::stream::FuturesUnordered<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let tx = tx.clone();
                async move {
                    let end = self
                        .follow(name, |s| {
                            let _ = tx.send((i, s.clone()));
                        })
                        .await;
                    (i, end)
                }
            })
            .collect();
        drop(tx);
        let mut pods = vec![PodState::Pending("created".into()); names.len()];
        // changes are reported once every pod has been seen (not the placeholders above)
        let mut seen = vec![false; names.len()];
        let mut last: Option<PartyState> = None;
        loop {
            tokio::select! {
                Some((i, s)) = rx.recv() => {
                    // a change queued before the pod's end must not undo the end
                    if !pods[i].is_final() {
                        pods[i] = s;
                    }
                    seen[i] = true;
                }
                Some((i, end)) = follows.next() => {
                    pods[i] = end;
                    seen[i] = true;
                }
                // every pod is final, so worker 0 is: the state below is final
                else => return (party_state(&pods), pods),
            }
            let party = party_state(&pods);
            if party.is_final() {
                return (party, pods);
            }
            if seen.iter().all(|s| *s) && last.as_ref() != Some(&party) {
                on_change(&party);
                last = Some(party);
            }
        }
    }

    fn track(&self, job: &str, task: &str, names: &[String]) {
        if let Ok(mut m) = self.pods.lock() {
            m.insert((job.to_owned(), task.to_owned()), names.to_vec());
        }
    }

    fn untrack(&self, job: &str, task: &str) -> Option<Vec<String>> {
        self.pods
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(job.to_owned(), task.to_owned())))
    }

    /// Stops tracking (job, task) when it still tracks `names` (not a newer attempt's pods);
    /// true when it did.
    fn untrack_own(&self, job: &str, task: &str, names: &[String]) -> bool {
        let Ok(mut m) = self.pods.lock() else {
            return false;
        };
        let key = (job.to_owned(), task.to_owned());
        if m.get(&key).is_some_and(|v| v.as_slice() == names) {
            m.remove(&key);
            return true;
        }
        false
    }

    /// The pods (by worker index) of a task this node watches.
    pub fn pods_of(&self, job: &str, task: &str) -> Option<Vec<String>> {
        self.pods
            .lock()
            .ok()
            .and_then(|m| m.get(&(job.to_owned(), task.to_owned())).cloned())
    }

    /// (job, task) of every pod this node watches.
    pub fn tracked(&self) -> Vec<(String, String)> {
        self.pods
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Appends each pod's log to `task.log` (temp file + rename; with several workers under a
/// header naming the worker), then deletes the pods and their Secrets. `ended` holds the
/// pods' last states where known: a pod known to be gone has no log to keep.
async fn clean_up(
    state: &SharedState,
    k: &Kubernetes,
    job: &str,
    task: &str,
    names: &[String],
    ended: &[PodState],
) {
    let n = names.len();
    let path = super::task_dir(state, job, task).join("task.log");
    let mut kept = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if ended.get(i) == Some(&PodState::Gone) {
            continue;
        }
        match k.logs(name, LOG_KEEP).await {
            Ok(log) if !log.is_empty() => {
                let header = if n > 1 {
                    format!("--- worker {i} of {n}, pod {name}\n")
                } else {
                    format!("--- pod {name}\n")
                };
                kept.extend_from_slice(header.as_bytes());
                kept.extend_from_slice(log.as_bytes());
                if !log.ends_with('\n') {
                    kept.push(b'\n');
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                job,
                task,
                worker = i,
                "reading the pod log before clean-up: {e}"
            ),
        }
    }
    if !kept.is_empty() {
        let mut all = std::fs::read(&path).unwrap_or_default();
        all.extend_from_slice(&kept);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = crate::atomic::write_file(&path, &all, false) {
            tracing::warn!(job, task, "keeping the pod log: {e}");
        }
    }
    for name in names {
        k.delete(name).await;
    }
}

/// The error a worker ≥ 1 left in its result under the party's `parts/`, if any.
fn worker_error(state: &SharedState, job: &str, task: &str, worker: u32) -> Option<String> {
    let parts = super::task_dir(state, job, task).join("parts");
    let bytes = std::fs::read(super::worker_result(&parts, worker)).ok()?;
    let r: super::TaskResult = serde_json::from_slice(&bytes).ok()?;
    (!r.ok && !r.error.is_empty()).then_some(r.error)
}

/// Watches a party's worker pods until the party ends ([`party_state`]), then records the
/// result (worker 0's `result.json`, or the failed worker's reason) and cleans up every pod
/// of the party, the ones still running included.
fn spawn_follow(state: &SharedState, job: String, task: String, attempt: i64, names: Vec<String>) {
    let st = state.clone();
    tokio::spawn(async move {
        let Some(k) = st.runtime.kubernetes() else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let reporter = {
            let st = st.clone();
            let (job, task) = (job.clone(), task.clone());
            tokio::spawn(async move {
                while let Some(step) = rx.recv().await {
                    if let Err(e) = super::progress(&st, &job, &task, 0.0, &step).await {
                        tracing::warn!(job, task, "recording the pod state: {e}");
                    }
                }
            })
        };
        let (end, pods) = k
            .follow_party(&names, |s| {
                if let PartyState::Pending(why) = s {
                    let _ = tx.send(format!("pod pending: {why}"));
                }
            })
            .await;
        drop(tx);
        let _ = reporter.await;
        tracing::info!(job, task, pods = ?names, state = ?end, "task pods ended");
        // Not ours any more when `stop` took them (it cleans up) or a newer attempt runs.
        let ours = k.untrack_own(&job, &task, &names);
        match &end {
            PartyState::Failed { worker, why } => {
                let why = match worker_error(&st, &job, &task, *worker) {
                    Some(e) => format!("worker {worker} of {}: {e}", names.len()),
                    None => why.clone(),
                };
                super::fail_party(&st, &job, &task, attempt, &why).await;
            }
            PartyState::Ended(exit) => super::finish(&st, &job, &task, attempt, exit).await,
            other => {
                let exit = format!("the task pods ended ({other:?})");
                super::finish(&st, &job, &task, attempt, &exit).await;
            }
        }
        if ours {
            clean_up(&st, k, &job, &task, &names, &pods).await;
        }
    });
}

/// Starts this node's party of task `t` as pods, one per worker (the kubernetes branch of
/// `start_task`; `config` is worker 0's).
pub(super) async fn start(
    state: &SharedState,
    k: &Kubernetes,
    m: &Manifest,
    t: &TaskSpec,
    row: &TaskPartyRow,
    mut config: TaskConfig,
) -> Result<()> {
    let me = state.domain_id().to_owned();
    config.gateway = k.settings.task_address.clone();
    let job_resources = t
        .parties
        .iter()
        .find(|p| p.domain_id == me)
        .and_then(|p| p.resources.as_ref());
    let resources = party_resources(job_resources, &k.settings.default_resources);
    let dir = super::task_dir(state, &m.job_id, &t.task_id);
    let launches: Vec<Launch> = (0..config.workers.max(1))
        .map(|w| Launch {
            party: me.clone(),
            resources: resources.clone(),
            config: super::worker_config(&config, &dir, w),
        })
        .collect();
    let step = if launches.len() > 1 {
        format!("creating {} task pods", launches.len())
    } else {
        "creating the task pod".into()
    };
    let r = super::mark_starting(state, m, t, row, &config.secret, step).await?;
    let mut names = Vec::with_capacity(launches.len());
    for l in &launches {
        match k.create(l).await {
            Ok(name) => names.push(name),
            Err(e) => {
                // no party with some of its workers: the created ones go again
                for name in &names {
                    k.delete(name).await;
                }
                return Err(e);
            }
        }
    }
    k.track(&m.job_id, &t.task_id, &names);
    report_party(state, &r).await?;
    tracing::info!(job = %m.job_id, task = %t.task_id, pods = ?names, namespace = %k.namespace, "task pods created");
    spawn_follow(state, m.job_id.clone(), t.task_id.clone(), r.attempt, names);
    Ok(())
}

/// Stops a task's pods, every worker's (the party is recorded Failed by the caller already).
pub(super) async fn stop(state: &SharedState, k: &Kubernetes, job: &str, task: &str, attempt: i64) {
    let names = match k.untrack(job, task) {
        Some(names) => names,
        None => {
            let workers = super::party_workers(state, job, task).await;
            (0..workers)
                .map(|w| pod_name(state.domain_id(), job, task, attempt, w))
                .collect()
        }
    };
    clean_up(state, k, job, task, &names, &[]).await;
}

/// After a node start: watches the pods of Running parties again (all of a party's workers);
/// fails parties with a worker pod gone and cleans up pods whose party is no longer Running
/// (or was just failed).
pub(super) async fn reattach(state: &SharedState, k: &Kubernetes) -> Result<()> {
    let mut groups = group_pods(k.list_pods().await?);
    let running = state.store.running_parties(state.domain_id()).await?;
    for row in &running {
        let key = (row.job_id.clone(), row.task_id.clone(), row.attempt);
        let group = groups.remove(&key).unwrap_or_default();
        let workers = super::party_workers(state, &row.job_id, &row.task_id).await;
        match party_pods(&group, workers) {
            Ok(names) => {
                tracing::info!(job = %row.job_id, task = %row.task_id, pods = ?names, "re-attached to the task pods");
                k.track(&row.job_id, &row.task_id, &names);
                spawn_follow(
                    state,
                    row.job_id.clone(),
                    row.task_id.clone(),
                    row.attempt,
                    names,
                );
            }
            Err(why) => {
                let mut r = row.clone();
                r.phase = "Failed".into();
                r.reason = format!(
                    "the node restarted and {why}; run venn job restart {}",
                    row.job_id
                );
                r.end_time = now_unix();
                // one party that cannot be reported must not leave the others unwatched
                if let Err(e) = report_party(state, &r).await {
                    tracing::error!(job = %row.job_id, task = %row.task_id, "recording the failure: {e}");
                }
                // the workers that are left would wait for the missing one in vain
                groups.insert(key, group);
            }
        }
    }
    for ((job, task, _), group) in groups {
        let names: Vec<String> = group.into_iter().map(|p| p.name).collect();
        tracing::info!(job, task, pods = ?names, "cleaning up task pods of a party that no longer runs");
        clean_up(state, k, &job, &task, &names, &[]).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! Jobs: Kuscia's job model between peer nodes, with signed manifests and synced state.
//!
//! How a job flows (DESIGN.md, "How a PSI job flows"):
//! 1. [`create`] at the initiator: the request becomes a [`Manifest`] ([`manifest`]); the
//!    initiator checks routes, its own data, and that every other party's input is granted to
//!    it (expiry and use count; the use is recorded); signs the manifest; stores it with state
//!    Initialized; and queues a `create` message to every party.
//! 2. [`receive`] at a party (through the gateway, mutual TLS): verifies the initiator's
//!    signature with the certificate of the connection, re-checks the manifest, its own data
//!    and its own grant to the initiator (and records the use), then applies its approval
//!    policy: `auto` countersigns at once (`accept`), `manual` answers `await` until
//!    [`approve`] runs there. A refusal is an HTTP 400 with the reason, which the initiator
//!    shows as the job's reason.
//! 3. Every node runs [`run`]: a loop that delivers queued messages (in order per partner,
//!    retried until acknowledged) and re-evaluates each live job with [`phase::evaluate`] on its
//!    own copy of the state, starting its own party of each ready task through
//!    [`crate::runtime`].
//! 4. Each party's task state (phase, progress, report) is sent to every other party as a
//!    `status` message whenever it changes; commands (`stop`, `cancel`, `suspend`, `restart`,
//!    `delete`) are messages too.
//!
//! **Every control message is signed** by its sender (tag `venn-job-message-v1\n` + canonical
//! JSON) and stored with its signature at both ends (`job_messages`), as 9n-mpc's job stub
//! keeps them; the approvals table keeps each party's countersignature of the manifest hash.
//! The partner-facing RPC is one versioned path, `POST /venn/v1/job/message`: a partner can
//! only send messages about jobs it is a party of, and never gets a credential to this node's
//! API.

pub mod manifest;
pub mod phase;
pub mod store;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use manifest::{CreateJobRequest, Manifest, PartySpec, PsiOutput, PsiSpec, TaskSpec};
pub use phase::{JobPhase, ScheduleMode, TaskPhase};
use store::{ApprovalRow, JobRow, MessageRow, TaskPartyRow};

use crate::config::Approval;
use crate::error::{NodeError, Result};
use crate::grants::write_canonical;
use crate::state::{NodeState, SharedState};
use crate::store::GrantRow;
use crate::trust::{cert_to_pem, now_unix, verify_signature};

const MESSAGE_TAG: &[u8] = b"venn-job-message-v1\n";
/// Approval states (Kuscia's names).
const ACCEPTED: &str = "JobAccepted";
const REJECTED: &str = "JobRejected";
const AWAITING: &str = "JobAwaitingApproval";

/// What a control message says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// The initiator sends the job.
    Create {
        /// The manifest.
        manifest: Manifest,
        /// The initiator's signature over [`Manifest::signed_bytes`].
        signature: String,
    },
    /// A party accepts (its countersignature is the message signature).
    Accept {
        /// What it accepts.
        manifest_sha256: String,
        /// Free text.
        reason: String,
    },
    /// A party rejects.
    Reject {
        /// What it rejects.
        manifest_sha256: String,
        /// Why.
        reason: String,
    },
    /// A party holds the job for manual approval.
    Await {
        /// What it holds.
        manifest_sha256: String,
    },
    /// A party's task state.
    Status {
        /// Task.
        task_id: String,
        /// Phase.
        phase: String,
        /// Why.
        reason: String,
        /// Per mille.
        progress: i64,
        /// What it is doing.
        step: String,
        /// The report.
        report: Value,
        /// Attempt.
        attempt: i64,
        /// Unix seconds.
        start_time: i64,
        /// Unix seconds.
        end_time: i64,
    },
    /// A command: stop, cancel, suspend, restart or delete.
    Command {
        /// Which.
        command: String,
        /// Why.
        reason: String,
    },
}

impl Body {
    fn kind(&self) -> &'static str {
        match self {
            Body::Create { .. } => "create",
            Body::Accept { .. } => "accept",
            Body::Reject { .. } => "reject",
            Body::Await { .. } => "await",
            Body::Status { .. } => "status",
            Body::Command { .. } => "command",
        }
    }
}

/// A control message between the nodes of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Protocol version (1).
    pub v: u32,
    /// The job.
    pub job_id: String,
    /// Sender domain.
    pub from: String,
    /// Receiver domain.
    pub to: String,
    /// Unix seconds at the sender.
    pub time: i64,
    /// What it says.
    pub body: Body,
}

impl JobMessage {
    /// The signed bytes.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = MESSAGE_TAG.to_vec();
        write_canonical(&serde_json::to_value(self).unwrap_or(Value::Null), &mut out);
        out
    }
}

/// A message with its sender's signature, as sent over the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedMessage {
    /// The message.
    pub message: JobMessage,
    /// Signature over [`JobMessage::signed_bytes`].
    pub signature: String,
}

fn invalid(m: impl Into<String>) -> NodeError {
    NodeError::Invalid(m.into())
}

fn grant_usable(g: &GrantRow, now: i64) -> std::result::Result<(), String> {
    if g.expiration_time > 0 && g.expiration_time <= now {
        return Err(format!("grant {} expired", g.domaindatagrant_id));
    }
    if g.use_count > 0 && g.used_count >= g.use_count {
        return Err(format!(
            "grant {} is used up ({} of {} uses)",
            g.domaindatagrant_id, g.used_count, g.use_count
        ));
    }
    Ok(())
}

/// Finds a usable grant of `data` from `grantor` to `grantee` and records one use.
async fn use_grant(
    state: &NodeState,
    grantor: &str,
    data: &str,
    grantee: &str,
    at: &str,
) -> Result<()> {
    let grants = state.store.grants_for(grantor, data, grantee).await?;
    if grants.is_empty() {
        return Err(invalid(format!(
            "{at}: {grantor}'s DomainData {data} is not granted to {grantee} \
             ({grantor} must run: venn grant create {data} --to {grantee})"
        )));
    }
    let now = now_unix();
    let mut why = Vec::new();
    for g in &grants {
        match grant_usable(g, now) {
            Ok(()) => return state.store.use_grant(&g.domaindatagrant_id).await,
            Err(e) => why.push(e),
        }
    }
    Err(invalid(format!(
        "{at}: {grantor}'s DomainData {data} cannot be used by {grantee}: {}",
        why.join("; ")
    )))
}

/// Where a party's own input lives, checked: owned, a file in its data source, with the keys.
pub(crate) async fn own_input(
    state: &NodeState,
    data: &str,
    keys: &[String],
    at: &str,
) -> Result<std::path::PathBuf> {
    let dd = state.store.domaindata(data).await?.ok_or_else(|| {
        invalid(format!(
            "{at}: {} has no DomainData {data}",
            state.domain_id()
        ))
    })?;
    if dd.domain_id != state.domain_id() {
        return Err(invalid(format!(
            "{at}: DomainData {data} belongs to {}, not to {}",
            dd.domain_id,
            state.domain_id()
        )));
    }
    let ds = state
        .store
        .datasource(&dd.datasource_id)
        .await?
        .ok_or_else(|| {
            invalid(format!(
                "{at}: data source {} of {data} is gone",
                dd.datasource_id
            ))
        })?;
    let file = crate::catalog::confined_existing(std::path::Path::new(&ds.path), &dd.relative_uri)
        .map_err(|e| invalid(format!("{at}: DomainData {data}: {e}")))?;
    let header = crate::catalog::csv_header(&file)?;
    let missing: Vec<&str> = keys
        .iter()
        .filter(|k| !header.contains(k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "{at}: DomainData {data} has no column {} (its columns: {})",
            missing.join(", "),
            header.join(", ")
        )));
    }
    Ok(file)
}

/// Checks this node's part of a manifest: its inputs, its grants to the initiator (recording
/// one use each), its outputs not taken.
async fn check_own_part(state: &NodeState, m: &Manifest) -> Result<()> {
    let me = state.domain_id();
    for (i, t) in m.tasks.iter().enumerate() {
        let at = format!("tasks[{i}] ({})", t.alias);
        let Some(input) = t.psi.inputs.get(me) else {
            continue;
        };
        own_input(
            state,
            &input.domaindata_id,
            &input.keys,
            &format!("{at}: input of {me}"),
        )
        .await?;
        if let Some(out) = t.psi.outputs.get(me)
            && state.store.domaindata(&out.domaindata_id).await?.is_some()
        {
            return Err(invalid(format!(
                "{at}: output of {me}: DomainData {} exists already; choose another output ID",
                out.domaindata_id
            )));
        }
    }
    if m.initiator != me {
        for (i, t) in m.tasks.iter().enumerate() {
            if let Some(input) = t.psi.inputs.get(me) {
                use_grant(
                    state,
                    me,
                    &input.domaindata_id,
                    &m.initiator,
                    &format!("tasks[{i}] ({})", t.alias),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Builds the manifest from a request at the initiator (no side effects).
async fn build_manifest(state: &NodeState, req: CreateJobRequest) -> Result<Manifest> {
    let me = state.domain_id().to_owned();
    manifest::check_label("job_id", &req.job_id)?;
    if req.initiator != me {
        return Err(invalid(format!(
            "initiator: {:?} must be this node's domain {me:?} (a node initiates its own jobs)",
            req.initiator
        )));
    }
    let mode = match req.schedule_mode.as_deref() {
        None | Some("") | Some("Strict") => ScheduleMode::Strict,
        Some("BestEffort") => ScheduleMode::BestEffort,
        Some(other) => {
            return Err(invalid(format!(
                "schedule_mode: {other:?}; use Strict or BestEffort"
            )));
        }
    };
    if req.tasks.is_empty() {
        return Err(invalid("tasks: a job needs at least one task"));
    }
    // Owners of the DomainData the SecretFlow form names by ID: ours, or granted to us.
    let mut owners: HashMap<String, String> = HashMap::new();
    for t in &req.tasks {
        let v: Value = serde_json::from_str(&t.task_input_config).unwrap_or(Value::Null);
        let ids = v
            .get("sf_input_ids")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for id in ids.iter().filter_map(Value::as_str) {
            if let Some(dd) = state.store.domaindata(id).await?
                && dd.domain_id == me
            {
                owners.insert(id.to_owned(), me.clone());
                continue;
            }
            if let Some(g) = state.store.grants_received(id, &me).await?.first() {
                owners.insert(id.to_owned(), g.domain_id.clone());
            }
        }
    }
    let mut tasks = Vec::new();
    for (i, t) in req.tasks.into_iter().enumerate() {
        let at = format!("tasks[{i}]");
        let alias = if t.alias.is_empty() {
            format!("task-{i}")
        } else {
            t.alias.clone()
        };
        let task_id = if t.task_id.is_empty() {
            format!("{}-{alias}", req.job_id)
        } else {
            t.task_id.clone()
        };
        let sf = t.task_input_config.contains("sf_node_eval_param")
            || t.task_input_config.contains("sf_input_ids");
        let app = t.app_image.as_str();
        if !(app == "psi" || app == "venn-psi" || app.is_empty() || sf) {
            return Err(invalid(format!(
                "{at}.app_image: {app:?} is not an app this node runs; use psi \
                 (or Kuscia's secretflow-image with a SecretFlow PSI config)"
            )));
        }
        let parties: Vec<String> = t.parties.iter().map(|p| p.domain_id.clone()).collect();
        for (j, p) in parties.iter().enumerate() {
            if p != &me && state.peers.get(p).is_none() {
                return Err(invalid(format!(
                    "{at}.parties[{j}].domain_id: {p:?} is not a partner of {me} \
                     (onboard it first: venn peer invite {p})"
                )));
            }
        }
        let job_id = req.job_id.clone();
        let alias2 = alias.clone();
        let default_output = move |p: &str| PsiOutput {
            domaindata_id: format!("{job_id}-{alias2}-{p}"),
            relative_uri: format!("{job_id}-{alias2}.csv"),
        };
        let owner_of = |id: &str| owners.get(id).cloned();
        let psi = manifest::parse_psi(
            &at,
            &t.task_input_config,
            &parties,
            &default_output,
            &owner_of,
        )?;
        tasks.push(TaskSpec {
            task_id,
            alias,
            app_image: if t.app_image.is_empty() {
                "psi".into()
            } else {
                t.app_image
            },
            parties: t
                .parties
                .into_iter()
                .map(|p| PartySpec {
                    domain_id: p.domain_id,
                    role: p.role,
                    resources: p.resources.filter(|r| r.is_object()),
                })
                .collect(),
            dependencies: t.dependencies,
            task_input_config: t.task_input_config,
            priority: t.priority,
            tolerable: t.tolerable,
            psi,
        });
    }
    let m = Manifest {
        version: 1,
        job_id: req.job_id,
        initiator: me,
        max_parallelism: req.max_parallelism.unwrap_or(1),
        schedule_mode: mode,
        created_at: now_unix(),
        tasks,
        custom_fields: req.custom_fields,
    };
    m.check()?;
    Ok(m)
}

/// Creates a job at the initiator (`POST /api/v1/job/create`). Returns the job ID.
pub async fn create(state: &SharedState, req: CreateJobRequest) -> Result<String> {
    let m = build_manifest(state, req).await?;
    if state.store.job(&m.job_id).await?.is_some() {
        return Err(NodeError::Conflict(format!(
            "job_id: {} already exists",
            m.job_id
        )));
    }
    let me = state.domain_id().to_owned();
    // Routes Ready, and the other parties' inputs granted to us.
    for (i, t) in m.tasks.iter().enumerate() {
        for p in t.parties.iter().filter(|p| p.domain_id != me) {
            let route = format!("{me}-{}", p.domain_id);
            match state.store.route(&route).await? {
                Some(r) if r.ready == 1 => {}
                Some(r) => {
                    return Err(invalid(format!(
                        "tasks[{i}].parties: route {route} is not Ready ({}: {}); see venn route list",
                        r.reason, r.message
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "tasks[{i}].parties: no route {route}; onboard {} first",
                        p.domain_id
                    )));
                }
            }
        }
    }
    // Check everything before recording any grant use.
    for (i, t) in m.tasks.iter().enumerate() {
        for (party, input) in &t.psi.inputs {
            if party == &me {
                continue;
            }
            let grants = state
                .store
                .grants_for(party, &input.domaindata_id, &me)
                .await?;
            let now = now_unix();
            if !grants.iter().any(|g| grant_usable(g, now).is_ok()) {
                let why = if grants.is_empty() {
                    format!(
                        "not granted to {me} ({party} must run: venn grant create {} --to {me})",
                        input.domaindata_id
                    )
                } else {
                    grants
                        .iter()
                        .filter_map(|g| grant_usable(g, now).err())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(invalid(format!(
                    "tasks[{i}] ({}): input of {party}: DomainData {}: {why}",
                    t.alias, input.domaindata_id
                )));
            }
        }
    }
    check_own_part(state, &m).await?;
    for (i, t) in m.tasks.iter().enumerate() {
        for (party, input) in &t.psi.inputs {
            if party != &me {
                use_grant(
                    state,
                    party,
                    &input.domaindata_id,
                    &me,
                    &format!("tasks[{i}]"),
                )
                .await?;
            }
        }
    }
    let signature = state.identity.sign(&m.signed_bytes())?;
    state
        .store
        .insert_job(&JobRow {
            job_id: m.job_id.clone(),
            initiator: me.clone(),
            manifest: m.to_json(),
            manifest_sha256: m.sha256(),
            phase: JobPhase::Initialized.as_str().into(),
            reason: String::new(),
            control: String::new(),
            created_at: 0,
            start_time: 0,
            end_time: 0,
            updated_at: 0,
        })
        .await?;
    state
        .store
        .upsert_approval(&ApprovalRow {
            job_id: m.job_id.clone(),
            domain_id: me.clone(),
            state: ACCEPTED.into(),
            reason: "initiator".into(),
            signature: signature.clone(),
            signer_cert: cert_to_pem(state.identity.leaf()),
            updated_at: 0,
        })
        .await?;
    add_party_rows(state, &m).await?;
    for p in m.parties().into_iter().filter(|p| p != &me) {
        send(
            state,
            &m.job_id,
            &p,
            Body::Create {
                manifest: m.clone(),
                signature: signature.clone(),
            },
        )
        .await?;
    }
    tracing::info!(job = %m.job_id, "job created");
    // Deliver at once so that a refusal shows in the first query.
    deliver_all(state).await;
    state.jobs_wake.notify_one();
    Ok(m.job_id)
}

async fn add_party_rows(state: &NodeState, m: &Manifest) -> Result<()> {
    for t in &m.tasks {
        for p in &t.parties {
            state
                .store
                .ensure_task_party(&m.job_id, &t.task_id, &p.domain_id)
                .await?;
        }
    }
    Ok(())
}

/// Signs a message to `to` and queues it for delivery.
async fn send(state: &NodeState, job: &str, to: &str, body: Body) -> Result<()> {
    let message = JobMessage {
        v: 1,
        job_id: job.to_owned(),
        from: state.domain_id().to_owned(),
        to: to.to_owned(),
        time: now_unix(),
        body,
    };
    let signature = state.identity.sign(&message.signed_bytes())?;
    let kind = message.body.kind();
    state
        .store
        .insert_message(&MessageRow {
            id: 0,
            job_id: job.to_owned(),
            from_domain: message.from.clone(),
            to_domain: to.to_owned(),
            kind: kind.into(),
            body: serde_json::to_string(&message).unwrap_or_default(),
            signature,
            delivered: 0,
            attempts: 0,
            last_error: String::new(),
            created_at: 0,
        })
        .await?;
    Ok(())
}

/// Sends a message to every other party of the job.
async fn broadcast(state: &NodeState, m: &Manifest, body: Body) -> Result<()> {
    let me = state.domain_id();
    for p in m.parties().into_iter().filter(|p| p != me) {
        send(state, &m.job_id, &p, body.clone()).await?;
    }
    Ok(())
}

/// Delivers queued messages, in order per partner; a partner that cannot be reached keeps its
/// queue for the next round. A refused `create` fails the job with the partner's reason.
pub async fn deliver_all(state: &NodeState) {
    let _one_at_a_time = state.deliver.lock().await;
    let Ok(rows) = state.store.undelivered_messages().await else {
        return;
    };
    let mut blocked: Vec<String> = Vec::new();
    for row in rows {
        if blocked.contains(&row.to_domain) {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&row.body) else {
            let _ = state
                .store
                .message_attempt(row.id, false, "unreadable")
                .await;
            continue;
        };
        let body = json!({ "message": message, "signature": row.signature });
        match crate::gateway::client::call(state, &row.to_domain, "/venn/v1/job/message", &body)
            .await
        {
            Ok((200, _)) => {
                let _ = state.store.message_attempt(row.id, true, "").await;
            }
            Ok((status, answer)) if (400..500).contains(&status) => {
                let reason = answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("refused")
                    .to_owned();
                tracing::warn!(job = %row.job_id, to = %row.to_domain, kind = %row.kind, "message refused: {reason}");
                // Refused for good: mark it so (delivered = 3) and tell the user.
                let _ = state.store.message_refused(row.id, &reason).await;
                if row.kind == "create" {
                    let _ = state
                        .store
                        .set_job_control(
                            &row.job_id,
                            "Refused",
                            &format!("{} refused the job: {reason}", row.to_domain),
                        )
                        .await;
                }
            }
            Ok((status, answer)) => {
                let _ = state
                    .store
                    .message_attempt(row.id, false, &format!("HTTP {status}: {answer}"))
                    .await;
                blocked.push(row.to_domain.clone());
            }
            Err(step) => {
                let _ = state
                    .store
                    .message_attempt(row.id, false, &step.to_string())
                    .await;
                blocked.push(row.to_domain.clone());
            }
        }
    }
}

/// Handles a message from partner `caller`, authenticated by its TLS certificate `leaf`.
pub async fn receive(
    state: &SharedState,
    caller: &str,
    leaf: &[u8],
    signed: SignedMessage,
) -> Result<()> {
    let msg = &signed.message;
    if msg.v != 1 {
        return Err(invalid(format!(
            "message version {} is not supported (1)",
            msg.v
        )));
    }
    if msg.from != caller {
        return Err(invalid(format!(
            "from: {} is not the calling domain {caller}",
            msg.from
        )));
    }
    if msg.to != state.domain_id() {
        return Err(invalid(format!("to: {} is not this node", msg.to)));
    }
    verify_signature(leaf, &msg.signed_bytes(), &signed.signature)?;
    let existing = state.store.job(&msg.job_id).await?;
    match &msg.body {
        Body::Create {
            manifest,
            signature,
        } => {
            if let Some(j) = &existing {
                if j.manifest_sha256 == manifest.sha256() {
                    return Ok(()); // re-delivery
                }
                return Err(NodeError::Conflict(format!(
                    "job_id: {} exists here already with another manifest",
                    msg.job_id
                )));
            }
            receive_create(state, caller, leaf, manifest, signature).await?;
        }
        _ => {
            let j = existing.ok_or_else(|| NodeError::NotFound(format!("job {}", msg.job_id)))?;
            let m: Manifest = serde_json::from_str(&j.manifest)
                .map_err(|e| NodeError::Invalid(format!("stored manifest: {e}")))?;
            if !m.parties().contains(caller) {
                return Err(NodeError::Unauthorized);
            }
            apply(state, &j, &m, caller, leaf, &signed).await?;
        }
    }
    store_received(state, &signed).await?;
    state.jobs_wake.notify_one();
    Ok(())
}

async fn store_received(state: &NodeState, signed: &SignedMessage) -> Result<()> {
    let msg = &signed.message;
    state
        .store
        .insert_message(&MessageRow {
            id: 0,
            job_id: msg.job_id.clone(),
            from_domain: msg.from.clone(),
            to_domain: msg.to.clone(),
            kind: msg.body.kind().into(),
            body: serde_json::to_string(msg).unwrap_or_default(),
            signature: signed.signature.clone(),
            delivered: 1,
            attempts: 0,
            last_error: String::new(),
            created_at: 0,
        })
        .await?;
    Ok(())
}

async fn receive_create(
    state: &SharedState,
    caller: &str,
    leaf: &[u8],
    m: &Manifest,
    signature: &str,
) -> Result<()> {
    if m.initiator != caller {
        return Err(invalid(format!(
            "manifest.initiator: {} did not send this job ({caller} did)",
            m.initiator
        )));
    }
    verify_signature(leaf, &m.signed_bytes(), signature)
        .map_err(|_| invalid("manifest: the initiator's signature does not verify"))?;
    m.check()?;
    let me = state.domain_id().to_owned();
    if !m.parties().contains(&me) {
        return Err(invalid(format!(
            "manifest: {me} is not a party of this job"
        )));
    }
    check_own_part(state, m).await?;
    state
        .store
        .insert_job(&JobRow {
            job_id: m.job_id.clone(),
            initiator: m.initiator.clone(),
            manifest: m.to_json(),
            manifest_sha256: m.sha256(),
            phase: JobPhase::AwaitingApproval.as_str().into(),
            reason: String::new(),
            control: String::new(),
            created_at: 0,
            start_time: 0,
            end_time: 0,
            updated_at: 0,
        })
        .await?;
    state
        .store
        .upsert_approval(&ApprovalRow {
            job_id: m.job_id.clone(),
            domain_id: caller.to_owned(),
            state: ACCEPTED.into(),
            reason: "initiator".into(),
            signature: signature.to_owned(),
            signer_cert: cert_to_pem(leaf),
            updated_at: 0,
        })
        .await?;
    add_party_rows(state, m).await?;
    match state.config.jobs.approval {
        Approval::Auto => decide(state, m, true, "approved by policy auto").await?,
        Approval::Manual => {
            set_own_approval(state, m, AWAITING, "waiting for venn job approve", "").await?;
            broadcast(
                state,
                m,
                Body::Await {
                    manifest_sha256: m.sha256(),
                },
            )
            .await?;
        }
    }
    tracing::info!(job = %m.job_id, from = caller, "job received");
    Ok(())
}

async fn set_own_approval(
    state: &NodeState,
    m: &Manifest,
    st: &str,
    reason: &str,
    signature: &str,
) -> Result<()> {
    state
        .store
        .upsert_approval(&ApprovalRow {
            job_id: m.job_id.clone(),
            domain_id: state.domain_id().to_owned(),
            state: st.into(),
            reason: reason.into(),
            signature: signature.into(),
            signer_cert: cert_to_pem(state.identity.leaf()),
            updated_at: 0,
        })
        .await
}

/// Accepts or rejects: records our countersignature and tells every party.
async fn decide(state: &NodeState, m: &Manifest, accept: bool, reason: &str) -> Result<()> {
    let body = if accept {
        Body::Accept {
            manifest_sha256: m.sha256(),
            reason: reason.into(),
        }
    } else {
        Body::Reject {
            manifest_sha256: m.sha256(),
            reason: reason.into(),
        }
    };
    // Our countersignature: the signature of the same message as sent to the parties.
    let probe = JobMessage {
        v: 1,
        job_id: m.job_id.clone(),
        from: state.domain_id().to_owned(),
        to: String::new(),
        time: now_unix(),
        body: body.clone(),
    };
    let sig = state.identity.sign(&probe.signed_bytes())?;
    set_own_approval(
        state,
        m,
        if accept { ACCEPTED } else { REJECTED },
        reason,
        &sig,
    )
    .await?;
    broadcast(state, m, body).await
}

async fn apply(
    state: &SharedState,
    j: &JobRow,
    m: &Manifest,
    caller: &str,
    leaf: &[u8],
    signed: &SignedMessage,
) -> Result<()> {
    match &signed.message.body {
        Body::Create { .. } => Ok(()),
        Body::Accept {
            manifest_sha256,
            reason,
        }
        | Body::Reject {
            manifest_sha256,
            reason,
        } => {
            if manifest_sha256 != &j.manifest_sha256 {
                return Err(invalid("manifest_sha256: not the manifest of this job"));
            }
            let st = if matches!(signed.message.body, Body::Accept { .. }) {
                ACCEPTED
            } else {
                REJECTED
            };
            state
                .store
                .upsert_approval(&ApprovalRow {
                    job_id: j.job_id.clone(),
                    domain_id: caller.to_owned(),
                    state: st.into(),
                    reason: reason.clone(),
                    signature: signed.signature.clone(),
                    signer_cert: cert_to_pem(leaf),
                    updated_at: 0,
                })
                .await
        }
        Body::Await { manifest_sha256 } => {
            if manifest_sha256 != &j.manifest_sha256 {
                return Err(invalid("manifest_sha256: not the manifest of this job"));
            }
            state
                .store
                .upsert_approval(&ApprovalRow {
                    job_id: j.job_id.clone(),
                    domain_id: caller.to_owned(),
                    state: AWAITING.into(),
                    reason: format!("waiting for approval at {caller}"),
                    signature: signed.signature.clone(),
                    signer_cert: cert_to_pem(leaf),
                    updated_at: 0,
                })
                .await
        }
        Body::Status {
            task_id,
            phase,
            reason,
            progress,
            step,
            report,
            attempt,
            start_time,
            end_time,
        } => {
            let t = m
                .task(task_id)
                .ok_or_else(|| invalid(format!("task_id: {task_id} is not in job {}", j.job_id)))?;
            if !t.parties.iter().any(|p| p.domain_id == caller) {
                return Err(NodeError::Unauthorized);
            }
            if TaskPhase::parse(phase).is_none() {
                return Err(invalid(format!("phase: {phase:?} is not a task state")));
            }
            let Some(mut row) = state.store.task_party(&j.job_id, task_id, caller).await? else {
                return Err(NodeError::NotFound(format!("task {task_id}")));
            };
            if *attempt < row.attempt {
                return Ok(()); // stale
            }
            row.phase = phase.clone();
            row.reason = reason.clone();
            row.progress = (*progress).clamp(0, 1000);
            row.step = step.chars().take(64).collect();
            row.report = report.to_string();
            row.attempt = *attempt;
            row.start_time = *start_time;
            row.end_time = *end_time;
            state.store.update_task_party(&row).await?;
            if row.phase == TaskPhase::Failed.as_str() {
                refresh_failed_reason(state, &j.job_id).await;
            }
            Ok(())
        }
        Body::Command { command, reason } => {
            let text = format!("{command} by {caller}: {reason}");
            apply_command(state, j, m, command, &text).await
        }
    }
}

async fn apply_command(
    state: &SharedState,
    j: &JobRow,
    m: &Manifest,
    command: &str,
    text: &str,
) -> Result<()> {
    match command {
        "stop" | "cancel" | "suspend" => {
            let control = match command {
                "stop" => "Stop",
                "cancel" => "Cancel",
                _ => "Suspend",
            };
            if j.control == "Cancel" {
                return Ok(());
            }
            state.store.set_job_control(&j.job_id, control, text).await
        }
        "restart" => restart_local(state, j, m).await,
        "delete" => {
            crate::runtime::stop_job(state, &j.job_id, "the job was deleted").await;
            state.store.delete_job(&j.job_id).await?;
            let _ = std::fs::remove_dir_all(crate::runtime::job_dir(state, &j.job_id));
            Ok(())
        }
        other => Err(invalid(format!(
            "command: {other:?} is not stop, cancel, suspend, restart or delete"
        ))),
    }
}

/// Resets failed (and stopped) tasks to Pending and clears the command.
async fn restart_local(state: &NodeState, j: &JobRow, m: &Manifest) -> Result<()> {
    let phase = JobPhase::parse(&j.phase);
    if j.control == "Cancel"
        || matches!(phase, Some(JobPhase::Cancelled | JobPhase::ApprovalReject))
    {
        return Err(NodeError::Conflict(format!(
            "job {} is {}: it cannot restart",
            j.job_id, j.phase
        )));
    }
    let rows = state.store.task_parties(&j.job_id).await?;
    for t in &m.tasks {
        let parties: Vec<&TaskPartyRow> = rows.iter().filter(|r| r.task_id == t.task_id).collect();
        let done_ok = parties.iter().all(|r| r.phase == "Succeeded");
        if done_ok {
            continue;
        }
        for r in parties {
            let mut r = r.clone();
            r.phase = "Pending".into();
            r.reason = String::new();
            r.progress = 0;
            r.step = String::new();
            r.pid = 0;
            r.attempt += 1;
            r.start_time = 0;
            r.end_time = 0;
            state.store.update_task_party(&r).await?;
        }
    }
    state.store.set_job_control(&j.job_id, "", "").await?;
    state
        .store
        .set_job_phase(
            &j.job_id,
            JobPhase::Pending.as_str(),
            "restarted",
            false,
            false,
        )
        .await
}

/// `venn job approve|reject`: this node's decision on a job held for manual approval.
pub async fn approve(state: &SharedState, job: &str, accept: bool, reason: &str) -> Result<()> {
    let (j, m) = load(state, job).await?;
    let me = state.domain_id();
    let own = state
        .store
        .approvals(job)
        .await?
        .into_iter()
        .find(|a| a.domain_id == me);
    match own.as_ref().map(|a| a.state.as_str()) {
        Some(AWAITING) => {}
        Some(s) => {
            return Err(NodeError::Conflict(format!(
                "job {job}: {me} decided already ({s})"
            )));
        }
        None => {
            return Err(NodeError::Conflict(format!(
                "job {job}: nothing to approve at {me}"
            )));
        }
    }
    let reason = if reason.is_empty() {
        if accept { "approved" } else { "rejected" }
    } else {
        reason
    };
    decide(state, &m, accept, reason).await?;
    let _ = j;
    deliver_all(state).await;
    state.jobs_wake.notify_one();
    Ok(())
}

/// `stop`, `cancel`, `suspend`, `restart`, `delete` from this node's user.
pub async fn command(state: &SharedState, job: &str, command: &str, reason: &str) -> Result<()> {
    let (j, m) = load(state, job).await?;
    let me = state.domain_id().to_owned();
    let reason = if reason.is_empty() {
        "requested by the user"
    } else {
        reason
    };
    let text = format!("{command} by {me}: {reason}");
    let phase = JobPhase::parse(&j.phase).unwrap_or(JobPhase::Failed);
    match command {
        "stop" | "cancel" | "suspend" if phase.is_final() && command != "cancel" => {
            return Err(NodeError::Conflict(format!(
                "job {job} is {} already",
                j.phase
            )));
        }
        "restart" if j.control == "Refused" => {
            return Err(NodeError::Conflict(format!(
                "job {job}: {}; fix that and create a new job",
                j.reason
            )));
        }
        "restart" if !matches!(phase, JobPhase::Failed | JobPhase::Suspended) => {
            return Err(NodeError::Conflict(format!(
                "job {job} is {}: only Failed or Suspended jobs restart",
                j.phase
            )));
        }
        "delete" if !phase.is_final() => {
            return Err(NodeError::Conflict(format!(
                "job {job} is {}: stop or cancel it before deleting",
                j.phase
            )));
        }
        _ => {}
    }
    // Tell the others first (the message is queued; delete removes our rows after sending).
    broadcast(
        state,
        &m,
        Body::Command {
            command: command.into(),
            reason: reason.into(),
        },
    )
    .await?;
    deliver_all(state).await;
    apply_command(state, &j, &m, command, &text).await?;
    state.jobs_wake.notify_one();
    Ok(())
}

async fn load(state: &NodeState, job: &str) -> Result<(JobRow, Manifest)> {
    let j = state
        .store
        .job(job)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("job {job}")))?;
    let m: Manifest = serde_json::from_str(&j.manifest)
        .map_err(|e| NodeError::Invalid(format!("stored manifest: {e}")))?;
    Ok((j, m))
}

/// Records a change of this node's party of a task and tells the other parties.
pub async fn report_party(state: &NodeState, row: &TaskPartyRow) -> Result<()> {
    state.store.update_task_party(row).await?;
    if row.phase == TaskPhase::Failed.as_str() {
        refresh_failed_reason(state, &row.job_id).await;
    }
    let (_, m) = load(state, &row.job_id).await?;
    broadcast(
        state,
        &m,
        Body::Status {
            task_id: row.task_id.clone(),
            phase: row.phase.clone(),
            reason: row.reason.clone(),
            progress: row.progress,
            step: row.step.clone(),
            report: serde_json::from_str(&row.report).unwrap_or(Value::Null),
            attempt: row.attempt,
            start_time: row.start_time,
            end_time: row.end_time,
        },
    )
    .await?;
    state.jobs_wake.notify_one();
    Ok(())
}

/// The job's view for [`phase::evaluate`].
async fn view(
    state: &NodeState,
    j: &JobRow,
    m: &Manifest,
) -> Result<(phase::JobView, Vec<TaskPartyRow>)> {
    let approvals = state.store.approvals(&j.job_id).await?;
    let rows = state.store.task_parties(&j.job_id).await?;
    let me = state.domain_id();
    let mut not_received = Vec::new();
    if j.initiator == me {
        for msg in state.store.messages(&j.job_id).await? {
            if msg.kind == "create" && msg.from_domain == me && msg.delivered != 1 {
                not_received.push(msg.to_domain);
            }
        }
    }
    let mut awaiting = Vec::new();
    let mut rejected = None;
    for p in m.parties() {
        match approvals
            .iter()
            .find(|a| a.domain_id == p)
            .map(|a| a.state.as_str())
        {
            Some(ACCEPTED) => {}
            Some(REJECTED) => {
                let r = approvals
                    .iter()
                    .find(|a| a.domain_id == p)
                    .map(|a| a.reason.clone());
                rejected = Some((p.clone(), r.unwrap_or_default()));
            }
            _ => awaiting.push(p),
        }
    }
    let command = match j.control.as_str() {
        "Stop" => phase::Command::Stop(j.reason.clone()),
        "Cancel" => phase::Command::Cancel(j.reason.clone()),
        "Suspend" => phase::Command::Suspend(j.reason.clone()),
        "Refused" => phase::Command::Stop(j.reason.clone()),
        _ => phase::Command::None,
    };
    let tasks = m
        .tasks
        .iter()
        .map(|t| {
            let parties: Vec<(String, TaskPhase, String)> = rows
                .iter()
                .filter(|r| r.task_id == t.task_id)
                .map(|r| {
                    (
                        r.domain_id.clone(),
                        TaskPhase::parse(&r.phase).unwrap_or(TaskPhase::Pending),
                        r.reason.clone(),
                    )
                })
                .collect();
            let (phase, reason) = phase::aggregate(&parties);
            phase::TaskView {
                alias: t.alias.clone(),
                dependencies: t.dependencies.clone(),
                priority: t.priority,
                tolerable: t.tolerable,
                phase,
                reason,
            }
        })
        .collect();
    Ok((
        phase::JobView {
            max_parallelism: m.max_parallelism as usize,
            mode: m.schedule_mode,
            not_received,
            awaiting,
            rejected,
            command,
            tasks,
        },
        rows,
    ))
}

/// Recomputes the reason of a job that has already Failed, after a party's
/// late result: a party's own task can end after the job failed elsewhere
/// (the peer reported first that this party went away), and the job's
/// reason should then name the cause ([`phase::aggregate`]). The scheduler
/// does not revisit finished jobs, so both places that record a party's
/// failure (this node's own, [`report_party`]; a peer's, `apply`) call this.
/// Only the reason changes; nothing starts or stops.
async fn refresh_failed_reason(state: &NodeState, job_id: &str) {
    let res = async {
        let Some(j) = state.store.job(job_id).await? else {
            return Ok(());
        };
        if j.phase != JobPhase::Failed.as_str() {
            return Ok(());
        }
        let m: Manifest = serde_json::from_str(&j.manifest)
            .map_err(|e| NodeError::Invalid(format!("stored manifest: {e}")))?;
        let (v, _) = view(state, &j, &m).await?;
        let d = phase::evaluate(&v);
        if d.phase == JobPhase::Failed && d.reason != j.reason {
            // only if nothing changed the job meanwhile (a restart)
            state
                .store
                .replace_failed_reason(&j.job_id, &j.reason, &d.reason)
                .await?;
            tracing::info!(job = %j.job_id, reason = %d.reason, "job reason");
        }
        Ok::<(), NodeError>(())
    };
    if let Err(e) = res.await {
        tracing::error!(job = %job_id, "refreshing the job's reason: {e}");
    }
}

/// One scheduling pass over a job: new phase, own tasks started or stopped.
async fn reconcile(state: &SharedState, j: &JobRow) -> Result<()> {
    let m: Manifest = serde_json::from_str(&j.manifest)
        .map_err(|e| NodeError::Invalid(format!("stored manifest: {e}")))?;
    let (v, rows) = view(state, j, &m).await?;
    let d = phase::evaluate(&v);
    let me = state.domain_id().to_owned();
    if d.phase.as_str() != j.phase || d.reason != j.reason {
        let started = !matches!(
            d.phase,
            JobPhase::Initialized | JobPhase::AwaitingApproval | JobPhase::Pending
        );
        state
            .store
            .set_job_phase(
                &j.job_id,
                d.phase.as_str(),
                &d.reason,
                started,
                d.phase.is_final(),
            )
            .await?;
        tracing::info!(job = %j.job_id, phase = d.phase.as_str(), reason = %d.reason, "job state");
    }
    // Stop own parties that must not run on: the job is over, or their task failed elsewhere.
    for r in rows
        .iter()
        .filter(|r| r.domain_id == me && r.phase == "Running")
    {
        let task_failed = v
            .tasks
            .iter()
            .zip(&m.tasks)
            .any(|(tv, t)| t.task_id == r.task_id && tv.phase == TaskPhase::Failed);
        if d.phase.is_final() || task_failed {
            let why = if d.phase.is_final() {
                format!("stopped: the job is {} ({})", d.phase.as_str(), d.reason)
            } else {
                "stopped: another party of the task failed".to_owned()
            };
            crate::runtime::stop_task(state, &r.job_id, &r.task_id, &why).await;
        }
    }
    // tasks to start, and running tasks whose part here may not have started
    // yet (see `Decision::join`): only parts still Pending are started
    for i in d.start.into_iter().chain(d.join) {
        let t = &m.tasks[i];
        if !t.parties.iter().any(|p| p.domain_id == me) {
            continue;
        }
        if let Some(r) = rows
            .iter()
            .find(|r| r.task_id == t.task_id && r.domain_id == me)
            && r.phase == "Pending"
            && let Err(e) = crate::runtime::start_task(state, &m, t, r).await
        {
            let mut r = r.clone();
            r.phase = "Failed".into();
            r.reason = format!("could not start: {e}");
            r.end_time = now_unix();
            report_party(state, &r).await?;
        }
    }
    Ok(())
}

/// The jobs loop: delivers messages and reconciles live jobs until `shutdown`.
pub async fn run(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = crate::runtime::reattach(&state).await {
        tracing::error!("re-attaching tasks: {e}");
    }
    loop {
        deliver_all(&state).await;
        let running = crate::runtime::running_jobs(&state);
        match state.store.live_jobs(&running).await {
            Ok(jobs) => {
                for j in jobs {
                    if let Err(e) = reconcile(&state, &j).await {
                        tracing::error!(job = %j.job_id, "reconcile: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("jobs: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = state.jobs_wake.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A job in Kuscia's `QueryJobResponse.data` shape (plus venn's signatures and reports).
pub async fn query(state: &NodeState, job: &str) -> Result<Value> {
    let (j, m) = load(state, job).await?;
    let approvals = state.store.approvals(job).await?;
    let rows = state.store.task_parties(job).await?;
    let tasks: Vec<Value> = m
        .tasks
        .iter()
        .map(|t| {
            let parties: Vec<&TaskPartyRow> = rows.iter().filter(|r| r.task_id == t.task_id).collect();
            let agg: Vec<(String, TaskPhase, String)> = parties
                .iter()
                .map(|r| (r.domain_id.clone(), TaskPhase::parse(&r.phase).unwrap_or(TaskPhase::Pending), r.reason.clone()))
                .collect();
            let (phase, reason) = phase::aggregate(&agg);
            let progress = if parties.is_empty() {
                0.0
            } else {
                parties.iter().map(|r| r.progress as f64).sum::<f64>() / parties.len() as f64 / 1000.0
            };
            json!({
                "task_id": t.task_id,
                "alias": t.alias,
                "state": phase.as_str(),
                "err_msg": reason,
                "create_time": j.created_at,
                "start_time": parties.iter().map(|r| r.start_time).filter(|&s| s > 0).min().unwrap_or(0),
                "end_time": if phase.is_done() { parties.iter().map(|r| r.end_time).max().unwrap_or(0) } else { 0 },
                "progress": progress,
                "parties": parties.iter().map(|r| json!({
                    "domain_id": r.domain_id,
                    "state": r.phase,
                    "err_msg": r.reason,
                    "progress": r.progress as f64 / 1000.0,
                    "step": r.step,
                    "attempt": r.attempt,
                    "report": serde_json::from_str::<Value>(&r.report).unwrap_or(Value::Null),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let task_configs: Vec<Value> = m
        .tasks
        .iter()
        .map(|t| {
            json!({
                "app_image": t.app_image,
                "parties": t.parties.iter().map(|p| json!({"domain_id": p.domain_id, "role": p.role})).collect::<Vec<_>>(),
                "alias": t.alias,
                "task_id": t.task_id,
                "dependencies": t.dependencies,
                "task_input_config": t.task_input_config,
                "priority": t.priority,
                "tolerable": t.tolerable,
                "psi": t.psi,
            })
        })
        .collect();
    Ok(json!({
        "job_id": j.job_id,
        "initiator": j.initiator,
        "max_parallelism": m.max_parallelism,
        "schedule_mode": m.schedule_mode,
        "tasks": task_configs,
        "custom_fields": m.custom_fields,
        "status": {
            "state": j.phase,
            "err_msg": j.reason,
            "create_time": j.created_at,
            "start_time": j.start_time,
            "end_time": j.end_time,
            "tasks": tasks,
            "stage_status_list": Vec::<Value>::new(),
            "approve_status_list": approvals.iter().map(|a| json!({
                "domain_id": a.domain_id,
                "state": a.state,
                "reason": a.reason,
                "signature": a.signature,
            })).collect::<Vec<_>>(),
        },
        "manifest_sha256": j.manifest_sha256,
    }))
}

/// Every job (summaries for `venn job get`).
pub async fn list(state: &NodeState) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for j in state.store.jobs().await? {
        out.push(query(state, &j.job_id).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(dir: &std::path::Path, name: &str) -> crate::trust::Identity {
        crate::trust::Identity::load_or_create(
            dir,
            name,
            &crate::config::Endpoint::parse("https://127.0.0.1:1080").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn messages_are_signed_and_tampering_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let alice = identity(d.path(), "alice");
        let msg = JobMessage {
            v: 1,
            job_id: "job-1".into(),
            from: "alice".into(),
            to: "bob".into(),
            time: 1_700_000_000,
            body: Body::Status {
                task_id: "job-1-psi".into(),
                phase: "Running".into(),
                reason: String::new(),
                progress: 100,
                step: "intersecting".into(),
                report: json!({"z": 1, "a": [1, 2]}),
                attempt: 0,
                start_time: 1,
                end_time: 0,
            },
        };
        let sig = alice.sign(&msg.signed_bytes()).unwrap();
        verify_signature(alice.leaf(), &msg.signed_bytes(), &sig).unwrap();
        // What travels (JSON, any key order) verifies the same after parsing.
        let wire = serde_json::to_string(&SignedMessage {
            message: msg.clone(),
            signature: sig.clone(),
        })
        .unwrap();
        let back: SignedMessage = serde_json::from_str(&wire).unwrap();
        verify_signature(alice.leaf(), &back.message.signed_bytes(), &back.signature).unwrap();
        // Any change breaks it: the receiver, the phase, the sender.
        for tamper in [
            |m: &mut JobMessage| m.to = "carol".into(),
            |m: &mut JobMessage| {
                if let Body::Status { phase, .. } = &mut m.body {
                    *phase = "Succeeded".into();
                }
            },
            |m: &mut JobMessage| m.from = "mallory".into(),
        ] {
            let mut t = msg.clone();
            tamper(&mut t);
            assert!(verify_signature(alice.leaf(), &t.signed_bytes(), &sig).is_err());
        }
        // Another domain's key does not verify alice's signature.
        let d2 = tempfile::tempdir().unwrap();
        let bob = identity(d2.path(), "bob");
        assert!(verify_signature(bob.leaf(), &msg.signed_bytes(), &sig).is_err());
    }

    #[test]
    fn unknown_message_kinds_and_fields_are_refused() {
        let bad = r#"{"message":{"v":1,"job_id":"j","from":"a","to":"b","time":0,"body":{"kind":"launch_missiles"}},"signature":"x"}"#;
        assert!(crate::api::parse_json::<SignedMessage>(bad.as_bytes()).is_err());
        let extra = r#"{"message":{"v":1,"job_id":"j","from":"a","to":"b","time":0,"body":{"kind":"command","command":"stop","reason":"","x":1}},"signature":"x"}"#;
        assert!(crate::api::parse_json::<SignedMessage>(extra.as_bytes()).is_err());
    }

    #[test]
    fn grant_limits() {
        let mut g = GrantRow {
            domaindatagrant_id: "g".into(),
            domain_id: "bob".into(),
            domaindata_id: "t".into(),
            grant_domain: "alice".into(),
            description: "{}".into(),
            expiration_time: 0,
            use_count: 2,
            used_count: 1,
            limit_extra: "{}".into(),
            signature: String::new(),
            signer_cert: String::new(),
            delivered: 1,
            created_at: 0,
            updated_at: 0,
        };
        assert!(grant_usable(&g, 100).is_ok());
        g.used_count = 2;
        assert!(grant_usable(&g, 100).unwrap_err().contains("used up"));
        g.used_count = 0;
        g.expiration_time = 50;
        assert!(grant_usable(&g, 100).unwrap_err().contains("expired"));
        g.use_count = 0;
        g.expiration_time = 0;
        assert!(grant_usable(&g, 100).is_ok());
    }
}

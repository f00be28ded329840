//! Job manifests: Kuscia's `CreateJobRequest` in, a normalised, signed [`Manifest`] out.
//!
//! The initiator turns the request into a [`Manifest`]: every task gets a task ID, its parties,
//! and — for the built-in `psi` app — a [`PsiSpec`] parsed from `task_input_config`, in either
//! venn's own form or the SecretFlow form of Kuscia's example job (`sf_input_ids`,
//! `sf_node_eval_param`, ...). The parsed spec travels inside the manifest, so every party runs
//! exactly what the initiator signed, never its own re-reading of the config string.
//!
//! Signatures cover the tag `venn-job-manifest-v1\n` followed by the manifest's canonical JSON
//! (object keys sorted, no whitespace: the same rule as grants), made with the node's gateway
//! identity key and verified with the certificate that authenticated the mutual-TLS connection
//! it arrived on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::phase::ScheduleMode;
use crate::error::{NodeError, Result};
use crate::grants::write_canonical;

const MANIFEST_TAG: &[u8] = b"venn-job-manifest-v1\n";

/// Kuscia's `CreateJobRequest` (snake_case JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// Kuscia's request header (ignored).
    #[serde(default)]
    pub header: Option<Value>,
    /// RFC 1123 label.
    pub job_id: String,
    /// Must be this node's domain.
    pub initiator: String,
    /// Most tasks running at once (default 1).
    #[serde(default)]
    pub max_parallelism: Option<u32>,
    /// `Strict` (default) or `BestEffort` (Kuscia's CRD `scheduleMode`).
    #[serde(default)]
    pub schedule_mode: Option<String>,
    /// The tasks.
    pub tasks: Vec<TaskRequest>,
    /// Free labels.
    #[serde(default)]
    pub custom_fields: BTreeMap<String, String>,
}

/// One task of a [`CreateJobRequest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The app: `psi` (also Kuscia's `secretflow-image` with a SecretFlow PSI config).
    #[serde(default)]
    pub app_image: String,
    /// The parties.
    pub parties: Vec<PartyRequest>,
    /// Unique in the job; default `task-<n>`.
    #[serde(default)]
    pub alias: String,
    /// Default `<job_id>-<alias>`.
    #[serde(default)]
    pub task_id: String,
    /// Aliases this task waits for.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// The app's configuration, a JSON string.
    #[serde(default)]
    pub task_input_config: String,
    /// Higher starts first.
    #[serde(default)]
    pub priority: i32,
    /// Kuscia's timeouts (accepted, not used by the process runtime).
    #[serde(default)]
    pub schedule_config: Option<Value>,
    /// A tolerable task's failure does not fail the job.
    #[serde(default)]
    pub tolerable: bool,
}

/// One party of a [`TaskRequest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyRequest {
    /// The party's domain.
    pub domain_id: String,
    /// Free role name.
    #[serde(default)]
    pub role: String,
    /// Kuscia's resources (accepted; the process runtime does not limit).
    #[serde(default)]
    pub resources: Option<Value>,
    /// Kuscia's bandwidth limits (accepted, not enforced yet).
    #[serde(default)]
    pub bandwidth_limits: Option<Value>,
}

/// The signed job: what every party runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// Job ID.
    pub job_id: String,
    /// The initiator's domain.
    pub initiator: String,
    /// Most tasks running at once.
    pub max_parallelism: u32,
    /// Strict or BestEffort.
    pub schedule_mode: ScheduleMode,
    /// Unix seconds at the initiator.
    pub created_at: i64,
    /// Tasks in request order.
    pub tasks: Vec<TaskSpec>,
    /// Free labels.
    pub custom_fields: BTreeMap<String, String>,
}

/// One task in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Task ID.
    pub task_id: String,
    /// Alias.
    pub alias: String,
    /// App image as requested.
    pub app_image: String,
    /// Party domains, in request order.
    pub parties: Vec<PartySpec>,
    /// Aliases.
    pub dependencies: Vec<String>,
    /// The request's config string, kept for `query`.
    pub task_input_config: String,
    /// Priority.
    pub priority: i32,
    /// Tolerable.
    pub tolerable: bool,
    /// The PSI to run.
    pub psi: PsiSpec,
}

/// A party of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartySpec {
    /// Domain.
    pub domain_id: String,
    /// Role.
    pub role: String,
    /// Kuscia's party `resources` as requested (`cpu`, `memory`, `min_cpu`, `max_cpu`,
    /// `min_memory`, `max_memory`): the kubernetes runtime sizes the party's pod from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
}

/// The normalised configuration of the built-in `psi` app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiSpec {
    /// `ecdh` or `rr22`.
    pub protocol: String,
    /// Per party: its input DomainData and key columns.
    pub inputs: BTreeMap<String, PsiInput>,
    /// Parties that receive the result.
    pub receivers: Vec<String>,
    /// `inner`, `left`, `right`, `full` or `difference`.
    pub join_type: String,
    /// The left side of left/right joins.
    pub left_side: String,
    /// Per receiver: the output DomainData.
    pub outputs: BTreeMap<String, PsiOutput>,
    /// Workers per party (`workers: N`): N worker processes at each party, worker i of one
    /// party linked to worker i of the other, each on its bucket of the key space (see
    /// venn_psi::workers). One number for the task, signed with the manifest, so both parties
    /// run the same count. Left out of the signed bytes when 1, so manifests signed before
    /// the field existed verify unchanged.
    #[serde(default = "one_worker", skip_serializing_if = "is_one_worker")]
    pub workers: u32,
}

/// Most workers per party (the engine's limit, venn_psi::workers::MAX_WORKERS).
pub const MAX_WORKERS: u32 = 256;

fn one_worker() -> u32 {
    1
}

fn is_one_worker(n: &u32) -> bool {
    *n == 1
}

/// A party's PSI input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiInput {
    /// Its DomainData (owned by that party).
    pub domaindata_id: String,
    /// Key columns.
    pub keys: Vec<String>,
}

/// A receiver's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiOutput {
    /// The DomainData registered at the receiver.
    pub domaindata_id: String,
    /// Path in the receiver's data source (the one holding its input).
    pub relative_uri: String,
}

fn invalid(m: impl Into<String>) -> NodeError {
    NodeError::Invalid(m.into())
}

/// Checks an ID used in job and task names: an RFC 1123 label.
pub fn check_label(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field}: {id:?} must be an RFC 1123 label: 1-63 lower-case letters, digits and '-', \
             starting and ending with a letter or digit"
        )))
    }
}

impl Manifest {
    /// The bytes the initiator signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = MANIFEST_TAG.to_vec();
        write_canonical(&serde_json::to_value(self).unwrap_or(Value::Null), &mut out);
        out
    }

    /// Hex SHA-256 of [`Manifest::signed_bytes`]: what parties countersign.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.signed_bytes()))
    }

    /// The canonical JSON stored in the database.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        write_canonical(&serde_json::to_value(self).unwrap_or(Value::Null), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// All party domains, sorted, without repeats.
    pub fn parties(&self) -> BTreeSet<String> {
        self.tasks
            .iter()
            .flat_map(|t| t.parties.iter().map(|p| p.domain_id.clone()))
            .collect()
    }

    /// A task by ID.
    pub fn task(&self, task_id: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|t| t.task_id == task_id)
    }

    /// Structural checks every party repeats: IDs, unique aliases, known dependencies, no
    /// cycle, tolerable tasks not depended on, two distinct parties per PSI task, a consistent
    /// PSI spec.
    pub fn check(&self) -> Result<()> {
        if self.version != 1 {
            return Err(invalid(format!(
                "manifest version {} is not supported (this node knows 1)",
                self.version
            )));
        }
        check_label("job_id", &self.job_id)?;
        if self.tasks.is_empty() || self.tasks.len() > 128 {
            return Err(invalid("tasks: a job has 1 to 128 tasks"));
        }
        if !(1..=128).contains(&self.max_parallelism) {
            return Err(invalid("max_parallelism: must be between 1 and 128"));
        }
        let mut aliases = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            check_label(&format!("tasks[{i}].alias"), &t.alias)?;
            if !aliases.insert(t.alias.as_str()) {
                return Err(invalid(format!(
                    "tasks[{i}].alias: {:?} is used twice",
                    t.alias
                )));
            }
            if t.task_id.is_empty()
                || t.task_id.len() > 127
                || !t
                    .task_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(invalid(format!(
                    "tasks[{i}].task_id: {:?} must be 1-127 letters, digits and '-'",
                    t.task_id
                )));
            }
            if !ids.insert(t.task_id.as_str()) {
                return Err(invalid(format!(
                    "tasks[{i}].task_id: {:?} is used twice",
                    t.task_id
                )));
            }
            let parties: BTreeSet<&str> = t.parties.iter().map(|p| p.domain_id.as_str()).collect();
            if t.parties.len() != 2 || parties.len() != 2 {
                return Err(invalid(format!(
                    "tasks[{i}].parties: the psi app takes exactly two different parties"
                )));
            }
            t.psi.check(&format!("tasks[{i}]"), &parties)?;
        }
        for (i, t) in self.tasks.iter().enumerate() {
            for d in &t.dependencies {
                if !aliases.contains(d.as_str()) {
                    return Err(invalid(format!(
                        "tasks[{i}].dependencies: no task has the alias {d:?}"
                    )));
                }
                if self.tasks.iter().any(|o| &o.alias == d && o.tolerable) {
                    return Err(invalid(format!(
                        "tasks[{i}].dependencies: {d:?} is tolerable, and a tolerable task \
                         cannot be another task's dependency"
                    )));
                }
            }
        }
        // Cycle check: repeatedly remove tasks whose dependencies are all removed.
        let mut left: Vec<&TaskSpec> = self.tasks.iter().collect();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        while !left.is_empty() {
            let before = left.len();
            left.retain(|t| {
                if t.dependencies.iter().all(|d| done.contains(d.as_str())) {
                    done.insert(&t.alias);
                    false
                } else {
                    true
                }
            });
            if left.len() == before {
                let names: Vec<&str> = left.iter().map(|t| t.alias.as_str()).collect();
                return Err(invalid(format!(
                    "tasks: the dependencies of {} form a cycle",
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }
}

impl PsiSpec {
    fn check(&self, at: &str, parties: &BTreeSet<&str>) -> Result<()> {
        if !matches!(self.protocol.as_str(), "ecdh" | "rr22") {
            return Err(invalid(format!(
                "{at}.task_input_config.protocol: {:?} is not supported; use ecdh or rr22",
                self.protocol
            )));
        }
        if !matches!(
            self.join_type.as_str(),
            "inner" | "left" | "right" | "full" | "difference"
        ) {
            return Err(invalid(format!(
                "{at}.task_input_config.join_type: {:?}; use inner, left, right, full or difference",
                self.join_type
            )));
        }
        let with_inputs: BTreeSet<&str> = self.inputs.keys().map(String::as_str).collect();
        if &with_inputs != parties {
            return Err(invalid(format!(
                "{at}.task_input_config.inputs: give one input per party ({})",
                parties.iter().copied().collect::<Vec<_>>().join(", ")
            )));
        }
        for (p, i) in &self.inputs {
            if i.keys.is_empty() || i.keys.iter().any(String::is_empty) {
                return Err(invalid(format!(
                    "{at}.task_input_config.inputs.{p}.keys: name at least one key column"
                )));
            }
            if i.domaindata_id.is_empty() {
                return Err(invalid(format!(
                    "{at}.task_input_config.inputs.{p}.domaindata_id: missing"
                )));
            }
        }
        let key_counts: BTreeSet<usize> = self.inputs.values().map(|i| i.keys.len()).collect();
        if key_counts.len() != 1 {
            return Err(invalid(format!(
                "{at}.task_input_config: every party must name the same number of key columns"
            )));
        }
        if self.receivers.is_empty() {
            return Err(invalid(format!(
                "{at}.task_input_config.receivers: name at least one receiving party"
            )));
        }
        for r in &self.receivers {
            if !parties.contains(r.as_str()) {
                return Err(invalid(format!(
                    "{at}.task_input_config.receivers: {r:?} is not a party of the task"
                )));
            }
            let Some(o) = self.outputs.get(r) else {
                return Err(invalid(format!(
                    "{at}.task_input_config.outputs: no output for receiver {r:?}"
                )));
            };
            crate::catalog::check_relative(&o.relative_uri)
                .map_err(|e| invalid(format!("{at}.task_input_config.outputs.{r}.{e}")))?;
            if o.domaindata_id.is_empty() {
                return Err(invalid(format!(
                    "{at}.task_input_config.outputs.{r}.domaindata_id: missing"
                )));
            }
        }
        if !parties.contains(self.left_side.as_str()) {
            return Err(invalid(format!(
                "{at}.task_input_config.left_side: {:?} is not a party of the task",
                self.left_side
            )));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(invalid(format!(
                "{at}.task_input_config.workers: {} is out of range; give 1 to {MAX_WORKERS}",
                self.workers
            )));
        }
        Ok(())
    }
}

/// venn's own `task_input_config` for `psi`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePsi {
    #[serde(default = "default_protocol")]
    protocol: String,
    inputs: BTreeMap<String, PsiInput>,
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default = "default_join")]
    join_type: String,
    #[serde(default)]
    left_side: String,
    #[serde(default)]
    outputs: BTreeMap<String, NativeOutput>,
    #[serde(default = "one_worker")]
    workers: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeOutput {
    domaindata_id: String,
    #[serde(default)]
    relative_uri: String,
}

fn default_protocol() -> String {
    "rr22".into()
}
fn default_join() -> String {
    "inner".into()
}

/// Parses a task's `task_input_config` into a [`PsiSpec`]. `owner_of` names the domain that
/// owns a DomainData ID (needed for the SecretFlow form, which lists inputs by ID only);
/// `parties` are the task's parties in request order.
pub fn parse_psi(
    at: &str,
    config: &str,
    parties: &[String],
    default_output: &dyn Fn(&str) -> PsiOutput,
    owner_of: &dyn Fn(&str) -> Option<String>,
) -> Result<PsiSpec> {
    let field = format!("{at}.task_input_config");
    if config.trim().is_empty() {
        return Err(invalid(format!(
            "{field}: missing; give the inputs, keys and receivers (see docs/apps.md)"
        )));
    }
    let v: Value =
        serde_json::from_str(config).map_err(|e| invalid(format!("{field}: not JSON: {e}")))?;
    let spec = if v.get("sf_input_ids").is_some() || v.get("sf_node_eval_param").is_some() {
        parse_secretflow(&field, &v, parties, default_output, owner_of)?
    } else {
        let n: NativePsi = crate::api::parse_json(config.as_bytes())
            .map_err(|e| invalid(format!("{field}.{e}")))?;
        let receivers = if n.receivers.is_empty() {
            parties.to_vec()
        } else {
            n.receivers
        };
        let mut outputs = BTreeMap::new();
        for r in &receivers {
            let o = match n.outputs.get(r) {
                Some(o) => PsiOutput {
                    domaindata_id: o.domaindata_id.clone(),
                    relative_uri: if o.relative_uri.is_empty() {
                        format!("{}.csv", o.domaindata_id)
                    } else {
                        o.relative_uri.clone()
                    },
                },
                None => default_output(r),
            };
            outputs.insert(r.clone(), o);
        }
        PsiSpec {
            protocol: n.protocol.to_ascii_lowercase(),
            inputs: n.inputs,
            receivers,
            join_type: n.join_type,
            left_side: if n.left_side.is_empty() {
                parties.first().cloned().unwrap_or_default()
            } else {
                n.left_side
            },
            outputs,
            workers: n.workers,
        }
    };
    Ok(spec)
}

/// The SecretFlow form of Kuscia's example job (`task_input_config.2pc_balanced_psi.json`).
fn parse_secretflow(
    field: &str,
    v: &Value,
    parties: &[String],
    default_output: &dyn Fn(&str) -> PsiOutput,
    owner_of: &dyn Fn(&str) -> Option<String>,
) -> Result<PsiSpec> {
    let strings = |key: &str| -> Result<Vec<String>> {
        match v.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{field}.{key}: must be a list of strings")))
                })
                .collect(),
            Some(_) => Err(invalid(format!("{field}.{key}: must be a list of strings"))),
        }
    };
    let input_ids = strings("sf_input_ids")?;
    if input_ids.len() != 2 {
        return Err(invalid(format!(
            "{field}.sf_input_ids: give two DomainData IDs, one per party"
        )));
    }
    let output_ids = strings("sf_output_ids")?;
    let output_uris = strings("sf_output_uris")?;
    let eval = v.get("sf_node_eval_param").cloned().unwrap_or(Value::Null);
    if let Some(name) = eval.get("name").and_then(Value::as_str)
        && name != "psi"
    {
        return Err(invalid(format!(
            "{field}.sf_node_eval_param.name: {name:?} is not an app this node runs (only psi)"
        )));
    }
    let paths: Vec<String> = eval
        .get("attr_paths")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let attrs: Vec<Value> = eval
        .get("attrs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if paths.len() != attrs.len() {
        return Err(invalid(format!(
            "{field}.sf_node_eval_param: attr_paths has {} entries but attrs has {}",
            paths.len(),
            attrs.len()
        )));
    }
    let attr = |name: &str| -> Option<&Value> {
        paths
            .iter()
            .position(|p| p == name || p.trim_start_matches("input/") == name)
            .map(|i| &attrs[i])
    };
    let list = |a: &Value| -> Vec<String> {
        a.get("ss")
            .and_then(Value::as_array)
            .map(|x| {
                x.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .or_else(|| {
                a.get("s")
                    .and_then(Value::as_str)
                    .map(|s| vec![s.to_owned()])
            })
            .unwrap_or_default()
    };
    let one = |a: &Value| -> String { list(a).into_iter().next().unwrap_or_default() };
    let mut inputs = BTreeMap::new();
    let mut owners = Vec::new();
    for (i, id) in input_ids.iter().enumerate() {
        let owner = owner_of(id).ok_or_else(|| {
            invalid(format!(
                "{field}.sf_input_ids[{i}]: {id:?} is neither this node's DomainData nor granted \
                 to it by a party (grant it with venn grant create, or fix the ID)"
            ))
        })?;
        if !parties.contains(&owner) {
            return Err(invalid(format!(
                "{field}.sf_input_ids[{i}]: {id:?} belongs to {owner}, which is not a party of the task"
            )));
        }
        let keys_attr = format!("input/input_ds{}/keys", i + 1);
        let keys = attr(&keys_attr).map(list).unwrap_or_default();
        if keys.is_empty() {
            return Err(invalid(format!(
                "{field}.sf_node_eval_param: attribute {keys_attr} (the key columns of {id}) is missing"
            )));
        }
        if inputs
            .insert(
                owner.clone(),
                PsiInput {
                    domaindata_id: id.clone(),
                    keys,
                },
            )
            .is_some()
        {
            return Err(invalid(format!(
                "{field}.sf_input_ids: both inputs belong to {owner}; each party brings one"
            )));
        }
        owners.push(owner);
    }
    let protocol = match attr("protocol").map(one).as_deref() {
        Some("PROTOCOL_ECDH") | Some("ECDH_PSI_2PC") => "ecdh".to_owned(),
        None | Some("") | Some("PROTOCOL_RR22") | Some("RR22_PSI_2PC") => "rr22".to_owned(),
        Some(other) => {
            return Err(invalid(format!(
                "{field}: protocol {other:?} is not supported; use PROTOCOL_ECDH or PROTOCOL_RR22"
            )));
        }
    };
    let join_type = match attr("join_type").map(one).as_deref() {
        None | Some("") | Some("inner_join") | Some("inner") => "inner",
        Some("left_join") | Some("left") => "left",
        Some("right_join") | Some("right") => "right",
        Some("full_join") | Some("outer_join") | Some("full") => "full",
        Some("difference") => "difference",
        Some(other) => {
            return Err(invalid(format!(
                "{field}: join_type {other:?} is not supported; use inner_join, left_join, \
                 right_join, full_join or difference"
            )));
        }
    }
    .to_owned();
    let mut receivers = attr("receiver_parties").map(list).unwrap_or_default();
    if receivers.is_empty() {
        receivers = parties.to_vec();
    }
    let left_side = attr("left_side")
        .map(one)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| owners[0].clone());
    let mut outputs = BTreeMap::new();
    for r in &receivers {
        // Output i goes with input i (the party order of sf_input_ids).
        let i = owners.iter().position(|o| o == r);
        let o = match i.and_then(|i| output_ids.get(i)) {
            Some(id) => PsiOutput {
                domaindata_id: id.clone(),
                relative_uri: i
                    .and_then(|i| output_uris.get(i))
                    .cloned()
                    .unwrap_or_else(|| format!("{id}.csv")),
            },
            None => default_output(r),
        };
        outputs.insert(r.clone(), o);
    }
    Ok(PsiSpec {
        protocol,
        inputs,
        receivers,
        join_type,
        left_side,
        outputs,
        workers: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(p: &str) -> PsiOutput {
        PsiOutput {
            domaindata_id: format!("out-{p}"),
            relative_uri: format!("out-{p}.csv"),
        }
    }

    fn owner(id: &str) -> Option<String> {
        id.split('-').next().map(str::to_owned)
    }

    /// Kuscia's `task_input_config.2pc_balanced_psi.json`, as the example job sends it.
    const KUSCIA_EXAMPLE: &str = r#"{"sf_datasource_config":{"alice":{"id":"default-data-source"},"bob":{"id":"default-data-source"}},"sf_cluster_desc":{"parties":["alice","bob"],"devices":[{"name":"spu","type":"spu","parties":["alice","bob"],"config":"{\"runtime_config\":{\"protocol\":\"SEMI2K\",\"field\":\"FM128\"}}"}],"ray_fed_config":{"cross_silo_comm_backend":"brpc_link"}},"sf_node_eval_param":{"domain":"data_prep","name":"psi","version":"1.0.0","attr_paths":["input/input_ds1/keys","input/input_ds2/keys","protocol","sort_result","receiver_parties","allow_empty_result","join_type","input_ds1_keys_duplicated","input_ds2_keys_duplicated"],"attrs":[{"is_na":false,"ss":["id1"]},{"is_na":false,"ss":["id2"]},{"is_na":false,"s":"PROTOCOL_RR22"},{"b":true,"is_na":false},{"is_na":false,"ss":["alice","bob"]},{"is_na":true},{"is_na":false,"s":"inner_join"},{"b":true,"is_na":false},{"b":true,"is_na":false}]},"sf_input_ids":["alice-table","bob-table"],"sf_output_ids":["psi-output","psi-output"],"sf_output_uris":["psi-output.csv","psi-output.csv"]}"#;

    #[test]
    fn kuscia_example_config_parses() {
        let parties = vec!["alice".to_string(), "bob".to_string()];
        let s = parse_psi("tasks[0]", KUSCIA_EXAMPLE, &parties, &out, &owner).unwrap();
        assert_eq!(s.protocol, "rr22");
        assert_eq!(s.inputs["alice"].keys, vec!["id1"]);
        assert_eq!(s.inputs["bob"].domaindata_id, "bob-table");
        assert_eq!(s.inputs["bob"].keys, vec!["id2"]);
        assert_eq!(s.receivers, parties);
        assert_eq!(s.join_type, "inner");
        assert_eq!(s.outputs["bob"].relative_uri, "psi-output.csv");
        let set: BTreeSet<&str> = ["alice", "bob"].into();
        s.check("tasks[0]", &set).unwrap();
    }

    #[test]
    fn native_config_and_errors_name_the_field() {
        let parties = vec!["alice".to_string(), "bob".to_string()];
        let cfg = r#"{"inputs":{"alice":{"domaindata_id":"a","keys":["id"]},"bob":{"domaindata_id":"b","keys":["id"]}},"receivers":["bob"]}"#;
        let s = parse_psi("tasks[0]", cfg, &parties, &out, &owner).unwrap();
        assert_eq!(s.protocol, "rr22");
        assert_eq!(s.outputs.len(), 1);
        assert_eq!(s.left_side, "alice");
        let e = parse_psi(
            "tasks[0]",
            r#"{"inputs":{},"nope":1}"#,
            &parties,
            &out,
            &owner,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tasks[0].task_input_config") && e.contains("nope"),
            "{e}"
        );
        let e = parse_psi(
            "tasks[0]",
            &KUSCIA_EXAMPLE.replace("PROTOCOL_RR22", "PROTOCOL_KKRT"),
            &parties,
            &out,
            &owner,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("PROTOCOL_KKRT"), "{e}");
    }

    #[test]
    fn workers_parse_and_stay_out_of_old_signed_bytes() {
        let parties = vec!["alice".to_string(), "bob".to_string()];
        let base = r#"{"inputs":{"alice":{"domaindata_id":"a","keys":["id"]},"bob":{"domaindata_id":"b","keys":["id"]}}"#;
        let one = parse_psi("t", &format!("{base}}}"), &parties, &out, &owner).unwrap();
        assert_eq!(one.workers, 1);
        assert!(!serde_json::to_string(&one).unwrap().contains("workers"));
        let four = parse_psi(
            "t",
            &format!("{base},\"workers\":4}}"),
            &parties,
            &out,
            &owner,
        )
        .unwrap();
        assert_eq!(four.workers, 4);
        let back: PsiSpec = serde_json::from_str(&serde_json::to_string(&four).unwrap()).unwrap();
        assert_eq!(back.workers, 4);
        let set: BTreeSet<&str> = ["alice", "bob"].into();
        assert!(four.check("t", &set).is_ok());
        let zero = PsiSpec { workers: 0, ..four };
        let e = zero.check("t", &set).unwrap_err().to_string();
        assert!(e.contains("workers") && e.contains("1 to 256"), "{e}");
    }

    fn manifest() -> Manifest {
        let parties = vec!["alice".to_string(), "bob".to_string()];
        let psi = parse_psi("t", KUSCIA_EXAMPLE, &parties, &out, &owner).unwrap();
        Manifest {
            version: 1,
            job_id: "job-1".into(),
            initiator: "alice".into(),
            max_parallelism: 1,
            schedule_mode: ScheduleMode::Strict,
            created_at: 1,
            tasks: vec![TaskSpec {
                task_id: "job-1-psi".into(),
                alias: "psi".into(),
                app_image: "psi".into(),
                parties: parties
                    .iter()
                    .map(|d| PartySpec {
                        domain_id: d.clone(),
                        role: String::new(),
                        resources: None,
                    })
                    .collect(),
                dependencies: vec![],
                task_input_config: KUSCIA_EXAMPLE.into(),
                priority: 0,
                tolerable: false,
                psi,
            }],
            custom_fields: BTreeMap::new(),
        }
    }

    #[test]
    fn structure_checks() {
        let m = manifest();
        m.check().unwrap();
        let mut c = m.clone();
        c.tasks.push(c.tasks[0].clone());
        assert!(c.check().unwrap_err().to_string().contains("used twice"));
        let mut c = m.clone();
        c.tasks[0].dependencies = vec!["psi".into()];
        assert!(c.check().unwrap_err().to_string().contains("cycle"));
        let mut c = m;
        c.job_id = "Job_1".into();
        assert!(c.check().unwrap_err().to_string().starts_with("job_id:"));
    }

    #[test]
    fn signature_covers_every_field() {
        let id = crate::trust::Identity::load_or_create(
            tempfile::tempdir().unwrap().path(),
            "alice",
            &crate::config::Endpoint::parse("https://127.0.0.1:1080").unwrap(),
        )
        .unwrap();
        let m = manifest();
        let sig = id.sign(&m.signed_bytes()).unwrap();
        crate::trust::verify_signature(id.leaf(), &m.signed_bytes(), &sig).unwrap();
        // The stored JSON reads back to the same signed bytes.
        let back: Manifest = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(back.signed_bytes(), m.signed_bytes());
        let mut t = m.clone();
        t.tasks[0].psi.receivers = vec!["alice".into()];
        assert!(crate::trust::verify_signature(id.leaf(), &t.signed_bytes(), &sig).is_err());
        assert_ne!(t.sha256(), m.sha256());
    }
}

//! Checks of the deployment files under `deploy/` (issue 7), without a Docker engine or a
//! Kubernetes cluster:
//!
//! - every Kubernetes manifest under `deploy/k8s/` parses into the Kubernetes API types
//!   (k8s-openapi), and re-serialising the typed value gives back exactly the YAML that was
//!   written: a misspelt or misplaced field (which serde would silently drop, since the
//!   generated types do not deny unknown fields) shows up as a difference, with its path;
//! - every `kustomization.yaml` uses only the keys we know, names files that exist, and lists
//!   every manifest in its directory;
//! - the node configurations in the ConfigMaps and next to the compose file are valid venn
//!   configurations, with the data dir inside the volume and the paths the image expects;
//! - the probe command of the Deployment really is a health check: it fails while the node is
//!   down and succeeds once it runs;
//! - master and lite (issue 6) and the kubernetes runtime: deploy tokens and passwords only in
//!   Secrets, the lite's `kubernetes:` section agrees with its Deployment, Services, claim and
//!   namespace, every Role is limited to pods, pods/log and secrets (no reading Secrets), and
//!   task pods may reach only the node.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use venn_node::config::Config;

/// Where the image mounts the node configuration (`VENN_CONFIG` in the Dockerfile).
const CONFIG_PATH: &str = "/etc/venn/venn.yaml";
/// The image's volume; the data dir must be inside it.
const VOLUME: &str = "/var/lib/venn";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// The YAML documents of a file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Lists the differences between what was written and what the typed value gives back.
fn diff(path: &str, written: &Value, typed: &Value, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!(
                        "{p}: not a field of the Kubernetes type (typo or wrong place?)"
                    )),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: written {a}, read back as {b}")),
    }
}

/// Parses `doc` as `T` and checks that nothing was lost or changed on the way; problems are
/// collected in `problems` (so one run lists every typo in every file).
fn check_typed<T: DeserializeOwned + serde::Serialize>(
    file: &str,
    doc: &Value,
    problems: &mut Vec<String>,
) -> Option<T> {
    let what = format!("{file} ({} {})", doc["kind"], doc["metadata"]["name"]);
    let typed: T = match serde_json::from_value(doc.clone()) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{what}: does not parse: {e}"));
            return None;
        }
    };
    let back = serde_json::to_value(&typed).expect("serialise");
    let mut found = Vec::new();
    diff("", doc, &back, &mut found);
    problems.extend(found.into_iter().map(|p| format!("{what}: {p}")));
    Some(typed)
}

/// The keys of a kustomization that we use; anything else is refused (a typo would be ignored
/// by no one but would silently do nothing in some kustomize versions).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KustomizeImage {
    name: String,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    new_tag: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

fn check_kustomization(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read kustomization");
    let k: Kustomization =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let dir = path.parent().expect("dir");
    let mut listed = Vec::new();
    for r in &k.resources {
        let p = dir.join(r);
        assert!(
            p.is_file() || p.join("kustomization.yaml").is_file(),
            "{}: resource {r} does not exist",
            path.display()
        );
        listed.push(p);
    }
    for patch in &k.patches {
        let p = dir.join(&patch.path);
        assert!(
            p.is_file(),
            "{}: patch {} does not exist",
            path.display(),
            patch.path
        );
        listed.push(p);
    }
    // Every manifest next to the kustomization is part of it (no file that `apply -k` skips).
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&p),
                "{}: {name} is not listed in resources or patches",
                path.display()
            );
        }
    }
}

/// The keys of master and lite configurations (issue 6, merged separately).
const CENTRALIZED_KEYS: &[&str] = &["master_endpoint", "deploy_token_file"];

/// Validates a venn configuration. A master or lite configuration that this build's `Config`
/// does not know yet (issue 6 not merged) is validated as the same file in autonomy mode
/// without the centralized keys, which are checked here instead; once issue 6 is in, the
/// file is validated as it stands, and a key named differently there fails this test.
fn validate_config(origin: &str, text: &str, problems: &mut Vec<String>) -> Option<Config> {
    let direct = Config::from_yaml(text).and_then(|c| c.validate().map(|()| c));
    let err = match direct {
        Ok(c) => return Some(c),
        Err(e) => e.to_string(),
    };
    let raw: Value = serde_yaml_ng::from_str(text).expect("YAML");
    let mode = raw["mode"].as_str().unwrap_or_default().to_owned();
    let pending = matches!(mode.as_str(), "master" | "lite")
        && (err.contains("not implemented yet")
            || CENTRALIZED_KEYS
                .iter()
                .any(|k| err.contains(&format!("unknown field `{k}`"))));
    if !pending {
        problems.push(format!("{origin}: {err}"));
        return None;
    }
    let mut rest = raw.clone();
    let obj = rest.as_object_mut().expect("a mapping");
    obj.insert("mode".into(), Value::from("autonomy"));
    for k in CENTRALIZED_KEYS {
        obj.remove(*k);
    }
    match mode.as_str() {
        "lite" => {
            let master = raw["master_endpoint"].as_str().unwrap_or_default();
            if venn_node::config::Endpoint::parse(master).is_err() {
                problems.push(format!(
                    "{origin}: master_endpoint {master:?} is not https://host:port"
                ));
            }
            let token = raw["deploy_token_file"].as_str().unwrap_or_default();
            if !token.starts_with('/') {
                problems.push(format!(
                    "{origin}: a lite names its deploy token by deploy_token_file (absolute path)"
                ));
            }
        }
        _ => {
            for k in CENTRALIZED_KEYS {
                if raw.get(*k).is_some() {
                    problems.push(format!("{origin}: {k} is for lites only"));
                }
            }
        }
    }
    let text = serde_yaml_ng::to_string(&rest).expect("YAML");
    match Config::from_yaml(&text).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(format!("{origin}: {e}"));
            None
        }
    }
}

/// Checks a venn configuration as the image runs it; problems go to `problems`.
fn check_venn_config(origin: &str, text: &str, problems: &mut Vec<String>) -> Option<Config> {
    if text.contains("deploy_token:") || text.contains("password:") {
        problems.push(format!(
            "{origin}: a secret in a configuration file (deploy tokens and passwords go in \
             Secrets, named by deploy_token_file / datastore_password_file)"
        ));
    }
    let cfg = validate_config(origin, text, problems)?;
    if !(cfg.data_dir.starts_with(VOLUME) && cfg.data_dir != Path::new(VOLUME)) {
        problems.push(format!(
            "{origin}: data_dir {} must be a directory inside the volume {VOLUME} (the node \
             makes its data dir 0700, which it cannot do on a volume root it does not own)",
            cfg.data_dir.display()
        ));
    }
    if !cfg.api.listen.starts_with("127.0.0.1:") {
        problems.push(format!(
            "{origin}: keep the API on loopback; probes run `venn health` inside the container"
        ));
    }
    if !cfg.gateway.listen.ends_with(":1080") {
        problems.push(format!("{origin}: the image exposes 1080"));
    }
    Some(cfg)
}

struct Manifests {
    deployments: Vec<(String, Deployment)>,
    configs: BTreeMap<String, Config>,
    /// The same configurations as YAML values (with the keys `Config` may not know yet).
    raw_configs: BTreeMap<String, Value>,
    services: Vec<(String, Service)>,
    roles: Vec<(String, Role)>,
    policies: Vec<(String, NetworkPolicy)>,
    secrets: Vec<(String, Secret)>,
    claims: Vec<(String, PersistentVolumeClaim)>,
    count: usize,
    problems: Vec<String>,
}

fn load_manifests() -> Manifests {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy/k8s"), &mut files);
    assert!(!files.is_empty(), "no manifests under deploy/k8s");
    let mut m = Manifests {
        deployments: Vec::new(),
        configs: BTreeMap::new(),
        raw_configs: BTreeMap::new(),
        services: Vec::new(),
        roles: Vec::new(),
        policies: Vec::new(),
        secrets: Vec::new(),
        claims: Vec::new(),
        count: 0,
        problems: Vec::new(),
    };
    for path in &files {
        let file = path
            .strip_prefix(repo())
            .unwrap_or(path)
            .display()
            .to_string();
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            check_kustomization(path);
            continue;
        }
        for doc in documents(path) {
            m.count += 1;
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let p = &mut m.problems;
            match kind.as_str() {
                "Namespace" => drop(check_typed::<Namespace>(&file, &doc, p)),
                "Service" => {
                    if let Some(t) = check_typed::<Service>(&file, &doc, p) {
                        m.services.push((file.clone(), t));
                    }
                }
                "ServiceAccount" => drop(check_typed::<ServiceAccount>(&file, &doc, p)),
                "PersistentVolumeClaim" => {
                    if let Some(t) = check_typed::<PersistentVolumeClaim>(&file, &doc, p) {
                        m.claims.push((file.clone(), t));
                    }
                }
                "NetworkPolicy" => {
                    if let Some(t) = check_typed::<NetworkPolicy>(&file, &doc, p) {
                        m.policies.push((file.clone(), t));
                    }
                }
                "Role" => {
                    if let Some(t) = check_typed::<Role>(&file, &doc, p) {
                        m.roles.push((file.clone(), t));
                    }
                }
                "RoleBinding" => drop(check_typed::<RoleBinding>(&file, &doc, p)),
                "Secret" => {
                    if let Some(t) = check_typed::<Secret>(&file, &doc, p) {
                        m.secrets.push((file.clone(), t));
                    }
                }
                "Deployment" => {
                    if let Some(d) = check_typed::<Deployment>(&file, &doc, p) {
                        m.deployments.push((file.clone(), d));
                    }
                }
                "ConfigMap" => {
                    let cm = check_typed::<ConfigMap>(&file, &doc, p);
                    if let Some(text) = cm.as_ref().and_then(|c| c.data.as_ref()?.get("venn.yaml"))
                    {
                        let origin = format!("{file}: data.venn.yaml");
                        if let Some(cfg) = check_venn_config(&origin, text, p) {
                            m.configs.insert(file.clone(), cfg);
                            m.raw_configs
                                .insert(file.clone(), serde_yaml_ng::from_str(text).expect("YAML"));
                        }
                    }
                }
                other => p.push(format!(
                    "{file}: kind {other:?} is not checked by this test; add it to the match"
                )),
            }
        }
    }
    m
}

#[test]
fn k8s_manifests_parse_into_the_api_types_without_unknown_fields() {
    let m = load_manifests();
    assert!(
        m.problems.is_empty(),
        "problems in deploy/k8s:\n  {}",
        m.problems.join("\n  ")
    );
    assert!(
        m.count >= 7,
        "expected the autonomy manifests, found {}",
        m.count
    );
    assert!(
        m.configs.len() >= 4,
        "autonomy (alice, bob's patch), master and lite ConfigMaps carry a venn.yaml"
    );
    // The node configuration ConfigMap is mounted where the image and the probes look for it,
    // and the data dir is inside the mounted volume.
    for (file, d) in &m.deployments {
        let spec = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec");
        let c = &spec.containers[0];
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        let mount_of = |path: &str| {
            mounts
                .iter()
                .find(|vm| vm.mount_path == path)
                .unwrap_or_else(|| panic!("{file}: nothing mounted at {path}"))
        };
        let cfg_mount = mount_of("/etc/venn");
        assert_eq!(cfg_mount.read_only, Some(true), "{file}: config mount");
        mount_of(VOLUME);
        mount_of("/tmp");
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{file}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{file}");
        for probe in [&c.liveness_probe, &c.readiness_probe] {
            let cmd = probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .and_then(|e| e.command.clone())
                .expect("exec probe");
            assert_eq!(cmd, ["venn", "health", "-c", CONFIG_PATH], "{file}");
        }
        let res = c.resources.as_ref().expect("resources");
        assert!(res.requests.is_some() && res.limits.is_some(), "{file}");
    }
}

#[test]
fn compose_node_configs_are_valid() {
    let dir = repo().join("deploy/compose/autonomy");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).expect("compose.yaml");
    let compose: Value = serde_yaml_ng::from_str(&compose).expect("compose.yaml is YAML");
    let services = compose["services"].as_object().expect("services");
    assert!(services.contains_key("alice") && services.contains_key("bob"));
    for (name, svc) in services {
        let volumes = svc["volumes"].as_array().expect("volumes");
        let cfg_file = volumes
            .iter()
            .filter_map(Value::as_str)
            .find_map(|v| v.strip_suffix(&format!(":{CONFIG_PATH}:ro")))
            .unwrap_or_else(|| panic!("{name}: no read-only mount of {CONFIG_PATH}"));
        let text = std::fs::read_to_string(dir.join(cfg_file)).expect("node config");
        let mut problems = Vec::new();
        let cfg = check_venn_config(&format!("compose {name}: {cfg_file}"), &text, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let cfg = cfg.expect("valid config");
        assert_eq!(cfg.domain_id, *name, "service name = domain ID");
        assert_eq!(cfg.endpoint, format!("https://{name}:1080"));
        assert!(
            volumes
                .iter()
                .filter_map(Value::as_str)
                .any(|v| v.ends_with(&format!(":{VOLUME}"))),
            "{name}: the data volume is mounted at {VOLUME}"
        );
    }
}

#[test]
fn dockerfile_matches_the_manifests() {
    let text =
        std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).expect("Dockerfile");
    for needle in [
        &format!("VENN_CONFIG={CONFIG_PATH}"),
        &format!("VOLUME [\"{VOLUME}\"]"),
        "USER 65532:65532",
        "EXPOSE 1080",
        "CMD [\"venn\", \"health\"]",
        "x86_64-unknown-linux-musl",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The Deployment's probe command, run against alice's ConfigMap configuration (with a
/// temporary data dir and free ports): it fails while no node runs and succeeds once it does.
#[test]
fn probe_command_tracks_the_node() {
    let m = load_manifests();
    let (file, mut cfg) = m
        .configs
        .into_iter()
        .find(|(f, _)| f.ends_with("autonomy/configmap.yaml"))
        .expect("deploy/k8s/autonomy/configmap.yaml");
    let tmp = tempfile::tempdir().expect("tempdir");
    cfg.data_dir = tmp.path().join("venn-data");
    cfg.gateway.listen = format!("127.0.0.1:{}", free_port());
    cfg.api.listen = format!("127.0.0.1:{}", free_port());
    let cfg_path = tmp.path().join("venn.yaml");
    std::fs::write(&cfg_path, cfg.to_yaml()).expect("write config");

    let (_, d) = m
        .deployments
        .iter()
        .find(|(f, _)| f.ends_with("autonomy/deployment.yaml"))
        .expect("autonomy deployment");
    let probe = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("probe");
    let run_probe = || {
        let args: Vec<String> = probe[1..]
            .iter()
            .map(|a| {
                if a == CONFIG_PATH {
                    cfg_path.display().to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        Command::new(env!("CARGO_BIN_EXE_venn"))
            .args(&args)
            .env_remove("VENN_CONFIG")
            .output()
            .expect("run probe")
    };

    let down = run_probe();
    assert!(
        !down.status.success(),
        "{file}: probe succeeded with no node running"
    );
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot reach"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );

    let mut node = Command::new(env!("CARGO_BIN_EXE_venn"))
        .args(["start", "-c"])
        .arg(&cfg_path)
        .env_remove("VENN_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = loop {
        let out = run_probe();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        up.status.success(),
        "probe never succeeded: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&up.stdout).trim(), "ok");
}

/// The directory of a manifest file (`deploy/k8s/lite/x.yaml` → `deploy/k8s/lite`).
fn dir_of(file: &str) -> &str {
    file.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Every Role grants only what the kubernetes runtime uses: pods, pods/log and secrets in the
/// core group, named verbs (no `*`), and never reading Secrets.
#[test]
fn roles_are_limited_to_the_kubernetes_runtime() {
    let m = load_manifests();
    assert!(m.problems.is_empty(), "{}", m.problems.join("\n"));
    assert!(m.roles.len() >= 2, "autonomy and lite have a Role");
    for (file, role) in &m.roles {
        let rules = role.rules.as_deref().unwrap_or_default();
        let mut granted = BTreeMap::new();
        for r in rules {
            assert_eq!(
                r.api_groups.as_deref(),
                Some(&[String::new()][..]),
                "{file}"
            );
            assert!(
                r.resource_names.is_none() && r.non_resource_urls.is_none(),
                "{file}"
            );
            for res in r.resources.as_deref().unwrap_or_default() {
                granted
                    .entry(res.clone())
                    .or_insert_with(Vec::new)
                    .extend(r.verbs.iter().cloned());
            }
        }
        let expect: BTreeMap<String, Vec<String>> = [
            ("pods", &["create", "get", "list", "watch", "delete"][..]),
            ("pods/log", &["get"][..]),
            ("secrets", &["create", "delete"][..]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
        assert_eq!(granted, expect, "{file}: the Role's rules");
    }
}

/// The lite's configuration agrees with the objects next to it: the kubernetes runtime's
/// namespace, claim, task Service and image, the deploy token Secret mounted where
/// `deploy_token_file` points, the task port reachable by task pods only.
#[test]
fn lite_manifests_fit_together() {
    let m = load_manifests();
    assert!(m.problems.is_empty(), "{}", m.problems.join("\n"));
    let dir = "deploy/k8s/lite";
    let (cfg_file, cfg) = m
        .configs
        .iter()
        .find(|(f, _)| dir_of(f) == dir)
        .expect("lite configmap");
    let raw = &m.raw_configs[cfg_file];
    assert_eq!(raw["mode"], "lite");
    assert_eq!(
        raw["master_endpoint"], "https://venn.venn-master.svc.cluster.local:1080",
        "the master's Service in deploy/k8s/master"
    );
    let k = cfg.kubernetes.as_ref().expect("kubernetes section");
    assert_eq!(k.namespace, "lite-alice");
    assert_eq!(k.data_volume_claim, "venn-data");
    assert!(cfg.data_dir.starts_with(&k.data_mount_path));

    let (_, d) = m
        .deployments
        .iter()
        .find(|(f, _)| dir_of(f) == dir)
        .expect("lite deployment");
    let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        spec.automount_service_account_token,
        Some(true),
        "the runtime needs its token"
    );
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(k.image.as_str()),
        "task pods use the node's image"
    );
    let vols = spec.volumes.as_deref().unwrap();
    let claim_vol = vols
        .iter()
        .find(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|p| p.claim_name == k.data_volume_claim)
        })
        .expect("the data claim is the node's volume");
    let mounts = c.volume_mounts.as_deref().unwrap();
    let data_mount = mounts.iter().find(|vm| vm.name == claim_vol.name).unwrap();
    assert_eq!(
        Path::new(&data_mount.mount_path),
        k.data_mount_path,
        "same path in node and task pods"
    );
    let claim = m
        .claims
        .iter()
        .find(|(f, c)| dir_of(f) == dir && c.metadata.name.as_deref() == Some("venn-data"))
        .expect("claim");
    assert_eq!(
        claim.1.spec.as_ref().unwrap().access_modes.as_deref(),
        Some(&["ReadWriteMany".to_owned()][..]),
        "task pods on other machines mount the data"
    );

    // The deploy token: a Secret, mounted where the configuration reads it.
    let token_file = Path::new(raw["deploy_token_file"].as_str().unwrap());
    let mount = mounts
        .iter()
        .find(|vm| token_file.parent() == Some(Path::new(&vm.mount_path)))
        .expect("deploy_token_file's directory is mounted");
    let vol = vols.iter().find(|v| v.name == mount.name).unwrap();
    let secret_name = vol
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("from a Secret");
    let (_, secret) = m
        .secrets
        .iter()
        .find(|(f, s)| dir_of(f) == dir && s.metadata.name.as_deref() == Some(secret_name.as_str()))
        .expect("the Secret is in the directory");
    let key = token_file.file_name().unwrap().to_str().unwrap();
    assert!(
        secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(key)),
        "key {key}"
    );

    // The task port: task_listen, the venn-tasks Service and task_address agree.
    let task_port: i32 = cfg
        .gateway
        .task_listen
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let (host, port) = k.task_address.rsplit_once(':').unwrap();
    let svc_name = host.split('.').next().unwrap();
    assert_eq!(
        host,
        format!("{svc_name}.{}.svc.cluster.local", k.namespace)
    );
    let (_, svc) = m
        .services
        .iter()
        .find(|(f, s)| dir_of(f) == dir && s.metadata.name.as_deref() == Some(svc_name))
        .expect("the task Service");
    let sp = &svc.spec.as_ref().unwrap().ports.as_deref().unwrap()[0];
    assert_eq!(sp.port.to_string(), port);
    assert_eq!(
        svc.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );
    let named = c
        .ports
        .as_deref()
        .unwrap()
        .iter()
        .find(|p| {
            Some(p.name.as_deref().unwrap_or_default())
                == sp.target_port.as_ref().map(|t| match t {
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                        s.as_str()
                    }
                    _ => "",
                })
        })
        .expect("the Service's target port is a container port");
    assert_eq!(named.container_port, task_port);

    // NetworkPolicies: the task port admits task pods only; task pods reach only the node.
    let policies: Vec<&NetworkPolicy> = m
        .policies
        .iter()
        .filter(|(f, _)| dir_of(f) == dir)
        .map(|(_, p)| p)
        .collect();
    let task_label = |sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        sel.match_labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_default()
    };
    let node_policy = policies
        .iter()
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .map(task_label)
                .unwrap_or_default()
                == "venn"
        })
        .expect("node policy");
    let rule = node_policy
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_deref()
        .unwrap()
        .iter()
        .find(|r| {
            r.ports.as_deref().unwrap_or_default().iter().any(|p| {
                p.port
                    == Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(task_port),
                    )
            })
        })
        .expect("an ingress rule for the task port");
    let from = rule.from.as_deref().expect("restricted sources");
    assert!(
        from.iter()
            .all(
                |f| f.pod_selector.as_ref().map(task_label).as_deref() == Some("venn-task")
                    && f.namespace_selector.is_none()
                    && f.ip_block.is_none()
            )
    );
    let task_policy = policies
        .iter()
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .map(task_label)
                .unwrap_or_default()
                == "venn-task"
        })
        .expect("task pod policy");
    let ts = task_policy.spec.as_ref().unwrap();
    let types = ts.policy_types.as_deref().unwrap();
    assert!(types.contains(&"Ingress".to_owned()) && types.contains(&"Egress".to_owned()));
    assert!(
        ts.ingress.as_deref().unwrap_or_default().is_empty(),
        "nothing comes in"
    );
    for e in ts.egress.as_deref().unwrap() {
        let ports: Vec<_> = e
            .ports
            .as_deref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone())
            .collect();
        let to_node = e.to.as_deref().unwrap().iter().all(|t| {
            t.pod_selector.as_ref().map(task_label).as_deref() == Some("venn")
                && t.namespace_selector.is_none()
        });
        let dns = ports.iter().all(|p| {
            p == &Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
        });
        assert!(
            (to_node
                && ports
                    == [Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(task_port)
                    )])
                || dns,
            "{file}: task pods may reach the node's task port and DNS only",
            file = dir
        );
    }
}

/// The master's configuration: mode master, a database password from a Secret.
#[test]
fn master_manifests_fit_together() {
    let m = load_manifests();
    assert!(m.problems.is_empty(), "{}", m.problems.join("\n"));
    let dir = "deploy/k8s/master";
    let (cfg_file, cfg) = m
        .configs
        .iter()
        .find(|(f, _)| dir_of(f) == dir)
        .expect("master configmap");
    assert_eq!(m.raw_configs[cfg_file]["mode"], "master");
    assert_eq!(cfg.domain_id, "corp-master");
    assert!(cfg.kubernetes.is_none(), "the master runs no task");
    let pw = cfg
        .datastore_password_file
        .as_ref()
        .expect("password from a file");
    let (_, d) = m
        .deployments
        .iter()
        .find(|(f, _)| dir_of(f) == dir)
        .expect("deployment");
    let spec = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    let mount = spec.containers[0]
        .volume_mounts
        .as_deref()
        .unwrap()
        .iter()
        .find(|vm| pw.parent() == Some(Path::new(&vm.mount_path)))
        .expect("datastore_password_file's directory is mounted");
    let vol = spec
        .volumes
        .as_deref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert!(vol.secret.is_some(), "the password comes from a Secret");
    assert!(
        !m.roles.iter().any(|(f, _)| dir_of(f) == dir),
        "no Role for the master"
    );
}

#[test]
fn centralized_compose_configs_are_valid() {
    let dir = repo().join("deploy/compose/centralized");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).expect("compose.yaml");
    let compose: Value = serde_yaml_ng::from_str(&compose).expect("compose.yaml is YAML");
    let services = compose["services"].as_object().expect("services");
    assert_eq!(
        {
            let mut names: Vec<&String> = services.keys().collect();
            names.sort();
            names
        },
        ["alice", "bob", "master"],
        "seed 002: a master and two lites"
    );
    let secrets = compose["secrets"].as_object().expect("top-level secrets");
    for (name, svc) in services {
        let volumes = svc["volumes"].as_array().expect("volumes");
        let cfg_file = volumes
            .iter()
            .filter_map(Value::as_str)
            .find_map(|v| v.strip_suffix(&format!(":{CONFIG_PATH}:ro")))
            .unwrap_or_else(|| panic!("{name}: no read-only mount of {CONFIG_PATH}"));
        let text = std::fs::read_to_string(dir.join(cfg_file)).expect("node config");
        let mut problems = Vec::new();
        let cfg = check_venn_config(&format!("compose {name}: {cfg_file}"), &text, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        let cfg = cfg.expect("valid config");
        let raw: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert!(
            volumes
                .iter()
                .filter_map(Value::as_str)
                .any(|v| v.ends_with(&format!(":{VOLUME}"))),
            "{name}: the data volume is mounted at {VOLUME}"
        );
        if name == "master" {
            assert_eq!(raw["mode"], "master");
            assert_eq!(cfg.domain_id, "corp-master");
            assert_eq!(cfg.endpoint, "https://master:1080");
            assert!(svc.get("secrets").is_none());
            continue;
        }
        assert_eq!(raw["mode"], "lite");
        assert_eq!(cfg.domain_id, *name, "service name = domain ID");
        assert_eq!(cfg.endpoint, format!("https://{name}:1080"));
        assert_eq!(raw["master_endpoint"], "https://master:1080");
        // The deploy token: a compose secret mounted where deploy_token_file points.
        let token = raw["deploy_token_file"]
            .as_str()
            .expect("deploy_token_file");
        let s = &svc["secrets"][0];
        assert_eq!(
            format!("/run/secrets/{}", s["target"].as_str().unwrap()),
            token
        );
        let source = s["source"].as_str().unwrap();
        let file = secrets[source]["file"].as_str().expect("a file secret");
        assert!(file.starts_with("./tokens/"), "{file}");
    }
    // tokens/ is ignored by git: a deploy token is never committed.
    let ignore = std::fs::read_to_string(dir.join("tokens/.gitignore")).expect("tokens/.gitignore");
    assert!(ignore.lines().any(|l| l.trim() == "*"));
}

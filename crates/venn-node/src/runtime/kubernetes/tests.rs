//! Tests of the kubernetes runtime without a cluster: the generated objects field by field,
//! the pod-state mapping on API objects in every state (fixtures/), and the real kube client
//! against a local imitation of the API paths (create, get, watch, logs, list, delete).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};

use super::*;
use crate::config::{Config, KubernetesConfig, PodResources};
use crate::runtime::{TaskConfig, TaskPsi};

const NS: &str = "lite-alice";
const SECRET: &str = "9c1e0f3b7a2d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

fn fixture(name: &str) -> Pod {
    let text = match name {
        "pending_unschedulable" => include_str!("fixtures/pod_pending_unschedulable.json"),
        "pending_creating" => include_str!("fixtures/pod_pending_creating.json"),
        "image_pull_backoff" => include_str!("fixtures/pod_image_pull_backoff.json"),
        "err_image_pull" => include_str!("fixtures/pod_err_image_pull.json"),
        "invalid_image_name" => include_str!("fixtures/pod_invalid_image_name.json"),
        "running" => include_str!("fixtures/pod_running.json"),
        "succeeded" => include_str!("fixtures/pod_succeeded.json"),
        "failed_oomkilled" => include_str!("fixtures/pod_failed_oomkilled.json"),
        "failed_exit_1" => include_str!("fixtures/pod_failed_exit_1.json"),
        "failed_evicted" => include_str!("fixtures/pod_failed_evicted.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The fixtures' creation time, 2026-11-22T10:00:00Z.
const CREATED: i64 = 1_795_341_600;

fn settings() -> KubernetesConfig {
    KubernetesConfig {
        namespace: NS.into(),
        image: "registry.example/venn:0.1.0".into(),
        image_pull_policy: "IfNotPresent".into(),
        image_pull_secret: "regcred".into(),
        service_account: "venn-task".into(),
        kubeconfig: None,
        task_address: "venn.lite-alice.svc.cluster.local:1081".into(),
        data_volume_claim: "venn-data".into(),
        data_mount_path: PathBuf::from("/var/lib/venn"),
        default_resources: PodResources {
            cpu_request: "500m".into(),
            cpu_limit: "2".into(),
            memory_request: "512Mi".into(),
            memory_limit: "2Gi".into(),
        },
        image_pull_grace_seconds: 120,
        pod_labels: BTreeMap::from([("team".to_owned(), "risk".to_owned())]),
    }
}

fn launch() -> Launch {
    let dir = PathBuf::from("/var/lib/venn/venn-data/jobs/job-1/job-1-psi");
    Launch {
        party: "alice".into(),
        resources: settings().default_resources,
        config: TaskConfig {
            version: 1,
            job_id: "job-1".into(),
            task_id: "job-1-psi".into(),
            attempt: 1,
            party: "alice".into(),
            peer: "bob".into(),
            parties: vec!["alice".into(), "bob".into()],
            leader: true,
            input: "/var/lib/venn/venn-data/data/alice.csv".into(),
            output: Some("/var/lib/venn/venn-data/data/out.csv".into()),
            psi: TaskPsi {
                protocol: "rr22".into(),
                keys: vec!["id".into()],
                receiver: "both".into(),
                join: "inner".into(),
                left: "self".into(),
            },
            gateway: "venn.lite-alice.svc.cluster.local:1081".into(),
            secret: SECRET.into(),
            work_dir: dir.join("tmp"),
            result: dir.join("result.json"),
            worker: 0,
            workers: 1,
            plan_nonce: String::new(),
            parts_dir: None,
        },
    }
}

#[test]
fn runtime_pod_and_secret_specs() {
    let l = launch();
    let k = settings();
    let name = l.name();
    assert!(crate::config::check_domain_id(&name).is_ok(), "{name}");
    assert!(name.starts_with("venn-job-1-psi-"), "{name}");
    assert_ne!(
        name,
        pod_name("alice", "job-1", "job-1-psi", 2, 0),
        "attempts differ"
    );
    assert_ne!(
        name,
        pod_name("bob", "job-1", "job-1-psi", 1, 0),
        "parties differ"
    );

    // The Secret: the whole task config as task.json, immutable, labelled.
    let s = secret_spec(&l, &k, NS).unwrap();
    assert_eq!(s.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(s.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert_eq!(s.immutable, Some(true));
    let data = s.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["task.json"]);
    let back: TaskConfig = serde_json::from_slice(&data["task.json"].0).unwrap();
    assert_eq!(back.secret, SECRET);
    assert_eq!(back.gateway, "venn.lite-alice.svc.cluster.local:1081");
    assert_eq!(back.result, l.config.result);
    // Through JSON, as the API receives it: base64 data, and it parses back as a Secret.
    let wire = serde_json::to_value(&s).unwrap();
    assert!(wire["data"]["task.json"].is_string());
    let _: Secret = serde_json::from_value(wire).unwrap();

    let p = pod_spec(&l, &k, NS);
    let meta = &p.metadata;
    assert_eq!(meta.name.as_deref(), Some(name.as_str()));
    let lab = meta.labels.as_ref().unwrap();
    for (key, v) in [
        ("app.kubernetes.io/name", "venn-task"),
        ("app.kubernetes.io/component", "task"),
        ("app.kubernetes.io/managed-by", "venn"),
        ("venn.dev/party", "alice"),
        ("venn.dev/job", "job-1"),
        ("venn.dev/task", "job-1-psi"),
        ("venn.dev/attempt", "1"),
        ("team", "risk"),
    ] {
        assert_eq!(lab.get(key).map(String::as_str), Some(v), "label {key}");
    }
    let ann = meta.annotations.as_ref().unwrap();
    assert_eq!(ann["venn.dev/job-id"], "job-1");
    assert_eq!(ann["venn.dev/task-id"], "job-1-psi");

    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.service_account_name.as_deref(), Some("venn-task"));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));
    assert_eq!(psc.fs_group, Some(65532));
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(spec.containers.len(), 1);
    let c = &spec.containers[0];
    assert_eq!(c.name, "task");
    assert_eq!(c.image.as_deref(), Some("registry.example/venn:0.1.0"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.command.as_deref().unwrap(),
        [
            "venn",
            "task",
            "run",
            "--config",
            "/etc/venn-task/task.json"
        ]
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
        ["ALL"]
    );
    let res = c.resources.as_ref().unwrap();
    let q = |m: &Option<BTreeMap<String, Quantity>>, k: &str| m.as_ref().unwrap()[k].0.clone();
    assert_eq!(q(&res.requests, "cpu"), "500m");
    assert_eq!(q(&res.requests, "memory"), "512Mi");
    assert_eq!(q(&res.limits, "cpu"), "2");
    assert_eq!(q(&res.limits, "memory"), "2Gi");
    // Mounts: the config read-only, the data claim at the node's path, a writable /tmp.
    let mounts = c.volume_mounts.as_deref().unwrap();
    let mount = |n: &str| mounts.iter().find(|m| m.name == n).unwrap();
    assert_eq!(mount("task-config").mount_path, "/etc/venn-task");
    assert_eq!(mount("task-config").read_only, Some(true));
    assert_eq!(mount("data").mount_path, "/var/lib/venn");
    assert_eq!(mount("tmp").mount_path, "/tmp");
    let vols = spec.volumes.as_deref().unwrap();
    let vol = |n: &str| vols.iter().find(|v| v.name == n).unwrap();
    let sv = vol("task-config").secret.as_ref().unwrap();
    assert_eq!(sv.secret_name.as_deref(), Some(name.as_str()));
    assert_eq!(sv.default_mode, Some(0o400));
    assert_eq!(
        vol("data")
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "venn-data"
    );
    assert!(vol("tmp").empty_dir.is_some());

    // The secret is in the Secret only: not in the pod (env, args, labels, annotations).
    let wire = serde_json::to_string(&p).unwrap();
    assert!(
        !wire.contains(SECRET),
        "the task secret leaked into the pod"
    );
    // The pod parses back as the API type with nothing lost.
    let again: Pod = serde_json::from_str(&wire).unwrap();
    assert_eq!(again, p);
}

#[test]
fn runtime_labels_and_names_are_valid_for_any_ids() {
    let long = "a-very-long-task-identifier-that-does-not-fit-into-a-label-value-at-all";
    let v = label_value(long);
    assert!(is_label_value(&v) && v.len() <= 63, "{v}");
    assert_ne!(
        v,
        label_value(&format!("{long}x")),
        "distinct ids, distinct labels"
    );
    for weird in ["Task_1", "job.x", "--", "数据", long] {
        let n = pod_name("alice", "job", weird, 1, 0);
        assert!(crate::config::check_domain_id(&n).is_ok(), "{weird}: {n}");
        assert!(is_label_value(&label_value(weird)), "{weird}");
    }
}

#[test]
fn runtime_resources_from_the_job() {
    let d = settings().default_resources;
    assert_eq!(party_resources(None, &d), d);
    let r = party_resources(Some(&json!({"cpu": "4", "memory": "8Gi"})), &d);
    assert_eq!((r.cpu_request.as_str(), r.cpu_limit.as_str()), ("4", "4"));
    assert_eq!(
        (r.memory_request.as_str(), r.memory_limit.as_str()),
        ("8Gi", "8Gi")
    );
    let r = party_resources(
        Some(&json!({"min_cpu": "1", "max_cpu": 3, "min_memory": "1Gi", "max_memory": "6Gi"})),
        &d,
    );
    assert_eq!(
        [
            &r.cpu_request,
            &r.cpu_limit,
            &r.memory_request,
            &r.memory_limit
        ],
        ["1", "3", "1Gi", "6Gi"]
    );
    // A malformed value falls back to the default, field by field.
    let r = party_resources(Some(&json!({"cpu": "lots", "memory": "3Gi"})), &d);
    assert_eq!(r.cpu_request, "500m");
    assert_eq!(r.memory_limit, "3Gi");
}

#[test]
fn runtime_pod_states_from_api_objects() {
    let at = |name: &str, secs: i64| pod_state(&fixture(name), CREATED + secs, 120);
    assert_eq!(
        at("pending_unschedulable", 5),
        PodState::Pending(
            "Unschedulable: 0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 \
             nodes are available: 3 No preemption victims found for incoming pod."
                .into()
        )
    );
    assert_eq!(
        at("pending_creating", 2),
        PodState::Pending("ContainerCreating".into())
    );
    assert_eq!(at("running", 10), PodState::Running);
    assert_eq!(at("succeeded", 130), PodState::Succeeded);

    // Image pull problems: Pending within the grace period, Failed with the reason after it.
    let within = at("image_pull_backoff", 60);
    assert!(
        matches!(&within, PodState::Pending(r) if r.starts_with("ImagePullBackOff: Back-off pulling")),
        "{within:?}"
    );
    let after = at("image_pull_backoff", 121);
    match &after {
        PodState::Failed(r) => {
            assert!(r.starts_with("ImagePullBackOff: "), "{r}");
            assert!(r.contains("not found") && r.contains("after 121 s"), "{r}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(at("err_image_pull", 30), PodState::Pending(r) if r.starts_with("ErrImagePull"))
    );
    assert!(
        matches!(at("err_image_pull", 500), PodState::Failed(r) if r.contains("401 Unauthorized"))
    );
    // An invalid image name never resolves: Failed at once.
    assert!(
        matches!(at("invalid_image_name", 1), PodState::Failed(r) if r.starts_with("InvalidImageName: "))
    );

    // Failures carry the container's reason and exit code.
    match at("failed_oomkilled", 70) {
        PodState::Failed(r) => {
            assert!(r.starts_with("OOMKilled, exit code 137"), "{r}");
            assert!(r.contains("raise the memory limit"), "{r}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(at("failed_exit_1", 70), PodState::Failed(r) if r.starts_with("Error, exit code 1"))
    );
    match at("failed_evicted", 70) {
        PodState::Failed(r) => {
            assert!(r.contains("exit code 137"), "{r}");
            assert!(
                r.contains("The node was low on resource: ephemeral-storage"),
                "{r}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A pod without status (just created) is Pending.
    let mut bare = fixture("running");
    bare.status = None;
    assert_eq!(
        pod_state(&bare, CREATED, 120),
        PodState::Pending("created".into())
    );
    for s in [
        PodState::Succeeded,
        PodState::Gone,
        PodState::Failed("x".into()),
    ] {
        assert!(s.is_final());
    }
}

#[test]
fn runtime_kubernetes_settings_validation() {
    let base = "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1\n\
                data_dir: /var/lib/venn/venn-data\nruntime: kubernetes\n";
    let k8s = "kubernetes:\n  image: venn:0.1.0\n  task_address: venn.ns.svc:1081\n  \
               data_volume_claim: venn-data\n";
    let check = |text: String| {
        Config::from_yaml(&text)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    };
    let ok = check(format!(
        "{base}gateway:\n  task_listen: 0.0.0.0:1081\n{k8s}"
    ))
    .unwrap();
    let k = ok.kubernetes.unwrap();
    assert_eq!(k.image_pull_policy, "IfNotPresent");
    assert_eq!(k.data_mount_path, PathBuf::from("/var/lib/venn"));
    assert_eq!(k.default_resources.memory_limit, "2Gi");
    assert_eq!(k.image_pull_grace_seconds, 120);

    for (text, needle) in [
        (base.to_owned(), "needs a kubernetes section"),
        (
            format!("{base}gateway:\n  task_listen: 0.0.0.0:0\n{k8s}"),
            "with a fixed port",
        ),
        (
            format!("{base}data_dir: ./venn-data\n{k8s}")
                .replace("data_dir: /var/lib/venn/venn-data\n", ""),
            "inside kubernetes.data_mount_path",
        ),
        (
            format!("{base}{k8s}  image_pull_policy: Sometimes\n"),
            "image_pull_policy",
        ),
        (
            format!("{base}{k8s}").replace("venn.ns.svc:1081", "venn.ns.svc"),
            "kubernetes.task_address",
        ),
        (
            format!("{base}{k8s}").replace("venn-data\n", "Venn_Data\n"),
            "kubernetes.data_volume_claim",
        ),
        (
            format!("{base}{k8s}  default_resources:\n    memory_limit: 2 GB\n"),
            "memory_limit",
        ),
        (
            format!("{base}{k8s}  pod_labels:\n    venn.dev/job: x\n"),
            "set by venn",
        ),
        (
            format!("{base}{k8s}").replace("runtime: kubernetes\n", ""),
            "only used with runtime: kubernetes",
        ),
    ] {
        let err = check(text.clone()).map(|_| ()).unwrap_err();
        assert!(err.contains(needle), "{text}\n=> {err}");
    }
    // The process runtime keeps the task port on loopback.
    let err = check(
        "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1\ngateway:\n  \
         task_listen: 0.0.0.0:1081\n"
            .into(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.contains("must be a loopback address"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A local imitation of the Kubernetes API paths the runtime uses.

#[derive(Default)]
struct Api {
    /// (kind, body) of every create, in order.
    created: Vec<(String, Value)>,
    /// "pods/NAME" or "secrets/NAME" of every delete, in order.
    deleted: Vec<String>,
    /// What `get` of the pod returns now; `None`: 404.
    current: Option<Value>,
    /// Watch events still to send (each watch call sends them all, then ends).
    events: VecDeque<Value>,
    /// Every request line, for the assertions on paths and queries.
    requests: Vec<String>,
    /// Refuse pod creation with this status.
    refuse_pods: Option<u16>,
    /// What `get` of a pod by name returns, before `current` (deleting the pod removes it).
    by_name: BTreeMap<String, Value>,
    /// What a list returns instead of fixtures/pod_list.json.
    list: Option<Value>,
}

type Shared = Arc<Mutex<Api>>;

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

async fn create_pod(
    State(api): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    body: Bytes,
) -> Response {
    create(&api, ns, "pods".into(), body)
}

async fn create_secret(
    State(api): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    body: Bytes,
) -> Response {
    create(&api, ns, "secrets".into(), body)
}

fn create(api: &Shared, ns: String, kind: String, body: Bytes) -> Response {
    let mut a = api.lock().unwrap();
    a.requests.push(format!("POST {ns}/{kind}"));
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    if kind == "pods"
        && let Some(code) = a.refuse_pods
    {
        return status(
            code,
            "Forbidden",
            "pods is forbidden: exceeded quota: compute",
        );
    }
    v["metadata"]["resourceVersion"] = json!("100");
    v["metadata"]["uid"] = json!("5e0c3c2a-0000-4000-8000-000000000001");
    v["metadata"]["creationTimestamp"] = json!("2026-11-22T10:00:00Z");
    a.created.push((kind, v.clone()));
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn get_pod(
    State(api): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    let mut a = api.lock().unwrap();
    a.requests.push(format!("GET {ns}/pods/{name}"));
    if let Some(p) = a.by_name.get(&name) {
        return axum::Json(p.clone()).into_response();
    }
    match a.current.clone() {
        Some(p) => axum::Json(p).into_response(),
        None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

async fn pods(
    State(api): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut a = api.lock().unwrap();
    let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    a.requests
        .push(format!("GET {ns}/pods?{}", query.join("&")));
    if q.get("watch").map(String::as_str) == Some("true") {
        // Newline-delimited watch events, as the API streams them.
        let mut body = String::new();
        while let Some(ev) = a.events.pop_front() {
            if let Some(obj) = ev.get("object").filter(|_| ev["type"] != "DELETED") {
                a.current = Some(obj.clone());
            }
            if ev["type"] == "DELETED" {
                a.current = None;
            }
            body.push_str(&ev.to_string());
            body.push('\n');
        }
        return ([("content-type", "application/json")], body).into_response();
    }
    if let Some(list) = a.list.clone() {
        return axum::Json(list).into_response();
    }
    axum::Json(serde_json::from_str::<Value>(include_str!("fixtures/pod_list.json")).unwrap())
        .into_response()
}

async fn log(
    State(api): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut a = api.lock().unwrap();
    a.requests.push(format!(
        "GET {ns}/pods/{name}/log?container={}",
        q.get("container").cloned().unwrap_or_default()
    ));
    "2026-11-22T10:00:04Z INFO linked through the gateway peer=bob\n\
     2026-11-22T10:02:07Z INFO psi done intersection=41\n"
        .into_response()
}

async fn delete_pod(
    State(api): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    delete(&api, ns, "pods".into(), name)
}

async fn delete_secret(
    State(api): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
) -> Response {
    delete(&api, ns, "secrets".into(), name)
}

fn delete(api: &Shared, ns: String, kind: String, name: String) -> Response {
    let mut a = api.lock().unwrap();
    a.requests.push(format!("DELETE {ns}/{kind}/{name}"));
    a.deleted.push(format!("{kind}/{name}"));
    if kind == "pods" {
        a.current = None;
        a.by_name.remove(&name);
    }
    status(200, "", "")
}

async fn imitation() -> (Shared, kube::Config) {
    let api: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v1/namespaces/{ns}/pods", get(pods).post(create_pod))
        .route("/api/v1/namespaces/{ns}/secrets", post(create_secret))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod).delete(delete_pod),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(log))
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            axum::routing::delete(delete_secret),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_namespace = "default".into();
    (api, config)
}

fn event(kind: &str, pod: &str) -> Value {
    json!({"type": kind, "object": serde_json::to_value(fixture(pod)).unwrap()})
}

#[tokio::test]
async fn runtime_create_watch_logs_delete_through_the_api() {
    let (api, config) = imitation().await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();
    assert_eq!(
        k.namespace(),
        NS,
        "the configured namespace wins over the client's"
    );
    let l = launch();
    let name = k.create(&l).await.unwrap();
    assert_eq!(name, l.name());
    {
        let a = api.lock().unwrap();
        let kinds: Vec<&str> = a.created.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["secrets", "pods"],
            "the Secret exists before the pod"
        );
        // What reached the API parses as the API types.
        let s: Secret = serde_json::from_value(a.created[0].1.clone()).unwrap();
        let cfg: TaskConfig = serde_json::from_slice(&s.data.unwrap()["task.json"].0).unwrap();
        assert_eq!(cfg.secret, SECRET);
        let p: Pod = serde_json::from_value(a.created[1].1.clone()).unwrap();
        assert_eq!(p.metadata.namespace.as_deref(), Some(NS));
        assert!(!a.created[1].1.to_string().contains(SECRET));
    }

    // The pod goes ContainerCreating → Running → Succeeded: the get gives the first state,
    // the watch the others.
    {
        let mut a = api.lock().unwrap();
        a.current = Some(serde_json::to_value(fixture("pending_creating")).unwrap());
        a.events = VecDeque::from([
            json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"resourceVersion": "48216"}}}),
            event("MODIFIED", "running"),
            event("MODIFIED", "succeeded"),
        ]);
    }
    let mut seen = Vec::new();
    let end = k.follow(&name, |s| seen.push(s.clone())).await;
    assert_eq!(end, PodState::Succeeded);
    assert_eq!(
        seen,
        [
            PodState::Pending("ContainerCreating".into()),
            PodState::Running
        ]
    );

    let log = k.logs(&name, 1 << 20).await.unwrap();
    assert!(log.contains("psi done intersection=41"), "{log}");
    let tail = k.logs(&name, 16).await.unwrap();
    assert_eq!(tail, "intersection=41\n");

    k.delete(&name).await;
    let a = api.lock().unwrap();
    assert_eq!(
        a.deleted,
        [format!("pods/{name}"), format!("secrets/{name}")]
    );
    let watch = a
        .requests
        .iter()
        .find(|r| r.contains("watch=true"))
        .expect("a watch request");
    assert!(
        watch.contains(&format!("fieldSelector=metadata.name={name}"))
            && watch.contains("resourceVersion=48215"),
        "{watch}"
    );
    assert!(
        a.requests
            .iter()
            .any(|r| r == &format!("GET {NS}/pods/{name}/log?container=task")),
        "{:?}",
        a.requests
    );
}

#[tokio::test]
async fn runtime_follow_ends_on_failure_deletion_and_pull_errors() {
    let (api, config) = imitation().await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();

    // OOMKilled while running.
    {
        let mut a = api.lock().unwrap();
        a.current = Some(serde_json::to_value(fixture("running")).unwrap());
        a.events = VecDeque::from([event("MODIFIED", "failed_oomkilled")]);
    }
    let end = k.follow("p", |_| {}).await;
    assert!(
        matches!(&end, PodState::Failed(r) if r.starts_with("OOMKilled, exit code 137")),
        "{end:?}"
    );
    assert!(end.exit_text().contains("OOMKilled"));

    // Deleted by someone else while running.
    {
        let mut a = api.lock().unwrap();
        a.current = Some(serde_json::to_value(fixture("running")).unwrap());
        a.events = VecDeque::from([event("DELETED", "running")]);
    }
    assert_eq!(k.follow("p", |_| {}).await, PodState::Gone);

    // A watch that ends without news: the runtime gets the pod again and goes on.
    {
        let mut a = api.lock().unwrap();
        a.current = Some(serde_json::to_value(fixture("running")).unwrap());
        a.events = VecDeque::from([event("MODIFIED", "running")]);
    }
    let api2 = api.clone();
    let finisher = tokio::spawn(async move {
        // Once the runtime has re-read the pod after the first watch, let it finish.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut a = api2.lock().unwrap();
            let watches = a
                .requests
                .iter()
                .filter(|r| r.contains("watch=true"))
                .count();
            if watches >= 1 {
                a.current = Some(serde_json::to_value(fixture("failed_exit_1")).unwrap());
                break;
            }
        }
    });
    let end = tokio::time::timeout(Duration::from_secs(20), k.follow("p", |_| {}))
        .await
        .expect("follow ends");
    finisher.await.unwrap();
    assert!(
        matches!(&end, PodState::Failed(r) if r.starts_with("Error, exit code 1")),
        "{end:?}"
    );

    // An image that cannot be pulled, long past the grace period: Failed from the first get.
    {
        let mut a = api.lock().unwrap();
        a.current = Some(serde_json::to_value(fixture("image_pull_backoff")).unwrap());
        a.events.clear();
    }
    let end = k.follow("p", |_| {}).await;
    assert!(
        matches!(&end, PodState::Failed(r) if r.starts_with("ImagePullBackOff")),
        "{end:?}"
    );

    // No pod at all.
    api.lock().unwrap().current = None;
    assert_eq!(k.follow("p", |_| {}).await, PodState::Gone);
}

#[tokio::test]
async fn runtime_refused_pod_removes_its_secret() {
    let (api, config) = imitation().await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();
    api.lock().unwrap().refuse_pods = Some(403);
    let err = k.create(&launch()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, NodeError::Kubernetes(_)), "{msg}");
    assert!(
        msg.contains("creating pod lite-alice/venn-job-1-psi-"),
        "{msg}"
    );
    assert!(msg.contains("exceeded quota"), "{msg}");
    assert!(!msg.contains(SECRET), "{msg}");
    let a = api.lock().unwrap();
    assert_eq!(a.created.len(), 1, "only the Secret was created");
    assert_eq!(a.deleted, [format!("secrets/{}", launch().name())]);
}

#[tokio::test]
async fn runtime_lists_own_pods_for_reattach() {
    let (api, config) = imitation().await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();
    let found = k.list_pods().await.unwrap();
    assert_eq!(
        found,
        [
            FoundPod {
                name: "venn-job-1-psi-3f2a9c01d4".into(),
                job_id: "job-1".into(),
                task_id: "job-1-psi".into(),
                attempt: 1,
                worker: 0,
                workers: 1,
            },
            FoundPod {
                name: "venn-job-2-psi-77aa00bb11".into(),
                job_id: "job-2".into(),
                task_id: "job-2-psi".into(),
                attempt: 3,
                worker: 0,
                workers: 1,
            },
        ],
        "the pod without venn's annotations is not ours; pods without worker annotations \
         (older versions) are worker 0 of 1"
    );
    let a = api.lock().unwrap();
    let list = a
        .requests
        .iter()
        .find(|r| r.contains("labelSelector"))
        .unwrap();
    assert!(
        list.contains("labelSelector=app.kubernetes.io/managed-by=venn,venn.dev/party=alice"),
        "{list}"
    );
}

// ---------------------------------------------------------------------------------------------
// Workers: N pods per party.

const TASK_DIR: &str = "/var/lib/venn/venn-data/jobs/job-1/job-1-psi";

/// Worker `w` of a party of `n` workers, derived as `start` derives it.
fn worker_launch(n: u32, w: u32) -> Launch {
    let mut base = launch();
    base.config.workers = n;
    base.config.plan_nonce = "0123456789abcdef0123456789abcdef".into();
    base.config.parts_dir = Some(PathBuf::from(TASK_DIR).join("parts"));
    Launch {
        config: crate::runtime::worker_config(&base.config, std::path::Path::new(TASK_DIR), w),
        ..base
    }
}

fn secret_config(s: &Secret) -> TaskConfig {
    serde_json::from_slice(&s.data.as_ref().unwrap()["task.json"].0).unwrap()
}

#[test]
fn runtime_worker_pods_of_a_party_of_three() {
    let k = settings();
    let (l0, l2) = (worker_launch(3, 0), worker_launch(3, 2));
    let names: Vec<String> = (0..3).map(|w| worker_launch(3, w).name()).collect();
    // Worker 0 keeps the single-worker name; the others are distinct and say which they are.
    assert_eq!(names[0], launch().name());
    assert!(names[2].starts_with("venn-job-1-psi-w2-"), "{}", names[2]);
    assert_ne!(names[1], names[2]);
    assert_ne!(names[0], names[1]);
    for n in &names {
        assert!(crate::config::check_domain_id(n).is_ok(), "{n}");
    }
    // Long or odd task IDs, the largest worker index: still a valid, unique name.
    let long = "a-very-long-task-identifier-that-does-not-fit-into-a-label-value-at-all";
    for task in [long, "--", "数据", "Task_1"] {
        let a = pod_name("alice", "job", task, 1, 255);
        let b = pod_name("alice", "job", task, 1, 254);
        assert!(crate::config::check_domain_id(&a).is_ok(), "{a}");
        assert!(a.len() <= 63 && a != b, "{a} {b}");
    }

    for (l, w) in [(&l0, "0"), (&l2, "2")] {
        let p = pod_spec(l, &k, NS);
        let s = secret_spec(l, &k, NS).unwrap();
        let name = l.name();
        assert_eq!(p.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(s.metadata.name.as_deref(), Some(name.as_str()));
        for meta in [&p.metadata, &s.metadata] {
            let lab = meta.labels.as_ref().unwrap();
            assert_eq!(lab["venn.dev/worker"], w);
            assert_eq!(lab["venn.dev/task"], "job-1-psi");
            assert_eq!(lab["venn.dev/attempt"], "1");
            let ann = meta.annotations.as_ref().unwrap();
            assert_eq!(ann["venn.dev/worker"], w);
            assert_eq!(ann["venn.dev/workers"], "3");
            assert_eq!(ann["venn.dev/task-id"], "job-1-psi");
        }
        // Each pod mounts its own worker's Secret.
        let spec = p.spec.as_ref().unwrap();
        let vol = spec
            .volumes
            .as_deref()
            .unwrap()
            .iter()
            .find(|v| v.name == "task-config")
            .unwrap();
        assert_eq!(
            vol.secret.as_ref().unwrap().secret_name.as_deref(),
            Some(name.as_str())
        );
        // Each pod asks for the party's resources.
        let res = spec.containers[0].resources.as_ref().unwrap();
        assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "2Gi");
        assert!(!serde_json::to_string(&p).unwrap().contains(SECRET));
    }

    let (c0, c2) = (
        secret_config(&secret_spec(&l0, &k, NS).unwrap()),
        secret_config(&secret_spec(&l2, &k, NS).unwrap()),
    );
    let parts = PathBuf::from(TASK_DIR).join("parts");
    assert_eq!((c0.worker, c0.workers), (0, 3));
    assert_eq!(c0.result, PathBuf::from(TASK_DIR).join("result.json"));
    assert_eq!(c0.work_dir, PathBuf::from(TASK_DIR).join("tmp"));
    assert_eq!((c2.worker, c2.workers), (2, 3));
    assert_eq!(c2.result, parts.join("w2.result.json"));
    assert_eq!(c2.result, crate::runtime::worker_result(&parts, 2));
    assert_eq!(c2.work_dir, PathBuf::from(TASK_DIR).join("tmp-w2"));
    for c in [&c0, &c2] {
        assert_eq!(c.parts_dir.as_ref(), Some(&parts));
        assert_eq!(c.secret, SECRET);
        assert_eq!(c.plan_nonce, "0123456789abcdef0123456789abcdef");
        assert_eq!(c.gateway, "venn.lite-alice.svc.cluster.local:1081");
    }
}

#[test]
fn runtime_party_state_over_worker_pods() {
    use PodState::{Failed, Gone, Pending, Running, Succeeded};
    let oom = || Failed("OOMKilled, exit code 137".into());
    assert_eq!(
        party_state(&[Running, Running, Running]),
        PartyState::Running
    );
    assert_eq!(
        party_state(&[Running, Pending("ContainerCreating".into()), Running]),
        PartyState::Pending("worker 1: ContainerCreating".into())
    );
    // A worker that is done before worker 0 merges: still running.
    assert_eq!(
        party_state(&[Running, Succeeded, Running]),
        PartyState::Running
    );
    match party_state(&[Running, oom(), Running]) {
        PartyState::Failed { worker, why } => {
            assert_eq!(worker, 1);
            assert!(why.starts_with("worker 1 of 3: "), "{why}");
            assert!(why.contains("OOMKilled"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    match party_state(&[Pending("x".into()), Succeeded, Gone]) {
        PartyState::Failed { worker, why } => {
            assert_eq!(worker, 2);
            assert!(
                why.contains("worker 2 of 3") && why.contains("deleted"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Worker 0's end decides, whatever the others do.
    assert_eq!(
        party_state(&[Succeeded, Succeeded, Succeeded]),
        PartyState::Ended("worker 0 of 3: the task pod succeeded".into())
    );
    assert!(matches!(
        party_state(&[oom(), Running, oom()]),
        PartyState::Ended(t) if t.starts_with("worker 0 of 3: the task pod failed (OOMKilled")
    ));
    // One worker: the texts of a single pod.
    assert_eq!(
        party_state(&[Pending("ContainerCreating".into())]),
        PartyState::Pending("ContainerCreating".into())
    );
    assert_eq!(
        party_state(&[Succeeded]),
        PartyState::Ended("the task pod succeeded".into())
    );
    assert!(!PartyState::Running.is_final());
    assert!(PartyState::Ended(String::new()).is_final());
}

fn found(name: &str, job: &str, attempt: i64, worker: u32, workers: u32) -> FoundPod {
    FoundPod {
        name: name.into(),
        job_id: job.into(),
        task_id: format!("{job}-psi"),
        attempt,
        worker,
        workers,
    }
}

#[test]
fn runtime_reattach_groups_worker_pods() {
    let groups = group_pods(vec![
        found("a2", "job-1", 1, 2, 3),
        found("b0", "job-2", 1, 0, 1),
        found("a0", "job-1", 1, 0, 3),
        found("old", "job-1", 0, 0, 3),
        found("a1", "job-1", 1, 1, 3),
    ]);
    assert_eq!(groups.len(), 3, "{groups:?}");
    let g = &groups[&("job-1".into(), "job-1-psi".into(), 1)];
    assert_eq!(
        party_pods(g, 3),
        Ok(vec!["a0".into(), "a1".into(), "a2".into()])
    );
    // The count on the pods wins over a smaller one from the task.
    assert_eq!(party_pods(g, 1).map(|v| v.len()), Ok(3));
    let single = &groups[&("job-2".into(), "job-2-psi".into(), 1)];
    assert_eq!(party_pods(single, 1), Ok(vec!["b0".into()]));

    // Worker 1 missing: the reason names it.
    let g = vec![found("a0", "job-1", 1, 0, 3), found("a2", "job-1", 1, 2, 3)];
    assert_eq!(
        party_pods(&g, 3),
        Err("the task pod of worker 1 (of 3) is gone".into())
    );
    assert_eq!(
        party_pods(&g[..1], 3),
        Err("the task pods of workers 1, 2 (of 3) are gone".into())
    );
    assert_eq!(
        party_pods(&[], 3),
        Err("the task pods of all 3 workers are gone".into())
    );
    assert_eq!(party_pods(&[], 1), Err("the task pod is gone".into()));
}

async fn k8s_state(dir: &std::path::Path, config: kube::Config) -> SharedState {
    let state = crate::state::NodeState::for_tests(Config {
        data_dir: dir.to_path_buf(),
        domain_id: "alice".into(),
        ..Config::default()
    })
    .await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();
    state.runtime.use_kubernetes(k).unwrap();
    state
}

async fn running_row(state: &SharedState, attempt: i64) {
    crate::runtime::running_party_for_tests(state, "alice", attempt).await;
}

async fn party_row(state: &SharedState) -> TaskPartyRow {
    state
        .store
        .task_party("job-1", "job-1-psi", "alice")
        .await
        .unwrap()
        .unwrap()
}

fn pod_value(name: &str, fixture_name: &str) -> Value {
    let mut v = serde_json::to_value(fixture(fixture_name)).unwrap();
    v["metadata"]["name"] = json!(name);
    v
}

/// Node `alice` on the kubernetes runtime against an imitation API server (its data
/// directory, the API's record, the node), and the pod names of the three workers of its
/// party of task `job-1-psi`, Running in attempt 1 when `running`.
async fn worker_party(running: bool) -> (tempfile::TempDir, Shared, SharedState, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (api, config) = imitation().await;
    let state = k8s_state(dir.path(), config).await;
    if running {
        running_row(&state, 1).await;
    }
    let names = (0..3).map(|w| worker_launch(3, w).name()).collect();
    (dir, api, state, names)
}

/// The imitation API serves worker i's pod as the recorded pod `fixtures[i]`.
fn serve_pods(api: &Shared, names: &[String], fixtures: [&str; 3]) {
    let mut a = api.lock().unwrap();
    for (n, f) in names.iter().zip(fixtures) {
        a.by_name.insert(n.clone(), pod_value(n, f));
    }
}

/// The deletes that remove these pods with their Secrets, in order.
fn pods_and_secrets(names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| [format!("pods/{n}"), format!("secrets/{n}")])
        .collect()
}

/// The party is Failed with a reason that starts with `why`.
async fn assert_failed(state: &SharedState, why: &str) {
    let row = party_row(state).await;
    assert_eq!(row.phase, "Failed");
    assert!(row.reason.starts_with(why), "{}", row.reason);
}

/// Waits (generously) until the imitation API has seen `n` deletes.
async fn deleted_after(api: &Shared, n: usize) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let a = api.lock().unwrap();
                if a.deleted.len() >= n {
                    return a.deleted.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the pods are deleted")
}

#[tokio::test]
async fn runtime_create_and_delete_three_worker_pods_through_the_api() {
    let (api, config) = imitation().await;
    let k = Kubernetes::with_config(config, &settings(), "alice").unwrap();
    let mut names = Vec::new();
    for w in 0..3 {
        names.push(k.create(&worker_launch(3, w)).await.unwrap());
    }
    {
        let a = api.lock().unwrap();
        let kinds: Vec<&str> = a.created.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["secrets", "pods", "secrets", "pods", "secrets", "pods"]
        );
        for (i, (_, body)) in a.created.iter().enumerate() {
            let w = (i / 2) as u32;
            assert_eq!(body["metadata"]["name"], json!(names[w as usize]));
            assert_eq!(
                body["metadata"]["labels"]["venn.dev/worker"],
                json!(w.to_string())
            );
        }
        let s: Secret = serde_json::from_value(a.created[4].1.clone()).unwrap();
        assert_eq!(secret_config(&s).worker, 2);
    }
    for n in &names {
        k.delete(n).await;
    }
    let a = api.lock().unwrap();
    assert_eq!(a.deleted, pods_and_secrets(&names));
}

#[tokio::test]
async fn runtime_failed_worker_fails_the_party_and_deletes_its_pods() {
    let (_dir, api, state, names) = worker_party(true).await;
    serve_pods(&api, &names, ["running", "failed_oomkilled", "running"]);
    let k = state.runtime.kubernetes().unwrap();
    k.track("job-1", "job-1-psi", &names);
    spawn_follow(&state, "job-1".into(), "job-1-psi".into(), 1, names.clone());

    // All three pods and Secrets go, the running workers 0 and 2 included.
    let deleted = deleted_after(&api, 6).await;
    for n in &names {
        assert!(deleted.contains(&format!("pods/{n}")), "{deleted:?}");
        assert!(deleted.contains(&format!("secrets/{n}")), "{deleted:?}");
    }
    assert_failed(&state, "worker 1 of 3: the task pod failed (OOMKilled").await;
    assert!(k.pods_of("job-1", "job-1-psi").is_none());
    // Each worker's log is kept in task.log under its own header.
    let log = std::fs::read_to_string(
        crate::runtime::task_dir(&state, "job-1", "job-1-psi").join("task.log"),
    )
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        assert!(
            log.contains(&format!("--- worker {i} of 3, pod {n}\n")),
            "{log}"
        );
    }
}

#[tokio::test]
async fn runtime_worker_0_ends_the_party() {
    let (_dir, api, state, names) = worker_party(true).await;
    serve_pods(&api, &names, ["succeeded"; 3]);
    let k = state.runtime.kubernetes().unwrap();
    k.track("job-1", "job-1-psi", &names);
    // The party's logs while it runs: every worker under a header.
    let logs = k.party_logs(&names, 1 << 20).await.unwrap();
    assert!(
        logs.starts_with(&format!("--- worker 0 of 3 (pod {})\n", names[0])),
        "{logs}"
    );
    assert_eq!(
        logs.matches("psi done intersection=41").count(),
        3,
        "{logs}"
    );

    spawn_follow(&state, "job-1".into(), "job-1-psi".into(), 1, names.clone());
    let deleted = deleted_after(&api, 6).await;
    assert_eq!(deleted.len(), 6, "{deleted:?}");
    // finish read worker 0's result.json: there is none here, so the party failed with
    // worker 0's pod end in the reason (a written result would make it Succeeded).
    assert_failed(
        &state,
        "worker 0 of 3: the task pod succeeded without writing a result",
    )
    .await;
}

#[tokio::test]
async fn runtime_stop_deletes_every_worker_pod() {
    let (_dir, api, state, names) = worker_party(false).await;
    let k = state.runtime.kubernetes().unwrap();
    k.track("job-1", "job-1-psi", &names);
    stop(&state, k, "job-1", "job-1-psi", 1).await;
    let deleted = api.lock().unwrap().deleted.clone();
    assert_eq!(deleted, pods_and_secrets(&names));
    assert!(k.tracked().is_empty());
}

#[tokio::test]
async fn runtime_reattach_fails_a_party_missing_a_worker() {
    let (_dir, api, state, names) = worker_party(true).await;
    // Workers 0 and 2 of 3 still exist; worker 1's pod is gone.
    let items: Vec<Value> = [0usize, 2]
        .iter()
        .map(|&w| {
            let l = worker_launch(3, w as u32);
            let mut p = serde_json::to_value(pod_spec(&l, &settings(), NS)).unwrap();
            p["status"] = json!({"phase": "Running"});
            p
        })
        .collect();
    api.lock().unwrap().list = Some(json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
        "items": items
    }));
    let k = state.runtime.kubernetes().unwrap();
    reattach(&state, k).await.unwrap();
    assert_failed(
        &state,
        "the node restarted and the task pod of worker 1 (of 3) is gone",
    )
    .await;
    // The workers that are left are cleaned up, not watched.
    let deleted = api.lock().unwrap().deleted.clone();
    for n in [&names[0], &names[2]] {
        assert!(deleted.contains(&format!("pods/{n}")), "{deleted:?}");
    }
    assert!(
        !deleted.iter().any(|d| d.contains(&names[1])),
        "{deleted:?}"
    );
    assert!(k.tracked().is_empty());
}

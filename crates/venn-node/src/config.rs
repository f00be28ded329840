//! The node's configuration: one YAML file written by `venn init`.
//!
//! Design decisions:
//! - **A tree of typed sections** (`gateway`, `api`, `store`), `deny_unknown_fields` everywhere, so
//!   a typo in a key is an error instead of a silently ignored setting.
//! - **Parse, then validate.** `Config::from_yaml` only parses; [`Config::validate`] checks every
//!   field and reports *all* bad fields at once, one line each, before anything binds or writes.
//! - **No secrets in the file.** Unlike Kuscia's `domainKeyData`, keys and the API token are
//!   generated into the data dir on first start; the YAML can be shared and committed.
//! - **Relative paths** (data dir) are taken from the working directory `venn` runs in, as for
//!   every other command-line tool; `venn init` writes what it was given.
//! - Domain IDs follow RFC 1123 labels (as Kubernetes namespaces, which Kuscia uses), and names
//!   that Kuscia or Kubernetes reserve are refused so a venn domain can later live next to them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};
use crate::store::{Backend, StoreOptions};

/// Domain IDs that are refused because Kuscia, Kubernetes or venn use them for themselves.
pub const RESERVED_DOMAIN_IDS: &[&str] = &[
    "master",
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "cross-domain",
    "kuscia",
    "kuscia-system",
    "kuscia-master",
    "venn",
    "venn-system",
    "localhost",
];

/// How the node takes part in a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Peer-to-peer node (Kuscia "autonomy"): its own catalogue, partners by mutual TLS.
    Autonomy,
    /// Centralized master: holds the network CA, the domains, their lite nodes and the routes;
    /// runs no task itself.
    Master,
    /// Centralized lite node: registers with the master (deploy token), receives its routes from
    /// the master, holds its data and runs its parties of tasks.
    Lite,
}

/// The `datastore` URL. Its `Debug` and `Display` hide the password; [`Datastore::as_str`]
/// gives the URL itself.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Datastore(String);

impl Datastore {
    /// The URL as written (may hold a password: never log it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when unset (SQLite in the data dir).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Datastore {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Datastore {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl std::fmt::Debug for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact(&self.0))
    }
}

impl std::fmt::Display for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::redact(&self.0))
    }
}

/// How task parties are launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A child `venn task run` process (default).
    #[default]
    Process,
    /// A pod per task party (one per worker with `workers: N`).
    Kubernetes,
}

/// Resource quantities for a task pod (Kubernetes notation: `500m`, `2`, `512Mi`, `4Gi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodResources {
    /// CPU request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_request: String,
    /// CPU limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu_limit: String,
    /// Memory request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory_request: String,
    /// Memory limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory_limit: String,
}

/// The `kubernetes` section: where and how the `kubernetes` runtime launches task pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Namespace of the task pods and their Secrets. Empty: the node pod's own namespace
    /// (in-cluster), else the kubeconfig's.
    #[serde(default)]
    pub namespace: String,
    /// Image of the task pods: a venn image (`venn task run` is its entry point's sub-command).
    pub image: String,
    /// `Always`, `IfNotPresent` (default) or `Never`.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// Image pull secret name, if the registry needs one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_pull_secret: String,
    /// ServiceAccount of the task pods (its token is never mounted). Empty: `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    /// A kubeconfig file for the node's own API access. Empty: in-cluster (the node pod's
    /// ServiceAccount token), falling back to `KUBECONFIG` / `~/.kube/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// `host:port` where task pods reach this node's task port over the pod network, e.g.
    /// `venn.lite-alice.svc.cluster.local:1081` (a Service port to `gateway.task_listen`).
    pub task_address: String,
    /// The PersistentVolumeClaim that holds `data_dir`; each task pod mounts it at the same
    /// path as the node (`data_mount_path`). ReadWriteMany, or ReadWriteOnce with task pods on
    /// the node's machine (see docs/deploy-kubernetes.md).
    pub data_volume_claim: String,
    /// Where the node mounts that claim (a parent of `data_dir`), default `/var/lib/venn`.
    #[serde(default = "default_data_mount")]
    pub data_mount_path: PathBuf,
    /// Resources of a task pod when the job names none.
    #[serde(default = "default_pod_resources")]
    pub default_resources: PodResources,
    /// A pod whose image cannot be pulled for this long is Failed, default 120.
    #[serde(default = "default_pull_grace")]
    pub image_pull_grace_seconds: u64,
    /// Extra labels of the task pods (venn always sets `app.kubernetes.io/name: venn-task`,
    /// which the NetworkPolicy selects, and its own `venn.dev/*` labels).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_data_mount() -> PathBuf {
    PathBuf::from("/var/lib/venn")
}
fn default_pull_grace() -> u64 {
    120
}
fn default_pod_resources() -> PodResources {
    PodResources {
        cpu_request: "500m".into(),
        cpu_limit: "2".into(),
        memory_request: "512Mi".into(),
        memory_limit: "2Gi".into(),
    }
}

/// The gateway section: the one port partners reach.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listen address, default `0.0.0.0:1080`.
    #[serde(default = "default_gateway_listen")]
    pub listen: String,
    /// Seconds between heartbeats to each partner, default 15.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_seconds: u64,
    /// Largest tolerated clock difference with a partner, default 300 s.
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: u64,
    /// HTTP proxy for outbound connections to partners (`http://host:port`, HTTP CONNECT);
    /// empty for direct connections. Only set explicitly: no `HTTPS_PROXY` guessing.
    #[serde(default)]
    pub proxy: String,
    /// Address where this node's tasks reach the gateway (task links and progress reports),
    /// default `127.0.0.1:0` (a free port, chosen at start). Loopback, except with the
    /// `kubernetes` runtime, whose task pods connect over the pod network (`0.0.0.0:1081`).
    #[serde(default = "default_task_listen")]
    pub task_listen: String,
}

/// How this node decides on jobs other domains initiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Accept every job that passes the data and grant checks (default).
    #[default]
    Auto,
    /// Hold such jobs in AwaitingApproval until `venn job approve|reject`.
    Manual,
}

/// The jobs section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// `auto` (default) or `manual` approval of jobs initiated by partners.
    #[serde(default)]
    pub approval: Approval,
}

/// The API section: Kuscia-compatible HTTP/JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address, default `127.0.0.1:8082` (loopback only).
    #[serde(default = "default_api_listen")]
    pub listen: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `autonomy` (peer-to-peer), `master` or `lite` (centralized network).
    pub mode: Mode,
    /// This node's domain ID, an RFC 1123 label.
    pub domain_id: String,
    /// The URL partners use to reach this node's gateway, `https://host:port`.
    pub endpoint: String,
    /// Where keys, the database and the default data source live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Database URL: empty means SQLite in the data dir (`<data dir>/venn.db`); otherwise
    /// `sqlite:///path/venn.db`, `mysql://user[:password]@host:3306/venn` (MariaDB too) or
    /// `postgres://user[:password]@host:5432/venn`. Each node needs its own database.
    #[serde(default)]
    pub datastore: Datastore,
    /// File holding the database password (e.g. a mounted Kubernetes Secret), so that the URL
    /// in this file needs none. Trailing newlines are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_password_file: Option<PathBuf>,
    /// Largest number of connections the node opens to the database (default 4 for SQLite, 10
    /// for MySQL/PostgreSQL). Keep the sum over every node sharing a server below the server's
    /// `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_max_connections: Option<u32>,
    /// How task parties are launched.
    #[serde(default)]
    pub runtime: Runtime,
    /// Settings of the `kubernetes` runtime (required with it, refused without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// The gateway.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Jobs.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Log filter (`error|warn|info|debug|trace` or a tracing filter), default `info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Lite only: the master's gateway, `https://host:port`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub master_endpoint: String,
    /// Lite only: the deploy token from `venn domain add` on the master. Needed only until the
    /// lite has registered (it is single-use and expires); then it may be removed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deploy_token: String,
    /// Lite only: a file holding the deploy token instead (e.g. a mounted Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_token_file: Option<PathBuf>,
}

fn default_gateway_listen() -> String {
    "0.0.0.0:1080".into()
}
fn default_task_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_api_listen() -> String {
    "127.0.0.1:8082".into()
}
fn default_heartbeat() -> u64 {
    15
}
fn default_skew() -> u64 {
    300
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./venn-data")
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: default_gateway_listen(),
            heartbeat_seconds: default_heartbeat(),
            max_clock_skew_seconds: default_skew(),
            proxy: String::new(),
            task_listen: default_task_listen(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
        }
    }
}

/// The embedded defaults used by `venn start` without `-c`: an autonomy node `venn-node`
/// reachable at `https://localhost:1080`, SQLite in `./venn-data`.
impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Autonomy,
            domain_id: "venn-node".into(),
            endpoint: "https://localhost:1080".into(),
            data_dir: default_data_dir(),
            datastore: Datastore::default(),
            datastore_password_file: None,
            datastore_max_connections: None,
            runtime: Runtime::Process,
            kubernetes: None,
            gateway: GatewayConfig::default(),
            api: ApiConfig::default(),
            jobs: JobsConfig::default(),
            log_level: default_log_level(),
            master_endpoint: String::new(),
            deploy_token: String::new(),
            deploy_token_file: None,
        }
    }
}

/// Checks that `id` is an RFC 1123 label and not reserved. The message names the rule broken.
pub fn check_domain_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 63 {
        return Err(format!(
            "{id:?} is longer than 63 characters (RFC 1123 label)"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{id:?} may contain only lower-case letters, digits and '-' (RFC 1123 label)"
        ));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(format!(
            "{id:?} must start and end with a letter or digit (RFC 1123 label)"
        ));
    }
    if RESERVED_DOMAIN_IDS.contains(&id) {
        return Err(format!("{id:?} is a reserved name"));
    }
    Ok(())
}

/// True for a Kubernetes resource quantity of the forms venn writes and accepts: a decimal
/// number with an optional suffix (`m`, `k`, `M`, `G`, `T`, `Ki`, `Mi`, `Gi`, `Ti`).
pub fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// True for an RFC 1123 label (a Kubernetes namespace or object name part): 1 to 63
/// lower-case letters, digits and '-', starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A parsed `https://host:port[/]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port (443 when the URL has none).
    pub port: u16,
}

impl Endpoint {
    /// Parses and checks an endpoint URL. Only `https` is accepted: nodes always speak mutual TLS.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "{s:?} must start with https:// (nodes always use mutual TLS)"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(format!("{s:?} has no host")),
        };
        if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
            return Err(format!("{s:?} must be only https://host:port"));
        }
        Ok(Self {
            host,
            port: url.port().unwrap_or(443),
        })
    }
}

/// An HTTP proxy address, `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr {
    /// Proxy host.
    pub host: String,
    /// Proxy port (default 3128).
    pub port: u16,
}

impl ProxyAddr {
    /// Parses `http://host[:port]`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{s:?} must be http://host:port (an HTTP CONNECT proxy)"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(format!("{s:?} has no host")),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(3128),
        })
    }
}

impl Config {
    /// The outbound proxy, if configured (call after `validate`).
    pub fn proxy(&self) -> Option<ProxyAddr> {
        ProxyAddr::parse(&self.gateway.proxy).ok()
    }

    /// Parses YAML text; field names and types are checked here, values in [`Config::validate`].
    pub fn from_yaml(text: &str) -> Result<Self> {
        serde_yaml_ng::from_str(text).map_err(|e| NodeError::Config(vec![e.to_string()]))
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
        Self::from_yaml(&text).map_err(|e| match e {
            NodeError::Config(v) => NodeError::Config(
                v.into_iter()
                    .map(|m| format!("{}: {m}", path.display()))
                    .collect(),
            ),
            other => other,
        })
    }

    /// Renders the configuration as YAML with a comment header (what `venn init` prints).
    pub fn to_yaml(&self) -> String {
        let body = serde_yaml_ng::to_string(self).unwrap_or_default();
        format!(
            "# venn node configuration (written by `venn init`).\n\
             # Start with: venn start -c <this file>. Keys and the API token are created in\n\
             # data_dir on first start; this file holds no secret.\n{body}"
        )
    }

    /// Checks every field; the error lists each bad field with the reason.
    pub fn validate(&self) -> Result<()> {
        let mut bad = Vec::new();
        match self.mode {
            Mode::Lite => {
                if self.master_endpoint.is_empty() {
                    bad.push("master_endpoint: a lite needs the master's gateway URL".into());
                } else if let Err(e) = Endpoint::parse(&self.master_endpoint) {
                    bad.push(format!("master_endpoint: {e}"));
                }
                if !self.deploy_token.is_empty() && self.deploy_token_file.is_some() {
                    bad.push(
                        "deploy_token_file: give the deploy token or the file, not both".into(),
                    );
                }
                if !self.deploy_token.is_empty()
                    && let Err(e) = crate::trust::DeployToken::decode(&self.deploy_token)
                {
                    bad.push(format!("deploy_token: {e}"));
                }
            }
            Mode::Autonomy | Mode::Master => {
                let mode = if self.mode == Mode::Master {
                    "master"
                } else {
                    "autonomy"
                };
                if !self.master_endpoint.is_empty() {
                    bad.push(format!(
                        "master_endpoint: only for a lite, not a {mode} node"
                    ));
                }
                if !self.deploy_token.is_empty() || self.deploy_token_file.is_some() {
                    bad.push(format!("deploy_token: only for a lite, not a {mode} node"));
                }
            }
        }
        if let Err(e) = check_domain_id(&self.domain_id) {
            bad.push(format!("domain_id: {e}"));
        }
        if let Err(e) = Endpoint::parse(&self.endpoint) {
            bad.push(format!("endpoint: {e}"));
        }
        if self.data_dir.as_os_str().is_empty() {
            bad.push("data_dir: must not be empty".into());
        }
        if !self.datastore.is_empty() {
            match Backend::from_url(self.datastore.as_str()) {
                None => bad.push(format!(
                    "datastore: {} must start with sqlite://, mysql://, mariadb:// or \
                     postgres:// (leave it empty for SQLite in <data_dir>/venn.db)",
                    self.datastore
                )),
                Some(Backend::Sqlite) => {}
                Some(_) => match url::Url::parse(self.datastore.as_str()) {
                    Err(e) => bad.push(format!("datastore: {} is not a URL: {e}", self.datastore)),
                    Ok(u) if u.host().is_none() => {
                        bad.push(format!("datastore: {} has no host", self.datastore))
                    }
                    Ok(u) if u.path().trim_matches('/').is_empty() => bad.push(format!(
                        "datastore: {} names no database (…/venn): each node needs its own",
                        self.datastore
                    )),
                    Ok(u) if u.password().is_some() && self.datastore_password_file.is_some() => {
                        bad.push(
                            "datastore_password_file: the datastore URL has a password too; \
                             keep only one (the file)"
                                .into(),
                        )
                    }
                    Ok(_) => {}
                },
            }
        }
        if self.datastore_password_file.is_some()
            && matches!(
                Backend::from_url(self.datastore.as_str()),
                None | Some(Backend::Sqlite)
            )
        {
            bad.push(
                "datastore_password_file: only for a mysql:// or postgres:// datastore".into(),
            );
        }
        if let Some(n) = self.datastore_max_connections
            && !(1..=1000).contains(&n)
        {
            bad.push("datastore_max_connections: must be between 1 and 1000".into());
        }
        match (self.runtime, &self.kubernetes) {
            (Runtime::Kubernetes, None) => bad.push(
                "kubernetes: runtime kubernetes needs a kubernetes section (image, \
                 task_address, data_volume_claim)"
                    .into(),
            ),
            (Runtime::Kubernetes, Some(k)) => self.validate_kubernetes(k, &mut bad),
            (Runtime::Process, Some(_)) => bad.push(
                "kubernetes: only used with runtime: kubernetes; remove it or set the runtime"
                    .into(),
            ),
            (Runtime::Process, None) => {}
        }
        if let Err(e) = self.gateway.listen.parse::<SocketAddr>() {
            bad.push(format!(
                "gateway.listen: {:?} is not ip:port ({e})",
                self.gateway.listen
            ));
        }
        if !(1..=3600).contains(&self.gateway.heartbeat_seconds) {
            bad.push("gateway.heartbeat_seconds: must be between 1 and 3600".into());
        }
        if !(1..=86_400).contains(&self.gateway.max_clock_skew_seconds) {
            bad.push("gateway.max_clock_skew_seconds: must be between 1 and 86400".into());
        }
        if !self.gateway.proxy.is_empty()
            && let Err(e) = ProxyAddr::parse(&self.gateway.proxy)
        {
            bad.push(format!("gateway.proxy: {e}"));
        }
        match self.gateway.task_listen.parse::<SocketAddr>() {
            Ok(a) if self.runtime == Runtime::Kubernetes => {
                if a.ip().is_loopback() || a.port() == 0 {
                    bad.push(format!(
                        "gateway.task_listen: {:?}: task pods connect over the pod network; use \
                         a non-loopback address with a fixed port, e.g. 0.0.0.0:1081 (the port \
                         behind kubernetes.task_address)",
                        self.gateway.task_listen
                    ));
                }
            }
            Ok(a) if a.ip().is_loopback() => {}
            Ok(_) => bad.push(format!(
                "gateway.task_listen: {:?} must be a loopback address (tasks run on this machine)",
                self.gateway.task_listen
            )),
            Err(e) => bad.push(format!(
                "gateway.task_listen: {:?} is not ip:port ({e})",
                self.gateway.task_listen
            )),
        }
        match self.api.listen.parse::<SocketAddr>() {
            Err(e) => bad.push(format!(
                "api.listen: {:?} is not ip:port ({e})",
                self.api.listen
            )),
            Ok(a) if a == self.gateway.listen.parse().unwrap_or(a) && a.port() != 0 => {
                bad.push("api.listen: must differ from gateway.listen".into())
            }
            Ok(_) => {}
        }
        if self.log_level.trim().is_empty() {
            bad.push("log_level: must not be empty (use info)".into());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Config(bad))
        }
    }

    fn validate_kubernetes(&self, k: &KubernetesConfig, bad: &mut Vec<String>) {
        if !k.namespace.is_empty() && !is_dns_label(&k.namespace) {
            bad.push(format!(
                "kubernetes.namespace: {:?} is not a namespace name (RFC 1123 label)",
                k.namespace
            ));
        }
        if k.image.trim().is_empty() || k.image.contains(char::is_whitespace) {
            bad.push("kubernetes.image: name the venn image of the task pods".into());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&k.image_pull_policy.as_str()) {
            bad.push(format!(
                "kubernetes.image_pull_policy: {:?} is not Always, IfNotPresent or Never",
                k.image_pull_policy
            ));
        }
        for (field, v) in [
            ("service_account", &k.service_account),
            ("image_pull_secret", &k.image_pull_secret),
            ("data_volume_claim", &k.data_volume_claim),
        ] {
            let ok = v.len() <= 253 && v.split('.').all(is_dns_label);
            if (field == "data_volume_claim" || !v.is_empty()) && !ok {
                bad.push(format!(
                    "kubernetes.{field}: {v:?} is not a Kubernetes object name"
                ));
            }
        }
        match k.task_address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            }
            _ => bad.push(format!(
                "kubernetes.task_address: {:?} must be host:port (how task pods reach this \
                 node's gateway.task_listen)",
                k.task_address
            )),
        }
        if !k.data_mount_path.is_absolute() {
            bad.push("kubernetes.data_mount_path: must be an absolute path".into());
        }
        if !(self.data_dir.is_absolute() && self.data_dir.starts_with(&k.data_mount_path)) {
            bad.push(format!(
                "data_dir: {} must be an absolute path inside kubernetes.data_mount_path {} \
                 (task pods mount the claim at the same path)",
                self.data_dir.display(),
                k.data_mount_path.display()
            ));
        }
        for (field, v) in [
            ("cpu_request", &k.default_resources.cpu_request),
            ("cpu_limit", &k.default_resources.cpu_limit),
            ("memory_request", &k.default_resources.memory_request),
            ("memory_limit", &k.default_resources.memory_limit),
        ] {
            if !v.is_empty() && !is_quantity(v) {
                bad.push(format!(
                    "kubernetes.default_resources.{field}: {v:?} is not a quantity (500m, 2, 512Mi)"
                ));
            }
        }
        if !(10..=3600).contains(&k.image_pull_grace_seconds) {
            bad.push("kubernetes.image_pull_grace_seconds: must be between 10 and 3600".into());
        }
        for (key, v) in &k.pod_labels {
            if key.starts_with("venn.dev/") || key.starts_with("app.kubernetes.io/") {
                bad.push(format!("kubernetes.pod_labels: {key} is set by venn"));
            } else if !crate::runtime::kubernetes::is_label_value(v) || key.is_empty() {
                bad.push(format!(
                    "kubernetes.pod_labels: {key}={v:?} is not a valid label"
                ));
            }
        }
    }

    /// The gateway endpoint, parsed (call after `validate`).
    pub fn endpoint(&self) -> Result<Endpoint> {
        Endpoint::parse(&self.endpoint)
            .map_err(|e| NodeError::Config(vec![format!("endpoint: {e}")]))
    }

    /// The store URL as configured (may hold a password: never log it; see
    /// [`Config::store_options`]).
    pub fn datastore_url(&self) -> String {
        if self.datastore.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("venn.db").display()
            )
        } else {
            self.datastore.as_str().to_owned()
        }
    }

    /// How to open the store: the URL, the password from `datastore_password_file` and the pool
    /// size (call after `validate`).
    pub fn store_options(&self) -> Result<StoreOptions> {
        let mut opts = StoreOptions::new(&self.datastore_url())?;
        if let Some(path) = &self.datastore_password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                NodeError::Config(vec![format!(
                    "datastore_password_file: cannot read {}: {e}",
                    path.display()
                )])
            })?;
            opts = opts.with_password(text.trim_end_matches(['\r', '\n']))?;
        }
        opts.max_connections = self.datastore_max_connections;
        Ok(opts)
    }

    /// The token file.
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("token")
    }

    /// A lite's deploy token (from `deploy_token` or `deploy_token_file`), if configured.
    pub fn deploy_token(&self) -> Result<Option<crate::trust::DeployToken>> {
        let text = match &self.deploy_token_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                NodeError::Config(vec![format!(
                    "deploy_token_file: cannot read {}: {e}",
                    path.display()
                )])
            })?,
            None => self.deploy_token.clone(),
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        crate::trust::DeployToken::decode(&text)
            .map(Some)
            .map_err(|e| NodeError::Config(vec![format!("deploy_token: {e}")]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_ids() {
        assert!(check_domain_id("alice").is_ok());
        assert!(check_domain_id("alice-2").is_ok());
        for bad in [
            "",
            "Alice",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "master",
            "default",
            "kube-system",
        ] {
            assert!(check_domain_id(bad).is_err(), "{bad}");
        }
        assert!(check_domain_id(&"a".repeat(64)).is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("https://alice.example:1080").unwrap(),
            Endpoint {
                host: "alice.example".into(),
                port: 1080
            }
        );
        assert_eq!(Endpoint::parse("https://10.0.0.1").unwrap().port, 443);
        assert!(Endpoint::parse("http://a:1").is_err());
        assert!(Endpoint::parse("https://a:1/x").is_err());
        assert!(Endpoint::parse("a:1").is_err());
    }

    #[test]
    fn validate_lists_every_bad_field() {
        let yaml =
            "mode: autonomy\ndomain_id: Master\nendpoint: http://x\ngateway:\n  listen: nope\n";
        let err = Config::from_yaml(yaml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("domain_id:"), "{err}");
        assert!(err.contains("endpoint:"), "{err}");
        assert!(err.contains("gateway.listen:"), "{err}");
    }

    #[test]
    fn master_and_lite_fields() {
        let check = |yaml: &str| Config::from_yaml(yaml).unwrap().validate();
        check("mode: master\ndomain_id: corp-master\nendpoint: https://m:1080\n").unwrap();
        let lite = "mode: lite\ndomain_id: alice\nendpoint: https://a:1080\n";
        let err = check(lite).unwrap_err().to_string();
        assert!(err.contains("master_endpoint: a lite needs"), "{err}");
        check(&format!("{lite}master_endpoint: https://m:1080\n")).unwrap();
        let err = check(&format!(
            "{lite}master_endpoint: https://m:1080\ndeploy_token: nonsense\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("deploy_token: deploy token: must start with"),
            "{err}"
        );
        let err = check(&format!(
            "{lite}master_endpoint: https://m:1080\ndeploy_token: x\ndeploy_token_file: /t\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("deploy_token_file: give the deploy token or"),
            "{err}"
        );
        let err = check(
            "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1080\nmaster_endpoint: https://m:1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("master_endpoint: only for a lite"), "{err}");
    }

    #[test]
    fn unknown_key_refused() {
        let err =
            Config::from_yaml("mode: autonomy\ndomain_id: a\nendpoint: https://a:1\nport: 3\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn datastore_settings() {
        let base = "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1\n";
        let check = |extra: &str| {
            Config::from_yaml(&format!("{base}{extra}"))
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        check("datastore: postgres://venn@db:5432/venn_alice\n").unwrap();
        check("datastore: mysql://venn:pw@db/venn\ndatastore_max_connections: 20\n").unwrap();
        check("datastore: sqlite:///tmp/venn.db\n").unwrap();
        for (extra, field) in [
            ("datastore: redis://db/0\n", "datastore:"),
            ("datastore: mysql://venn@db:3306\n", "names no database"),
            ("datastore_password_file: /p\n", "datastore_password_file:"),
            (
                "datastore: mysql://venn:pw@db/venn\ndatastore_password_file: /p\n",
                "keep only one",
            ),
            (
                "datastore_max_connections: 0\n",
                "datastore_max_connections:",
            ),
        ] {
            let err = check(extra).unwrap_err();
            assert!(err.contains(field), "{extra}: {err}");
            assert!(!err.contains(":pw@"), "{err}");
        }

        // The password file fills in the URL's password; Debug never shows it.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let c = Config::from_yaml(&format!(
            "{base}datastore: postgres://venn@db/venn\ndatastore_password_file: {}\n",
            pw.display()
        ))
        .unwrap();
        c.validate().unwrap();
        let opts = c.store_options().unwrap();
        assert_eq!(opts.redacted(), "postgres://venn:***@db/venn");
        assert!(!format!("{c:?} {opts:?}").contains("s3cret"));
    }

    #[test]
    fn roundtrip() {
        let c = Config::default();
        let back = Config::from_yaml(&c.to_yaml()).unwrap();
        back.validate().unwrap();
        assert_eq!(back.domain_id, c.domain_id);
    }
}

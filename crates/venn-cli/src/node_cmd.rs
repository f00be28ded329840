//! `venn` node commands: init, start, token, peer, route, domain, data, grant, health.
//!
//! Thin by design: parse arguments, load the configuration, call `venn_node`, print. Commands
//! other than `init` and `start` talk to the running node through its loopback API with the
//! token from the data dir (`venn_node::client`), so they need the same `-c` file as `start`
//! (or none, for a node started with the embedded defaults). Machine-readable output: `-o json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use venn_node::client::LocalClient;
use venn_node::config::{Config, Endpoint, Mode};

/// Where the node's configuration comes from.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConfigArg {
    /// Node configuration file written by `venn init` (default: embedded defaults, data in ./venn-data).
    #[arg(short = 'c', long = "config", env = "VENN_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

impl ConfigArg {
    pub(crate) fn load(&self) -> Result<Config> {
        let cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn client(&self) -> Result<LocalClient> {
        Ok(LocalClient::new(&self.load()?)?)
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub(crate) enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON (for scripts).
    Json,
}

/// `venn init` arguments.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  venn init --mode autonomy --domain alice --endpoint https://alice.example:1080 > alice.yaml\n  venn start -c alice.yaml\n  venn init --mode master --domain corp-master > master.yaml\n  venn init --mode lite --domain alice --master-endpoint https://master:1080 --deploy-token venn-deploy-... > alice.yaml"
)]
pub(crate) struct InitArgs {
    /// Network mode: autonomy (peer-to-peer), master or lite (centralized network).
    #[arg(long, value_enum, default_value = "autonomy")]
    pub(crate) mode: InitMode,
    /// This node's domain ID (RFC 1123 label, e.g. alice).
    #[arg(short = 'd', long)]
    pub(crate) domain: String,
    /// URL partners use to reach this node's gateway (default https://<domain>:1080).
    #[arg(short = 'e', long)]
    pub(crate) endpoint: Option<String>,
    /// Lite: the master's gateway URL, e.g. https://master:1080.
    #[arg(long)]
    pub(crate) master_endpoint: Option<String>,
    /// Lite: the deploy token printed by `venn domain add <domain>` on the master.
    #[arg(long, conflicts_with = "deploy_token_file")]
    pub(crate) deploy_token: Option<String>,
    /// Lite: a file holding the deploy token (kept out of the YAML).
    #[arg(long)]
    pub(crate) deploy_token_file: Option<PathBuf>,
    /// Data dir (keys, database, default data source).
    #[arg(long, default_value = "./venn-data")]
    pub(crate) data_dir: PathBuf,
    /// Gateway listen address (the only port partners need).
    #[arg(long, default_value = "0.0.0.0:1080")]
    pub(crate) gateway_listen: String,
    /// API listen address (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8082")]
    pub(crate) api_listen: String,
    /// Database URL (empty: SQLite in the data dir; mysql://user@host:3306/venn,
    /// postgres://user@host:5432/venn). Each node needs its own database.
    #[arg(long, default_value = "")]
    pub(crate) datastore: String,
    /// File holding the database password (keeps it out of the YAML).
    #[arg(long)]
    pub(crate) datastore_password_file: Option<PathBuf>,
    /// Largest number of database connections (default 4 for SQLite, 10 for a server).
    #[arg(long)]
    pub(crate) datastore_max_connections: Option<u32>,
    /// Seconds between heartbeats to partners.
    #[arg(long, default_value_t = 15)]
    pub(crate) heartbeat_seconds: u64,
    /// HTTP CONNECT proxy for outbound connections to partners (http://host:port).
    #[arg(long, default_value = "")]
    pub(crate) proxy: String,
    /// Approval of jobs initiated by partners: auto, or manual (`venn job approve|reject`).
    #[arg(long, default_value = "auto", value_parser = ["auto", "manual"])]
    pub(crate) approval: String,
}

/// `--mode` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum InitMode {
    /// Peer-to-peer node.
    Autonomy,
    /// Centralized master: domains, deploy tokens, routes.
    Master,
    /// Centralized lite: registers with a master, holds data, runs tasks.
    Lite,
}

/// `venn start` arguments.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  venn start -c alice.yaml\n  venn start            # embedded defaults, data in ./venn-data"
)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

/// `venn token ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Replace the API token (the old one stops working at once).
    #[command(after_help = "Example:\n  venn token rotate -c alice.yaml")]
    Rotate(ConfigArg),
    /// Print the path of the token file (the token itself is never printed).
    #[command(
        after_help = "Example:\n  curl -H \"Token: $(cat $(venn token path -c alice.yaml))\" -X POST http://127.0.0.1:8082/api/v1/route/list"
    )]
    Path(ConfigArg),
}

/// `venn peer ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Print a one-time invitation for a partner (expires after --ttl-hours, single use).
    #[command(
        after_help = "Example:\n  alice$ venn peer invite bob -c alice.yaml\n  bob$   venn peer join venn-invite-... -c bob.yaml"
    )]
    Invite {
        /// The partner's domain ID.
        peer: String,
        /// Hours until the invitation expires.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Join a partner with the invitation it printed.
    #[command(after_help = "Example:\n  venn peer join venn-invite-eyJ2Ijox... -c bob.yaml")]
    Join {
        /// The invitation (venn-invite-...).
        invitation: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write this node's CA certificate and endpoint to a file, for `venn peer add` at a partner.
    #[command(
        after_help = "Example:\n  venn peer export -c alice.yaml            # writes alice.crt\n  bob$ venn peer add alice --cert alice.crt --endpoint https://alice.example:1080"
    )]
    Export {
        /// Output file (default: <domain>.crt).
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Add a partner from its exported CA certificate (file path, no network needed).
    #[command(
        after_help = "Example:\n  venn peer add bob --cert bob.crt --endpoint https://bob.example:1080 -c alice.yaml"
    )]
    Add {
        /// The partner's domain ID.
        peer: String,
        /// The partner's CA certificate (from `venn peer export`).
        #[arg(long)]
        cert: PathBuf,
        /// The partner's gateway URL (omit if this node cannot reach it; it then only accepts).
        #[arg(long, default_value = "")]
        endpoint: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List this node and its partners.
    #[command(after_help = "Example:\n  venn peer list -c alice.yaml")]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `venn route ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum RouteCommand {
    /// Master: create (or update) the route from one lite to another.
    #[command(
        after_help = "Examples:\n  venn route create alice bob https://bob:1080 -c master.yaml\n  venn route create alice bob https://bob:1080 --transit corp-master -c master.yaml"
    )]
    Create {
        /// Source domain.
        source: String,
        /// Destination domain.
        destination: String,
        /// The destination's gateway URL.
        endpoint: String,
        /// Carry the route through this domain's gateway (the master).
        #[arg(long, default_value = "")]
        transit: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Master: delete the route from one lite to another.
    #[command(after_help = "Example:\n  venn route delete alice bob -c master.yaml")]
    Delete {
        /// Source domain.
        source: String,
        /// Destination domain.
        destination: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List routes with their status (NAME SOURCE DESTINATION HOST AUTHENTICATION READY REASON).
    #[command(after_help = "Example:\n  venn route list -c alice.yaml\n  venn route list -o json")]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Carry the route SOURCE-DESTINATION through a third domain's gateway (transit), end-to-end
    /// encrypted. Run it at all three nodes: at SOURCE and DESTINATION it makes their route use
    /// the relay, at the relay it permits carrying it (give --endpoint there: the DESTINATION's
    /// gateway). In a centralized network the master does this for you
    /// (`venn route create ... --transit`).
    #[command(after_help = "Example:
          alice$ venn route transit alice bob --via carol -c alice.yaml
          bob$   venn route transit alice bob --via carol -c bob.yaml
          carol$ venn route transit alice bob --via carol --endpoint https://bob.example:1080 -c carol.yaml
          alice$ venn route transit alice bob --direct -c alice.yaml    # back to the direct path")]
    Transit {
        /// The route's source domain.
        source: String,
        /// The route's destination domain.
        destination: String,
        /// The domain whose gateway carries the route.
        #[arg(long, required_unless_present = "direct", conflicts_with = "direct")]
        via: Option<String>,
        /// Use the direct path again.
        #[arg(long)]
        direct: bool,
        /// The destination's gateway endpoint (needed at the relay unless it already has a route
        /// to the destination).
        #[arg(long)]
        endpoint: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `venn domain ...` (master).
#[derive(Debug, Subcommand)]
pub(crate) enum DomainCommand {
    /// Master: create a lite domain and print its deploy token (shown once; single use).
    #[command(
        after_help = "Example:\n  venn domain add alice -c master.yaml\n  venn domain add alice --ttl 2h -c master.yaml"
    )]
    Add {
        /// The lite's domain ID.
        domain: String,
        /// Token lifetime: seconds, or with s/m/h/d (default 24h).
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Master: issue a new deploy token for a domain; unused earlier tokens stop working
    /// (tokens are stored hashed, so an old one cannot be shown again).
    #[command(after_help = "Example:\n  venn domain token alice -c master.yaml")]
    Token {
        /// The lite's domain ID.
        domain: String,
        /// Token lifetime: seconds, or with s/m/h/d (default 24h).
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Master: forget a lite's registered key (lost or stolen) and print a new deploy token.
    #[command(
        after_help = "Example:\n  venn domain reset alice -c master.yaml\n  alice$ rm venn-data/keys/lite.crt; venn init --mode lite ... --deploy-token <new>"
    )]
    Reset {
        /// The lite's domain ID.
        domain: String,
        /// Token lifetime: seconds, or with s/m/h/d (default 24h).
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List domains: DOMAIN ROLE STATUS LAST HEARTBEAT VERSION (on a master: lite node status).
    #[command(
        after_help = "Example:\n  venn domain list -c master.yaml\n  venn domain list -o json"
    )]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `venn data ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DataCommand {
    /// Copy a CSV file into the default data source and register it as a DomainData table.
    #[command(after_help = "Example:\n  venn data upload alice.csv --id alice-table -c alice.yaml")]
    Upload {
        /// The CSV file (with a header row).
        file: PathBuf,
        /// DomainData ID to register.
        #[arg(long)]
        id: String,
        /// File name inside the data source (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List DomainData.
    #[command(after_help = "Example:\n  venn data list -c alice.yaml")]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `venn grant ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum GrantCommand {
    /// Grant a DomainData to a partner (signed and delivered to the partner's node).
    #[command(
        after_help = "Example:\n  venn grant create alice-table --to bob --use-count 10 -c alice.yaml"
    )]
    Create {
        /// The DomainData ID.
        domaindata: String,
        /// The partner's domain ID.
        #[arg(long)]
        to: String,
        /// Expiry in hours from now (default: none).
        #[arg(long)]
        expires_hours: Option<u64>,
        /// Allowed uses (default: unlimited).
        #[arg(long, default_value_t = 0)]
        use_count: i64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List grants this node made, or (--received) those partners made to it.
    #[command(
        after_help = "Examples:\n  venn grant list -c alice.yaml\n  venn grant list --received -c bob.yaml"
    )]
    List {
        /// Only grants made to this node.
        #[arg(long)]
        received: bool,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The node commands, flattened into `venn`'s top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Write a node configuration (YAML) to stdout.
    #[command(
        after_help = "Example:\n  venn init --mode autonomy --domain alice --endpoint https://alice.example:1080 > alice.yaml"
    )]
    Init(InitArgs),
    /// Start the node (gateway, API, heartbeats) in the foreground.
    #[command(
        after_help = "Examples:\n  venn start -c alice.yaml\n  venn start            # embedded defaults, data in ./venn-data"
    )]
    Start(StartArgs),
    /// Manage the API token.
    #[command(after_help = "Example:\n  venn token rotate -c alice.yaml")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Onboard partners.
    #[command(
        after_help = "Examples:\n  alice$ venn peer invite bob -c alice.yaml\n  bob$   venn peer join venn-invite-... -c bob.yaml\n  venn peer add bob --cert bob.crt --endpoint https://bob.example:1080"
    )]
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Domains of a centralized network (master): add, token, reset, list.
    #[command(
        after_help = "Examples:\n  venn domain add alice -c master.yaml\n  venn domain list -c master.yaml"
    )]
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Routes to and from partners.
    #[command(after_help = "Example:\n  venn route list -c alice.yaml")]
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// The data catalogue.
    #[command(after_help = "Example:\n  venn data upload alice.csv --id alice-table -c alice.yaml")]
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Grants of data to partners.
    #[command(after_help = "Example:\n  venn grant create alice-table --to bob -c alice.yaml")]
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Check that the running node answers on its API (`GET /healthZ`, no token); exit 0 if so.
    /// This is the container HEALTHCHECK and the Kubernetes probe command.
    #[command(
        after_help = "Examples:\n  venn health -c alice.yaml && echo up\n  docker exec alice venn health      # VENN_CONFIG is set in the image"
    )]
    Health(HealthArgs),
}

/// `venn health` arguments.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    pub(crate) timeout_seconds: u64,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

/// Runs a node command.
pub(crate) fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Init(a) => init(a),
        NodeCommand::Start(a) => start(a),
        NodeCommand::Token { command } => token(command),
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(online(other))
        }
    }
}

fn init(a: InitArgs) -> Result<()> {
    let mode = match a.mode {
        InitMode::Autonomy => Mode::Autonomy,
        InitMode::Master => Mode::Master,
        InitMode::Lite => Mode::Lite,
    };
    let endpoint = a
        .endpoint
        .unwrap_or_else(|| format!("https://{}:1080", a.domain));
    let mut cfg = Config {
        mode,
        endpoint,
        master_endpoint: a.master_endpoint.unwrap_or_default(),
        deploy_token: a.deploy_token.unwrap_or_default(),
        deploy_token_file: a.deploy_token_file,
        domain_id: a.domain,
        data_dir: a.data_dir,
        datastore: a.datastore.into(),
        datastore_password_file: a.datastore_password_file,
        datastore_max_connections: a.datastore_max_connections,
        ..Config::default()
    };
    cfg.gateway.listen = a.gateway_listen;
    cfg.gateway.heartbeat_seconds = a.heartbeat_seconds;
    cfg.gateway.proxy = a.proxy;
    cfg.api.listen = a.api_listen;
    if a.approval == "manual" {
        cfg.jobs.approval = venn_node::config::Approval::Manual;
    }
    cfg.validate()?;
    print!("{}", cfg.to_yaml());
    Ok(())
}

fn start(a: StartArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .context("log_level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // `try_init`: if `main` installed a subscriber already, keep it.
        .try_init()
        .ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let node = venn_node::node::Node::build(cfg).await?;
        node.run(venn_node::node::shutdown_signal()).await
    })?;
    Ok(())
}

fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Rotate(c) => {
            let cfg = c.load()?;
            let path = cfg.token_path();
            if !cfg.data_dir.exists() {
                bail!(
                    "data dir {} does not exist; run `venn start` once first",
                    cfg.data_dir.display()
                );
            }
            venn_node::trust::rotate_token(&path)?;
            println!("token rotated; new token in {}", path.display());
        }
        TokenCommand::Path(c) => println!("{}", c.load()?.token_path().display()),
    }
    Ok(())
}

pub(crate) fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as a left-aligned table (the `kubectl get` look).
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Fetches every page of a list call.
async fn list_all(
    client: &LocalClient,
    path: &str,
    mut body: Value,
    key: &str,
) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    loop {
        let data = client.post(path, &body).await?;
        if let Some(items) = data.get(key).and_then(Value::as_array) {
            all.extend(items.iter().cloned());
        }
        let next = s(&data, "/next_page_token");
        if next.is_empty() {
            return Ok(all);
        }
        body["page_token"] = json!(next);
    }
}

async fn online(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Peer { command } => peer(command).await,
        NodeCommand::Domain { command } => domain(command).await,
        NodeCommand::Route {
            command:
                RouteCommand::Create {
                    source,
                    destination,
                    endpoint,
                    transit,
                    output,
                    config,
                },
        } => {
            let mut body =
                json!({ "source": source, "destination": destination, "host": endpoint });
            if !transit.is_empty() {
                body["transit"] =
                    json!({ "transit_method": "THIRD-DOMAIN", "domain": { "domain_id": transit } });
            }
            let r = config.client()?.post("/api/v1/route/create", &body).await?;
            if output == Output::Json {
                return print_json(&r);
            }
            let via = s(&r, "/transit");
            if via.is_empty() {
                println!("route {} created ({})", s(&r, "/name"), s(&r, "/host"));
            } else {
                println!(
                    "route {} created ({} through {via})",
                    s(&r, "/name"),
                    s(&r, "/host")
                );
            }
            Ok(())
        }
        NodeCommand::Route {
            command:
                RouteCommand::Delete {
                    source,
                    destination,
                    config,
                },
        } => {
            let r = config
                .client()?
                .post(
                    "/api/v1/route/delete",
                    &json!({ "source": source, "destination": destination }),
                )
                .await?;
            println!("route {} deleted", s(&r, "/name"));
            Ok(())
        }
        NodeCommand::Route {
            command:
                RouteCommand::Transit {
                    source,
                    destination,
                    via,
                    direct: _,
                    endpoint,
                    config,
                },
        } => {
            let r = config
                .client()?
                .post(
                    "/api/v1/route/transit",
                    &json!({
                        "source": source,
                        "destination": destination,
                        "transit": via.unwrap_or_default(),
                        "endpoint": endpoint.unwrap_or_default(),
                    }),
                )
                .await?;
            match s(&r, "/transit").as_str() {
                "" => println!("route {} is direct", s(&r, "/name")),
                t => println!("route {} goes through {t}", s(&r, "/name")),
            }
            Ok(())
        }
        NodeCommand::Route {
            command: RouteCommand::List { output, config },
        } => {
            let routes =
                list_all(&config.client()?, "/api/v1/route/list", json!({}), "routes").await?;
            if output == Output::Json {
                return print_json(&json!(routes));
            }
            let rows: Vec<Vec<String>> = routes
                .iter()
                .map(|r| {
                    vec![
                        s(r, "/name"),
                        s(r, "/source"),
                        s(r, "/destination"),
                        match s(r, "/transit").as_str() {
                            "" => s(r, "/host"),
                            t => format!("{} (via {t})", s(r, "/host")),
                        },
                        s(r, "/authentication_type"),
                        if r.pointer("/status/ready") == Some(&json!(true)) {
                            "True"
                        } else {
                            "False"
                        }
                        .into(),
                        reason_text(r),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "SOURCE",
                    "DESTINATION",
                    "HOST",
                    "AUTHENTICATION",
                    "READY",
                    "REASON",
                ],
                &rows,
            );
            Ok(())
        }
        NodeCommand::Data { command } => data(command).await,
        NodeCommand::Grant { command } => grant(command).await,
        NodeCommand::Health(a) => {
            let cfg = a.config.load()?;
            venn_node::client::check_health(
                &cfg,
                std::time::Duration::from_secs(a.timeout_seconds.max(1)),
            )
            .await?;
            println!("ok");
            Ok(())
        }
        NodeCommand::Init(_) | NodeCommand::Start(_) | NodeCommand::Token { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// Parses a lifetime: plain seconds or a number with s, m, h or d.
fn parse_ttl(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86_400),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--ttl {text:?}: give seconds or e.g. 30m, 24h, 7d"))?;
    Ok(n.saturating_mul(mult))
}

fn fmt_time(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let ago = venn_node::trust::now_unix() - unix;
    format!("{}s ago", ago.max(0))
}

async fn domain(cmd: DomainCommand) -> Result<()> {
    let (path, domain, ttl, output, config) = match cmd {
        DomainCommand::List { output, config } => {
            let domains = list_all(
                &config.client()?,
                "/api/v1/domain/list",
                json!({}),
                "domains",
            )
            .await?;
            if output == Output::Json {
                return print_json(&json!(domains));
            }
            let rows: Vec<Vec<String>> = domains
                .iter()
                .map(|d| {
                    let role = match s(d, "/role").as_str() {
                        "" => "self".to_owned(),
                        r => r.to_owned(),
                    };
                    let st = d
                        .pointer("/node_statuses/0")
                        .cloned()
                        .unwrap_or(Value::Null);
                    let status = match s(&st, "/status").as_str() {
                        "" => "-".to_owned(),
                        x => x.to_owned(),
                    };
                    let beat = st
                        .get("last_heartbeat_time")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let version = match s(&st, "/version").as_str() {
                        "" => "-".to_owned(),
                        v => v.to_owned(),
                    };
                    vec![s(d, "/domain_id"), role, status, fmt_time(beat), version]
                })
                .collect();
            print_table(
                &["DOMAIN", "ROLE", "STATUS", "LAST HEARTBEAT", "VERSION"],
                &rows,
            );
            return Ok(());
        }
        DomainCommand::Add {
            domain,
            ttl,
            output,
            config,
        } => ("/api/v1/domain/create", domain, ttl, output, config),
        DomainCommand::Token {
            domain,
            ttl,
            output,
            config,
        } => ("/api/v1/domain/token", domain, ttl, output, config),
        DomainCommand::Reset {
            domain,
            ttl,
            output,
            config,
        } => ("/api/v1/domain/reset", domain, ttl, output, config),
    };
    let ttl = parse_ttl(&ttl)?;
    let data = config
        .client()?
        .post(path, &json!({ "domain_id": domain, "ttl_seconds": ttl }))
        .await?;
    if output == Output::Json {
        return print_json(&data);
    }
    // The token alone on stdout (scripts: T=$(venn domain add alice)); the advice on stderr.
    println!("{}", s(&data, "/deploy_token"));
    eprintln!(
        "deploy token for {domain}: single use, expires in {ttl} s; on {domain}'s machine:\n  \
         venn init --mode lite --domain {domain} --master-endpoint <this master's gateway URL> \
         --deploy-token <token> > {domain}.yaml"
    );
    Ok(())
}

fn reason_text(r: &Value) -> String {
    let reason = s(r, "/status/reason");
    let msg = s(r, "/status/message");
    if msg.is_empty() {
        reason
    } else {
        format!("{reason}: {msg}")
    }
}

async fn peer(cmd: PeerCommand) -> Result<()> {
    match cmd {
        PeerCommand::Invite {
            peer,
            ttl_hours,
            config,
        } => {
            let d = config
                .client()?
                .post(
                    "/api/v1/peer/invite",
                    &json!({"peer": peer, "ttl_seconds": ttl_hours * 3600}),
                )
                .await?;
            eprintln!(
                "One-time invitation for {peer} (single use, expires in {ttl_hours} h). On {peer}'s node run:\n"
            );
            println!("{}", s(&d, "/invitation"));
            Ok(())
        }
        PeerCommand::Join { invitation, config } => {
            let d = config
                .client()?
                .post("/api/v1/peer/join", &json!({"invitation": invitation}))
                .await?;
            println!(
                "joined {} (CA sha256 {}); routes are being checked: venn route list",
                s(&d, "/domain_id"),
                s(&d, "/ca_sha256")
            );
            Ok(())
        }
        PeerCommand::Export { file, config } => {
            let d = config
                .client()?
                .post("/api/v1/peer/export", &json!({}))
                .await?;
            let domain = s(&d, "/domain_id");
            let path = file.unwrap_or_else(|| PathBuf::from(format!("{domain}.crt")));
            let text = format!(
                "# venn partner file: domain {domain}\n# endpoint: {}\n# ca_sha256: {}\n{}",
                s(&d, "/endpoint"),
                s(&d, "/ca_sha256"),
                s(&d, "/ca_cert")
            );
            venn_node::atomic::write_file(&path, text.as_bytes(), false)?;
            println!(
                "wrote {}; at the partner run:\n  venn peer add {domain} --cert {} --endpoint {}",
                path.display(),
                path.display(),
                s(&d, "/endpoint")
            );
            Ok(())
        }
        PeerCommand::Add {
            peer,
            cert,
            endpoint,
            config,
        } => {
            let pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("reading {}", cert.display()))?;
            let endpoint = if endpoint.is_empty() {
                endpoint_from_file(&pem).unwrap_or_default()
            } else {
                endpoint
            };
            if !endpoint.is_empty() {
                Endpoint::parse(&endpoint).map_err(|e| anyhow::anyhow!("--endpoint: {e}"))?;
            }
            let d = config
                .client()?
                .post(
                    "/api/v1/peer/add",
                    &json!({"domain_id": peer, "ca_cert": pem, "endpoint": endpoint}),
                )
                .await?;
            println!(
                "added partner {} (CA sha256 {})",
                s(&d, "/domain_id"),
                s(&d, "/ca_sha256")
            );
            Ok(())
        }
        PeerCommand::List { output, config } => {
            let domains = list_all(
                &config.client()?,
                "/api/v1/domain/list",
                json!({}),
                "domains",
            )
            .await?;
            if output == Output::Json {
                return print_json(&json!(domains));
            }
            let rows: Vec<Vec<String>> = domains
                .iter()
                .map(|d| {
                    vec![
                        s(d, "/domain_id"),
                        if d.get("is_self") == Some(&json!(true)) {
                            "self".into()
                        } else {
                            "partner".into()
                        },
                        s(d, "/endpoint"),
                        s(d, "/ca_sha256"),
                    ]
                })
                .collect();
            print_table(&["DOMAIN", "ROLE", "ENDPOINT", "CA SHA256"], &rows);
            Ok(())
        }
    }
}

/// The `# endpoint:` line of a file written by `venn peer export`.
fn endpoint_from_file(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("# endpoint:"))
        .map(|e| e.trim().to_owned())
}

async fn data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Upload {
            file,
            id,
            name,
            config,
        } => {
            let name = match name {
                Some(n) => n,
                None => file_name(&file)?,
            };
            let d = config.client()?.upload(&file, &id, &name).await?;
            let cols: Vec<String> = d
                .get("columns")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|c| s(c, "/name")).collect())
                .unwrap_or_default();
            println!(
                "registered {id} ({} in default-data-source, columns: {})",
                s(&d, "/relative_uri"),
                cols.join(",")
            );
            Ok(())
        }
        DataCommand::List { output, config } => {
            let items = list_all(
                &config.client()?,
                "/api/v1/domaindata/list",
                json!({}),
                "domaindata_list",
            )
            .await?;
            if output == Output::Json {
                return print_json(&json!(items));
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|d| {
                    let ncol = d
                        .get("columns")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    vec![
                        s(d, "/domaindata_id"),
                        s(d, "/type"),
                        s(d, "/datasource_id"),
                        s(d, "/relative_uri"),
                        ncol.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "DOMAINDATA",
                    "TYPE",
                    "DATASOURCE",
                    "RELATIVE_URI",
                    "COLUMNS",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the file has no name")
}

async fn grant(cmd: GrantCommand) -> Result<()> {
    match cmd {
        GrantCommand::Create {
            domaindata,
            to,
            expires_hours,
            use_count,
            config,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let expiration = expires_hours.map_or(0, |h| now + h * 3600);
            let d = config
                .client()?
                .post(
                    "/api/v1/domaindatagrant/create",
                    &json!({"domaindata_id": domaindata, "grant_domain": to,
                            "limit": {"expiration_time": expiration, "use_count": use_count}}),
                )
                .await?;
            let delivered = d.get("delivered") == Some(&json!(true));
            println!(
                "grant {} created{}",
                s(&d, "/domaindatagrant_id"),
                if delivered {
                    format!(" and delivered to {to}")
                } else {
                    format!("; {to} is not reachable now, delivery will be retried")
                }
            );
            Ok(())
        }
        GrantCommand::List {
            received,
            output,
            config,
        } => {
            let cfg = config.load()?;
            let client = LocalClient::new(&cfg)?;
            let filter = if received {
                json!({"grant_domain": cfg.domain_id})
            } else {
                json!({"domain_id": cfg.domain_id})
            };
            let items = list_all(
                &client,
                "/api/v1/domaindatagrant/list",
                filter,
                "domaindatagrant_list",
            )
            .await?;
            if output == Output::Json {
                return print_json(&json!(items));
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|g| {
                    vec![
                        s(g, "/domaindatagrant_id"),
                        s(g, "/domain_id"),
                        s(g, "/grant_domain"),
                        s(g, "/domaindata_id"),
                        s(g, "/status/phase"),
                        s(g, "/status/delivered"),
                    ]
                })
                .collect();
            print_table(
                &["GRANT", "FROM", "TO", "DOMAINDATA", "PHASE", "DELIVERED"],
                &rows,
            );
            Ok(())
        }
    }
}

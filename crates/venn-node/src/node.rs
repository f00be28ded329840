//! Starting and stopping a node.
//!
//! Order (after linkerd's `main`): validate the configuration before anything is written or
//! bound; create the data dir, keys and token; open and migrate the store; register this
//! domain and the built-in `default-data-source`; load pinned partners; bind both ports (a
//! port in use is a clear error naming the config field); then serve the API, the gateway and
//! the heartbeat loop until the shutdown future resolves, and drain for at most 5 s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::catalog::DEFAULT_DATASOURCE;
use crate::config::{Config, Mode};
use crate::error::{NodeError, Result};
use crate::state::{NodeState, SharedState};
use crate::store::{DataSourceRow, DomainRow, Store};
use crate::trust::{self, Identity, PeerSet, TokenCheck};

/// A node whose ports are bound, ready to serve.
pub struct Node {
    state: SharedState,
    api: TcpListener,
    gateway: TcpListener,
    tasks: TcpListener,
    started: Instant,
}

/// Creates the data dir layout, keys and token without starting anything (used by `start` and
/// by offline commands such as `venn token rotate`).
pub fn prepare_data_dir(config: &Config) -> Result<Identity> {
    prepare_dirs(config)?;
    Identity::load_or_create(&config.data_dir, &config.domain_id, &config.endpoint()?)
}

/// Creates the data dir (0700), its `data/` folder and the API token.
fn prepare_dirs(config: &Config) -> Result<()> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir.join("data")).map_err(|e| NodeError::io(dir.join("data"), e))?;
    // The data dir holds keys, the token and the database: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| NodeError::io(dir, e))?;
    }
    trust::ensure_token(&config.token_path())
}

async fn bind(field: &str, addr: &str) -> Result<TcpListener> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| NodeError::Config(vec![format!("{field}: {addr:?}: {e}")]))?;
    TcpListener::bind(a)
        .await
        .map_err(|e| NodeError::Config(vec![format!("{field}: cannot listen on {a}: {e}")]))
}

impl Node {
    /// Validates `config`, prepares the data dir and store, and binds the ports.
    pub async fn build(config: Config) -> Result<Self> {
        let started = Instant::now();
        config.validate()?;
        // A lite's identity is the certificate its master issues: register (or renew) first.
        let identity = if config.mode == Mode::Lite {
            prepare_dirs(&config)?;
            crate::central::lite_identity(&config).await?
        } else {
            prepare_data_dir(&config)?
        };
        let store = Store::open_with(&config.store_options()?).await?;
        // One node per database: refuse one that another node claimed.
        if let Err(e) = store
            .claim(&config.domain_id, &identity.ca_fingerprint)
            .await
        {
            store.close().await;
            return Err(e);
        }
        tracing::info!(
            datastore = %store.url(),
            backend = %store.backend(),
            "store ready"
        );
        store
            .upsert_domain(&DomainRow {
                domain_id: config.domain_id.clone(),
                role: "self".into(),
                ca_cert: identity.ca_pem(),
                ca_sha256: identity.ca_fingerprint.clone(),
                endpoint: config.endpoint.clone(),
                created_at: 0,
                updated_at: 0,
            })
            .await?;
        if store.datasource(DEFAULT_DATASOURCE).await?.is_none() {
            let root = config.data_dir.join("data");
            let root = root.canonicalize().map_err(|e| NodeError::io(&root, e))?;
            store
                .insert_datasource(&DataSourceRow {
                    datasource_id: DEFAULT_DATASOURCE.into(),
                    domain_id: config.domain_id.clone(),
                    name: "default data source".into(),
                    r#type: "localfs".into(),
                    path: root.display().to_string(),
                    access_directly: 1,
                    created_at: 0,
                    updated_at: 0,
                })
                .await?;
        }
        let (tasks, task_addr) =
            crate::gateway::link::bind_task_port(&config.gateway.task_listen).await?;
        let state = Arc::new(NodeState {
            token: TokenCheck::new(config.token_path()),
            peers: PeerSet::default(),
            store,
            identity,
            heartbeat_now: Notify::new(),
            jobs_wake: Notify::new(),
            runtime: crate::runtime::Runtime::default(),
            links: crate::gateway::link::Broker::default(),
            task_addr,
            deliver: tokio::sync::Mutex::new(()),
            config,
        });
        state.load_partners().await?;
        if let (crate::config::Runtime::Kubernetes, Some(k)) =
            (state.config.runtime, &state.config.kubernetes)
        {
            let kube =
                crate::runtime::kubernetes::Kubernetes::connect(k, state.domain_id()).await?;
            tracing::info!(
                namespace = %kube.namespace(),
                image = %k.image,
                task_address = %k.task_address,
                "kubernetes runtime: tasks run as pods"
            );
            state.runtime.use_kubernetes(kube)?;
        }
        match state.config.mode {
            Mode::Master => crate::central::load_lites(&state).await?,
            Mode::Lite => crate::central::lite_start(&state).await?,
            Mode::Autonomy => {}
        }
        let api = bind("api.listen", &state.config.api.listen).await?;
        if !api.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
            tracing::warn!(
                "api.listen {} is not a loopback address: the API is reachable from the network",
                state.config.api.listen
            );
        }
        let gateway = bind("gateway.listen", &state.config.gateway.listen).await?;
        Ok(Self {
            state,
            api,
            gateway,
            tasks,
            started,
        })
    }

    /// The shared state (tests).
    #[cfg(test)]
    pub(crate) fn state(&self) -> &SharedState {
        &self.state
    }

    /// The bound API address.
    pub fn api_addr(&self) -> Result<SocketAddr> {
        self.api
            .local_addr()
            .map_err(|e| NodeError::Net(e.to_string()))
    }

    /// The bound gateway address.
    pub fn gateway_addr(&self) -> Result<SocketAddr> {
        self.gateway
            .local_addr()
            .map_err(|e| NodeError::Net(e.to_string()))
    }

    /// Serves until `shutdown` resolves, then drains for at most 5 seconds.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (tx, rx) = watch::channel(false);
        let state = self.state.clone();
        tracing::info!(
            domain = %state.domain_id(),
            api = %self.api_addr()?,
            gateway = %self.gateway_addr()?,
            task_port = %state.task_addr,
            endpoint = %state.config.endpoint,
            ca_sha256 = %state.identity.ca_fingerprint,
            token_file = %state.config.token_path().display(),
            "node ready in {} ms",
            self.started.elapsed().as_millis()
        );
        let gateway = tokio::spawn(crate::gateway::serve(
            self.gateway,
            state.clone(),
            rx.clone(),
        ));
        let heartbeat = tokio::spawn(crate::gateway::heartbeat::run(state.clone(), rx.clone()));
        let tasks = tokio::spawn(crate::gateway::link::serve_tasks(
            self.tasks,
            state.clone(),
            rx.clone(),
        ));
        let jobs = tokio::spawn(crate::jobs::run(state.clone(), rx.clone()));
        let mut api_rx = rx.clone();
        let api = tokio::spawn(
            axum::serve(self.api, crate::api::router(state.clone()))
                .with_graceful_shutdown(async move {
                    let _ = api_rx.changed().await;
                })
                .into_future(),
        );
        shutdown.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
        let drain = async {
            let _ = gateway.await;
            let _ = heartbeat.await;
            let _ = tasks.await;
            let _ = jobs.await;
            let _ = api.await;
        };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("drain took longer than 5 s; stopping anyway");
        }
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

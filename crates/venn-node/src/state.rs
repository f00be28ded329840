//! The state shared by the API, the gateway and the background loops of one running node.
//!
//! Everything here is cheap to clone behind an `Arc`; the database is the source of truth and
//! the in-memory [`PeerSet`] is a cache of the pinned partner CAs, rebuilt from it at start and
//! updated in the same call that changes the database.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{Config, Endpoint};
use crate::error::Result;
use crate::store::Store;
use crate::trust::{Identity, PeerSet, TokenCheck, cert_from_pem};

/// Shared node state.
pub struct NodeState {
    /// The validated configuration.
    pub config: Config,
    /// This node's keys.
    pub identity: Identity,
    /// The pinned partners.
    pub peers: PeerSet,
    /// The database.
    pub store: Store,
    /// API token checker.
    pub token: TokenCheck,
    /// Wakes the heartbeat loop early (after onboarding).
    pub heartbeat_now: Notify,
    /// Wakes the jobs loop early (a message arrived, a task changed).
    pub jobs_wake: Notify,
    /// This node's task processes.
    pub runtime: crate::runtime::Runtime,
    /// Task links waiting to be paired.
    pub links: crate::gateway::link::Broker,
    /// Serialises message delivery (one sender per partner queue, in order).
    pub deliver: tokio::sync::Mutex<()>,
    /// The bound loopback task port.
    pub task_addr: std::net::SocketAddr,
}

impl NodeState {
    /// This node's domain ID.
    pub fn domain_id(&self) -> &str {
        &self.config.domain_id
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// This node's endpoint, parsed.
    pub fn endpoint(&self) -> Result<Endpoint> {
        self.config.endpoint()
    }

    /// Loads every partner from the store into the peer set.
    pub async fn load_partners(&self) -> Result<()> {
        for p in self.store.partners().await? {
            let der = cert_from_pem(&p.ca_cert)?;
            self.peers.insert(&self.identity, &p.domain_id, der)?;
        }
        Ok(())
    }
}

/// The handle passed around.
pub type SharedState = Arc<NodeState>;

#[cfg(test)]
impl NodeState {
    /// A node state over `config` for unit tests: identity and API token created in
    /// `config.data_dir`, the store opened from the config, no partners, no ports bound.
    pub(crate) async fn for_tests(config: Config) -> SharedState {
        let identity = Identity::load_or_create(
            &config.data_dir,
            &config.domain_id,
            &config.endpoint().unwrap(),
        )
        .unwrap();
        crate::trust::ensure_token(&config.token_path()).unwrap();
        Arc::new(NodeState {
            token: TokenCheck::new(config.token_path()),
            peers: PeerSet::default(),
            store: Store::open(&config.datastore_url()).await.unwrap(),
            identity,
            heartbeat_now: Notify::new(),
            jobs_wake: Notify::new(),
            runtime: crate::runtime::Runtime::default(),
            links: crate::gateway::link::Broker::default(),
            task_addr: "127.0.0.1:9".parse().unwrap(),
            deliver: tokio::sync::Mutex::new(()),
            config,
        })
    }
}

//! # venn-node
//!
//! The venn node: one process per domain that partners connect to, holding the domain's
//! catalogue of data and its grants. It replaces Kuscia's k3s + Envoy + containerd stack with a
//! single Rust process (SQLite by default; MySQL/MariaDB or PostgreSQL by URL).
//!
//! ## Parts
//! - [`config`]: the YAML file written by `venn init`, validated field by field before start.
//! - [`trust`]: keys (node CA, gateway identity, API token), invitations, signatures, and the
//!   rustls verifiers used for mutual TLS with pinned partner CAs.
//! - [`store`]: typed tables (sqlx; SQLite, MySQL/MariaDB or PostgreSQL), migrations, paginated
//!   lists, the node's claim on its database, `venn store check|copy`.
//! - [`catalog`]: data source roots, path confinement, CSV header checks.
//! - [`gateway`]: the one partner-facing port (mutual TLS, 401 for strangers), outbound calls
//!   with step-by-step failure reasons, heartbeats and route status.
//! - [`api`]: the Kuscia-compatible HTTP/JSON API on loopback.
//! - [`onboarding`]: `venn peer invite|join|export|add`.
//! - [`grants`]: signed grants delivered to the grantee's node.
//! - [`jobs`]: signed job manifests, approval, states, state sync between the parties.
//! - [`runtime`]: the process runtime that runs this node's party of a task.
//! - [`node`]: start-up, serving, shutdown.
//! - [`client`]: the API client used by the CLI.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> venn_node::Result<()> {
//! let config = venn_node::config::Config::load("alice.yaml".as_ref())?;
//! let node = venn_node::node::Node::build(config).await?;
//! node.run(venn_node::node::shutdown_signal()).await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod api;
pub mod atomic;
pub mod catalog;
pub mod central;
pub mod client;
pub mod config;
mod error;
pub mod gateway;
pub mod grants;
pub mod jobs;
pub mod node;
pub mod onboarding;
pub mod runtime;
pub mod state;
pub mod store;
pub mod trust;

pub use error::{NodeError, Result};

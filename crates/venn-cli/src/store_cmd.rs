//! `venn store`: check, migrate and copy the node's database without starting the node.
//!
//! `check` and `migrate` use the `datastore` of the node's configuration (`-c`); `copy` takes
//! two URLs, so a node's SQLite file can move to MySQL or PostgreSQL: stop the node, copy,
//! set `datastore` to the new URL, start. Passwords are never printed: every URL shown is
//! redacted, and `--password-file` keeps the target's password off the command line.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use venn_node::store::{Store, StoreOptions};

use crate::node_cmd::{ConfigArg, Output, print_json};

/// `venn store ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Check that the database is reachable, its schema version, DDL rights, which node owns
    /// it, and the connection limits; fails when something would stop the node.
    #[command(
        after_help = "Example:\n  venn store check -c alice.yaml\n  venn store check -c alice.yaml -o json"
    )]
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Create or upgrade the schema (the node also does this at start), e.g. once as a user
    /// with DDL rights before the node runs as one without.
    #[command(after_help = "Example:\n  venn store migrate -c alice.yaml")]
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Copy every row of one database into another, empty one (stop the node first).
    #[command(
        after_help = "Example:\n  venn store copy --from sqlite://./venn-data/venn.db --to mysql://venn@db:3306/venn --password-file db-password\n  then set `datastore: mysql://venn@db:3306/venn` (and datastore_password_file) in alice.yaml"
    )]
    Copy(CopyArgs),
}

/// `venn store copy` arguments.
#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// Source URL (sqlite://…, mysql://…, postgres://…); default: the datastore of -c.
    #[arg(long)]
    from: Option<String>,
    /// Target URL; it must hold no rows (its schema is created if missing).
    #[arg(long)]
    to: String,
    /// File holding the target's password (instead of one in --to).
    #[arg(long)]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

/// Runs a store command.
pub(crate) fn run(cmd: StoreCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cmd {
            StoreCommand::Check { config, output } => check(config, output).await,
            StoreCommand::Migrate { config } => migrate(config).await,
            StoreCommand::Copy(a) => copy(a).await,
        }
    })
}

async fn check(config: ConfigArg, output: Output) -> Result<()> {
    let cfg = config.load()?;
    let store = Store::connect(&cfg.store_options()?).await?;
    let report = store.check().await?;
    store.close().await;
    let mut problems = report.problems();
    // The node this configuration describes: its domain, and its CA if its keys exist.
    let own_ca = std::fs::read_to_string(cfg.data_dir.join("keys").join("ca.crt"))
        .ok()
        .and_then(|pem| venn_node::trust::cert_from_pem(&pem).ok())
        .map(|der| venn_node::trust::fingerprint(&der));
    let owned_elsewhere = report.owner.as_ref().filter(|o| {
        o.domain_id != cfg.domain_id || own_ca.as_ref().is_some_and(|ca| *ca != o.ca_sha256)
    });
    if let Some(o) = owned_elsewhere {
        problems.push(format!(
            "the database belongs to node {} (CA {}…), not to this node {}{}: each node needs \
             its own database",
            o.domain_id,
            &o.ca_sha256[..o.ca_sha256.len().min(16)],
            cfg.domain_id,
            own_ca.as_ref().map_or(String::new(), |ca| format!(
                " (CA {}…)",
                &ca[..ca.len().min(16)]
            ))
        ));
    }
    if output == Output::Json {
        let mut v = serde_json::to_value(&report)?;
        v["problems"] = serde_json::json!(problems);
        print_json(&v)?;
    } else {
        println!("datastore      {} ({})", report.url, report.backend);
        println!("server         {}", report.server_version);
        println!(
            "schema         applied {:?}, pending {:?}",
            report.applied, report.pending
        );
        println!(
            "DDL rights     {}",
            report
                .ddl_refused
                .as_deref()
                .map_or("yes".to_owned(), |r| format!("no: {r}"))
        );
        match &report.owner {
            Some(o) => println!(
                "owner          {} (CA {}…){}",
                o.domain_id,
                &o.ca_sha256[..o.ca_sha256.len().min(16)],
                if owned_elsewhere.is_some() {
                    "  ← not this node"
                } else {
                    ""
                }
            ),
            None => println!("owner          none yet (claimed at the node's first start)"),
        }
        println!(
            "connections    pool {}{}",
            report.pool_size,
            report
                .server_max_connections
                .map_or(String::new(), |m| format!(", server max_connections {m}"))
        );
        for p in &problems {
            println!("problem        {p}");
        }
    }
    if !problems.is_empty() {
        bail!("datastore: {} problem(s) found", problems.len());
    }
    Ok(())
}

async fn migrate(config: ConfigArg) -> Result<()> {
    let cfg = config.load()?;
    let store = Store::connect(&cfg.store_options()?).await?;
    let applied = store.migrate().await?;
    let url = store.url();
    store.close().await;
    if applied.is_empty() {
        println!("{url}: schema up to date");
    } else {
        println!("{url}: applied migrations {applied:?}");
    }
    Ok(())
}

async fn copy(a: CopyArgs) -> Result<()> {
    let from = match a.from {
        Some(url) => StoreOptions::new(&url)?,
        None => a.config.load()?.store_options()?,
    };
    let mut to = StoreOptions::new(&a.to)?;
    if let Some(path) = &a.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--password-file {}", path.display()))?;
        to = to.with_password(text.trim_end_matches(['\r', '\n']))?;
    }
    let report = venn_node::store::copy(&from, &to).await?;
    println!("copied {} → {}", report.from, report.to);
    for (table, rows) in &report.tables {
        println!("  {table:<18} {rows:>8} rows");
    }
    Ok(())
}

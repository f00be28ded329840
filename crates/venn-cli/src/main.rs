//! The `venn` binary: parses arguments and calls the crates. No protocol,
//! file-format or network logic lives here.

mod alloc;
mod bench;
mod demo;
mod gen_cmd;
mod job_cmd;
mod node_cmd;
mod psi_cmd;
mod store_cmd;
mod task_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// venn — a privacy-computing node in one binary.
#[derive(Parser)]
#[command(name = "venn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two parties intersect their CSV files (private set intersection).
    Psi(Box<psi_cmd::PsiArgs>),
    /// Generate two CSV files for trying or benchmarking PSI.
    Gen(gen_cmd::GenArgs),
    /// Start two local nodes, onboard them and run a PSI job between them on sample data.
    Demo(demo::DemoArgs),
    /// Benchmarks: whole PSI runs between two local processes.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Jobs between nodes: create, get, watch, stop, cancel, restart, delete, approve, reject, logs.
    #[command(
        after_help = "Example:\n  venn job create -f psi-job.json -c alice.yaml\n  venn job get -c alice.yaml"
    )]
    Job {
        #[command(subcommand)]
        command: job_cmd::JobCommand,
    },
    /// The node's database: check, migrate, copy (SQLite → MySQL/PostgreSQL).
    #[command(
        after_help = "Examples:\n  venn store check -c alice.yaml\n  venn store migrate -c alice.yaml\n  venn store copy --from sqlite://./venn-data/venn.db --to mysql://venn@db:3306/venn --password-file /run/secrets/db"
    )]
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
    /// Internal: run one party of a task (started by the node).
    #[command(hide = true)]
    Task {
        #[command(subcommand)]
        command: task_cmd::TaskCommand,
    },
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
}

fn main() -> ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    // `venn start` sets up logging from its config file; every other
    // command logs to stderr at VENN_LOG (default info).
    if !matches!(cli.command, Command::Node(node_cmd::NodeCommand::Start(_))) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("VENN_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .compact()
            .init();
    }
    let res = match cli.command {
        Command::Psi(a) => psi_cmd::run(*a),
        Command::Gen(a) => gen_cmd::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Job { command } => job_cmd::run(command),
        Command::Task { command } => task_cmd::run(command),
        Command::Store { command } => store_cmd::run(command),
        Command::Node(c) => node_cmd::run(c),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            let mut shown = e.to_string();
            eprintln!("venn: error: {shown}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !shown.contains(&c) {
                    eprintln!("  caused by: {c}");
                    shown = c;
                }
            }
            ExitCode::from(2)
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.venn-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

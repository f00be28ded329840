//! The `venn` binary: parses arguments and calls the crates (minimal wiring on branch `node`;
//! the full command set lives on main).
#![forbid(unsafe_code)]

mod node_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// venn: a privacy-computing node in one binary.
#[derive(Debug, Parser)]
#[command(name = "venn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Node(node_cmd::NodeCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(c) => node_cmd::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

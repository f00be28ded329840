//! `venn psi`: one party of a two-party PSI over a direct link.
//!
//! With `--workers N` the party runs N worker threads, each with its own link
//! to the peer's worker of the same index (venn_psi::workers). All links use
//! the one `--listen` port, opened one after the other: link 0 first, whose
//! `PLAN` exchange fixes the number of pairs (the smaller of the two counts),
//! then links 1, 2, ... Each link's `PLAN` carries its worker index, so links
//! that paired out of order are an error, not a wrong result. One port keeps
//! firewall rules as they are for a single worker.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use venn_link::{Link, LinkOptions};
use venn_psi::workers::{self, WorkerSet};
use venn_psi::{
    Channel, ChannelError, JoinType, Normalize, Protocol, PsiConfig, Receiver, Report, Side,
};

const EXAMPLE: &str = "\
Examples:
  # at alice (listens)
  venn psi --listen 0.0.0.0:7000 --token \"$SECRET\" --input alice.csv --keys id --output alice_out.csv
  # at bob (connects)
  venn psi --connect alice.example:7000 --token \"$SECRET\" --input bob.csv --keys id --output bob_out.csv

  # the same with 4 workers at each party (4 links through the same port)
  venn psi --listen 0.0.0.0:7000 --workers 4 --token \"$SECRET\" --input alice.csv --keys id --output alice_out.csv

--workers may differ between the parties: min(N_alice, N_bob) worker pairs run
and the output is the same file a single worker writes.

Both parties must agree on --protocol, the number of --keys columns, --join,
--receiver, --left, --normalize, --low-comm and --malicious; a difference stops both before any key
is sent. The token is a shared secret: make it long and random
(e.g. openssl rand -hex 16).";

/// Arguments of `venn psi`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLE)]
pub(crate) struct PsiArgs {
    /// Wait for the peer on this address (e.g. 0.0.0.0:7000).
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "connect",
        required_unless_present = "connect"
    )]
    listen: Option<String>,
    /// Connect to the peer at this address (e.g. alice.example:7000).
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Shared secret that authenticates both ends.
    #[arg(
        long,
        env = "VENN_PSI_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    token: String,
    /// Plain TCP instead of TLS: for loopback tests only.
    #[arg(long)]
    insecure: bool,
    /// Input CSV file with a header row.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Key column(s) of this party's file, comma separated.
    #[arg(
        long,
        value_name = "COL[,COL...]",
        value_delimiter = ',',
        required = true
    )]
    keys: Vec<String>,
    /// Where this party's rows of the result go (required at a receiver).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// PSI protocol: rr22 (VOLE-based, the fastest; RR22, CCS 2022) or ecdh
    /// (Diffie–Hellman on ristretto255: fewer bytes at small sizes).
    #[arg(long, default_value = "rr22", value_parser = ["ecdh", "rr22"])]
    protocol: String,
    /// RR22 only: the low-communication variant (subfield VOLE, OKVS cells
    /// of λ + log2(peer rows) bits): about 40% fewer bytes, slower.
    #[arg(long)]
    low_comm: bool,
    /// RR22 only: the malicious-secure variant (consistency checks in the
    /// OT extension and the VOLE, committed randomness, output hash of
    /// (item, value)).
    #[arg(long, conflicts_with = "low_comm")]
    malicious: bool,
    /// Who gets the output: self, peer or both.
    #[arg(long, default_value = "both", value_parser = ["self", "peer", "both"])]
    receiver: String,
    /// Join: inner, left, right, full or difference.
    #[arg(long, default_value = "inner", value_parser = ["inner", "left", "right", "full", "difference"])]
    join: String,
    /// Which party is the left side of left/right joins: self or peer.
    #[arg(long, default_value = "self", value_parser = ["self", "peer"])]
    left: String,
    /// Text written for missing values in outer joins.
    #[arg(long, default_value = "NULL", value_name = "TEXT")]
    null_rep: String,
    /// Key normalisation, comma separated: trim (ASCII whitespace), lower (ASCII case).
    #[arg(long, value_delimiter = ',', value_parser = ["trim", "lower"])]
    normalize: Vec<String>,
    /// Leave out rows whose key is empty instead of failing.
    #[arg(long)]
    skip_empty_keys: bool,
    /// Directory for spilled buckets and sorted runs.
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Memory for rows before they are bucketed on disk (e.g. 2GiB).
    #[arg(long, default_value = "6GiB", value_name = "SIZE", value_parser = parse_size)]
    memory_budget: u64,
    /// Rows per protocol batch: larger inputs run the protocol in batches of
    /// about this size, one after another, which bounds its memory (the
    /// peer may give a smaller number; the smaller one is used). Default:
    /// 1048576, and 524288 for inputs of more than 8388608 rows.
    #[arg(long, value_name = "ROWS")]
    batch_rows: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Workers: N pairs of links and engines, each on its own bucket of the
    /// key space (the peer may give another N; the smaller one is used).
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: u32,
    /// Write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Output format on stdout: text, or json (the report as one line).
    #[arg(short = 'o', long = "format", default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Seconds to wait for the peer.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    wait: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    venn_psi::parse_size(s)
}

/// Adapts a venn-link [`Link`] to the engine's [`Channel`].
pub(crate) struct LinkChannel(pub(crate) Link);

impl Channel for LinkChannel {
    fn send(&self, frame: Vec<u8>) -> Result<(), ChannelError> {
        self.0.send(frame).map_err(link_err)
    }
    fn recv(&self) -> Result<Vec<u8>, ChannelError> {
        self.0.recv().map_err(link_err)
    }
    fn bytes_sent(&self) -> u64 {
        self.0.bytes_sent()
    }
    fn bytes_received(&self) -> u64 {
        self.0.bytes_received()
    }
}

fn link_err(e: venn_link::LinkError) -> ChannelError {
    match e {
        venn_link::LinkError::Closed => ChannelError::Closed,
        venn_link::LinkError::TooLarge(n) => ChannelError::TooLarge(n),
        other => ChannelError::Transport(other.to_string()),
    }
}

pub(crate) fn run(a: PsiArgs) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up worker threads")?;
    }
    let leader = a.listen.is_some();
    let mut cfg = PsiConfig::new(a.keys.clone(), leader);
    cfg.protocol = a.protocol.parse::<Protocol>().map_err(anyhow::Error::msg)?;
    cfg.receiver = a.receiver.parse::<Receiver>().map_err(anyhow::Error::msg)?;
    cfg.join = a.join.parse::<JoinType>().map_err(anyhow::Error::msg)?;
    cfg.left = a.left.parse::<Side>().map_err(anyhow::Error::msg)?;
    cfg.low_comm = a.low_comm;
    cfg.malicious = a.malicious;
    cfg.null_rep = a.null_rep.clone();
    cfg.skip_empty_keys = a.skip_empty_keys;
    cfg.memory_budget = a.memory_budget;
    cfg.batch_rows = a.batch_rows;
    cfg.normalize = Normalize {
        trim: a.normalize.iter().any(|n| n == "trim"),
        lowercase: a.normalize.iter().any(|n| n == "lower"),
    };
    if let Some(t) = &a.tmp_dir {
        cfg.tmp_dir = t.clone();
    }
    cfg.validate()?;
    if cfg.self_receives() && a.output.is_none() {
        bail!(
            "this party receives the result (--receiver {}): name the file with --output",
            a.receiver
        );
    }
    if !a.input.is_file() {
        bail!("--input {}: no such file", a.input.display());
    }
    if a.token.is_empty() {
        bail!("--token is empty; use a long random secret, e.g. from `openssl rand -hex 16`");
    }
    if a.token.len() < 16 {
        tracing::warn!(
            "the token is shorter than 16 characters; an active attacker could guess it offline"
        );
    }
    let mut opts = LinkOptions::new(a.token.as_bytes().to_vec());
    opts.insecure = a.insecure;
    opts.wait = Duration::from_secs(a.wait);
    if a.insecure {
        tracing::warn!("--insecure: traffic is not encrypted; use it on loopback only");
    }
    let set = WorkerSet::new(a.workers)?;
    // One worker here means one pair whatever the peer runs: its whole input
    // is read while the link comes up.
    crate::alloc::fit_to_input(&a.input);
    let ahead = (a.workers == 1).then(|| venn_psi::ReadAhead::start(&cfg, &a.input));
    let open = |i: u32| -> anyhow::Result<LinkChannel> {
        let link = match (&a.listen, &a.connect) {
            (Some(addr), _) => {
                tracing::info!("listening on {addr} for the peer's worker {i}");
                Link::listen(addr, &opts)?
            }
            (_, Some(addr)) => Link::connect(addr, &opts)?,
            _ => bail!("give --listen ADDR or --connect ADDR"),
        };
        tracing::info!(
            "worker {i}: connected to {} ({})",
            link.peer_addr(),
            if a.insecure {
                "plaintext"
            } else {
                "TLS 1.3, token verified"
            }
        );
        Ok(LinkChannel(link))
    };
    let first = open(0)?;
    let plan = workers::negotiate(&first, &set, 0, leader)?;
    if plan.ours() > plan.pairs() {
        tracing::warn!(
            "the peer runs {} worker(s): {} of our {} workers have no partner and stop; {} pair(s) run",
            plan.theirs(),
            plan.ours() - plan.pairs(),
            plan.ours(),
            plan.pairs()
        );
    }
    let mut chans = vec![first];
    let mut plans = vec![plan.clone()];
    for i in 1..plan.pairs() {
        let chan = open(i)?;
        plans.push(workers::negotiate(&chan, &set, i, leader)?);
        chans.push(chan);
    }
    let refs: Vec<&dyn Channel> = chans.iter().map(|c| c as &dyn Channel).collect();
    let report = match ahead {
        Some(ahead) if plans.len() == 1 => {
            venn_psi::run_read_ahead(&cfg, ahead, a.output.as_deref(), refs[0])?
        }
        _ => workers::run_local(&cfg, &plans, &a.input, a.output.as_deref(), &refs)?,
    };
    for c in chans {
        c.0.close().context("closing the link")?;
    }
    print_report(&report, &a)?;
    Ok(())
}

fn print_report(r: &Report, a: &PsiArgs) -> anyhow::Result<()> {
    let json = serde_json::to_string(r)?;
    if let Some(p) = &a.report {
        crate::write_atomic(p, format!("{json}\n").as_bytes())?;
    }
    if a.format == "json" {
        println!("{json}");
        return Ok(());
    }
    let mut msg = format!(
        "rows {} ({} unique keys), peer rows {} ({} unique)",
        r.self_.rows, r.self_.unique_keys, r.peer.rows, r.peer.unique_keys
    );
    if let Some(i) = &r.intersection {
        msg.push_str(&format!(
            "; intersection {} keys, {} join rows",
            i.keys, i.join_rows
        ));
    }
    match &r.output {
        Some(o) => msg.push_str(&format!("; wrote {} rows to {}", o.rows, o.path)),
        None => msg.push_str("; this party does not receive the result"),
    }
    if r.workers > 1 {
        msg.push_str(&format!("; {} worker pairs", r.workers));
    }
    msg.push_str(&format!(
        "; {:.2} s, sent {:.1} MB, received {:.1} MB",
        r.seconds.total,
        r.bytes_sent as f64 / 1e6,
        r.bytes_received as f64 / 1e6
    ));
    println!("{msg}");
    Ok(())
}

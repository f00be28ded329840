//! `venn demo`: two real nodes, onboarding, data, grants and a PSI job, on one machine.
//!
//! It starts alice's and bob's nodes as child `venn start` processes (temporary data dirs, free
//! loopback ports, SQLite), onboards them with an invitation, uploads generated sample data
//! (`venn gen`), grants each party's table to the other, runs a PSI job from alice, prints
//! `venn job get` and the first rows of both outputs, checks that the outputs are aligned and
//! have the expected size, and stops everything. The standalone two-process PSI (no nodes) is
//! `venn bench psi`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use venn_node::client::LocalClient;
use venn_node::config::Config;

use crate::gen_cmd;

const EXAMPLE: &str = "\
Examples:
  venn demo                        # 10,000 rows each, ECDH-PSI, in a temporary folder
  venn demo --rows 100000 --protocol rr22 --dir /tmp/d --keep";

/// Arguments of `venn demo`.
#[derive(Args, Debug)]
#[command(after_help = EXAMPLE)]
pub(crate) struct DemoArgs {
    /// Rows per party.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    /// Folder for the nodes' data dirs and logs (default: a new temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the folder afterwards (always kept when --dir is given).
    #[arg(long)]
    keep: bool,
    /// PSI protocol.
    #[arg(long, default_value = "rr22", value_parser = ["ecdh", "rr22"])]
    protocol: String,
}

/// A node started as a child process; stopped on drop.
pub(crate) struct LocalNode {
    pub(crate) name: String,
    pub(crate) config: Config,
    child: Option<Child>,
    pub(crate) client: Option<LocalClient>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalNode {
    /// Writes a config for `name` under `dir` and starts `venn start` on free loopback ports.
    pub(crate) fn start(dir: &Path, name: &str, extra: impl FnOnce(&mut Config)) -> Result<Self> {
        let gw = free_port()?;
        let api = free_port()?;
        let mut config = Config {
            domain_id: name.into(),
            endpoint: format!("https://127.0.0.1:{gw}"),
            data_dir: dir.join(format!("{name}-data")),
            ..Config::default()
        };
        config.gateway.listen = format!("127.0.0.1:{gw}");
        config.gateway.heartbeat_seconds = 1;
        config.api.listen = format!("127.0.0.1:{api}");
        extra(&mut config);
        config.validate()?;
        let config_path = dir.join(format!("{name}.yaml"));
        crate::write_atomic(&config_path, config.to_yaml().as_bytes())?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["start", "-c"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a node")?;
        Ok(Self {
            name: name.into(),
            config,
            child: Some(child),
            client: None,
        })
    }

    /// Waits until the API answers.
    pub(crate) async fn ready(&mut self) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("{}'s node exited ({status}); see its log", self.name);
            }
            if self.config.token_path().exists()
                && let Ok(c) = LocalClient::new(&self.config)
                && c.post("/api/v1/domain/list", &json!({})).await.is_ok()
            {
                self.client = Some(c);
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("{}'s node did not start within 20 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn api(&self) -> Result<&LocalClient> {
        self.client.as_ref().context("node not ready")
    }

    /// Waits until route `name` is Ready here.
    pub(crate) async fn route_ready(&self, name: &str) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let r = self
                .api()?
                .post("/api/v1/route/query", &json!({ "name": name }))
                .await;
            if let Ok(r) = &r
                && r["status"]["ready"] == json!(true)
            {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("route {name} at {} not Ready within 20 s: {r:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The file of the default data source at `rel`.
    pub(crate) fn data_file(&self, rel: &str) -> PathBuf {
        self.config.data_dir.join("data").join(rel)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Onboards `b` to `a` and waits for both routes both ways.
pub(crate) async fn onboard(a: &LocalNode, b: &LocalNode) -> Result<()> {
    let inv = a
        .api()?
        .post("/api/v1/peer/invite", &json!({ "peer": b.name }))
        .await?;
    b.api()?
        .post(
            "/api/v1/peer/join",
            &json!({ "invitation": inv["invitation"] }),
        )
        .await?;
    let (ab, ba) = (
        format!("{}-{}", a.name, b.name),
        format!("{}-{}", b.name, a.name),
    );
    for n in [a, b] {
        n.route_ready(&ab).await?;
        n.route_ready(&ba).await?;
    }
    Ok(())
}

/// The body of a two-party PSI job between `a` and `b` on tables `ta` and `tb` (key `id`).
pub(crate) fn psi_job(id: &str, a: &str, ta: &str, b: &str, tb: &str, protocol: &str) -> Value {
    let config = json!({
        "protocol": protocol,
        "inputs": { a: {"domaindata_id": ta, "keys": ["id"]}, b: {"domaindata_id": tb, "keys": ["id"]} },
        "receivers": [a, b],
        "join_type": "inner",
        "outputs": {
            a: {"domaindata_id": format!("{id}-out"), "relative_uri": format!("{id}-out.csv")},
            b: {"domaindata_id": format!("{id}-out"), "relative_uri": format!("{id}-out.csv")}
        }
    });
    json!({
        "job_id": id,
        "initiator": a,
        "max_parallelism": 1,
        "tasks": [{
            "alias": "psi",
            "app_image": "psi",
            "parties": [{"domain_id": a}, {"domain_id": b}],
            "task_input_config": config.to_string(),
        }]
    })
}

/// Polls a job until it reaches a final state; returns the last query answer.
pub(crate) async fn wait_job(c: &LocalClient, id: &str, limit: Duration) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        let j = c
            .post("/api/v1/job/query", &json!({ "job_id": id }))
            .await?;
        let st = j["status"]["state"].as_str().unwrap_or_default();
        if matches!(
            st,
            "Succeeded" | "Failed" | "Cancelled" | "ApprovalReject" | "Suspended"
        ) {
            return Ok(j);
        }
        if t0.elapsed() > limit {
            bail!("job {id} still {st} after {} s: {j}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) fn run(a: DemoArgs) -> Result<()> {
    let (dir, keep) = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.canonicalize()?, true)
        }
        None => {
            let d = std::env::temp_dir().join(format!("venn-demo-{}", std::process::id()));
            std::fs::create_dir_all(&d)?;
            (d, a.keep)
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(demo(&a, &dir));
    if keep || res.is_err() {
        println!("  (data dirs, configs and logs kept in {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

async fn demo(a: &DemoArgs, dir: &Path) -> Result<()> {
    let t0 = Instant::now();
    println!(
        "venn demo: alice and bob each hold {} customer rows; which customers do they share?",
        a.rows
    );
    let mut alice = LocalNode::start(dir, "alice", |_| {})?;
    let mut bob = LocalNode::start(dir, "bob", |_| {})?;
    alice.ready().await?;
    bob.ready().await?;
    println!(
        "  started two nodes (alice, bob) on loopback in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    onboard(&alice, &bob).await?;
    println!("  onboarded: routes alice-bob and bob-alice Ready (mutual TLS)");
    let (fa, fb) = (dir.join("alice.csv"), dir.join("bob.csv"));
    let exp = gen_cmd::generate(a.rows, 0.3, 0.01, 2, 42, &fa, &fb)?;
    alice
        .api()?
        .upload(&fa, "alice-table", "alice's customers")
        .await?;
    bob.api()?
        .upload(&fb, "bob-table", "bob's customers")
        .await?;
    alice
        .api()?
        .post(
            "/api/v1/domaindatagrant/create",
            &json!({"domaindata_id": "alice-table", "grant_domain": "bob"}),
        )
        .await?;
    bob.api()?
        .post(
            "/api/v1/domaindatagrant/create",
            &json!({"domaindata_id": "bob-table", "grant_domain": "alice"}),
        )
        .await?;
    // The grant to alice must have reached alice before she can name bob's table.
    let t1 = Instant::now();
    loop {
        let g = alice
            .api()?
            .post(
                "/api/v1/domaindatagrant/list",
                &json!({"grant_domain": "alice"}),
            )
            .await?;
        if g.to_string().contains("bob-table") {
            break;
        }
        if t1.elapsed() > Duration::from_secs(10) {
            bail!("bob's grant did not reach alice within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("  data uploaded (alice-table, bob-table) and granted to each other");
    let job = "demo-psi";
    let submitted = Instant::now();
    alice
        .api()?
        .post(
            "/api/v1/job/create",
            &psi_job(job, "alice", "alice-table", "bob", "bob-table", &a.protocol),
        )
        .await?;
    println!(
        "  job {job} submitted at alice ({} PSI); waiting ...",
        a.protocol
    );
    let j = wait_job(alice.api()?, job, Duration::from_secs(120)).await?;
    let took = submitted.elapsed();
    println!("\n$ venn job get -c alice.yaml");
    print!("{}", crate::job_cmd::table(std::slice::from_ref(&j)));
    if j["status"]["state"] != "Succeeded" {
        let logs = alice
            .api()?
            .post("/api/v1/log/task/query", &json!({ "job_id": job }))
            .await
            .unwrap_or(Value::Null);
        bail!(
            "the job ended {}: {}\n{}",
            j["status"]["state"],
            j["status"]["err_msg"],
            logs
        );
    }
    // Let bob's node record its own end too.
    let jb = wait_job(bob.api()?, job, Duration::from_secs(10)).await?;
    let out = format!("{job}-out.csv");
    let (oa, ob) = (alice.data_file(&out), bob.data_file(&out));
    for (name, path) in [("alice", &oa), ("bob", &ob)] {
        println!("\nfirst rows of {name}'s output ({}):", path.display());
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::new(f).lines().take(4) {
            println!("  {}", line?);
        }
    }
    let (ka, kb) = (keys(&oa)?, keys(&ob)?);
    if ka != kb {
        bail!(
            "the outputs are not aligned: {} vs {} rows or differing keys",
            ka.len(),
            kb.len()
        );
    }
    if ka.len() as u64 != exp.join_rows {
        bail!("expected {} joined rows, got {}", exp.join_rows, ka.len());
    }
    println!(
        "\nresult: {} shared customers ({} joined rows), as expected; row i of both outputs is the same customer.",
        exp.keys, exp.join_rows
    );
    println!(
        "  job {} at alice and {} at bob; outputs registered as DomainData {job}-out at each; \
         job took {:.2} s from submit, the whole demo {:.1} s.",
        j["status"]["state"].as_str().unwrap_or_default(),
        jb["status"]["state"].as_str().unwrap_or_default(),
        took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    alice.stop();
    bob.stop();
    Ok(())
}

fn keys(p: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut v = Vec::new();
    for line in BufReader::new(f).lines().skip(1) {
        let line = line?;
        v.push(line.split(',').next().unwrap_or_default().to_string());
    }
    Ok(v)
}

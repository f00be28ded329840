//! End-to-end tests of PSI jobs between two venn nodes (issue 5).
//!
//! Each test starts alice's and bob's nodes with the real binary, each in its own network
//! namespace joined by a veth pair when that is permitted (root and `ip netns`), and drives
//! them with the real CLI (`venn peer`, `venn data`, `venn grant`, `venn job`). Where network
//! namespaces are not permitted the test prints `SKIPPED network namespaces` and runs the same
//! steps with both nodes on loopback, so the job flow is still exercised.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{csv_rows, free_port, ip, key, naive, ok, venn_bin};

/// Two network namespaces and a veth pair, removed on drop.
struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Sets up two namespaces; `None` (with the SKIPPED line) where not permitted.
fn netns(test: &str) -> Option<(Netns, [String; 2], [String; 2])> {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root || !ip(&["-V"]) {
        println!("SKIPPED network namespaces in {test}: needs root and `ip`; running on loopback");
        return None;
    }
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let tag = format!("{}{n}", std::process::id() % 10000);
    let (na, nb) = (format!("vj-a-{tag}"), format!("vj-b-{tag}"));
    if !ip(&["netns", "add", &na]) {
        println!(
            "SKIPPED network namespaces in {test}: `ip netns add` is not permitted; running on loopback"
        );
        return None;
    }
    let guard = Netns {
        names: vec![na.clone(), nb.clone()],
    };
    assert!(ip(&["netns", "add", &nb]));
    let (va, vb) = (format!("vja{tag}"), format!("vjb{tag}"));
    assert!(ip(&[
        "link", "add", &va, "type", "veth", "peer", "name", &vb
    ]));
    assert!(ip(&["link", "set", &va, "netns", &na]));
    assert!(ip(&["link", "set", &vb, "netns", &nb]));
    let subnet = 100 + (n % 150);
    let (aa, ab) = (format!("10.233.{subnet}.1"), format!("10.233.{subnet}.2"));
    for (ns, dev, addr) in [(&na, &va, &aa), (&nb, &vb, &ab)] {
        assert!(ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev
        ]));
        assert!(ip(&["-n", ns, "link", "set", dev, "up"]));
        assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
    }
    Some((guard, [na, nb], [aa, ab]))
}

/// A node: its config, namespace (if any) and process.
struct Node {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    ns: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn cmd(&self) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, venn_bin()]);
                c
            }
            None => Command::new(venn_bin()),
        }
    }

    fn init(dir: &Path, name: &str, ns: Option<String>, addr: &str, manual: bool) -> Node {
        let (gw, api) = if ns.is_some() {
            (1080, 8082)
        } else {
            (free_port(), free_port())
        };
        let data_dir = dir.join(format!("{name}-data"));
        let mut n = Node {
            name: name.into(),
            config: dir.join(format!("{name}.yaml")),
            data_dir: data_dir.clone(),
            ns,
            child: None,
            log: dir.join(format!("{name}.log")),
        };
        let listen = if n.ns.is_some() {
            format!("0.0.0.0:{gw}")
        } else {
            format!("127.0.0.1:{gw}")
        };
        let yaml = ok(
            Command::new(venn_bin())
                .args([
                    "init",
                    "--domain",
                    name,
                    "--endpoint",
                    &format!("https://{addr}:{gw}"),
                ])
                .args(["--data-dir", data_dir.to_str().unwrap()])
                .args(["--gateway-listen", &listen])
                .args(["--api-listen", &format!("127.0.0.1:{api}")])
                .args(["--heartbeat-seconds", "1"])
                .args(["--approval", if manual { "manual" } else { "auto" }])
                .output()
                .unwrap(),
            "venn init",
        );
        std::fs::write(&n.config, yaml).unwrap();
        n.start();
        n
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .cmd()
            .args(["start", "-c", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.cli(&["route", "list"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{} did not start: {}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node with SIGKILL (its task processes live on).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .args(["-c", self.config.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        ok(self.cli(args), &format!("venn {args:?} at {}", self.name))
    }

    fn job(&self, id: &str) -> Value {
        serde_json::from_str(&self.cli_ok(&["job", "get", id, "-o", "json"])).unwrap()
    }

    /// Waits until the job's state is one of `states`.
    fn wait_state(&self, id: &str, states: &[&str], secs: u64) -> Value {
        let t0 = Instant::now();
        loop {
            let j = self.job(id);
            if states.iter().any(|s| j["status"]["state"] == *s) {
                return j;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "job {id} at {} not in {states:?} after {secs} s: {j:#}\nlog:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until this node's party of the job's first task is Running with a live process.
    fn wait_task_running(&self, id: &str) -> u32 {
        let t0 = Instant::now();
        loop {
            let j = self.job(id);
            let me = j["status"]["tasks"][0]["parties"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["domain_id"] == self.name.as_str())
                        .cloned()
                })
                .unwrap_or(Value::Null);
            if me["state"] == "Running"
                && me["step"] == "intersecting"
                && let Some(pid) = task_pid(&self.data_dir)
            {
                return pid;
            }
            // Generous: CI runs the job tests in parallel on two vCPUs.
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "task of {id} not running at {}: {j:#}\nlog:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.data_dir.join("data").join(rel)
    }
}

/// The PID of a `venn task run` process whose config lies in `data_dir`.
fn task_pid(data_dir: &Path) -> Option<u32> {
    let needle = data_dir.join("jobs").to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" task run ") && cmd.contains(&needle) {
            return Some(pid);
        }
    }
    None
}

/// Two onboarded nodes with uploaded data (`rows` each) and grants as asked.
struct Pair {
    _dir: tempfile::TempDir,
    alice: Node,
    bob: Node,
    files: [PathBuf; 2],
    _ns: Option<Netns>,
}

fn pair(test: &str, rows: u64, bob_manual: bool, grant_bob_to_alice: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (guard, names, addrs) = match netns(test) {
        Some((g, n, a)) => (Some(g), [Some(n[0].clone()), Some(n[1].clone())], a),
        None => (
            None,
            [None, None],
            ["127.0.0.1".to_owned(), "127.0.0.1".to_owned()],
        ),
    };
    let alice = Node::init(dir.path(), "alice", names[0].clone(), &addrs[0], false);
    let bob = Node::init(dir.path(), "bob", names[1].clone(), &addrs[1], bob_manual);
    let inv = alice.cli_ok(&["peer", "invite", "bob"]).trim().to_owned();
    bob.cli_ok(&["peer", "join", &inv]);
    let t0 = Instant::now();
    loop {
        let ready = |n: &Node| {
            let v: Value = serde_json::from_str(&n.cli_ok(&["route", "list", "-o", "json"]))
                .unwrap_or(Value::Null);
            v.as_array()
                .is_some_and(|rs| rs.len() == 2 && rs.iter().all(|r| r["status"]["ready"] == true))
        };
        if ready(&alice) && ready(&bob) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "routes not Ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fa, fb) = (dir.path().join("alice.csv"), dir.path().join("bob.csv"));
    ok(
        Command::new(venn_bin())
            .args([
                "gen",
                "--rows",
                &rows.to_string(),
                "--overlap",
                "0.4",
                "--dup",
                "0.02",
            ])
            .args(["--payload", "1", "--seed", "7"])
            .args([&fa, &fb])
            .output()
            .unwrap(),
        "venn gen",
    );
    alice.cli_ok(&[
        "data",
        "upload",
        fa.to_str().unwrap(),
        "--id",
        "alice-table",
    ]);
    bob.cli_ok(&["data", "upload", fb.to_str().unwrap(), "--id", "bob-table"]);
    alice.cli_ok(&["grant", "create", "alice-table", "--to", "bob"]);
    if grant_bob_to_alice {
        bob.cli_ok(&["grant", "create", "bob-table", "--to", "alice"]);
        let t0 = Instant::now();
        while !alice
            .cli_ok(&["grant", "list", "--received", "-o", "json"])
            .contains("bob-table")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "grant not delivered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Pair {
        _dir: dir,
        alice,
        bob,
        files: [fa, fb],
        _ns: guard,
    }
}

fn job_file(p: &Pair, id: &str, protocol: &str) -> PathBuf {
    job_file_workers(p, id, protocol, 1)
}

fn job_file_workers(p: &Pair, id: &str, protocol: &str, workers: u32) -> PathBuf {
    let mut config = json!({
        "protocol": protocol,
        "inputs": {"alice": {"domaindata_id": "alice-table", "keys": ["id"]},
                   "bob": {"domaindata_id": "bob-table", "keys": ["id"]}},
        "receivers": ["alice", "bob"],
        "outputs": {"alice": {"domaindata_id": format!("{id}-out"), "relative_uri": format!("{id}.csv")},
                    "bob": {"domaindata_id": format!("{id}-out"), "relative_uri": format!("{id}.csv")}}
    });
    if workers != 1 {
        config["workers"] = json!(workers);
    }
    let body = json!({
        "job_id": id,
        "initiator": "alice",
        "max_parallelism": 1,
        "tasks": [{"alias": "psi", "app_image": "psi", "task_input_config": config.to_string(),
                   "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}]}]
    });
    let f = p._dir.path().join(format!("{id}.json"));
    std::fs::write(&f, body.to_string()).unwrap();
    f
}

#[test]
fn psi_job_succeeds_and_outputs_equal_the_naive_join() {
    let p = pair("psi_job_succeeds", 3000, false, true);
    let f = job_file(&p, "job-ok", "ecdh");
    let t0 = Instant::now();
    let out = p
        .alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    assert_eq!(out.trim(), "job-ok");
    let j = p.alice.wait_state("job-ok", &["Succeeded", "Failed"], 60);
    assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
    println!("job-ok: submit → Succeeded in {:?}", t0.elapsed());
    let jb = p.bob.wait_state("job-ok", &["Succeeded", "Failed"], 20);
    assert_eq!(jb["status"]["state"], "Succeeded", "{jb:#}");
    // Both signatures stored at both ends.
    for j in [&j, &jb] {
        let approvals = j["status"]["approve_status_list"].as_array().unwrap();
        assert_eq!(approvals.len(), 2, "{j:#}");
        for a in approvals {
            assert_eq!(a["state"], "JobAccepted");
            assert!(a["signature"].as_str().unwrap().len() > 40, "{a}");
        }
    }
    // Outputs: the naive join at each receiver, row i the same key at both.
    let (_, a_in) = csv_rows(&p.files[0]);
    let (_, b_in) = csv_rows(&p.files[1]);
    let (ha, a_out) = csv_rows(&p.alice.file("job-ok.csv"));
    let (hb, b_out) = csv_rows(&p.bob.file("job-ok.csv"));
    assert_eq!(ha, "id,f0");
    assert_eq!(hb, "id,f0");
    let keys_a: Vec<&str> = a_out.iter().map(|r| key(r)).collect();
    let keys_b: Vec<&str> = b_out.iter().map(|r| key(r)).collect();
    assert_eq!(keys_a, keys_b, "outputs not aligned");
    let mut sa = a_out.clone();
    sa.sort();
    let mut sb = b_out.clone();
    sb.sort();
    assert_eq!(sa, naive(&a_in, &b_in));
    assert_eq!(sb, naive(&b_in, &a_in));
    assert!(!sa.is_empty());
    // Registered as DomainData at each receiver; report stored with the task.
    for n in [&p.alice, &p.bob] {
        let list = n.cli_ok(&["data", "list", "-o", "json"]);
        assert!(list.contains("job-ok-out"), "{list}");
    }
    let report = &j["status"]["tasks"][0]["parties"][0]["report"];
    assert!(
        report["intersection"]["join_rows"].as_u64().unwrap() > 0,
        "{report}"
    );
    let table = p.alice.cli_ok(&["job", "get"]);
    assert!(table.starts_with("JOB_ID"), "{table}");
    assert!(
        table.contains("job-ok") && table.contains("Succeeded") && table.contains("1/1"),
        "{table}"
    );
    let watch = p.alice.cli_ok(&["job", "watch", "job-ok"]);
    assert!(
        watch.contains("job job-ok: Succeeded") && watch.contains("100%"),
        "{watch}"
    );
    let logs = p.bob.cli_ok(&["job", "logs", "job-ok"]);
    assert!(logs.contains("task succeeded"), "{logs}");
    // The same job ID again is a conflict; the used grant is counted.
    let again = p.alice.cli(&["job", "create", "-f", f.to_str().unwrap()]);
    assert!(!again.status.success());
}

#[test]
fn psi_job_with_two_workers_equals_the_naive_join() {
    let p = pair("psi_job_workers", 4000, false, true);
    let f = job_file_workers(&p, "job-w2", "rr22", 2);
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let j = p.alice.wait_state("job-w2", &["Succeeded", "Failed"], 90);
    assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
    let jb = p.bob.wait_state("job-w2", &["Succeeded", "Failed"], 20);
    assert_eq!(jb["status"]["state"], "Succeeded", "{jb:#}");
    let (_, a_in) = csv_rows(&p.files[0]);
    let (_, b_in) = csv_rows(&p.files[1]);
    let (_, a_out) = csv_rows(&p.alice.file("job-w2.csv"));
    let (_, b_out) = csv_rows(&p.bob.file("job-w2.csv"));
    let keys_a: Vec<&str> = a_out.iter().map(|r| key(r)).collect();
    let keys_b: Vec<&str> = b_out.iter().map(|r| key(r)).collect();
    assert_eq!(keys_a, keys_b, "outputs not aligned");
    let mut sorted = keys_a.clone();
    sorted.sort();
    assert_eq!(keys_a, sorted, "merged output sorted by key");
    let (mut sa, mut sb) = (a_out.clone(), b_out.clone());
    sa.sort();
    sb.sort();
    assert_eq!(sa, naive(&a_in, &b_in));
    assert_eq!(sb, naive(&b_in, &a_in));
    assert!(!sa.is_empty());
    for (n, jj, rows) in [(&p.alice, &j, a_in.len()), (&p.bob, &jb, b_in.len())] {
        let report = &jj["status"]["tasks"][0]["parties"][0]["report"];
        assert_eq!(report["workers"], 2, "{report}");
        assert_eq!(report["self"]["rows"], rows as u64, "{report}");
        // both workers ran and logged; no worker process is left, nor its parts
        let logs = n.cli_ok(&["job", "logs", "job-w2"]);
        assert!(
            logs.contains("worker=1") && logs.matches("task succeeded").count() == 2,
            "{logs}"
        );
        assert!(
            task_pid(&n.data_dir).is_none(),
            "a worker outlived its task"
        );
        let task_dir = n.data_dir.join("jobs").join("job-w2");
        let leftovers: Vec<_> = walk(&task_dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("/parts"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn job_on_data_not_granted_is_refused() {
    let p = pair("not_granted", 100, false, false);
    let f = job_file(&p, "job-nogrant", "ecdh");
    let out = p.alice.cli(&["job", "create", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bob") && err.contains("bob-table") && err.contains("not granted to alice"),
        "{err}"
    );
    // Nothing was created at either node.
    assert!(!p.alice.cli(&["job", "get", "job-nogrant"]).status.success());
    assert!(!p.bob.cli(&["job", "get", "job-nogrant"]).status.success());
}

#[test]
fn manual_approval_then_reject() {
    let p = pair("manual_approval", 200, true, true);
    let f = job_file(&p, "job-manual", "ecdh");
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let j = p.alice.wait_state("job-manual", &["AwaitingApproval"], 20);
    assert!(
        j["status"]["err_msg"].as_str().unwrap().contains("bob"),
        "{j:#}"
    );
    // Still waiting a while later: nothing runs without bob's approval.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        p.alice.job("job-manual")["status"]["state"],
        "AwaitingApproval"
    );
    p.bob.cli_ok(&["job", "approve", "job-manual"]);
    let j = p
        .alice
        .wait_state("job-manual", &["Succeeded", "Failed"], 60);
    assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
    // A second job, rejected.
    let f = job_file(&p, "job-rejected", "ecdh");
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    p.bob.wait_state("job-rejected", &["AwaitingApproval"], 20);
    p.bob
        .cli_ok(&["job", "reject", "job-rejected", "--reason", "not agreed"]);
    let j = p.alice.wait_state("job-rejected", &["ApprovalReject"], 20);
    assert!(
        j["status"]["err_msg"]
            .as_str()
            .unwrap()
            .contains("not agreed"),
        "{j:#}"
    );
    assert!(!p.alice.file("job-rejected.csv").exists());
    // Approving twice is refused with a reason.
    let again = p.bob.cli(&["job", "approve", "job-rejected"]);
    assert!(!again.status.success());
}

/// Rows for jobs that must still be running when the test acts (seconds in a debug build).
const SLOW_ROWS: u64 = 200_000;

#[test]
fn stop_mid_run() {
    let p = pair("stop_mid_run", SLOW_ROWS, false, true);
    let f = job_file(&p, "job-stop", "ecdh");
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let pid = p.bob.wait_task_running("job-stop");
    p.alice
        .cli_ok(&["job", "stop", "job-stop", "--reason", "changed my mind"]);
    let j = p.alice.wait_state("job-stop", &["Failed"], 20);
    assert!(
        j["status"]["err_msg"]
            .as_str()
            .unwrap()
            .contains("changed my mind"),
        "{j:#}"
    );
    let jb = p.bob.wait_state("job-stop", &["Failed"], 20);
    assert!(
        jb["status"]["err_msg"]
            .as_str()
            .unwrap()
            .contains("stop by alice"),
        "{jb:#}"
    );
    // Bob's task process is gone (its group was signalled).
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "task {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!p.alice.file("job-stop.csv").exists());
}

#[test]
fn kill_9_of_a_task_fails_it_with_a_reason() {
    let p = pair("kill_task", SLOW_ROWS, false, true);
    let f = job_file(&p, "job-kill", "ecdh");
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let pid = p.bob.wait_task_running("job-kill");
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let jb = p.bob.wait_state("job-kill", &["Failed"], 30);
    let reason = jb["status"]["err_msg"].as_str().unwrap();
    assert!(reason.contains("signal 9"), "{jb:#}");
    // Alice's view: the job Failed, and bob's party carries bob's reason.
    let j = p.alice.wait_state("job-kill", &["Failed"], 30);
    let t0 = Instant::now();
    loop {
        let j = p.alice.job("job-kill");
        let bob = j["status"]["tasks"][0]["parties"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["domain_id"] == "bob")
            .cloned()
            .unwrap();
        if bob["err_msg"].as_str().unwrap_or("").contains("signal 9") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{j:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!j["status"]["err_msg"].as_str().unwrap().is_empty());
}

#[test]
fn node_restart_mid_job_is_not_stuck_and_restart_completes() {
    let p = pair("node_restart", SLOW_ROWS, false, true);
    let mut p = p;
    let f = job_file(&p, "job-restart", "ecdh");
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    p.bob.wait_task_running("job-restart");
    p.bob.kill();
    p.bob.start();
    let jb = p
        .bob
        .wait_state("job-restart", &["Failed", "Succeeded"], 60);
    let j = p
        .alice
        .wait_state("job-restart", &["Failed", "Succeeded"], 60);
    println!(
        "after bob's restart: bob {} ({}), alice {} ({})",
        jb["status"]["state"],
        jb["status"]["err_msg"],
        j["status"]["state"],
        j["status"]["err_msg"]
    );
    if j["status"]["state"] == "Failed" {
        assert!(!j["status"]["err_msg"].as_str().unwrap().is_empty());
        p.alice.cli_ok(&["job", "restart", "job-restart"]);
        let j = p
            .alice
            .wait_state("job-restart", &["Succeeded", "Failed"], 180);
        assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
        let jb = p
            .bob
            .wait_state("job-restart", &["Succeeded", "Failed"], 30);
        assert_eq!(jb["status"]["state"], "Succeeded", "{jb:#}");
    }
}

#[test]
fn every_job_command_has_help_with_an_example() {
    for sub in [
        "create", "get", "watch", "stop", "cancel", "restart", "delete", "approve", "reject",
        "logs",
    ] {
        let out = ok(
            Command::new(venn_bin())
                .args(["job", sub, "--help"])
                .output()
                .unwrap(),
            sub,
        );
        assert!(out.contains("Example"), "venn job {sub} --help: {out}");
    }
}

/// The job of Kuscia's `scripts/user/create_example_job.sh` (SecretFlow PSI config, app image
/// `secretflow-image`), with only the key column names changed to the generated files' `id`.
#[test]
fn kuscia_example_job_runs() {
    let p = pair("kuscia_example", 500, false, true);
    let tic = r#"{"sf_datasource_config":{"alice":{"id":"default-data-source"},"bob":{"id":"default-data-source"}},"sf_cluster_desc":{"parties":["alice","bob"],"devices":[{"name":"spu","type":"spu","parties":["alice","bob"],"config":"{\"runtime_config\":{\"protocol\":\"SEMI2K\",\"field\":\"FM128\"}}"}],"ray_fed_config":{"cross_silo_comm_backend":"brpc_link"}},"sf_node_eval_param":{"domain":"data_prep","name":"psi","version":"1.0.0","attr_paths":["input/input_ds1/keys","input/input_ds2/keys","protocol","sort_result","receiver_parties","allow_empty_result","join_type","input_ds1_keys_duplicated","input_ds2_keys_duplicated"],"attrs":[{"is_na":false,"ss":["id"]},{"is_na":false,"ss":["id"]},{"is_na":false,"s":"PROTOCOL_RR22"},{"b":true,"is_na":false},{"is_na":false,"ss":["alice","bob"]},{"is_na":true},{"is_na":false,"s":"inner_join"},{"b":true,"is_na":false},{"b":true,"is_na":false}]},"sf_input_ids":["alice-table","bob-table"],"sf_output_ids":["psi-output","psi-output"],"sf_output_uris":["psi-output.csv","psi-output.csv"]}"#;
    let body = json!({
        "job_id": "secretflow-task-20240101000000",
        "initiator": "alice",
        "max_parallelism": 2,
        "tasks": [{
            "app_image": "secretflow-image",
            "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}],
            "alias": "single-psi",
            "task_id": "secretflow-task-20240101000000-single-psi",
            "priority": 100,
            "task_input_config": tic,
        }]
    });
    let f = p._dir.path().join("kuscia.json");
    std::fs::write(&f, body.to_string()).unwrap();
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let j = p.alice.wait_state(
        "secretflow-task-20240101000000",
        &["Succeeded", "Failed"],
        60,
    );
    assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
    assert_eq!(j["tasks"][0]["psi"]["protocol"], "rr22");
    let (_, a_in) = csv_rows(&p.files[0]);
    let (_, b_in) = csv_rows(&p.files[1]);
    let (_, mut a_out) = csv_rows(&p.alice.file("psi-output.csv"));
    let (_, mut b_out) = csv_rows(&p.bob.file("psi-output.csv"));
    a_out.sort();
    b_out.sort();
    assert_eq!(a_out, naive(&a_in, &b_in));
    assert_eq!(b_out, naive(&b_in, &a_in));
}

/// Two tasks, the second depending on the first: run one after the other, both Succeeded, each
/// with its own default output at each receiver.
#[test]
fn dag_of_two_tasks_runs_in_order() {
    let p = pair("dag", 300, false, true);
    let config = json!({
        "inputs": {"alice": {"domaindata_id": "alice-table", "keys": ["id"]},
                   "bob": {"domaindata_id": "bob-table", "keys": ["id"]}}
    })
    .to_string();
    let body = json!({
        "job_id": "job-dag",
        "initiator": "alice",
        "max_parallelism": 2,
        "schedule_mode": "BestEffort",
        "tasks": [
            {"alias": "second", "dependencies": ["first"], "task_input_config": config,
             "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}]},
            {"alias": "first", "task_input_config": config, "priority": 5,
             "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}]}
        ]
    });
    let f = p._dir.path().join("dag.json");
    std::fs::write(&f, body.to_string()).unwrap();
    p.alice
        .cli_ok(&["job", "create", "-f", f.to_str().unwrap()]);
    let j = p.alice.wait_state("job-dag", &["Succeeded", "Failed"], 90);
    assert_eq!(j["status"]["state"], "Succeeded", "{j:#}");
    let tasks = j["status"]["tasks"].as_array().unwrap();
    let (second, first) = (&tasks[0], &tasks[1]);
    assert_eq!(first["alias"], "first");
    assert!(
        second["start_time"].as_i64().unwrap() >= first["end_time"].as_i64().unwrap(),
        "{j:#}"
    );
    for alias in ["first", "second"] {
        for n in [&p.alice, &p.bob] {
            assert!(
                n.file(&format!("job-dag-{alias}.csv")).exists(),
                "{alias} at {}",
                n.name
            );
        }
    }
    let table = p.alice.cli_ok(&["job", "get"]);
    assert!(table.contains("2/2"), "{table}");
}

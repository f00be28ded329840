//! End-to-end test of transit routes (issue 6): alice and bob have no network path to each
//! other, only to carol; carol's gateway carries their route, and a PSI job between alice and
//! bob still succeeds while carol sees ciphertext only.
//!
//! Topology when network namespaces are permitted (root and `ip netns`):
//!
//! ```text
//! [alice ns] 10.234.N.1 ──veth── 10.234.N.2 [carol ns] 10.235.N.2 ──veth── 10.235.N.1 [bob ns]
//! ```
//!
//! carol's namespace does not forward IP packets (a new namespace starts with forwarding off),
//! and alice's has no route to bob's subnet, so the only way between them is carol's gateway.
//! `carol` resolves to the address on each side through `/etc/netns/<ns>/hosts`, which
//! `ip netns exec` mounts over `/etc/hosts`. A `tcpdump` on every interface of carol's namespace
//! records the job's traffic; the test then looks for every key of both inputs in the capture.
//!
//! Without network namespaces the same steps run on loopback (the direct path then exists, so
//! only the relaying and the job are checked; the capture is skipped with a `SKIPPED` line).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::capture::{Capture, assert_no_plaintext};
use common::{free_port, ip, key, naive, ok, rows_of, venn_bin};

/// Three namespaces (alice, carol, bob), removed on drop with their hosts files.
struct Line {
    names: [String; 3],
    /// alice's address, carol's address on alice's side, carol's on bob's side, bob's.
    addrs: [String; 4],
}

impl Drop for Line {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

fn line() -> Option<Line> {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root || !ip(&["-V"]) {
        println!("SKIPPED network namespaces: needs root and `ip`; running on loopback");
        return None;
    }
    let tag = std::process::id() % 100_000;
    let names = [
        format!("vt-a-{tag}"),
        format!("vt-c-{tag}"),
        format!("vt-b-{tag}"),
    ];
    if !ip(&["netns", "add", &names[0]]) {
        println!(
            "SKIPPED network namespaces: `ip netns add` is not permitted; running on loopback"
        );
        return None;
    }
    let n = 10 + tag % 200;
    let l = Line {
        names: names.clone(),
        addrs: [
            format!("10.234.{n}.1"),
            format!("10.234.{n}.2"),
            format!("10.235.{n}.2"),
            format!("10.235.{n}.1"),
        ],
    };
    assert!(ip(&["netns", "add", &names[1]]));
    assert!(ip(&["netns", "add", &names[2]]));
    let (va, vca, vcb, vb) = (
        format!("vta{tag}"),
        format!("vtca{tag}"),
        format!("vtcb{tag}"),
        format!("vtb{tag}"),
    );
    assert!(ip(&[
        "link", "add", &va, "type", "veth", "peer", "name", &vca
    ]));
    assert!(ip(&[
        "link", "add", &vb, "type", "veth", "peer", "name", &vcb
    ]));
    for (dev, ns, addr) in [
        (&va, &names[0], &l.addrs[0]),
        (&vca, &names[1], &l.addrs[1]),
        (&vcb, &names[1], &l.addrs[2]),
        (&vb, &names[2], &l.addrs[3]),
    ] {
        assert!(ip(&["link", "set", dev, "netns", ns]));
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
    // `carol` is carol's address on each side.
    for (ns, carol) in [(&names[0], &l.addrs[1]), (&names[2], &l.addrs[2])] {
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
        std::fs::write(
            format!("/etc/netns/{ns}/hosts"),
            format!("127.0.0.1 localhost\n{carol} carol\n"),
        )
        .unwrap();
    }
    Some(l)
}

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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn cmd(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn start(dir: &Path, name: &str, ns: Option<String>, endpoint_host: &str) -> Node {
        let (gw, api) = if ns.is_some() {
            (1080, 8082)
        } else {
            (free_port(), free_port())
        };
        let data_dir = dir.join(format!("{name}-data"));
        let listen = if ns.is_some() { "0.0.0.0" } else { "127.0.0.1" };
        let yaml = ok(
            Command::new(venn_bin())
                .args(["init", "--domain", name])
                .args(["--endpoint", &format!("https://{endpoint_host}:{gw}")])
                .args(["--data-dir", data_dir.to_str().unwrap()])
                .args(["--gateway-listen", &format!("{listen}:{gw}")])
                .args(["--api-listen", &format!("127.0.0.1:{api}")])
                .args(["--heartbeat-seconds", "1"])
                .output()
                .unwrap(),
            "venn init",
        );
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut n = Node {
            name: name.into(),
            config,
            data_dir,
            ns,
            child: None,
            log,
        };
        let err = std::fs::File::create(&n.log).unwrap();
        n.child = Some(
            n.cmd(venn_bin())
                .args(["start", "-c", n.config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while !n.cli(&["route", "list"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{name} did not start: {}",
                n.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cmd(venn_bin())
            .args(args)
            .args(["-c", self.config.to_str().unwrap()])
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        ok(self.cli(args), &format!("venn {args:?} at {}", self.name))
    }

    fn route(&self, name: &str) -> Value {
        let all: Value =
            serde_json::from_str(&self.cli_ok(&["route", "list", "-o", "json"])).unwrap();
        all.as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until `check` holds for the route `name`; panics with the route after `secs`.
    fn wait_route(&self, name: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let r = self.route(name);
            if check(&r) {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "route {name} at {}: {r:#}\nlog:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_job(&self, id: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let j: Value =
                serde_json::from_str(&self.cli_ok(&["job", "get", id, "-o", "json"])).unwrap();
            if j["status"]["state"] == "Succeeded" || j["status"]["state"] == "Failed" {
                return j;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "job {id} at {}: {j:#}\nlog:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ready(r: &Value) -> bool {
    r["status"]["ready"] == true
}

#[test]
fn psi_job_through_a_transit_relay_sees_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let net = line();
    let (ns, hosts): ([Option<String>; 3], [String; 3]) = match &net {
        Some(l) => (
            l.names.clone().map(Some),
            [l.addrs[0].clone(), "carol".into(), l.addrs[3].clone()],
        ),
        None => (
            [None, None, None],
            ["127.0.0.1".into(), "127.0.0.1".into(), "127.0.0.1".into()],
        ),
    };
    let [na, nc, nb] = ns;
    let alice = Node::start(dir.path(), "alice", na, &hosts[0]);
    let carol = Node::start(dir.path(), "carol", nc, &hosts[1]);
    let bob = Node::start(dir.path(), "bob", nb, &hosts[2]);

    // carol is a partner of both (invitations over the network they share).
    for n in [&alice, &bob] {
        let word = carol.cli_ok(&["peer", "invite", &n.name]).trim().to_owned();
        n.cli_ok(&["peer", "join", &word]);
    }
    // alice and bob pin each other's CA from files: they have no path to exchange anything.
    let (ca, cb) = (dir.path().join("alice.crt"), dir.path().join("bob.crt"));
    alice.cli_ok(&["peer", "export", "-f", ca.to_str().unwrap()]);
    bob.cli_ok(&["peer", "export", "-f", cb.to_str().unwrap()]);
    alice.cli_ok(&["peer", "add", "bob", "--cert", cb.to_str().unwrap()]);
    bob.cli_ok(&["peer", "add", "alice", "--cert", ca.to_str().unwrap()]);
    for (n, r) in [(&alice, "alice-carol"), (&bob, "bob-carol")] {
        n.wait_route(r, 20, ready);
    }
    if net.is_some() {
        // No direct path: the route fails at TCP.
        let r = alice.wait_route("alice-bob", 20, |r| r["status"]["reason"] == "TCP");
        assert!(!ready(&r), "{r:#}");
    }

    // Both ends switch to carol; until carol permits it, carol refuses, and the route says so.
    for n in [&alice, &bob] {
        for (s, d) in [("alice", "bob"), ("bob", "alice")] {
            let out = n.cli_ok(&["route", "transit", s, d, "--via", "carol"]);
            assert!(out.contains("goes through carol"), "{out}");
        }
    }
    let r = alice.wait_route("alice-bob", 20, |r| r["status"]["reason"] == "Transit");
    let msg = r["status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no route alice-bob to carry"), "{r:#}");
    assert_eq!(r["transit"], "carol");
    // A node that is neither end nor relay cannot set a route.
    let wrong = alice.cli(&["route", "transit", "bob", "carol", "--via", "dave"]);
    assert!(!wrong.status.success());
    let why = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        why.contains("neither an end of route bob-carol nor its transit"),
        "{why}"
    );

    // carol permits both directions, with each destination's gateway.
    let gw = |h: &str| {
        if net.is_some() {
            format!("https://{h}:1080")
        } else {
            String::new()
        }
    };
    for (s, d, ep) in [
        ("alice", "bob", gw(&hosts[2])),
        ("bob", "alice", gw(&hosts[0])),
    ] {
        let mut args = vec!["route", "transit", s, d, "--via", "carol"];
        if !ep.is_empty() {
            args.extend(["--endpoint", ep.as_str()]);
        }
        carol.cli_ok(&args);
    }
    for (n, r) in [
        (&alice, "alice-bob"),
        (&bob, "bob-alice"),
        (&alice, "bob-alice"),
        (&bob, "alice-bob"),
    ] {
        n.wait_route(r, 30, ready);
    }
    let table = alice.cli_ok(&["route", "list"]);
    assert!(table.contains("(via carol)"), "{table}");

    // Capture everything carol's namespace sees during the job.
    let capture = match &carol.ns {
        Some(ns) => Some(Capture::start(ns, &dir.path().join("carol.pcap"))),
        None => {
            println!("SKIPPED capture: no network namespaces");
            None
        }
    };

    // The seed flow: data, grants both ways, a PSI job from alice.
    let (fa, fb) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
    ok(
        Command::new(venn_bin())
            .args(["gen", "--rows", "3000", "--overlap", "0.4", "--dup", "0.02"])
            .args(["--payload", "1", "--seed", "11"])
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
    bob.cli_ok(&["grant", "create", "bob-table", "--to", "alice"]);
    let t0 = Instant::now();
    while !alice
        .cli_ok(&["grant", "list", "--received", "-o", "json"])
        .contains("bob-table")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "grant not delivered through carol"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let config = json!({
        "protocol": "ecdh",
        "inputs": {"alice": {"domaindata_id": "alice-table", "keys": ["id"]},
                   "bob": {"domaindata_id": "bob-table", "keys": ["id"]}},
        "receivers": ["alice", "bob"],
        "outputs": {"alice": {"domaindata_id": "t-out", "relative_uri": "t.csv"},
                    "bob": {"domaindata_id": "t-out", "relative_uri": "t.csv"}}
    });
    let job = json!({
        "job_id": "via-carol",
        "initiator": "alice",
        "tasks": [{"alias": "psi", "app_image": "psi", "task_input_config": config.to_string(),
                   "parties": [{"domain_id": "alice"}, {"domain_id": "bob"}]}]
    });
    let jf = dir.path().join("job.json");
    std::fs::write(&jf, job.to_string()).unwrap();
    alice.cli_ok(&["job", "create", "-f", jf.to_str().unwrap()]);
    for n in [&alice, &bob] {
        let j = n.wait_job("via-carol");
        assert_eq!(j["status"]["state"], "Succeeded", "{j:#}\n{}", n.log_text());
    }
    let (a_in, b_in) = (rows_of(&fa), rows_of(&fb));
    let a_out = rows_of(&alice.data_dir.join("data/t.csv"));
    let b_out = rows_of(&bob.data_dir.join("data/t.csv"));
    let keys = |v: &[String]| v.iter().map(|r| key(r).to_owned()).collect::<Vec<_>>();
    assert_eq!(keys(&a_out), keys(&b_out), "outputs not aligned");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(a_out.clone()), naive(&a_in, &b_in));
    assert_eq!(sorted(b_out), naive(&b_in, &a_in));
    assert!(!a_out.is_empty());
    // carol carried the task link.
    assert!(
        carol.log_text().contains("transit closed"),
        "{}",
        carol.log_text()
    );

    if let Some(c) = capture {
        let keys: HashSet<&str> = a_in.iter().chain(&b_in).map(|r| key(r)).collect();
        assert_no_plaintext(&c.stop(), &keys, 100_000, "carol");
    }
}

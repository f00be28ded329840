//! End-to-end tests of the venn node: real `venn` processes on loopback (and, when run as root
//! with `ip` available, in two network namespaces joined by a veth pair).
//!
//! Each test makes its own temporary directory and free ports, starts nodes with
//! `venn init` + `venn start`, and drives them with the real CLI, raw HTTP on the API port and
//! raw TLS on the gateway port (the `curl -k` checks of the seeds). Nodes are killed when their
//! handle drops, also when a test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{Value, json};

const SEED_DATASOURCE: &str = include_str!("fixtures/seed003/alice-datasource.json");
const SEED_DOMAINDATA: &str = include_str!("fixtures/seed003/alice-domaindata.json");
const SEED_GRANT: &str = include_str!("fixtures/seed003/alice-grant.json");
const SEED_HEADER: &str = "id1,age,education,default,balance,housing,loan,day,duration,campaign,pdays,previous,job_blue-collar,job_entrepreneur,job_housemaid,job_management,job_retired,job_self-employed,job_services,job_student,job_technician,job_unemployed,marital_divorced,marital_married,marital_single";

fn venn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_venn"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run venn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running node; killed on drop.
struct Node {
    name: String,
    config: PathBuf,
    data_dir: PathBuf,
    api: SocketAddr,
    gateway: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    startup: Duration,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    /// `venn init` + `venn start` on loopback with free ports.
    fn start(dir: &Path, name: &str) -> Node {
        Self::start_with(dir, name, free_port(), None, &[])
    }

    /// Like [`Node::start`] with a gateway port, an endpoint other than the gateway's own
    /// address (a relay in front of it), and extra `venn init` arguments.
    fn start_with(dir: &Path, name: &str, gw: u16, endpoint: Option<&str>, extra: &[&str]) -> Node {
        let api = free_port();
        let config = dir.join(format!("{name}.yaml"));
        let endpoint = endpoint.map_or_else(|| format!("https://127.0.0.1:{gw}"), str::to_owned);
        let yaml = run_ok(
            venn()
                .args([
                    "init",
                    "--mode",
                    "autonomy",
                    "--domain",
                    name,
                    "--endpoint",
                    &endpoint,
                    "--data-dir",
                    dir.join(format!("{name}-data")).to_str().unwrap(),
                    "--gateway-listen",
                    &format!("127.0.0.1:{gw}"),
                    "--api-listen",
                    &format!("127.0.0.1:{api}"),
                    "--heartbeat-seconds",
                    "1",
                ])
                .args(extra),
        );
        std::fs::write(&config, yaml).unwrap();
        let mut node = Node {
            name: name.into(),
            config,
            data_dir: dir.join(format!("{name}-data")),
            api: format!("127.0.0.1:{api}").parse().unwrap(),
            gateway: format!("127.0.0.1:{gw}").parse().unwrap(),
            child: None,
            log: dir.join(format!("{name}.log")),
            startup: Duration::ZERO,
        };
        node.launch();
        node
    }

    /// Spawns `venn start` and waits for /healthZ.
    fn launch(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let t0 = Instant::now();
        let child = venn()
            .args(["start", "-c", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn venn start");
        self.child = Some(child);
        self.wait_healthy(t0);
    }

    fn wait_healthy(&mut self, t0: Instant) {
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok((200, _)) = http(self.api, "GET", "/healthZ", &[], "") {
                self.startup = t0.elapsed();
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited with {status}: {}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not healthy in 20 s: {}", self.name, self.log_text());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn cli(&self, args: &[&str]) -> Output {
        venn()
            .args(args)
            .args(["-c", self.config.to_str().unwrap()])
            .output()
            .expect("run venn")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "venn {args:?} at {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// POST to the API with the `Token` header; returns status and JSON.
    fn api(&self, path: &str, body: &str) -> (u16, Value) {
        let token = self.token();
        let (status, text) =
            http(self.api, "POST", path, &[("Token", &token)], body).expect("API call");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn api_ok(&self, path: &str, body: &str) -> Value {
        let (status, v) = self.api(path, body);
        assert_eq!(status, 200, "{path} at {}: {v}", self.name);
        assert_eq!(v["status"]["code"], 0, "{v}");
        v["data"].clone()
    }

    fn route(&self, name: &str) -> Value {
        self.api_ok("/api/v1/route/query", &json!({ "name": name }).to_string())
    }

    fn wait_route(&self, name: &str, ready: bool) -> Value {
        let t0 = Instant::now();
        loop {
            let r = self.route(name);
            if r["status"]["ready"] == json!(ready) {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "route {name} at {}: {r}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, method, path, headers, body)
}

fn exchange(
    s: &mut impl ReadWrite,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

// === raw TLS to the gateway (curl -k) ===

/// Accepts any server certificate, like `curl -k`: the tests are about the *client* side.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client identity: certificate chain and key.
struct ClientId {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The gateway identity stored in a data dir (what the node itself presents).
fn identity_of(data_dir: &Path) -> ClientId {
    let leaf = CertificateDer::from_pem_file(data_dir.join("keys/gateway.crt")).unwrap();
    let ca = CertificateDer::from_pem_file(data_dir.join("keys/ca.crt")).unwrap();
    let key = PrivateKeyDer::from_pem_file(data_dir.join("keys/gateway.key")).unwrap();
    ClientId {
        chain: vec![leaf, ca],
        key,
    }
}

/// A request to the gateway over TLS, optionally with a client certificate.
fn gateway_call(
    addr: SocketAddr,
    id: Option<&ClientId>,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("gateway").unwrap())
            .unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    exchange(&mut tls, "POST", path, headers, body).expect("gateway answer")
}

fn assert_unauthorized((status, body): (u16, String)) {
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"reason": "unauthorized"}),
        "401 body must carry the reason only"
    );
}

// === tests ===

#[test]
fn init_validates_every_field() {
    let out = venn()
        .args([
            "init",
            "--domain",
            "kube-system",
            "--endpoint",
            "http://alice:1080",
            "--gateway-listen",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "domain_id:",
        "reserved",
        "endpoint:",
        "https://",
        "gateway.listen:",
    ] {
        assert!(err.contains(field), "missing {field:?} in: {err}");
    }
    for bad in ["Alice", "a_b", "-a", "default", "master", "cross-domain"] {
        let out = venn()
            .args(["init", "--domain", bad, "--endpoint", "https://a:1"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} accepted");
    }
    let yaml = run_ok(venn().args([
        "init",
        "--mode",
        "autonomy",
        "--domain",
        "alice",
        "--endpoint",
        "https://alice.example:1080",
    ]));
    assert!(
        yaml.contains("domain_id: alice")
            && yaml.contains("0.0.0.0:1080")
            && yaml.contains("127.0.0.1:8082")
    );
}

#[test]
fn every_node_command_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &["init"],
        &["start"],
        &["token"],
        &["token", "rotate"],
        &["token", "path"],
        &["peer"],
        &["peer", "invite"],
        &["peer", "join"],
        &["peer", "export"],
        &["peer", "add"],
        &["peer", "list"],
        &["route"],
        &["route", "list"],
        &["route", "create"],
        &["route", "delete"],
        &["route", "transit"],
        &["domain"],
        &["domain", "add"],
        &["domain", "token"],
        &["domain", "reset"],
        &["domain", "list"],
        &["data"],
        &["data", "upload"],
        &["data", "list"],
        &["grant"],
        &["grant", "create"],
        &["grant", "list"],
        &["store"],
        &["store", "check"],
        &["store", "migrate"],
        &["store", "copy"],
    ];
    for c in commands {
        let help = run_ok(venn().args(*c).arg("--help"));
        assert!(
            help.contains("Example"),
            "venn {} --help has no example:\n{help}",
            c.join(" ")
        );
    }
}

/// `venn store migrate|check|copy` on SQLite files (the conformance suite in venn-node runs the
/// same code against MySQL and PostgreSQL), and an unreachable server named without its password.
#[test]
fn store_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("alice-data");
    let yaml = run_ok(venn().args([
        "init",
        "--domain",
        "alice",
        "--endpoint",
        "https://alice.example:1080",
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    let config = dir.path().join("alice.yaml");
    std::fs::write(&config, yaml).unwrap();
    let c = config.to_str().unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let first = run_ok(venn().args(["store", "migrate", "-c", c]));
    let shipped = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../venn-node/migrations/sqlite"
    ))
    .unwrap()
    .count();
    let versions: Vec<String> = (1..=shipped).map(|v| v.to_string()).collect();
    let applied = format!("applied migrations [{}]", versions.join(", "));
    assert!(first.contains(&applied), "{first}");
    let again = run_ok(venn().args(["store", "migrate", "-c", c]));
    assert!(again.contains("schema up to date"), "{again}");
    let check = run_ok(venn().args(["store", "check", "-c", c]));
    assert!(check.contains("pending []"), "{check}");
    assert!(check.contains("DDL rights     yes"), "{check}");
    assert!(check.contains("owner          none yet"), "{check}");
    let json: Value = serde_json::from_str(&run_ok(
        venn().args(["store", "check", "-c", c, "-o", "json"]),
    ))
    .unwrap();
    assert_eq!(json["backend"], "sqlite");
    assert_eq!(json["problems"], json!([]));

    let from = format!("sqlite://{}", data.join("venn.db").display());
    let to = format!("sqlite://{}", dir.path().join("copy.db").display());
    let out = run_ok(venn().args(["store", "copy", "--from", &from, "--to", &to]));
    assert!(out.contains("node_identity"), "{out}");
    // (A target that holds rows is refused: the venn-node conformance suite tests that.)
    let out = venn()
        .args(["store", "copy", "--from", &from, "--to", &from])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the same database"));

    // An unreachable server: a clear error, the password never shown.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1\ndata_dir: {}\n\
             datastore: mysql://venn:hunter2@127.0.0.1:1/venn\n",
            data.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = venn()
        .args(["store", "check", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot connect to mysql://venn:***@127.0.0.1:1/venn"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A node restarted on its database starts again; a second node pointed at the same database
/// refuses to start, and `venn store check` says whose database it is (issue 7).
#[test]
fn second_node_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shared.db").display());
    let mut alice = Node::start_with(
        dir.path(),
        "alice",
        free_port(),
        None,
        &["--datastore", &db],
    );
    alice.stop();
    alice.launch();
    alice.stop();
    let check = run_ok(venn().args(["store", "check", "-c", alice.config.to_str().unwrap()]));
    assert!(check.contains("owner          alice"), "{check}");

    let bob_yaml = run_ok(venn().args([
        "init",
        "--domain",
        "bob",
        "--endpoint",
        "https://127.0.0.1:1",
        "--data-dir",
        dir.path().join("bob-data").to_str().unwrap(),
        "--gateway-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--datastore",
        &db,
    ]));
    let bob = dir.path().join("bob.yaml");
    std::fs::write(&bob, bob_yaml).unwrap();
    let mut child = venn()
        .args(["start", "-c", bob.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("bob started on alice's database");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("belongs to node alice"), "{err}");
    assert!(err.contains("not to this node bob"), "{err}");
    let out = venn()
        .args(["store", "check", "-c", bob.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("belongs to node alice"), "{text}");
}

#[test]
fn start_refuses_bad_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "mode: autonomy\ndomain_id: Alice\nendpoint: ftp://x\napi:\n  listen: nowhere\n",
    )
    .unwrap();
    let out = venn()
        .args(["start", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["domain_id:", "endpoint:", "api.listen:"] {
        assert!(err.contains(field), "missing {field:?} in: {err}");
    }
    std::fs::write(
        &bad,
        "mode: autonomy\ndomain_id: alice\nendpoint: https://a:1\ngateway_port: 3\n",
    )
    .unwrap();
    let out = venn()
        .args(["start", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway_port"));
    std::fs::write(
        &bad,
        "mode: lite\ndomain_id: alice\nendpoint: https://a:1\n",
    )
    .unwrap();
    let out = venn()
        .args(["start", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    // A lite needs its master's gateway.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master_endpoint: a lite needs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_nodes_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Node::start(dir.path(), "alice");
    let bob = Node::start(dir.path(), "bob");
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "startup: alice {:?}, bob {:?}; idle RSS: alice {} KiB, bob {} KiB",
        alice.startup,
        bob.startup,
        alice.rss_kib(),
        bob.rss_kib()
    );

    // Keys and token on disk, secrets 0600, nothing secret in the log.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["token", "keys/ca.key", "keys/gateway.key"] {
            let mode = std::fs::metadata(alice.data_dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    assert!(
        !alice.log_text().contains(&alice.token()),
        "token in the log"
    );

    // The reachability check of the seeds: no client certificate → 401, reason only.
    assert_unauthorized(gateway_call(alice.gateway, None, "/", &[], ""));

    // Onboarding: one command each side; single use.
    let invitation = alice.cli_ok(&["peer", "invite", "bob"]).trim().to_owned();
    assert!(invitation.starts_with("venn-invite-"), "{invitation}");
    bob.cli_ok(&["peer", "join", &invitation]);
    let again = bob.cli(&["peer", "join", &invitation]);
    assert!(!again.status.success(), "invitation accepted twice");
    assert!(String::from_utf8_lossy(&again.stderr).contains("refused"));
    alice.wait_route("alice-bob", true);
    alice.wait_route("bob-alice", true);
    bob.wait_route("bob-alice", true);
    bob.wait_route("alice-bob", true);
    let table = alice.cli_ok(&["route", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    for col in [
        "SOURCE",
        "DESTINATION",
        "HOST",
        "AUTHENTICATION",
        "READY",
        "REASON",
    ] {
        assert!(table.contains(col), "{table}");
    }
    assert!(
        table.contains("alice-bob") && table.contains("True"),
        "{table}"
    );

    // 401 cases at the gateway.
    let bob_id = identity_of(&bob.data_dir);
    let (status, _) = gateway_call(
        alice.gateway,
        Some(&bob_id),
        "/venn/v1/heartbeat",
        &[],
        "{}",
    );
    assert_eq!(status, 200, "bob's real certificate must be accepted");
    let strangers = dir.path().join("strangers");
    let carol_dir = strangers.join("carol");
    let fake_bob_dir = strangers.join("fake-bob");
    let ep = venn_node::config::Endpoint::parse("https://127.0.0.1:1").unwrap();
    venn_node::trust::Identity::load_or_create(&carol_dir, "carol", &ep).unwrap();
    venn_node::trust::Identity::load_or_create(&fake_bob_dir, "bob", &ep).unwrap();
    // a certificate from an unknown CA
    assert_unauthorized(gateway_call(
        alice.gateway,
        Some(&identity_of(&carol_dir)),
        "/venn/v1/heartbeat",
        &[],
        "{}",
    ));
    // a certificate naming bob, issued by a CA that is not bob's pinned CA
    assert_unauthorized(gateway_call(
        alice.gateway,
        Some(&identity_of(&fake_bob_dir)),
        "/venn/v1/heartbeat",
        &[],
        "{}",
    ));
    // bob's certificate while claiming to be another domain
    assert_unauthorized(gateway_call(
        alice.gateway,
        Some(&bob_id),
        "/venn/v1/heartbeat",
        &[("venn-source", "carol")],
        "{}",
    ));
    // alice's own certificate (alice is not her own partner)
    assert_unauthorized(gateway_call(
        alice.gateway,
        Some(&identity_of(&alice.data_dir)),
        "/venn/v1/heartbeat",
        &[],
        "{}",
    ));
    // a join with a forged secret
    assert_unauthorized(gateway_call(
        alice.gateway,
        Some(&identity_of(&carol_dir)),
        "/venn/v1/join",
        &[],
        &json!({"invitation_id": "x", "secret": "y", "domain_id": "carol", "endpoint": "", "ca_cert": ""}).to_string(),
    ));

    // API authentication.
    let (s, v) = http(alice.api, "POST", "/api/v1/domaindata/list", &[], "{}").unwrap();
    assert_eq!(s, 401, "{v}");
    let (s, _) = http(
        alice.api,
        "POST",
        "/api/v1/domaindata/list",
        &[("Token", "wrong")],
        "{}",
    )
    .unwrap();
    assert_eq!(s, 401);
    let bearer = format!("Bearer {}", alice.token());
    let (s, _) = http(
        alice.api,
        "POST",
        "/api/v1/domaindata/list",
        &[("Authorization", &bearer)],
        "{}",
    )
    .unwrap();
    assert_eq!(s, 200);

    // Seed 003 bodies as written (only the URL and the token header changed).
    std::fs::write(
        alice.data_dir.join("data/alice.csv"),
        format!(
            "{SEED_HEADER}\n1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25\n"
        ),
    )
    .unwrap();
    let d = alice.api_ok("/api/v1/domaindatasource/create", SEED_DATASOURCE);
    assert_eq!(d["datasource_id"], "default-data-source");
    let d = alice.api_ok("/api/v1/domaindata/create", SEED_DOMAINDATA);
    assert_eq!(d["domaindata_id"], "alice-table");
    let d = alice.api_ok("/api/v1/domaindatagrant/create", SEED_GRANT);
    let grant_id = d["domaindatagrant_id"].as_str().unwrap().to_owned();
    assert_eq!(d["delivered"], true);
    let q = alice.api_ok(
        "/api/v1/domaindata/query",
        r#"{"domain_id":"alice","domaindata_id":"alice-table"}"#,
    );
    assert_eq!(q["columns"].as_array().unwrap().len(), 25);
    let q = alice.api_ok(
        "/api/v1/domaindata/query",
        r#"{"data":{"domain_id":"alice","domaindata_id":"alice-table"}}"#,
    );
    assert_eq!(q["relative_uri"], "alice.csv");

    // The grant is at bob, signed by alice.
    let received = bob.api_ok("/api/v1/domaindatagrant/list", r#"{"grant_domain":"bob"}"#);
    let list = received["domaindatagrant_list"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{received}");
    assert_eq!(list[0]["domaindatagrant_id"], grant_id.as_str());
    assert_eq!(list[0]["domain_id"], "alice");
    assert_eq!(list[0]["domaindata_id"], "alice-table");
    assert!(!list[0]["signature"].as_str().unwrap().is_empty());
    let table = bob.cli_ok(&["grant", "list", "--received"]);
    assert!(
        table.contains(&grant_id) && table.contains("alice-table"),
        "{table}"
    );
    // bob cannot delete alice's grant; alice's delete reaches bob
    let (s, _) = bob.api(
        "/api/v1/domaindatagrant/delete",
        &json!({"domaindatagrant_id": grant_id}).to_string(),
    );
    assert_eq!(s, 400);
    alice.api_ok(
        "/api/v1/domaindatagrant/delete",
        &json!({"domaindatagrant_id": grant_id}).to_string(),
    );
    let received = bob.api_ok("/api/v1/domaindatagrant/list", r#"{"grant_domain":"bob"}"#);
    assert_eq!(
        received["domaindatagrant_list"].as_array().unwrap().len(),
        0
    );

    // Bad bodies: unknown field, wrong type, missing field — 400 naming the field.
    for (body, field) in [
        (
            r#"{"domaindata_id":"x","type":"table","relative_uri":"alice.csv","colums":[]}"#,
            "colums",
        ),
        (
            r#"{"type":"table","relative_uri":"alice.csv","columns":[{"name":"id1","type":7}]}"#,
            "columns[0].type",
        ),
        (
            r#"{"type":"table","relative_uri":"alice.csv","columns":"id1"}"#,
            "columns",
        ),
        (r#"{"type":"table"}"#, "relative_uri"),
        (
            r#"{"type":"table","relative_uri":"alice.csv","columns":[{"name":"nope","type":"str"}]}"#,
            "nope",
        ),
        (r#"{"type":"sheet","relative_uri":"alice.csv"}"#, "type"),
        (r#"not json"#, "body"),
    ] {
        let (s, v) = alice.api("/api/v1/domaindata/create", body);
        assert_eq!(s, 400, "{body}: {v}");
        let msg = v["status"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{body}: {msg}");
        assert_eq!(v["status"]["code"], 400);
    }
    let (s, v) = alice.api(
        "/api/v1/domaindatagrant/create",
        r#"{"domaindata_id":"alice-table","grant_domain":"bob","limit":{"use_count":"many"}}"#,
    );
    assert_eq!(s, 400);
    assert!(
        v["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit.use_count"),
        "{v}"
    );
    let (s, v) = alice.api(
        "/api/v1/domaindatagrant/create",
        r#"{"domaindata_id":"alice-table","grant_domain":"mallory"}"#,
    );
    assert_eq!(s, 400, "{v}");

    // Path traversal and absolute paths are refused, also through a symlink.
    std::fs::write(dir.path().join("outside.csv"), "id1\n1\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        dir.path().join("outside.csv"),
        alice.data_dir.join("data/link.csv"),
    )
    .unwrap();
    for uri in [
        "../outside.csv",
        "../../outside.csv",
        "a/../../outside.csv",
        "/etc/passwd",
        "link.csv",
    ] {
        let body = json!({"type": "table", "relative_uri": uri, "columns": [{"name": "id1", "type": "str"}]});
        let (s, v) = alice.api("/api/v1/domaindata/create", &body.to_string());
        assert_eq!(s, 400, "{uri}: {v}");
        assert!(
            v["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("relative_uri"),
            "{uri}: {v}"
        );
    }

    // Upload through the CLI; list paginates.
    let csv = dir.path().join("upload.csv");
    std::fs::write(&csv, "k,v\na,1\n").unwrap();
    alice.cli_ok(&["data", "upload", csv.to_str().unwrap(), "--id", "up-table"]);
    assert!(alice.data_dir.join("data/upload.csv").exists());
    let page = alice.api_ok("/api/v1/domaindata/list", r#"{"page_size":1}"#);
    assert_eq!(page["domaindata_list"].as_array().unwrap().len(), 1);
    let next = page["next_page_token"].as_str().unwrap().to_owned();
    assert!(!next.is_empty());
    let page2 = alice.api_ok(
        "/api/v1/domaindata/list",
        &json!({"page_size": 1, "page_token": next}).to_string(),
    );
    assert_eq!(page2["domaindata_list"][0]["domaindata_id"], "up-table");
    assert_eq!(page2["next_page_token"], "");
    let doc = http(alice.api, "GET", "/api/v1/openapi.json", &[], "").unwrap();
    assert!(doc.1.contains("/api/v1/domaindatagrant/create"));

    // Token rotation takes effect without a restart.
    let old = alice.token();
    alice.cli_ok(&["token", "rotate"]);
    let (s, _) = http(
        alice.api,
        "POST",
        "/api/v1/route/list",
        &[("Token", &old)],
        "{}",
    )
    .unwrap();
    assert_eq!(s, 401);
    alice.api_ok("/api/v1/route/list", "{}");

    // A partner that goes away: the route explains why.
    let mut bob = bob;
    bob.stop();
    let r = alice.wait_route("alice-bob", false);
    assert_eq!(r["status"]["reason"], "TCP", "{r}");
    let r = alice.wait_route("bob-alice", false);
    assert_eq!(r["status"]["reason"], "HeartbeatLost", "{r}");
}

#[test]
fn file_based_onboarding() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Node::start(dir.path(), "alice");
    let carol = Node::start(dir.path(), "carol");
    let a_file = dir.path().join("alice.crt");
    let c_file = dir.path().join("carol.crt");
    alice.cli_ok(&["peer", "export", "-f", a_file.to_str().unwrap()]);
    carol.cli_ok(&["peer", "export", "-f", c_file.to_str().unwrap()]);
    // a CA file for the wrong domain is refused
    let wrong = alice.cli(&["peer", "add", "dave", "--cert", c_file.to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("carol"));
    // one direction only: alice → carol is not authorised by carol yet
    alice.cli_ok(&[
        "peer",
        "add",
        "carol",
        "--cert",
        c_file.to_str().unwrap(),
        "--endpoint",
        &format!("https://{}", carol.gateway),
    ]);
    let r = alice.wait_route("alice-carol", false);
    let t0 = Instant::now();
    let mut r = r;
    while r["status"]["reason"] != "NotAuthorized" && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        r = alice.route("alice-carol");
    }
    assert_eq!(r["status"]["reason"], "NotAuthorized", "{r}");
    // the endpoint is read from the export file when --endpoint is omitted
    carol.cli_ok(&["peer", "add", "alice", "--cert", a_file.to_str().unwrap()]);
    alice.wait_route("alice-carol", true);
    carol.wait_route("carol-alice", true);
    let peers = alice.cli_ok(&["peer", "list"]);
    assert!(
        peers.contains("carol") && peers.contains("partner"),
        "{peers}"
    );

    // Explained failures: a host that does not resolve, and an endpoint that is another node.
    let ep = venn_node::config::Endpoint::parse("https://127.0.0.1:1").unwrap();
    let dave =
        venn_node::trust::Identity::load_or_create(&dir.path().join("dave"), "dave", &ep).unwrap();
    let dave_file = dir.path().join("dave.crt");
    std::fs::write(&dave_file, dave.ca_pem()).unwrap();
    alice.cli_ok(&[
        "peer",
        "add",
        "dave",
        "--cert",
        dave_file.to_str().unwrap(),
        "--endpoint",
        "https://dave.invalid:1080",
    ]);
    wait_reason(&alice, "alice-dave", "DNS");
    // carol's gateway answering for dave: its certificate is not from dave's pinned CA
    alice.cli_ok(&[
        "peer",
        "add",
        "dave",
        "--cert",
        dave_file.to_str().unwrap(),
        "--endpoint",
        &format!("https://{}", carol.gateway),
    ]);
    wait_reason(&alice, "alice-dave", "TLS");
}

fn wait_reason(node: &Node, route: &str, reason: &str) {
    let t0 = Instant::now();
    loop {
        let r = node.route(route);
        if r["status"]["reason"] == reason {
            assert_eq!(r["status"]["ready"], false);
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "route {route}: want {reason}: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two nodes in separate network namespaces joined by a veth pair; only the gateway port
/// listens on the veth addresses (each API is on its namespace's loopback). Needs root and
/// `ip`; skipped with a notice otherwise.
#[test]
fn two_nodes_in_network_namespaces() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let ip_ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !is_root || !ip_ok {
        println!("SKIPPED two_nodes_in_network_namespaces: needs root and the `ip` command");
        return;
    }
    let tag = format!("{}", std::process::id() % 100000);
    let (na, nb) = (format!("venn-a-{tag}"), format!("venn-b-{tag}"));
    let (va, vb) = (format!("vna{tag}"), format!("vnb{tag}"));
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ip(&["netns", "add", &na]) {
        println!("SKIPPED two_nodes_in_network_namespaces: `ip netns add` is not permitted here");
        return;
    }
    let _cleanup = Cleanup(vec![na.clone(), nb.clone()]);
    assert!(ip(&["netns", "add", &nb]));
    assert!(ip(&[
        "link", "add", &va, "type", "veth", "peer", "name", &vb
    ]));
    assert!(ip(&["link", "set", &va, "netns", &na]));
    assert!(ip(&["link", "set", &vb, "netns", &nb]));
    for (ns, dev, addr) in [(&na, &va, "10.231.0.1/24"), (&nb, &vb, "10.231.0.2/24")] {
        assert!(ip(&["-n", ns, "addr", "add", addr, "dev", dev]));
        assert!(ip(&["-n", ns, "link", "set", dev, "up"]));
        assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
    }
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, addr: &str| {
        let config = dir.path().join(format!("{name}.yaml"));
        let yaml = run_ok(venn().args([
            "init",
            "--domain",
            name,
            "--endpoint",
            &format!("https://{addr}:1080"),
            "--data-dir",
            dir.path().join(format!("{name}-data")).to_str().unwrap(),
            "--heartbeat-seconds",
            "1",
        ]));
        std::fs::write(&config, yaml).unwrap();
        config
    };
    let ca = mk("alice", "10.231.0.1");
    let cb = mk("bob", "10.231.0.2");
    let start = |ns: &str, config: &Path, name: &str| {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_venn"),
                "start",
                "-c",
                config.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _a = Kill(start(&na, &ca, "alice"));
    let _b = Kill(start(&nb, &cb, "bob"));
    let in_ns = |ns: &str, config: &Path, args: &[&str]| -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_venn")])
            .args(args)
            .args(["-c", config.to_str().unwrap()]);
        cmd.output().unwrap()
    };
    // wait for both APIs
    let t0 = Instant::now();
    loop {
        let a = in_ns(&na, &ca, &["route", "list"]).status.success();
        let b = in_ns(&nb, &cb, &["route", "list"]).status.success();
        if a && b {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "nodes did not start in their namespaces"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let inv = in_ns(&na, &ca, &["peer", "invite", "bob"]);
    assert!(
        inv.status.success(),
        "{}",
        String::from_utf8_lossy(&inv.stderr)
    );
    let inv = String::from_utf8_lossy(&inv.stdout).trim().to_owned();
    let join = in_ns(&nb, &cb, &["peer", "join", &inv]);
    assert!(
        join.status.success(),
        "{}",
        String::from_utf8_lossy(&join.stderr)
    );
    let t0 = Instant::now();
    loop {
        let a = String::from_utf8_lossy(&in_ns(&na, &ca, &["route", "list", "-o", "json"]).stdout)
            .into_owned();
        let b = String::from_utf8_lossy(&in_ns(&nb, &cb, &["route", "list", "-o", "json"]).stdout)
            .into_owned();
        let ready = |s: &str| {
            serde_json::from_str::<Value>(s)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|rs| rs.len() == 2 && rs.iter().all(|r| r["status"]["ready"] == true))
        };
        if ready(&a) && ready(&b) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "routes not ready:\n{a}\n{b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // only the gateway port answers across the veth: the API port is closed there
    let api_across = Command::new("ip")
        .args([
            "netns",
            "exec",
            &nb,
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.231.0.1/8082",
        ])
        .output()
        .unwrap();
    assert!(
        !api_across.status.success(),
        "alice's API is reachable from bob's namespace"
    );
    println!("netns: alice and bob onboarded and Ready across the veth pair");
}

// === proxies ===

fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
}

/// A plain TCP relay to `target` (a port forward / load balancer in front of a gateway).
fn tcp_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            if let Ok(up) = TcpStream::connect(target) {
                pipe(s, up);
            }
        }
    });
    (addr, count)
}

/// A minimal HTTP CONNECT proxy.
fn connect_proxy() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let mut words = text.split_whitespace();
            if words.next() != Some("CONNECT") {
                let _ = s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
                continue;
            }
            let target = words.next().unwrap_or("").to_owned();
            match TcpStream::connect(&target) {
                Ok(up) => {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    pipe(s, up);
                }
                Err(_) => {
                    let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                }
            }
        }
    });
    (addr, count)
}

/// alice is reached through a plain TCP relay (her endpoint is the relay); bob reaches
/// partners only through an HTTP CONNECT proxy. Onboarding, heartbeats and grants still work.
#[test]
fn through_tcp_relay_and_http_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let alice_gw = free_port();
    let (relay, relayed) = tcp_relay(format!("127.0.0.1:{alice_gw}").parse().unwrap());
    let (proxy, proxied) = connect_proxy();
    let alice = Node::start_with(
        dir.path(),
        "alice",
        alice_gw,
        Some(&format!("https://{relay}")),
        &[],
    );
    let proxy_url = format!("http://{proxy}");
    let mut bob = Node::start_with(
        dir.path(),
        "bob",
        free_port(),
        None,
        &["--proxy", &proxy_url],
    );

    let invitation = alice.cli_ok(&["peer", "invite", "bob"]).trim().to_owned();
    bob.cli_ok(&["peer", "join", &invitation]);
    bob.wait_route("bob-alice", true);
    alice.wait_route("alice-bob", true);
    alice.wait_route("bob-alice", true);
    assert!(
        proxied.load(Ordering::SeqCst) >= 1,
        "bob did not use the proxy"
    );
    assert!(
        relayed.load(Ordering::SeqCst) >= 1,
        "nothing went through the relay"
    );

    // a proxy that refuses: the route says so
    let refusing = TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in refusing.incoming().flatten() {
            let _ = s.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        }
    });
    let yaml = std::fs::read_to_string(&bob.config).unwrap();
    std::fs::write(
        &bob.config,
        yaml.replace(&proxy.to_string(), &refusing_addr.to_string()),
    )
    .unwrap();
    bob.stop();
    bob.launch();
    let r = bob.wait_route("bob-alice", false);
    let mut r = r;
    let t0 = Instant::now();
    while r["status"]["reason"] != "Proxy" && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        r = bob.route("bob-alice");
    }
    assert_eq!(r["status"]["reason"], "Proxy", "{r}");
    assert!(
        r["status"]["message"].as_str().unwrap().contains("407"),
        "{r}"
    );
}

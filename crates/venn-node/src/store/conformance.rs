//! The store conformance suite: every store method, run against SQLite and against real
//! MySQL/MariaDB and PostgreSQL servers.
//!
//! The servers come from `VENN_TEST_MYSQL_URL` and `VENN_TEST_POSTGRES_URL`
//! (`mysql://venn:venn@127.0.0.1:3306/venn`, `postgres://venn:venn@127.0.0.1:5432/venn`); the
//! user must be allowed to create databases, since each test runs in a fresh one that it drops at
//! the end. When a variable is unset the backend is skipped with a `SKIPPED` line, so `cargo test`
//! passes on a bare machine, unless `VENN_TEST_REQUIRE_SERVERS=1` (what `.ci/run` sets), which
//! turns a missing server into a failure. One suite, instantiated per backend: the copies cannot
//! drift apart.

use sqlx::{AnyPool, AssertSqlSafe, Executor};

use super::*;
use crate::store::{DataSourceRow, DomainDataRow, DomainRow, GrantRow};

/// A database for one test; dropped (on the server) when this value is.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) backend: Backend,
    server: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

fn random_suffix() -> String {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

/// `url` with its database (path) replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("test server URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

async fn admin(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::pool::PoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("test server {}: {e}", redact(url)))
}

impl TestDb {
    async fn server(backend: Backend, admin_url: &str, test: &str) -> Self {
        let name = format!("venn_t_{}_{}", &test[..test.len().min(30)], random_suffix());
        let pool = admin(admin_url).await;
        pool.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", redact(admin_url)));
        pool.close().await;
        Self {
            url: with_database(admin_url, &name),
            backend,
            server: Some((admin_url.to_owned(), name)),
            _dir: None,
        }
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self {
            url: format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
            backend: Backend::Sqlite,
            server: None,
            _dir: Some(dir),
        }
    }

    pub(crate) fn options(&self) -> StoreOptions {
        StoreOptions::new(&self.url).expect("test URL")
    }

    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.backend))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.server.take() else {
            return;
        };
        let backend = self.backend;
        // Drop may run inside a runtime: drop the database from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let pool = admin(&admin_url).await;
                let sql = match backend {
                    Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                if let Err(e) = pool.execute(AssertSqlSafe(sql)).await {
                    eprintln!("dropping test database {name}: {e}");
                }
                pool.close().await;
            });
        })
        .join();
    }
}

/// SQLite, plus each server whose URL is set. `test` names the databases (for leftovers).
pub(crate) async fn test_dbs(test: &str) -> Vec<TestDb> {
    let mut v = vec![TestDb::sqlite()];
    let require = env("VENN_TEST_REQUIRE_SERVERS").is_some_and(|s| s == "1");
    for (backend, var) in [
        (Backend::MySql, "VENN_TEST_MYSQL_URL"),
        (Backend::Postgres, "VENN_TEST_POSTGRES_URL"),
    ] {
        match env(var) {
            Some(url) => v.push(TestDb::server(backend, &url, test).await),
            None if require => {
                panic!("{var} is not set but VENN_TEST_REQUIRE_SERVERS=1 ({backend} store tests)")
            }
            None => {
                // Straight to stderr, past the test harness's capture, so a plain `cargo test`
                // shows what did not run.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED store test {test} on {backend}: {var} is not set"
                );
            }
        }
    }
    v
}

fn domain(id: &str, role: &str) -> DomainRow {
    DomainRow {
        domain_id: id.into(),
        role: role.into(),
        ca_cert: format!("-----BEGIN CERTIFICATE-----\n{id}\n-----END CERTIFICATE-----\n"),
        ca_sha256: "ab".repeat(32),
        endpoint: format!("https://{id}:1080"),
        created_at: 0,
        updated_at: 0,
    }
}

fn datasource(id: &str) -> DataSourceRow {
    DataSourceRow {
        datasource_id: id.into(),
        domain_id: "alice".into(),
        name: format!("source {id}"),
        r#type: "localfs".into(),
        path: "/data/alice".into(),
        access_directly: 1,
        created_at: 0,
        updated_at: 0,
    }
}

fn domaindata(id: &str, source: &str) -> DomainDataRow {
    DomainDataRow {
        domaindata_id: id.into(),
        domain_id: "alice".into(),
        name: id.into(),
        r#type: "table".into(),
        relative_uri: format!("{id}.csv"),
        datasource_id: source.into(),
        attributes: r#"{"k":"v ✓ '?' \"q\""}"#.into(),
        columns: r#"[{"name":"id","type":"str"}]"#.into(),
        vendor: "venn".into(),
        author: "alice".into(),
        created_at: 0,
        updated_at: 0,
    }
}

fn grant(id: &str, data: &str, grantee: &str) -> GrantRow {
    GrantRow {
        domaindatagrant_id: id.into(),
        domain_id: "alice".into(),
        domaindata_id: data.into(),
        grant_domain: grantee.into(),
        description: "{}".into(),
        expiration_time: 0,
        use_count: 3,
        used_count: 0,
        limit_extra: "{}".into(),
        signature: "sig".into(),
        signer_cert: "pem".into(),
        delivered: 0,
        created_at: 0,
        updated_at: 0,
    }
}

fn job(id: &str) -> crate::jobs::store::JobRow {
    crate::jobs::store::JobRow {
        job_id: id.into(),
        initiator: "alice".into(),
        manifest: "{\"job_id\":\"".to_owned() + id + "\"}",
        manifest_sha256: "cd".repeat(32),
        phase: "Initialized".into(),
        reason: String::new(),
        control: String::new(),
        created_at: 0,
        start_time: 0,
        end_time: 0,
        updated_at: 0,
    }
}

fn message(job: &str, to: &str, kind: &str) -> crate::jobs::store::MessageRow {
    crate::jobs::store::MessageRow {
        id: 0,
        job_id: job.into(),
        from_domain: "alice".into(),
        to_domain: to.into(),
        kind: kind.into(),
        body: "{}".into(),
        signature: "sig".into(),
        delivered: 0,
        attempts: 0,
        last_error: String::new(),
        created_at: 0,
    }
}

/// Fills a store with a little of everything (also the fixture of the copy test).
async fn fill(s: &Store) {
    for d in ["alice", "bob", "carol", "Dave", "dave-2"] {
        s.upsert_domain(&domain(d, if d == "alice" { "self" } else { "partner" }))
            .await
            .unwrap();
    }
    s.ensure_route("alice", "bob", "https://bob:1080")
        .await
        .unwrap();
    s.insert_invitation("inv-1", "bob", &"ef".repeat(32), now_unix() + 3600)
        .await
        .unwrap();
    s.insert_datasource(&datasource("ds-1")).await.unwrap();
    s.insert_domaindata(&domaindata("dd-1", "ds-1"))
        .await
        .unwrap();
    s.upsert_grant(&grant("g-1", "dd-1", "bob")).await.unwrap();
    s.insert_job(&job("job-1")).await.unwrap();
    s.upsert_approval(&approval("job-1", "alice"))
        .await
        .unwrap();
    s.ensure_task_party("job-1", "t1", "alice").await.unwrap();
    s.insert_message(&message("job-1", "bob", "create"))
        .await
        .unwrap();
}

fn approval(job: &str, domain: &str) -> crate::jobs::store::ApprovalRow {
    crate::jobs::store::ApprovalRow {
        job_id: job.into(),
        domain_id: domain.into(),
        state: "JobAccepted".into(),
        reason: String::new(),
        signature: "sig".into(),
        signer_cert: "pem".into(),
        updated_at: 0,
    }
}

#[tokio::test]
async fn domains_routes_invitations() {
    for db in test_dbs("domains").await {
        eprintln!("store test domains on {}", db.backend);
        let s = db.open().await;
        for i in 0..5 {
            s.upsert_domain(&domain(&format!("d{i}"), "partner"))
                .await
                .unwrap();
        }
        // An upsert replaces the fields.
        let mut d2 = domain("d2", "partner");
        d2.endpoint = "https://elsewhere:1080".into();
        s.upsert_domain(&d2).await.unwrap();
        assert_eq!(
            s.domain("d2").await.unwrap().unwrap().endpoint,
            "https://elsewhere:1080"
        );
        assert!(s.domain("nope").await.unwrap().is_none());
        let p1 = s.list_domains("", Some(2)).await.unwrap();
        assert_eq!(
            p1.items
                .iter()
                .map(|d| d.domain_id.as_str())
                .collect::<Vec<_>>(),
            ["d0", "d1"]
        );
        assert_eq!(p1.next_page_token, "d1");
        let p3 = s.list_domains("d3", Some(2)).await.unwrap();
        assert_eq!(p3.items.len(), 1);
        assert_eq!(p3.next_page_token, "");
        assert_eq!(s.partners().await.unwrap().len(), 5);

        // Keys sort byte-wise on every backend ('B' < 'a'), as SQLite does.
        s.upsert_domain(&domain("B", "partner")).await.unwrap();
        assert_eq!(
            s.list_domains("", Some(1)).await.unwrap().items[0].domain_id,
            "B"
        );

        // Routes: ensure keeps the status of an existing route and updates its host.
        s.ensure_route("alice", "bob", "https://bob:1080")
            .await
            .unwrap();
        s.set_route_status("alice-bob", true, "Ready", "")
            .await
            .unwrap();
        let r = s.route("alice-bob").await.unwrap().unwrap();
        assert_eq!((r.ready, r.reason.as_str()), (1, "Ready"));
        assert!(r.last_heartbeat > 0);
        s.ensure_route("alice", "bob", "https://bob2:1080")
            .await
            .unwrap();
        let r = s.route("alice-bob").await.unwrap().unwrap();
        assert_eq!((r.ready, r.host.as_str()), (1, "https://bob2:1080"));
        s.set_route_status("alice-bob", false, "Unreachable", "refused")
            .await
            .unwrap();
        let r2 = s.route("alice-bob").await.unwrap().unwrap();
        assert_eq!(
            (r2.ready, r2.message.as_str(), r2.last_heartbeat),
            (0, "refused", r.last_heartbeat)
        );
        s.ensure_route("alice", "carol", "").await.unwrap();
        assert_eq!(s.all_routes().await.unwrap().len(), 2);
        let page = s.list_routes("", Some(1)).await.unwrap();
        assert_eq!(page.next_page_token, "alice-bob");

        // Invitations are single use.
        s.insert_invitation("inv", "bob", "hash", now_unix() + 60)
            .await
            .unwrap();
        s.insert_invitation("old", "bob", "hash", now_unix() - 1)
            .await
            .unwrap();
        assert_eq!(
            s.open_invitation("inv").await.unwrap(),
            Some(("bob".to_owned(), "hash".to_owned()))
        );
        assert_eq!(s.open_invitation("old").await.unwrap(), None);
        assert!(s.consume_invitation("inv").await.unwrap());
        assert!(!s.consume_invitation("inv").await.unwrap());
        assert_eq!(s.open_invitation("inv").await.unwrap(), None);
        s.close().await;
    }
}

#[tokio::test]
async fn centralized_tokens_lites_routes() {
    for db in test_dbs("central").await {
        eprintln!("store test central on {}", db.backend);
        let s = db.open().await;
        // Deploy tokens: single use (also when two consumers race), expiring, and a new token
        // revokes the unused earlier one of the same domain.
        s.issue_deploy_token("t1", "alice", "h1", now_unix() + 60)
            .await
            .unwrap();
        let open = s.open_deploy_token("t1").await.unwrap().unwrap();
        assert_eq!(
            (open.domain_id.as_str(), open.secret_sha256.as_str()),
            ("alice", "h1")
        );
        let (a, b) = tokio::join!(s.consume_deploy_token("t1"), s.consume_deploy_token("t1"));
        assert!(a.unwrap() ^ b.unwrap(), "exactly one consumer wins");
        assert!(s.open_deploy_token("t1").await.unwrap().is_none());
        s.issue_deploy_token("t2", "alice", "h2", now_unix() + 60)
            .await
            .unwrap();
        s.issue_deploy_token("t3", "alice", "h3", now_unix() + 60)
            .await
            .unwrap();
        assert!(
            s.open_deploy_token("t2").await.unwrap().is_none(),
            "revoked"
        );
        assert!(s.open_deploy_token("t3").await.unwrap().is_some());
        s.issue_deploy_token("t4", "bob", "h4", now_unix() - 1)
            .await
            .unwrap();
        assert!(
            s.open_deploy_token("t4").await.unwrap().is_none(),
            "expired"
        );
        assert!(!s.consume_deploy_token("t4").await.unwrap());
        assert_eq!(s.revoke_deploy_tokens("alice").await.unwrap(), 1);
        assert!(s.open_deploy_token("t3").await.unwrap().is_none());

        // Lite nodes: created unregistered, registered with a key, heartbeats.
        s.ensure_lite_node("alice").await.unwrap();
        s.ensure_lite_node("alice").await.unwrap();
        let n = s.lite_node("alice").await.unwrap().unwrap();
        assert_eq!((n.key_sha256.as_str(), n.last_heartbeat), ("", 0));
        s.set_lite_key("alice", "k1").await.unwrap();
        s.lite_heartbeat("alice", "0.1.0").await.unwrap();
        let n = s.lite_node("alice").await.unwrap().unwrap();
        assert_eq!((n.key_sha256.as_str(), n.version.as_str()), ("k1", "0.1.0"));
        assert!(n.last_heartbeat > 0 && n.registered_at > 0);
        s.set_lite_key("bob", "k2").await.unwrap();
        let all: Vec<String> = s
            .lite_nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.domain_id)
            .collect();
        assert_eq!(all, ["alice", "bob"]);
        s.delete_lite_node("bob").await.unwrap();
        assert!(s.lite_node("bob").await.unwrap().is_none());

        // Routes: a lite reports only its own routes; delete; routes of a domain.
        s.ensure_route("alice", "bob", "https://bob:1080")
            .await
            .unwrap();
        s.ensure_route("bob", "alice", "https://alice:1080")
            .await
            .unwrap();
        s.ensure_route("carol", "dave", "https://dave:1080")
            .await
            .unwrap();
        assert!(
            s.set_route_transit("alice-bob", "corp-master")
                .await
                .unwrap()
        );
        assert!(
            s.report_route_status("alice-bob", "alice", true, "Ready", "", 7)
                .await
                .unwrap()
        );
        assert!(
            !s.report_route_status("bob-alice", "alice", true, "Ready", "", 7)
                .await
                .unwrap()
        );
        let r = s.route("alice-bob").await.unwrap().unwrap();
        assert_eq!(
            (r.ready, r.last_heartbeat, r.transit.as_str()),
            (1, 7, "corp-master")
        );
        let names: Vec<String> = s
            .routes_of("alice")
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["alice-bob", "bob-alice"]);
        assert!(s.delete_route("bob-alice").await.unwrap());
        assert!(!s.delete_route("bob-alice").await.unwrap());
        s.close().await;
    }
}

#[tokio::test]
async fn catalogue_and_grants() {
    for db in test_dbs("catalogue").await {
        eprintln!("store test catalogue on {}", db.backend);
        let s = db.open().await;
        s.insert_datasource(&datasource("ds-1")).await.unwrap();
        let err = s.insert_datasource(&datasource("ds-1")).await.unwrap_err();
        assert!(matches!(err, NodeError::Conflict(_)), "{err}");
        let mut ds = datasource("ds-1");
        ds.name = "renamed".into();
        s.update_datasource(&ds).await.unwrap();
        // The same values again still find the row (MySQL counts matched, not changed, rows).
        s.update_datasource(&ds).await.unwrap();
        assert_eq!(s.datasource("ds-1").await.unwrap().unwrap().name, "renamed");
        let err = s.update_datasource(&datasource("ds-x")).await.unwrap_err();
        assert!(matches!(err, NodeError::NotFound(_)), "{err}");

        // DomainData: the data source must exist (foreign key), IDs are unique.
        let err = s
            .insert_domaindata(&domaindata("dd-0", "missing"))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::Invalid(_)), "{err}");
        s.insert_domaindata(&domaindata("dd-1", "ds-1"))
            .await
            .unwrap();
        s.insert_domaindata(&domaindata("dd-2", "ds-1"))
            .await
            .unwrap();
        let err = s
            .insert_domaindata(&domaindata("dd-1", "ds-1"))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::Conflict(_)), "{err}");
        let got = s.domaindata("dd-1").await.unwrap().unwrap();
        assert_eq!(got.attributes, domaindata("dd-1", "ds-1").attributes);
        let mut dd = got.clone();
        dd.columns = "[]".into();
        s.update_domaindata(&dd).await.unwrap();
        assert_eq!(s.domaindata("dd-1").await.unwrap().unwrap().columns, "[]");
        assert_eq!(
            s.list_domaindata("ds-1", "", None)
                .await
                .unwrap()
                .items
                .len(),
            2
        );
        assert_eq!(
            s.list_domaindata("", "dd-1", None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            s.list_domaindata("ds-9", "", None)
                .await
                .unwrap()
                .items
                .len(),
            0
        );
        let err = s.delete_datasource("ds-1").await.unwrap_err();
        assert!(matches!(err, NodeError::Conflict(_)), "{err}");

        // Grants.
        s.upsert_grant(&grant("g-1", "dd-1", "bob")).await.unwrap();
        s.upsert_grant(&grant("g-2", "dd-1", "carol"))
            .await
            .unwrap();
        let mut g = grant("g-1", "dd-1", "bob");
        g.use_count = 7;
        s.upsert_grant(&g).await.unwrap();
        assert_eq!(s.grant("g-1").await.unwrap().unwrap().use_count, 7);
        assert_eq!(s.undelivered_grants("alice").await.unwrap().len(), 2);
        s.mark_grant_delivered("g-1").await.unwrap();
        assert_eq!(s.undelivered_grants("alice").await.unwrap().len(), 1);
        assert_eq!(
            s.list_grants("", "bob", "", None)
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            s.list_grants("alice", "", "", None)
                .await
                .unwrap()
                .items
                .len(),
            2
        );
        let p = s.list_grants("", "", "", Some(1)).await.unwrap();
        assert_eq!(p.next_page_token, "g-1");
        s.use_grant("g-1").await.unwrap();
        s.use_grant("g-1").await.unwrap();
        assert_eq!(s.grant("g-1").await.unwrap().unwrap().used_count, 2);
        assert_eq!(s.grants_for("alice", "dd-1", "bob").await.unwrap().len(), 1);
        assert_eq!(s.grants_received("dd-1", "carol").await.unwrap().len(), 1);
        s.delete_grant("g-2").await.unwrap();
        assert!(matches!(
            s.delete_grant("g-2").await.unwrap_err(),
            NodeError::NotFound(_)
        ));

        s.delete_domaindata("dd-1").await.unwrap();
        s.delete_domaindata("dd-2").await.unwrap();
        s.delete_datasource("ds-1").await.unwrap();
        assert!(s.list_datasources("", None).await.unwrap().items.is_empty());
        s.close().await;
    }
}

#[tokio::test]
async fn jobs_tables() {
    for db in test_dbs("jobs").await {
        eprintln!("store test jobs on {}", db.backend);
        let s = db.open().await;
        s.insert_job(&job("job-1")).await.unwrap();
        s.insert_job(&job("job-2")).await.unwrap();
        let err = s.insert_job(&job("job-1")).await.unwrap_err();
        assert!(matches!(err, NodeError::Conflict(_)), "{err}");

        s.set_job_phase("job-1", "Running", "", true, false)
            .await
            .unwrap();
        let j = s.job("job-1").await.unwrap().unwrap();
        assert!(j.start_time > 0);
        assert_eq!((j.phase.as_str(), j.end_time), ("Running", 0));
        s.set_job_phase("job-1", "Succeeded", "done", true, true)
            .await
            .unwrap();
        let k = s.job("job-1").await.unwrap().unwrap();
        assert_eq!(k.start_time, j.start_time);
        assert!(k.end_time > 0);
        s.set_job_phase("job-1", "Running", "restart", true, false)
            .await
            .unwrap();
        assert_eq!(s.job("job-1").await.unwrap().unwrap().end_time, 0);
        s.set_job_control("job-2", "Stop", "by user").await.unwrap();
        assert_eq!(s.job("job-2").await.unwrap().unwrap().control, "Stop");
        assert_eq!(s.jobs().await.unwrap().len(), 2);
        s.set_job_phase("job-2", "Failed", "x", true, true)
            .await
            .unwrap();
        let live = s.live_jobs(&[]).await.unwrap();
        assert_eq!(
            live.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
            ["job-1"]
        );
        assert_eq!(s.live_jobs(&["job-2".into()]).await.unwrap().len(), 2);
        // a failed job's reason is replaced only from the reason it has,
        // and only while it is Failed
        s.replace_failed_reason("job-2", "stale", "y")
            .await
            .unwrap();
        assert_eq!(s.job("job-2").await.unwrap().unwrap().reason, "x");
        s.replace_failed_reason("job-2", "x", "y").await.unwrap();
        assert_eq!(s.job("job-2").await.unwrap().unwrap().reason, "y");
        s.replace_failed_reason("job-1", "restart", "z")
            .await
            .unwrap();
        assert_eq!(s.job("job-1").await.unwrap().unwrap().reason, "restart");

        s.upsert_approval(&approval("job-1", "alice"))
            .await
            .unwrap();
        let mut a = approval("job-1", "bob");
        s.upsert_approval(&a).await.unwrap();
        a.state = "JobRejected".into();
        s.upsert_approval(&a).await.unwrap();
        let all = s.approvals("job-1").await.unwrap();
        assert_eq!(
            all.iter().map(|a| a.state.as_str()).collect::<Vec<_>>(),
            ["JobAccepted", "JobRejected"]
        );

        s.ensure_task_party("job-1", "t1", "alice").await.unwrap();
        let mut p = s.task_party("job-1", "t1", "alice").await.unwrap().unwrap();
        p.phase = "Running".into();
        p.progress = 500;
        s.update_task_party(&p).await.unwrap();
        s.set_task_process("job-1", "t1", "alice", 4242, "hash")
            .await
            .unwrap();
        // Ensuring again keeps what was there.
        s.ensure_task_party("job-1", "t1", "alice").await.unwrap();
        s.ensure_task_party("job-1", "t1", "bob").await.unwrap();
        let p = s.task_party("job-1", "t1", "alice").await.unwrap().unwrap();
        assert_eq!(
            (p.phase.as_str(), p.progress, p.pid),
            ("Running", 500, 4242)
        );
        assert_eq!(s.task_parties("job-1").await.unwrap().len(), 2);
        assert_eq!(s.running_parties("alice").await.unwrap().len(), 1);
        s.set_task_progress("job-1", "t1", "alice", 700, "intersect")
            .await
            .unwrap();
        // Only a Running party takes progress.
        s.set_task_progress("job-1", "t1", "bob", 900, "x")
            .await
            .unwrap();
        let p = s.task_party("job-1", "t1", "alice").await.unwrap().unwrap();
        assert_eq!(
            (p.progress, p.step.as_str(), p.secret_sha256.as_str()),
            (700, "intersect", "hash")
        );
        let b = s.task_party("job-1", "t1", "bob").await.unwrap().unwrap();
        assert_eq!(b.progress, 0);
        assert!(
            s.task_party("job-1", "t9", "alice")
                .await
                .unwrap()
                .is_none()
        );

        let m1 = s
            .insert_message(&message("job-1", "bob", "create"))
            .await
            .unwrap();
        let m2 = s
            .insert_message(&message("job-1", "bob", "status"))
            .await
            .unwrap();
        let m3 = s
            .insert_message(&message("job-2", "carol", "status"))
            .await
            .unwrap();
        assert!(m1 < m2 && m2 < m3, "{m1} {m2} {m3}");
        assert_eq!(s.undelivered_messages().await.unwrap().len(), 3);
        s.message_attempt(m1, true, "").await.unwrap();
        s.message_attempt(m3, false, "HTTP 502").await.unwrap();
        s.drop_undelivered("job-1", "bob", "status").await.unwrap();
        let msgs = s.messages("job-1").await.unwrap();
        assert_eq!(
            msgs.iter().map(|m| (m.id, m.delivered)).collect::<Vec<_>>(),
            [(m1, 1), (m2, 2)]
        );
        s.message_refused(m3, "no such data").await.unwrap();
        let m = &s.messages("job-2").await.unwrap()[0];
        assert_eq!(
            (m.delivered, m.attempts, m.last_error.as_str()),
            (3, 2, "no such data")
        );
        assert!(s.undelivered_messages().await.unwrap().is_empty());

        s.delete_job("job-1").await.unwrap();
        assert!(s.job("job-1").await.unwrap().is_none());
        assert!(s.approvals("job-1").await.unwrap().is_empty());
        assert!(s.task_parties("job-1").await.unwrap().is_empty());
        assert!(s.messages("job-1").await.unwrap().is_empty());
        s.close().await;
    }
}

#[tokio::test]
async fn reopened_store_keeps_state_and_its_owner() {
    for db in test_dbs("reopen").await {
        eprintln!("store test reopen on {}", db.backend);
        let s = db.open().await;
        assert_eq!(s.owner().await.unwrap(), None);
        s.claim("alice", &"aa".repeat(32)).await.unwrap();
        fill(&s).await;
        s.close().await;

        let s = db.open().await;
        assert!(
            s.migrate().await.unwrap().is_empty(),
            "nothing left to apply"
        );
        s.claim("alice", &"aa".repeat(32)).await.unwrap();
        assert_eq!(s.owner().await.unwrap().unwrap().domain_id, "alice");
        assert_eq!(s.list_domains("", None).await.unwrap().items.len(), 5);
        assert!(s.domaindata("dd-1").await.unwrap().is_some());
        assert_eq!(s.messages("job-1").await.unwrap().len(), 1);

        for (domain, ca) in [("bob", "bb".repeat(32)), ("alice", "cc".repeat(32))] {
            let err = s.claim(domain, &ca).await.unwrap_err().to_string();
            assert!(err.contains("belongs to node alice"), "{err}");
            assert!(err.contains(&format!("not to this node {domain}")), "{err}");
        }
        let report = s.check().await.unwrap();
        assert_eq!(report.applied, every_migration());
        assert!(report.pending.is_empty() && report.unknown.is_empty());
        assert_eq!(report.ddl_refused, None);
        assert_eq!(report.owner.as_ref().unwrap().domain_id, "alice");
        assert_eq!(
            report.server_max_connections.is_some(),
            db.backend != Backend::Sqlite
        );
        assert!(report.problems().is_empty(), "{:?}", report.problems());
        s.close().await;
    }
}

#[tokio::test]
async fn copy_from_sqlite_to_every_backend() {
    let source = TestDb::sqlite();
    let s = source.open().await;
    s.claim("alice", &"aa".repeat(32)).await.unwrap();
    fill(&s).await;
    let m2 = s
        .insert_message(&message("job-1", "carol", "create"))
        .await
        .unwrap();
    s.close().await;
    for db in test_dbs("copy").await {
        eprintln!("store test copy on {}", db.backend);
        let report = copy(&source.options(), &db.options()).await.unwrap();
        let counts: std::collections::BTreeMap<_, _> = report.tables.iter().cloned().collect();
        assert_eq!(counts["domains"], 5);
        assert_eq!(counts["job_messages"], 2);
        assert_eq!(counts["node_identity"], 1);
        assert!(!report.to.contains("venn:venn@"), "{}", report.to);

        let t = db.open().await;
        t.claim("alice", &"aa".repeat(32)).await.unwrap();
        let src = source.open().await;
        assert_eq!(
            format!("{:?}", t.list_domains("", None).await.unwrap().items),
            format!("{:?}", src.list_domains("", None).await.unwrap().items)
        );
        assert_eq!(
            format!("{:?}", t.domaindata("dd-1").await.unwrap()),
            format!("{:?}", src.domaindata("dd-1").await.unwrap())
        );
        assert_eq!(
            format!("{:?}", t.messages("job-1").await.unwrap()),
            format!("{:?}", src.messages("job-1").await.unwrap())
        );
        // New rows get IDs after the copied ones.
        let next = t
            .insert_message(&message("job-1", "bob", "status"))
            .await
            .unwrap();
        assert!(next > m2, "{next} after {m2}");

        let err = copy(&source.options(), &db.options())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds data"), "{err}");
        src.close().await;
        t.close().await;
    }
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error_without_the_password() {
    for url in [
        "mysql://venn:s3cret-pw@127.0.0.1:1/venn",
        "postgres://venn:s3cret-pw@127.0.0.1:1/venn",
    ] {
        let mut opts = StoreOptions::new(url).unwrap();
        opts.connect_timeout = std::time::Duration::from_secs(2);
        let err = Store::open_with(&opts).await.unwrap_err();
        let text = format!("{err} {err:?} {opts:?}");
        assert!(
            matches!(err, NodeError::Datastore(StoreError::Unreachable { .. })),
            "{text}"
        );
        assert!(text.contains("cannot connect to"), "{text}");
        assert!(text.contains("venn:***@127.0.0.1:1"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

#[test]
fn redaction() {
    assert_eq!(
        redact("mysql://venn:p%40ss@db:3306/venn"),
        "mysql://venn:***@db:3306/venn"
    );
    assert_eq!(redact("postgres://venn@db/venn"), "postgres://venn@db/venn");
    assert_eq!(
        redact("mysql://a:b c@"),
        "mysql:(not shown: not a valid URL)"
    );
    let o = StoreOptions::new("postgres://venn@db/venn")
        .unwrap()
        .with_password("p@ss:/word")
        .unwrap();
    assert_eq!(o.redacted(), "postgres://venn:***@db/venn");
    assert!(o.url().contains("venn:p%40ss%3A%2Fword@db"), "{}", o.url());
    assert!(!format!("{o:?}").contains("p%40ss"));
    let cfg = crate::config::Datastore::from("mysql://venn:hunter2@db/venn");
    assert!(!format!("{cfg:?} {cfg}").contains("hunter2"));
}

/// Every table of the SQLite schema is in [`TABLES`] (so `venn store copy` copies it).
#[tokio::test]
async fn tables_list_is_complete() {
    let db = TestDb::sqlite();
    let s = db.open().await;
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    let mut want: Vec<&str> = TABLES.to_vec();
    want.sort();
    assert_eq!(
        names.iter().map(|(n,)| n.as_str()).collect::<Vec<_>>(),
        want
    );
}

/// A user without DDL rights gets a clear error naming the remedy. Needs a server user that may
/// create users (CI's may); skipped otherwise.
#[tokio::test]
async fn user_without_ddl_rights_is_told_so() {
    for db in test_dbs("noddl").await {
        let Some((admin_url, name)) = db.server.clone() else {
            continue;
        };
        eprintln!("store test noddl on {}", db.backend);
        let pool = admin(&db.url).await;
        let user = format!("venn_noddl_{}", random_suffix());
        // In GRANT, `_` is a wildcard: escape it so the grant names this database only.
        let grant_db = name.replace('_', "\\_");
        let setup: Vec<String> = match db.backend {
            Backend::MySql => vec![
                format!("CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'noddl'"),
                format!("CREATE USER '{user}'@'localhost' IDENTIFIED BY 'noddl'"),
                format!(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON `{grant_db}`.* TO '{user}'@'127.0.0.1'"
                ),
                format!(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON `{grant_db}`.* TO '{user}'@'localhost'"
                ),
            ],
            _ => vec![
                format!("CREATE ROLE {user} LOGIN PASSWORD 'noddl'"),
                format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
            ],
        };
        let mut ok = true;
        for sql in &setup {
            if let Err(e) = pool.execute(AssertSqlSafe(sql.clone())).await {
                eprintln!(
                    "SKIPPED noddl on {}: the test user cannot {sql}: {e}",
                    db.backend
                );
                ok = false;
                break;
            }
        }
        if ok {
            let mut u = url::Url::parse(&db.url).unwrap();
            u.set_username(&user).unwrap();
            u.set_password(Some("noddl")).unwrap();
            let err = Store::open(u.as_str()).await.unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, NodeError::Datastore(StoreError::NoDdlRights { .. })),
                "{text}"
            );
            assert!(text.contains("may not create or change tables"), "{text}");
            assert!(!text.contains("noddl@"), "{text}");
        }
        let cleanup = match db.backend {
            Backend::MySql => vec![
                format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"),
                format!("DROP USER IF EXISTS '{user}'@'localhost'"),
            ],
            _ => vec![format!("DROP ROLE IF EXISTS {user}")],
        };
        pool.close().await;
        // A PostgreSQL role is dropped once the database that granted it something is gone.
        drop(db);
        let pool = admin(&admin_url).await;
        for sql in cleanup {
            let _ = pool.execute(AssertSqlSafe(sql)).await;
        }
        pool.close().await;
    }
}

/// A node stopped and started again on the same database finds its state; another node, or the
/// same domain with other keys, refuses to start on it.
#[tokio::test]
async fn node_restarted_on_the_same_database_keeps_its_state() {
    use crate::config::Config;
    use crate::node::Node;
    for db in test_dbs("node").await {
        eprintln!("store test node restart on {}", db.backend);
        let dirs = tempfile::tempdir().unwrap();
        let config = |dir: &str, domain: &str| {
            let mut c = Config {
                domain_id: domain.into(),
                endpoint: format!("https://{domain}.example:1080"),
                data_dir: dirs.path().join(dir),
                datastore: db.url.as_str().into(),
                datastore_max_connections: Some(3),
                ..Config::default()
            };
            c.gateway.listen = "127.0.0.1:0".into();
            c.api.listen = "127.0.0.1:0".into();
            c
        };
        let node = Node::build(config("alice", "alice")).await.unwrap();
        node.state()
            .store
            .insert_datasource(&datasource("ds-kept"))
            .await
            .unwrap();
        node.state().store.close().await;
        drop(node);

        let node = Node::build(config("alice", "alice")).await.unwrap();
        let store = &node.state().store;
        assert_eq!(
            store.datasource("ds-kept").await.unwrap().unwrap().name,
            "source ds-kept"
        );
        assert_eq!(store.domain("alice").await.unwrap().unwrap().role, "self");
        store.close().await;
        drop(node);

        for (dir, domain) in [("bob", "bob"), ("alice-again", "alice")] {
            let err = match Node::build(config(dir, domain)).await {
                Ok(_) => panic!("{domain} ({dir}) started on alice's database"),
                Err(e) => e,
            };
            let text = err.to_string();
            assert!(
                matches!(err, NodeError::Datastore(StoreError::OtherNode { .. })),
                "{text}"
            );
            assert!(text.contains("belongs to node alice"), "{text}");
            assert!(!text.contains(":venn@"), "{text}");
        }
    }
}

/// PostgreSQL: nodes can share one database with a schema each (`search_path` in the URL), the
/// documented alternative to a database per node.
#[tokio::test]
async fn postgres_schema_per_node() {
    for db in test_dbs("pgschema").await {
        if db.backend != Backend::Postgres {
            continue;
        }
        let pool = admin(&db.url).await;
        for schema in ["venn_alice", "venn_bob"] {
            pool.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .await
                .unwrap();
        }
        pool.close().await;
        let at = |schema: &str| {
            let sep = if db.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-c%20search_path%3D{schema}", db.url)
        };
        let alice = Store::open(&at("venn_alice")).await.unwrap();
        let bob = Store::open(&at("venn_bob")).await.unwrap();
        alice.claim("alice", &"aa".repeat(32)).await.unwrap();
        bob.claim("bob", &"bb".repeat(32)).await.unwrap();
        alice.insert_datasource(&datasource("ds-a")).await.unwrap();
        assert!(bob.datasource("ds-a").await.unwrap().is_none());
        alice.close().await;
        bob.close().await;
    }
}

/// Every query goes through `Store::query`/`query_as` (rewritten per backend): a raw
/// `sqlx::query` with `?` placeholders elsewhere would fail on PostgreSQL only.
#[test]
fn no_raw_queries_outside_the_store() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    // The store's own plumbing: backend-specific or placeholder-free SQL only.
    let allowed = [
        "store.rs",
        "store/connect.rs",
        "store/copy.rs",
        "store/conformance.rs",
    ];
    let needle = concat!("sqlx::", "query");
    let mut bad = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if allowed.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains(needle) {
                bad.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "use self.query / self.query_as (Store) instead of {needle}, so the SQL is rewritten \
         for MySQL and PostgreSQL:\n{}",
        bad.join("\n")
    );
    assert!(files.len() > 10, "found only {} source files", files.len());
}

/// The versions of every migration shipped (1, 2, … N: one file per version per backend).
fn every_migration() -> Vec<i64> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    let n = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    (1..=n).collect()
}

/// `url` with `params` (`a=b&c=d`) appended to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// Opening `url` fails with [`StoreError::Tls`]; returns the message (checked for the setting's
/// name and for the password).
async fn tls_error(url: &str) -> String {
    let mut opts = StoreOptions::new(url).unwrap();
    opts.connect_timeout = std::time::Duration::from_secs(5);
    let err = match Store::open_with(&opts).await {
        Ok(s) => {
            s.close().await;
            panic!("{} connected", redact(url))
        }
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        matches!(err, NodeError::Datastore(StoreError::Tls { .. })),
        "{text}"
    );
    assert!(text.contains("datastore: TLS to "), "{text}");
    assert!(text.contains("`datastore`"), "{text}");
    assert!(!text.contains(":venn@"), "{text}");
    text
}

/// PostgreSQL over TLS: `sslmode=require` encrypts the session; `verify-full` without
/// `sslrootcert` rejects the server's self-signed certificate with a clear error; with the
/// server's own certificate as `sslrootcert`, `verify-ca` connects and `verify-full` to an
/// address the certificate does not name is refused as such.
#[tokio::test]
async fn postgres_tls() {
    for db in test_dbs("pgtls").await {
        if db.backend != Backend::Postgres {
            continue;
        }
        eprintln!("store test TLS on {}", db.backend);
        let s = Store::open(&with_params(&db.url, "sslmode=require"))
            .await
            .unwrap_or_else(|e| panic!("sslmode=require: {e}"));
        let (ssl,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        assert!(ssl, "sslmode=require but the session is not encrypted");
        s.close().await;

        let text = tls_error(&with_params(&db.url, "sslmode=verify-full")).await;
        assert!(
            text.contains("not signed by a CA this node trusts"),
            "{text}"
        );
        assert!(text.contains("sslrootcert="), "{text}");

        // The server's certificate (Debian's snakeoil) as a private CA, when this user may read it.
        let pool = admin(&db.url).await;
        let (cert_file,): (String,) = sqlx::query_as("SHOW ssl_cert_file")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        // A relative path is relative to the server's data directory: not ours to read.
        if std::path::Path::new(&cert_file).is_relative() || std::fs::read(&cert_file).is_err() {
            eprintln!(
                "SKIPPED sslrootcert tests on {}: cannot read {cert_file:?}",
                db.backend
            );
            continue;
        }
        let root = format!("sslrootcert={cert_file}");
        let s = Store::open(&with_params(&db.url, &format!("sslmode=verify-ca&{root}")))
            .await
            .unwrap_or_else(|e| panic!("sslmode=verify-ca&{root}: {e}"));
        s.close().await;
        // The snakeoil certificate names the machine, not 127.0.0.1.
        if url::Url::parse(&db.url).unwrap().host_str() == Some("127.0.0.1") {
            let text = tls_error(&with_params(
                &db.url,
                &format!("sslmode=verify-full&{root}"),
            ))
            .await;
            assert!(text.contains("not for the host"), "{text}");
        }
    }
}

/// MySQL/MariaDB over TLS: `ssl-mode=REQUIRED` encrypts the session, `VERIFY_CA` and
/// `VERIFY_IDENTITY` connect with the test CA as `ssl-ca` and refuse the server without it, and
/// `DISABLED` (like the plain URLs of the other tests) still connects in the clear.
#[tokio::test]
async fn mysql_tls() {
    let require = env("VENN_TEST_REQUIRE_SERVERS").is_some_and(|s| s == "1");
    for db in test_dbs("mytls").await {
        if db.backend != Backend::MySql {
            continue;
        }
        let Some(ca) = env("VENN_TEST_DB_CA") else {
            assert!(
                !require,
                "VENN_TEST_DB_CA is not set but VENN_TEST_REQUIRE_SERVERS=1 (MySQL TLS tests)"
            );
            eprintln!(
                "SKIPPED store test mytls on {}: VENN_TEST_DB_CA is not set",
                db.backend
            );
            continue;
        };
        eprintln!("store test TLS on {}", db.backend);
        let cipher = |s: Store| async move {
            let (_, value): (String, String) =
                sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .fetch_one(&s.pool)
                    .await
                    .unwrap();
            s.close().await;
            value
        };
        let ca_param = format!("ssl-ca={ca}");
        for params in [
            "ssl-mode=REQUIRED".to_owned(),
            format!("ssl-mode=VERIFY_CA&{ca_param}"),
            format!("ssl-mode=VERIFY_IDENTITY&{ca_param}"),
        ] {
            let s = Store::open(&with_params(&db.url, &params))
                .await
                .unwrap_or_else(|e| panic!("{params}: {e}"));
            let value = cipher(s).await;
            assert!(!value.is_empty(), "{params}: the session is not encrypted");
        }

        let s = Store::open(&with_params(&db.url, "ssl-mode=DISABLED"))
            .await
            .unwrap_or_else(|e| panic!("ssl-mode=DISABLED: {e}"));
        assert_eq!(cipher(s).await, "", "ssl-mode=DISABLED but encrypted");
        let s = Store::open(&db.url)
            .await
            .unwrap_or_else(|e| panic!("plain URL: {e}"));
        s.close().await;

        let text = tls_error(&with_params(&db.url, "ssl-mode=VERIFY_CA")).await;
        assert!(
            text.contains("not signed by a CA this node trusts"),
            "{text}"
        );
        assert!(text.contains("ssl-ca="), "{text}");
    }
}

/// A server that answers PostgreSQL's TLS request with "no" fails `sslmode=require` with an
/// error that says so (no database server needed).
#[tokio::test]
async fn server_without_tls_while_required_is_a_clear_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            // SSLRequest: length 8, code 80877103; the answer `N` means "no TLS here".
            let mut req = [0u8; 8];
            sock.read_exact(&mut req).await.unwrap();
            assert_eq!(req, [0, 0, 0, 8, 4, 210, 22, 47]);
            sock.write_all(b"N").await.unwrap();
        }
    });
    let text = tls_error(&format!(
        "postgres://venn:venn@127.0.0.1:{port}/venn?sslmode=require"
    ))
    .await;
    assert!(text.contains("offers no TLS"), "{text}");
    server.abort();
}

/// A certificate file named in the URL that cannot be read is a bad URL, not an unreachable
/// server.
#[tokio::test]
async fn missing_ca_file_is_a_bad_url() {
    for url in [
        "postgres://venn:s3cret@127.0.0.1:1/venn?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        "mysql://venn:s3cret@127.0.0.1:1/venn?ssl-mode=VERIFY_CA&ssl-ca=/nonexistent/ca.pem",
    ] {
        let err = Store::open(url).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, NodeError::Datastore(StoreError::BadUrl { .. })),
            "{text}"
        );
        assert!(
            text.contains("/nonexistent/ca.pem: cannot read the file"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}

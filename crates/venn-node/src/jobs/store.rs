//! The jobs tables (migration 0002): jobs, approvals, task parties, signed messages.

use serde::Serialize;
use sqlx::FromRow;

use crate::error::Result;
use crate::store::Store;
use crate::trust::now_unix;

/// A job.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct JobRow {
    /// Job ID.
    pub job_id: String,
    /// Initiator domain.
    pub initiator: String,
    /// Canonical manifest JSON.
    pub manifest: String,
    /// Hex SHA-256 of the signed manifest bytes.
    pub manifest_sha256: String,
    /// Kuscia job state.
    pub phase: String,
    /// Why.
    pub reason: String,
    /// '' | Stop | Cancel | Suspend.
    pub control: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds (0 = not started).
    pub start_time: i64,
    /// Unix seconds (0 = not finished).
    pub end_time: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A party's approval.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ApprovalRow {
    /// Job.
    pub job_id: String,
    /// Party.
    pub domain_id: String,
    /// JobAccepted | JobRejected | JobAwaitingApproval.
    pub state: String,
    /// Why.
    pub reason: String,
    /// The party's signature.
    pub signature: String,
    /// PEM.
    pub signer_cert: String,
    /// Unix seconds.
    pub updated_at: i64,
}

/// One party's part of one task.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct TaskPartyRow {
    /// Job.
    pub job_id: String,
    /// Task.
    pub task_id: String,
    /// Party.
    pub domain_id: String,
    /// Pending | Running | Succeeded | Failed.
    pub phase: String,
    /// Why.
    pub reason: String,
    /// Per mille.
    pub progress: i64,
    /// What the task is doing.
    pub step: String,
    /// JSON report.
    pub report: String,
    /// Attempt number (restart adds one).
    pub attempt: i64,
    /// Process ID (own parties).
    #[serde(skip)]
    pub pid: i64,
    /// SHA-256 of the task's gateway secret (own parties).
    #[serde(skip)]
    pub secret_sha256: String,
    /// Unix seconds.
    pub start_time: i64,
    /// Unix seconds.
    pub end_time: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A signed control message, sent or received.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct MessageRow {
    /// Sequence.
    pub id: i64,
    /// Job.
    pub job_id: String,
    /// Sender.
    pub from_domain: String,
    /// Receiver.
    pub to_domain: String,
    /// Kind.
    pub kind: String,
    /// The signed message, JSON.
    pub body: String,
    /// Sender's signature.
    pub signature: String,
    /// 1 once acknowledged (always 1 for received messages).
    pub delivered: i64,
    /// Delivery attempts.
    pub attempts: i64,
    /// Last delivery error.
    pub last_error: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Inserts a job (conflict if the ID exists).
    pub async fn insert_job(&self, j: &JobRow) -> Result<()> {
        let now = now_unix();
        self.query(
            "INSERT INTO jobs (job_id, initiator, manifest, manifest_sha256, phase, reason, control, \
             created_at, start_time, end_time, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?)",
        )
        .bind(&j.job_id)
        .bind(&j.initiator)
        .bind(&j.manifest)
        .bind(&j.manifest_sha256)
        .bind(&j.phase)
        .bind(&j.reason)
        .bind(&j.control)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                crate::NodeError::Conflict(format!("job_id: {} already exists", j.job_id))
            }
            _ => e.into(),
        })?;
        Ok(())
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        Ok(self
            .query_as("SELECT * FROM jobs WHERE job_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        Ok(self
            .query_as("SELECT * FROM jobs ORDER BY created_at DESC, job_id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Jobs not in a final state, plus the jobs named in `also`.
    pub async fn live_jobs(&self, also: &[String]) -> Result<Vec<JobRow>> {
        let mut rows: Vec<JobRow> = self.query_as(
            "SELECT * FROM jobs WHERE phase NOT IN \
             ('Succeeded', 'Failed', 'Cancelled', 'Suspended', 'ApprovalReject') ORDER BY created_at, job_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for id in also {
            if !rows.iter().any(|r| &r.job_id == id)
                && let Some(j) = self.job(id).await?
            {
                rows.push(j);
            }
        }
        Ok(rows)
    }

    /// Sets a job's phase and reason; start and end times follow the phase.
    pub async fn set_job_phase(
        &self,
        id: &str,
        phase: &str,
        reason: &str,
        started: bool,
        ended: bool,
    ) -> Result<()> {
        let now = now_unix();
        self.query(
            "UPDATE jobs SET phase = ?, reason = ?, updated_at = ?, \
             start_time = CASE WHEN ? AND start_time = 0 THEN ? ELSE start_time END, \
             end_time = CASE WHEN ? THEN (CASE WHEN end_time = 0 THEN ? ELSE end_time END) ELSE 0 END \
             WHERE job_id = ?",
        )
        .bind(phase)
        .bind(reason)
        .bind(now)
        .bind(started)
        .bind(now)
        .bind(ended)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the reason of a job that is still Failed with reason `old`
    /// (compare and set: a restart or another writer in between wins).
    pub async fn replace_failed_reason(&self, id: &str, old: &str, reason: &str) -> Result<()> {
        self.query(
            "UPDATE jobs SET reason = ?, updated_at = ? \
             WHERE job_id = ? AND phase = 'Failed' AND reason = ?",
        )
        .bind(reason)
        .bind(now_unix())
        .bind(id)
        .bind(old)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the sticky command of a job.
    pub async fn set_job_control(&self, id: &str, control: &str, reason: &str) -> Result<()> {
        self.query("UPDATE jobs SET control = ?, reason = ?, updated_at = ? WHERE job_id = ?")
            .bind(control)
            .bind(reason)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a job and everything about it.
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        for q in [
            "DELETE FROM jobs WHERE job_id = ?",
            "DELETE FROM job_approvals WHERE job_id = ?",
            "DELETE FROM task_parties WHERE job_id = ?",
            "DELETE FROM job_messages WHERE job_id = ?",
        ] {
            self.query(q).bind(id).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Inserts or replaces a party's approval.
    pub async fn upsert_approval(&self, a: &ApprovalRow) -> Result<()> {
        self.query(
            "INSERT INTO job_approvals (job_id, domain_id, state, reason, signature, signer_cert, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, domain_id) DO UPDATE SET \
             state = excluded.state, reason = excluded.reason, signature = excluded.signature, \
             signer_cert = excluded.signer_cert, updated_at = excluded.updated_at",
        )
        .bind(&a.job_id)
        .bind(&a.domain_id)
        .bind(&a.state)
        .bind(&a.reason)
        .bind(&a.signature)
        .bind(&a.signer_cert)
        .bind(now_unix())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job's approvals.
    pub async fn approvals(&self, job: &str) -> Result<Vec<ApprovalRow>> {
        Ok(self
            .query_as("SELECT * FROM job_approvals WHERE job_id = ? ORDER BY domain_id")
            .bind(job)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Inserts a task party row if missing.
    pub async fn ensure_task_party(&self, job: &str, task: &str, domain: &str) -> Result<()> {
        self.query(
            "INSERT INTO task_parties (job_id, task_id, domain_id, phase, reason, report, updated_at) \
             VALUES (?, ?, ?, 'Pending', '', '{}', ?) ON CONFLICT (job_id, task_id, domain_id) DO NOTHING",
        )
        .bind(job)
        .bind(task)
        .bind(domain)
        .bind(now_unix())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Replaces the synced fields of a task party (phase, reason, progress, step, report,
    /// attempt, times); the process columns (pid, secret) are [`Store::set_task_process`]'s.
    pub async fn update_task_party(&self, r: &TaskPartyRow) -> Result<()> {
        self.query(
            "UPDATE task_parties SET phase = ?, reason = ?, progress = ?, step = ?, report = ?, \
             attempt = ?, start_time = ?, end_time = ?, updated_at = ? \
             WHERE job_id = ? AND task_id = ? AND domain_id = ?",
        )
        .bind(&r.phase)
        .bind(&r.reason)
        .bind(r.progress)
        .bind(&r.step)
        .bind(&r.report)
        .bind(r.attempt)
        .bind(r.start_time)
        .bind(r.end_time)
        .bind(now_unix())
        .bind(&r.job_id)
        .bind(&r.task_id)
        .bind(&r.domain_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets the process columns of this node's task party.
    pub async fn set_task_process(
        &self,
        job: &str,
        task: &str,
        domain: &str,
        pid: i64,
        secret_sha256: &str,
    ) -> Result<()> {
        self.query(
            "UPDATE task_parties SET pid = ?, secret_sha256 = ? WHERE job_id = ? AND task_id = ? AND domain_id = ?",
        )
        .bind(pid)
        .bind(secret_sha256)
        .bind(job)
        .bind(task)
        .bind(domain)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a task's progress (only those columns: the runtime owns pid and secret).
    pub async fn set_task_progress(
        &self,
        job: &str,
        task: &str,
        domain: &str,
        progress: i64,
        step: &str,
    ) -> Result<()> {
        self.query(
            "UPDATE task_parties SET progress = ?, step = ?, updated_at = ? \
             WHERE job_id = ? AND task_id = ? AND domain_id = ? AND phase = 'Running'",
        )
        .bind(progress)
        .bind(step)
        .bind(now_unix())
        .bind(job)
        .bind(task)
        .bind(domain)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One task party.
    pub async fn task_party(
        &self,
        job: &str,
        task: &str,
        domain: &str,
    ) -> Result<Option<TaskPartyRow>> {
        Ok(self
            .query_as(
                "SELECT * FROM task_parties WHERE job_id = ? AND task_id = ? AND domain_id = ?",
            )
            .bind(job)
            .bind(task)
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every party row of a job.
    pub async fn task_parties(&self, job: &str) -> Result<Vec<TaskPartyRow>> {
        Ok(self
            .query_as("SELECT * FROM task_parties WHERE job_id = ? ORDER BY task_id, domain_id")
            .bind(job)
            .fetch_all(&self.pool)
            .await?)
    }

    /// This node's party rows that are Running (for re-attach after a restart).
    pub async fn running_parties(&self, domain: &str) -> Result<Vec<TaskPartyRow>> {
        Ok(self
            .query_as("SELECT * FROM task_parties WHERE domain_id = ? AND phase = 'Running'")
            .bind(domain)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Stores a message; returns its sequence number.
    pub async fn insert_message(&self, m: &MessageRow) -> Result<i64> {
        macro_rules! insert {
            () => {
                "INSERT INTO job_messages (job_id, from_domain, to_domain, kind, body, signature, delivered, \
                 attempts, last_error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, '', ?)"
            };
        }
        // `Any` reports no last insert ID for PostgreSQL and SQLite; MySQL 8 has no
        // INSERT … RETURNING (MariaDB has).
        let returning = self.backend() != crate::store::Backend::MySql;
        let q = if returning {
            self.query(concat!(insert!(), " RETURNING id"))
        } else {
            self.query(insert!())
        }
        .bind(&m.job_id)
        .bind(&m.from_domain)
        .bind(&m.to_domain)
        .bind(&m.kind)
        .bind(&m.body)
        .bind(&m.signature)
        .bind(m.delivered)
        .bind(now_unix());
        if returning {
            use sqlx::Row as _;
            let row = q.fetch_one(&self.pool).await?;
            Ok(row.try_get::<i64, _>(0)?)
        } else {
            let r = q.execute(&self.pool).await?;
            r.last_insert_id().ok_or_else(|| {
                crate::NodeError::Store(sqlx::Error::Protocol(
                    "the database reported no ID for the new message".into(),
                ))
            })
        }
    }

    /// Marks a message refused for good by its receiver (`delivered = 3`).
    pub async fn message_refused(&self, id: i64, reason: &str) -> Result<()> {
        self.query(
            "UPDATE job_messages SET delivered = 3, attempts = attempts + 1, last_error = ? WHERE id = ?",
        )
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Messages waiting for delivery, oldest first.
    pub async fn undelivered_messages(&self) -> Result<Vec<MessageRow>> {
        Ok(self
            .query_as("SELECT * FROM job_messages WHERE delivered = 0 ORDER BY id LIMIT 200")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Records a delivery attempt.
    pub async fn message_attempt(&self, id: i64, delivered: bool, error: &str) -> Result<()> {
        self.query(
            "UPDATE job_messages SET delivered = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
        )
        .bind(delivered as i64)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up on a job's undelivered messages to `to` of `kind` (superseded).
    pub async fn drop_undelivered(&self, job: &str, to: &str, kind: &str) -> Result<()> {
        self.query(
            "UPDATE job_messages SET delivered = 2, last_error = 'superseded' \
             WHERE job_id = ? AND to_domain = ? AND kind = ? AND delivered = 0",
        )
        .bind(job)
        .bind(to)
        .bind(kind)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A job's messages.
    pub async fn messages(&self, job: &str) -> Result<Vec<MessageRow>> {
        Ok(self
            .query_as("SELECT * FROM job_messages WHERE job_id = ? ORDER BY id")
            .bind(job)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Counts one use of a grant (the caller checked the limit).
    pub async fn use_grant(&self, id: &str) -> Result<()> {
        self.query(
            "UPDATE domaindatagrants SET used_count = used_count + 1, updated_at = ? WHERE domaindatagrant_id = ?",
        )
        .bind(now_unix())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Grants of `data` by `grantor` to `grantee`.
    pub async fn grants_for(
        &self,
        grantor: &str,
        data: &str,
        grantee: &str,
    ) -> Result<Vec<crate::store::GrantRow>> {
        Ok(self.query_as(
            "SELECT * FROM domaindatagrants WHERE domain_id = ? AND domaindata_id = ? AND grant_domain = ? \
             ORDER BY domaindatagrant_id",
        )
        .bind(grantor)
        .bind(data)
        .bind(grantee)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Grants received by `grantee` for DomainData `data` (any grantor).
    pub async fn grants_received(
        &self,
        data: &str,
        grantee: &str,
    ) -> Result<Vec<crate::store::GrantRow>> {
        Ok(self.query_as(
            "SELECT * FROM domaindatagrants WHERE domaindata_id = ? AND grant_domain = ? ORDER BY domaindatagrant_id",
        )
        .bind(data)
        .bind(grantee)
        .fetch_all(&self.pool)
        .await?)
    }
}

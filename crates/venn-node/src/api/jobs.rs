//! API handlers for jobs: Kuscia's `/api/v1/job/*` plus `/api/v1/job/list` and task logs.
//!
//! `create` takes Kuscia's `CreateJobRequest` unchanged. `approve` takes Kuscia's
//! `{job_id, result: APPROVE_RESULT_ACCEPT|APPROVE_RESULT_REJECT, reason}`. Task logs follow
//! Kuscia's `/api/v1/log/task/query` path and answer the end of the log as text in `data.log`.

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiResult, ok};
use crate::error::NodeError;
use crate::jobs::{self, CreateJobRequest};
use crate::state::SharedState;

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v1/job/create", post(create))
        .route("/api/v1/job/query", post(query))
        .route("/api/v1/job/list", post(list))
        .route("/api/v1/job/status/batchQuery", post(batch))
        .route("/api/v1/job/stop", post(stop))
        .route("/api/v1/job/cancel", post(cancel))
        .route("/api/v1/job/suspend", post(suspend))
        .route("/api/v1/job/restart", post(restart))
        .route("/api/v1/job/delete", post(delete))
        .route("/api/v1/job/approve", post(approve))
        .route("/api/v1/log/task/query", post(logs))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobId {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<Value>,
    job_id: Option<String>,
    #[serde(default)]
    reason: String,
}

fn job_id(id: Option<String>) -> Result<String, super::ApiError> {
    id.filter(|s| !s.is_empty())
        .ok_or_else(|| super::ApiError(NodeError::Invalid("job_id: missing".into())))
}

async fn create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> ApiResult {
    let id = jobs::create(&state, req).await?;
    ok(json!({ "job_id": id }))
}

async fn query(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    ok(jobs::query(&state, &job_id(req.job_id)?).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<Value>,
}

async fn list(State(state): State<SharedState>, ApiJson(_): ApiJson<Empty>) -> ApiResult {
    ok(json!({ "jobs": jobs::list(&state).await? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<Value>,
    #[serde(default)]
    job_ids: Vec<String>,
}

async fn batch(State(state): State<SharedState>, ApiJson(req): ApiJson<Batch>) -> ApiResult {
    let mut out = Vec::new();
    for id in &req.job_ids {
        let q = jobs::query(&state, id).await?;
        out.push(json!({ "job_id": id, "status": q["status"] }));
    }
    ok(json!({ "jobs": out }))
}

async fn command(state: &SharedState, req: JobId, cmd: &str) -> ApiResult {
    let id = job_id(req.job_id)?;
    jobs::command(state, &id, cmd, &req.reason).await?;
    ok(json!({ "job_id": id }))
}

async fn stop(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    command(&state, req, "stop").await
}
async fn cancel(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    command(&state, req, "cancel").await
}
async fn suspend(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    command(&state, req, "suspend").await
}
async fn restart(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    command(&state, req, "restart").await
}
async fn delete(State(state): State<SharedState>, ApiJson(req): ApiJson<JobId>) -> ApiResult {
    command(&state, req, "delete").await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<Value>,
    job_id: Option<String>,
    result: String,
    #[serde(default)]
    reason: String,
}

async fn approve(State(state): State<SharedState>, ApiJson(req): ApiJson<Approve>) -> ApiResult {
    let id = job_id(req.job_id)?;
    let accept = match req.result.as_str() {
        "APPROVE_RESULT_ACCEPT" | "accept" => true,
        "APPROVE_RESULT_REJECT" | "reject" => false,
        other => {
            return Err(super::ApiError(NodeError::Invalid(format!(
                "result: {other:?}; use APPROVE_RESULT_ACCEPT or APPROVE_RESULT_REJECT"
            ))));
        }
    };
    jobs::approve(&state, &id, accept, &req.reason).await?;
    ok(json!({ "job_id": id }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<Value>,
    job_id: Option<String>,
    #[serde(default)]
    task_id: String,
    /// Most bytes per task (default 256 KiB).
    #[serde(default)]
    max_bytes: Option<u64>,
}

async fn logs(State(state): State<SharedState>, ApiJson(req): ApiJson<LogReq>) -> ApiResult {
    let id = job_id(req.job_id)?;
    let q = jobs::query(&state, &id).await?;
    let max = req.max_bytes.unwrap_or(256 << 10).min(16 << 20);
    let mut out = Vec::new();
    for t in q["tasks"].as_array().cloned().unwrap_or_default() {
        let task = t["task_id"].as_str().unwrap_or_default().to_owned();
        if !req.task_id.is_empty() && req.task_id != task && t["alias"] != json!(req.task_id) {
            continue;
        }
        let log = crate::runtime::task_log(&state, &id, &task, max).await?;
        out.push(json!({ "task_id": task, "log": log }));
    }
    if out.is_empty() {
        return Err(super::ApiError(NodeError::NotFound(format!(
            "task {} in job {id}",
            req.task_id
        ))));
    }
    ok(json!({ "tasks": out }))
}

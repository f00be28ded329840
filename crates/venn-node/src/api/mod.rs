//! The Kuscia-compatible HTTP/JSON API (default 127.0.0.1:8082).
//!
//! - Kuscia's paths (`/api/v1/domaindatasource/create`, ...), field names and envelope:
//!   `{"status":{"code":0,"message":"success"},"data":{...}}`. Every call is a POST with a JSON
//!   body, as in Kuscia; an empty body counts as `{}`.
//! - **Authentication**: header `Token: <token>` (Kuscia) or `Authorization: Bearer <token>`,
//!   checked in constant time against the token file by a middleware on every route except
//!   `/healthZ` and the OpenAPI document.
//! - **Errors** come in the same envelope with a non-zero `status.code` equal to the HTTP status
//!   (400 bad request, 401, 404, 409 conflict, 500). Bodies are parsed by [`ApiJson`], which
//!   refuses unknown fields and names the offending field (`limit.use_count: invalid type ...`)
//!   using `serde_path_to_error`. Internal errors are logged and answered "internal error".

mod data;
mod jobs;
mod network;
mod openapi;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::NodeError;
use crate::state::SharedState;

/// Largest JSON body accepted.
const MAX_JSON_BODY: usize = 4 << 20;

/// The `header` object every Kuscia request may carry.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeader {
    /// Free-form headers (ignored).
    #[serde(default)]
    pub custom_headers: std::collections::BTreeMap<String, String>,
}

/// A successful answer in Kuscia's envelope.
pub struct Envelope(pub Value);

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        Json(json!({"status": {"code": 0, "message": "success", "details": []}, "data": self.0}))
            .into_response()
    }
}

/// An error answer in Kuscia's envelope.
pub struct ApiError(pub NodeError);

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self.0 {
            NodeError::Invalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
            NodeError::Config(v) => (StatusCode::BAD_REQUEST, v.join("; ")),
            NodeError::NotFound(_) => (StatusCode::NOT_FOUND, self.0.to_string()),
            NodeError::Conflict(m) => (StatusCode::CONFLICT, m.clone()),
            NodeError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
            NodeError::Peer(m) => (StatusCode::BAD_GATEWAY, m.clone()),
            other => {
                tracing::error!("api: {other}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (
            status,
            Json(json!({"status": {"code": status.as_u16(), "message": message, "details": []}, "data": null})),
        )
            .into_response()
    }
}

/// Result of a handler.
pub type ApiResult = Result<Envelope, ApiError>;

/// A JSON body parsed strictly: unknown fields and wrong types are a 400 naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError(NodeError::Invalid(format!("body: {e}"))))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_json(text).map(ApiJson).map_err(ApiError)
    }
}

/// Parses `bytes` into `T`, naming the failing field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, NodeError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        // serde_json appends " at line L column C": keep it, it helps with big bodies.
        if path == "." || path.is_empty() {
            NodeError::Invalid(format!("body: {inner}"))
        } else {
            NodeError::Invalid(format!("{path}: {inner}"))
        }
    })
}

fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("token") {
        return v.to_str().ok().map(str::to_owned);
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

async fn require_token(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    match presented_token(req.headers()) {
        Some(t) if state.token.check(&t) => next.run(req).await,
        _ => ApiError(NodeError::Unauthorized).into_response(),
    }
}

/// On a master: catalogue and job calls go to the lite that holds the state (see `central`).
/// The target is the body's `domain_id` (or the `initiator` of a job to create); a call naming
/// a job only is tried at each registered lite until one knows the job; a list without a
/// domain is the union of every lite's list.
async fn master_forward(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if state.config.mode != crate::config::Mode::Master || !crate::central::forwarded(&path) {
        return next.run(req).await;
    }
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await {
        Ok(b) => b,
        Err(e) => return ApiError(NodeError::Invalid(format!("body: {e}"))).into_response(),
    };
    let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match parse_json(&bytes) {
            Ok(v) => v,
            Err(e) => return ApiError(e).into_response(),
        }
    };
    match forward(&state, &path, &body).await {
        Ok((status, answer)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            Json(answer),
        )
            .into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn forward(state: &SharedState, path: &str, body: &Value) -> Result<(u16, Value), NodeError> {
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let target = if path == "/api/v1/job/create" {
        field("initiator")
    } else {
        field("domain_id")
    };
    if !target.is_empty() {
        if target == state.domain_id() {
            return Err(NodeError::Invalid(format!(
                "domain_id: {target} is the master; data and tasks live on the lites"
            )));
        }
        return crate::central::forward_to_lite(state, &target, path, body).await;
    }
    if path == "/api/v1/job/create" {
        return Err(NodeError::Invalid(
            "initiator: on a master, name the lite that initiates the job".into(),
        ));
    }
    let lites: Vec<String> = state
        .store
        .lite_nodes()
        .await?
        .into_iter()
        .filter(|n| !n.key_sha256.is_empty())
        .map(|n| n.domain_id)
        .collect();
    let by_id = !field("job_id").is_empty()
        || !field("domaindata_id").is_empty()
        || !field("domaindatagrant_id").is_empty()
        || !field("datasource_id").is_empty();
    let mut merged: Option<Value> = None;
    let mut last_err = None;
    for lite in lites {
        match crate::central::forward_to_lite(state, &lite, path, body).await {
            Ok((200, answer)) if by_id => return Ok((200, answer)),
            Ok((200, answer)) => match &mut merged {
                None => merged = Some(answer),
                Some(m) => {
                    if let (Some(Value::Object(into)), Some(Value::Object(from))) =
                        (m.get_mut("data"), answer.get("data"))
                    {
                        for (k, v) in from {
                            if let (Some(Value::Array(a)), Value::Array(b)) = (into.get_mut(k), v) {
                                // A job or grant is known at several lites: list it once.
                                for item in b {
                                    let id = item_id(item);
                                    if id.is_none() || !a.iter().any(|x| item_id(x) == id) {
                                        a.push(item.clone());
                                    }
                                }
                            }
                        }
                    }
                }
            },
            Ok((status, answer)) => last_err = Some((status, answer)),
            Err(e) => tracing::warn!("forwarding {path} to {lite}: {e}"),
        }
    }
    if let Some(m) = merged {
        return Ok((200, m));
    }
    match last_err {
        Some(a) => Ok(a),
        None => Err(NodeError::NotFound(
            "a lite that knows it (or a registered lite that answers)".into(),
        )),
    }
}

/// The ID of a listed job, grant or domain data (for merging lists from several lites).
fn item_id(v: &Value) -> Option<String> {
    ["job_id", "domaindatagrant_id", "domaindata_id"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

async fn health() -> Envelope {
    Envelope(json!({ "ready": true }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError(NodeError::NotFound(format!("path {}", req.uri().path())))
}

/// The API router.
pub fn router(state: SharedState) -> Router {
    let protected = Router::new()
        .merge(data::routes())
        .merge(network::routes())
        .merge(jobs::routes())
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            master_forward,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthZ", get(health).post(health))
        .route(
            "/api/v1/openapi.json",
            get(openapi::document).post(openapi::document),
        )
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY))
        .with_state(state)
}

/// Helper for handlers: serialise into the envelope.
pub(crate) fn ok(v: impl Serialize) -> ApiResult {
    Ok(Envelope(
        serde_json::to_value(v).map_err(|e| NodeError::Invalid(e.to_string()))?,
    ))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::state::NodeState;
    use crate::trust::read_token;

    async fn state(dir: &std::path::Path) -> SharedState {
        let config = Config {
            data_dir: dir.to_path_buf(),
            domain_id: "alice".into(),
            ..Config::default()
        };
        NodeState::for_tests(config).await
    }

    async fn call(app: &Router, path: &str, token: Option<&str>, body: &str) -> StatusCode {
        let mut req = Request::post(path);
        if let Some(t) = token {
            req = req.header("Token", t);
        }
        app.clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn every_route_is_documented_and_protected() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path()).await;
        let token = read_token(&st.config.token_path()).unwrap();
        let app = router(st);
        for (path, _, _) in openapi::OPERATIONS {
            assert_eq!(
                call(&app, path, None, "{}").await,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
            let with = call(&app, path, Some(&token), "{}").await;
            assert_ne!(
                with,
                StatusCode::NOT_FOUND,
                "{path} is documented but not routed"
            );
            assert_ne!(with, StatusCode::UNAUTHORIZED, "{path}");
        }
        assert_eq!(
            call(&app, "/api/v1/nope", Some(&token), "{}").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(call(&app, "/healthZ", None, "").await, StatusCode::OK);
    }

    #[test]
    fn field_named_in_errors() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            inner: Vec<Inner>,
        }
        let e = parse_json::<Outer>(br#"{"inner":[{"n":"x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inner[0].n:"), "{e}");
        let e = parse_json::<Outer>(br#"{"inner":[],"extra":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
    }
}

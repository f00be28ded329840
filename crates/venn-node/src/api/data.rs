//! API handlers for the data catalogue: DomainDataSource, DomainData, DomainDataGrant, upload.
//!
//! Request shapes follow Kuscia's protobuf JSON mapping (snake_case). Notes where venn decides:
//! - Only `localfs` data sources exist so far; `oss`, `mysql`, `odps` are answered 400
//!   "not supported yet" rather than stored and failing later.
//! - `create` of a data source whose ID exists with the same type and the same resolved root
//!   succeeds and updates its name (so the seed's `default-data-source` call, which re-creates
//!   the built-in source, works as written); a different root is a 409.
//! - Query and list accept Kuscia's flat fields and, for DomainData, also the `data` wrapper.
//! - `domain_id` in a body must be this node's domain when given (a node manages its own data).
//! - `limit.expiration_time` is Unix seconds; 0 or absent means no expiry.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::post;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{ApiError, ApiJson, ApiResult, RequestHeader, ok};
use crate::catalog::{self, DEFAULT_DATASOURCE};
use crate::error::NodeError;
use crate::grants::{self, GrantPayload};
use crate::state::{NodeState, SharedState};
use crate::store::{DataSourceRow, DomainDataRow, GrantRow};
use crate::trust::{now_unix, random_bytes};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v1/domaindatasource/create", post(ds_create))
        .route("/api/v1/domaindatasource/update", post(ds_update))
        .route("/api/v1/domaindatasource/query", post(ds_query))
        .route("/api/v1/domaindatasource/list", post(ds_list))
        .route("/api/v1/domaindatasource/delete", post(ds_delete))
        .route("/api/v1/domaindata/create", post(dd_create))
        .route("/api/v1/domaindata/update", post(dd_update))
        .route("/api/v1/domaindata/query", post(dd_query))
        .route("/api/v1/domaindata/list", post(dd_list))
        .route("/api/v1/domaindata/delete", post(dd_delete))
        .route("/api/v1/domaindata/upload", post(dd_upload))
        .route("/api/v1/domaindatagrant/create", post(grant_create))
        .route("/api/v1/domaindatagrant/update", post(grant_update))
        .route("/api/v1/domaindatagrant/query", post(grant_query))
        .route("/api/v1/domaindatagrant/list", post(grant_list))
        .route("/api/v1/domaindatagrant/delete", post(grant_delete))
}

fn check_own_domain(state: &NodeState, domain_id: &Option<String>) -> Result<(), ApiError> {
    match domain_id {
        Some(d) if !d.is_empty() && d != state.domain_id() => {
            Err(ApiError(NodeError::Invalid(format!(
                "domain_id: {d:?} is not this node's domain {:?}",
                state.domain_id()
            ))))
        }
        _ => Ok(()),
    }
}

/// A non-empty ID the request must carry, or a 400 naming the field.
fn required(field: &str, id: Option<String>) -> Result<String, ApiError> {
    id.filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError(NodeError::Invalid(format!("{field}: missing"))))
}

fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 127
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError(NodeError::Invalid(format!(
            "{field}: {id:?} must be 1-127 characters of letters, digits, '-', '_', '.'"
        ))))
    }
}

fn generated_id(prefix: &str) -> Result<String, ApiError> {
    Ok(format!("{prefix}-{}", hex::encode(random_bytes(8)?)))
}

// === DomainDataSource ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalFs {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSourceInfo {
    localfs: Option<LocalFs>,
    oss: Option<Value>,
    database: Option<Value>,
    odps: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSourceReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: Option<String>,
    datasource_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    info: DataSourceInfo,
    info_key: Option<String>,
    #[serde(default)]
    access_directly: bool,
}

fn datasource_row(
    state: &NodeState,
    req: DataSourceReq,
    id: String,
) -> Result<DataSourceRow, ApiError> {
    check_own_domain(state, &req.domain_id)?;
    check_id("datasource_id", &id)?;
    if req.info_key.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(ApiError(NodeError::Invalid(
            "info_key: secret references are not supported yet; give info inline".into(),
        )));
    }
    match req.kind.as_str() {
        "localfs" => {}
        "oss" | "mysql" | "odps" | "postgresql" | "hive" | "dameng" => {
            return Err(ApiError(NodeError::Invalid(format!(
                "type: {:?} is not supported yet (only localfs)",
                req.kind
            ))));
        }
        other => {
            return Err(ApiError(NodeError::Invalid(format!(
                "type: unknown data source type {other:?} (localfs, oss, mysql, odps)"
            ))));
        }
    }
    if req.info.oss.is_some() || req.info.database.is_some() || req.info.odps.is_some() {
        return Err(ApiError(NodeError::Invalid(
            "info: a localfs source takes only info.localfs".into(),
        )));
    }
    let local = req.info.localfs.ok_or_else(|| {
        ApiError(NodeError::Invalid(
            "info.localfs: missing (give info.localfs.path)".into(),
        ))
    })?;
    let root = catalog::resolve_localfs_root(&local.path, &state.data_dir())?;
    Ok(DataSourceRow {
        datasource_id: id,
        domain_id: state.domain_id().to_owned(),
        name: req.name,
        r#type: req.kind,
        path: root.display().to_string(),
        access_directly: req.access_directly as i64,
        created_at: 0,
        updated_at: 0,
    })
}

async fn ds_create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DataSourceReq>,
) -> ApiResult {
    let id = match req.datasource_id.clone().filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => generated_id("datasource")?,
    };
    let row = datasource_row(&state, req, id.clone())?;
    if let Some(existing) = state.store.datasource(&id).await? {
        if existing.r#type == row.r#type && existing.path == row.path {
            state.store.update_datasource(&row).await?;
            return ok(json!({ "datasource_id": id }));
        }
        return Err(ApiError(NodeError::Conflict(format!(
            "datasource_id: {id} already exists with root {}",
            existing.path
        ))));
    }
    state.store.insert_datasource(&row).await?;
    ok(json!({ "datasource_id": id }))
}

async fn ds_update(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DataSourceReq>,
) -> ApiResult {
    let id = required("datasource_id", req.datasource_id.clone())?;
    let row = datasource_row(&state, req, id.clone())?;
    state.store.update_datasource(&row).await?;
    ok(json!({ "datasource_id": id }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSourceIdReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: Option<String>,
    datasource_id: String,
}

fn datasource_json(r: &DataSourceRow) -> Value {
    json!({
        "domain_id": r.domain_id,
        "datasource_id": r.datasource_id,
        "name": r.name,
        "type": r.r#type,
        "status": if std::path::Path::new(&r.path).is_dir() { "Available" } else { "Unavailable" },
        "info": { "localfs": { "path": r.path } },
        "access_directly": r.access_directly == 1,
    })
}

async fn ds_query(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DataSourceIdReq>,
) -> ApiResult {
    check_own_domain(&state, &req.domain_id)?;
    let r = state
        .store
        .datasource(&req.datasource_id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("datasource {}", req.datasource_id)))?;
    ok(datasource_json(&r))
}

async fn ds_delete(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DataSourceIdReq>,
) -> ApiResult {
    check_own_domain(&state, &req.domain_id)?;
    if req.datasource_id == DEFAULT_DATASOURCE {
        return Err(ApiError(NodeError::Invalid(format!(
            "datasource_id: {DEFAULT_DATASOURCE} is built in and cannot be deleted"
        ))));
    }
    state.store.delete_datasource(&req.datasource_id).await?;
    ok(json!({}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: Option<String>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: String,
}

async fn ds_list(State(state): State<SharedState>, ApiJson(req): ApiJson<ListReq>) -> ApiResult {
    check_own_domain(&state, &req.domain_id)?;
    let page = state
        .store
        .list_datasources(&req.page_token, req.page_size)
        .await?;
    ok(json!({
        "datasource_list": page.items.iter().map(datasource_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    }))
}

// === DomainData ===

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Column {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    not_nullable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDataReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domaindata_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(rename = "type")]
    kind: String,
    relative_uri: String,
    domain_id: Option<String>,
    datasource_id: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    columns: Vec<Column>,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    file_format: Option<String>,
}

const DATA_TYPES: &[&str] = &["table", "model", "rule", "report", "unknown"];

async fn domaindata_row(
    state: &NodeState,
    req: DomainDataReq,
    id: String,
) -> Result<DomainDataRow, ApiError> {
    check_own_domain(state, &req.domain_id)?;
    check_id("domaindata_id", &id)?;
    if !DATA_TYPES.contains(&req.kind.as_str()) {
        return Err(ApiError(NodeError::Invalid(format!(
            "type: {:?} is not one of {}",
            req.kind,
            DATA_TYPES.join(", ")
        ))));
    }
    if let Some(f) = req.file_format.as_deref()
        && !f.is_empty()
        && !f.eq_ignore_ascii_case("csv")
        && !f.eq_ignore_ascii_case("unknown")
    {
        return Err(ApiError(NodeError::Invalid(format!(
            "file_format: {f:?} is not supported yet (csv)"
        ))));
    }
    let ds_id = req
        .datasource_id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_DATASOURCE.to_owned());
    let ds =
        state.store.datasource(&ds_id).await?.ok_or_else(|| {
            NodeError::Invalid(format!("datasource_id: no data source {ds_id:?}"))
        })?;
    let file = catalog::confined_existing(std::path::Path::new(&ds.path), &req.relative_uri)?;
    let mut seen = std::collections::HashSet::new();
    for (i, c) in req.columns.iter().enumerate() {
        if c.name.is_empty() {
            return Err(ApiError(NodeError::Invalid(format!(
                "columns[{i}].name: must not be empty"
            ))));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(ApiError(NodeError::Invalid(format!(
                "columns[{i}].name: {:?} is declared twice",
                c.name
            ))));
        }
    }
    if req.kind == "table" {
        if req.columns.is_empty() {
            return Err(ApiError(NodeError::Invalid(
                "columns: a table needs its columns".into(),
            )));
        }
        let names: Vec<String> = req.columns.iter().map(|c| c.name.clone()).collect();
        catalog::check_header(&file, &names)?;
    }
    Ok(DomainDataRow {
        domaindata_id: id,
        domain_id: state.domain_id().to_owned(),
        name: req.name,
        r#type: req.kind,
        relative_uri: req.relative_uri,
        datasource_id: ds_id,
        attributes: serde_json::to_string(&req.attributes).unwrap_or_else(|_| "{}".into()),
        columns: serde_json::to_string(&req.columns).unwrap_or_else(|_| "[]".into()),
        vendor: req.vendor,
        author: req.author,
        created_at: 0,
        updated_at: 0,
    })
}

async fn dd_create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainDataReq>,
) -> ApiResult {
    let id = match req.domaindata_id.clone().filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => generated_id("domaindata")?,
    };
    let row = domaindata_row(&state, req, id.clone()).await?;
    state.store.insert_domaindata(&row).await?;
    ok(json!({ "domaindata_id": id }))
}

async fn dd_update(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainDataReq>,
) -> ApiResult {
    let id = required("domaindata_id", req.domaindata_id.clone())?;
    let row = domaindata_row(&state, req, id.clone()).await?;
    state.store.update_domaindata(&row).await?;
    ok(json!({ "domaindata_id": id }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDataIdData {
    domain_id: Option<String>,
    domaindata_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDataIdReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: Option<String>,
    domaindata_id: Option<String>,
    /// Kuscia's wrapped form `{"data": {"domain_id", "domaindata_id"}}`.
    #[serde(default)]
    data: Option<DomainDataIdData>,
}

impl DomainDataIdReq {
    fn resolve(self) -> Result<(Option<String>, String), ApiError> {
        let data = self.data.unwrap_or_default();
        let id = required("domaindata_id", self.domaindata_id.or(data.domaindata_id))?;
        Ok((self.domain_id.or(data.domain_id), id))
    }
}

fn domaindata_json(r: &DomainDataRow) -> Value {
    json!({
        "domaindata_id": r.domaindata_id,
        "name": r.name,
        "type": r.r#type,
        "relative_uri": r.relative_uri,
        "domain_id": r.domain_id,
        "datasource_id": r.datasource_id,
        "attributes": serde_json::from_str::<Value>(&r.attributes).unwrap_or(json!({})),
        "columns": serde_json::from_str::<Value>(&r.columns).unwrap_or(json!([])),
        "vendor": r.vendor,
        "author": r.author,
        "status": "Available",
    })
}

async fn dd_query(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainDataIdReq>,
) -> ApiResult {
    let (domain, id) = req.resolve()?;
    check_own_domain(&state, &domain)?;
    let r = state
        .store
        .domaindata(&id)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("domaindata {id}")))?;
    ok(domaindata_json(&r))
}

async fn dd_delete(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainDataIdReq>,
) -> ApiResult {
    let (domain, id) = req.resolve()?;
    check_own_domain(&state, &domain)?;
    state.store.delete_domaindata(&id).await?;
    ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDataListData {
    domain_id: Option<String>,
    datasource_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDataListReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domain_id: Option<String>,
    datasource_id: Option<String>,
    #[serde(default)]
    data: Option<DomainDataListData>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: String,
}

async fn dd_list(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<DomainDataListReq>,
) -> ApiResult {
    let data = req.data.unwrap_or_default();
    check_own_domain(&state, &req.domain_id.or(data.domain_id))?;
    let ds = req.datasource_id.or(data.datasource_id).unwrap_or_default();
    let page = state
        .store
        .list_domaindata(&ds, &req.page_token, req.page_size)
        .await?;
    ok(json!({
        "domaindata_list": page.items.iter().map(domaindata_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    domaindata_id: String,
    /// File name inside the default data source (default: `<domaindata_id>.csv`).
    name: Option<String>,
}

/// `POST /api/v1/domaindata/upload?domaindata_id=ID&name=FILE` with the CSV as the body:
/// streams it into the default data source (temp file + rename) and registers it as a table
/// whose columns are the file's header (type `str`).
async fn dd_upload(
    State(state): State<SharedState>,
    Query(q): Query<UploadQuery>,
    body: axum::body::Body,
) -> ApiResult {
    check_id("domaindata_id", &q.domaindata_id)?;
    if state.store.domaindata(&q.domaindata_id).await?.is_some() {
        return Err(ApiError(NodeError::Conflict(format!(
            "domaindata_id: {} already exists",
            q.domaindata_id
        ))));
    }
    let name = q.name.unwrap_or_else(|| format!("{}.csv", q.domaindata_id));
    let rel = catalog::check_relative(&name)
        .map_err(|e| NodeError::Invalid(e.to_string().replace("relative_uri", "name")))?;
    let ds = state
        .store
        .datasource(DEFAULT_DATASOURCE)
        .await?
        .ok_or_else(|| NodeError::NotFound(format!("datasource {DEFAULT_DATASOURCE}")))?;
    let root = std::path::PathBuf::from(&ds.path);
    let target = root.join(&rel);
    if target.exists() {
        return Err(ApiError(NodeError::Conflict(format!(
            "name: {name} already exists in {DEFAULT_DATASOURCE}"
        ))));
    }
    let dir = target.parent().unwrap_or(&root).to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| NodeError::io(&dir, e))?;
    let tmp = dir.join(format!(".upload-{}", hex::encode(random_bytes(8)?)));
    let write = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            f.write_all(&chunk).await?;
        }
        f.sync_all().await?;
        Ok::<_, std::io::Error>(())
    };
    if let Err(e) = write.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ApiError(NodeError::io(&target, e)));
    }
    let header = match catalog::csv_header(&tmp) {
        Ok(h) if !h.is_empty() && h.iter().all(|c| !c.is_empty()) => h,
        _ => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ApiError(NodeError::Invalid(
                "body: not a CSV file with a header".into(),
            )));
        }
    };
    tokio::fs::rename(&tmp, &target)
        .await
        .map_err(|e| NodeError::io(&target, e))?;
    let columns: Vec<Column> = header
        .into_iter()
        .map(|name| Column {
            name,
            kind: "str".into(),
            comment: String::new(),
            not_nullable: false,
        })
        .collect();
    let row = DomainDataRow {
        domaindata_id: q.domaindata_id.clone(),
        domain_id: state.domain_id().to_owned(),
        name: name.clone(),
        r#type: "table".into(),
        relative_uri: rel.display().to_string(),
        datasource_id: DEFAULT_DATASOURCE.into(),
        attributes: "{}".into(),
        columns: serde_json::to_string(&columns).unwrap_or_else(|_| "[]".into()),
        vendor: "venn-upload".into(),
        author: state.domain_id().to_owned(),
        created_at: 0,
        updated_at: 0,
    };
    if let Err(e) = state.store.insert_domaindata(&row).await {
        let _ = tokio::fs::remove_file(&target).await;
        return Err(ApiError(e));
    }
    tracing::info!(domaindata = %q.domaindata_id, file = %name, "uploaded");
    ok(
        json!({ "domaindata_id": q.domaindata_id, "relative_uri": row.relative_uri, "columns": columns }),
    )
}

// === DomainDataGrant ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantLimit {
    #[serde(default)]
    expiration_time: i64,
    #[serde(default)]
    use_count: i64,
    #[serde(default)]
    flow_id: String,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    initiator: String,
    #[serde(default)]
    input_config: String,
    #[serde(default)]
    grant_mode: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    domaindatagrant_id: Option<String>,
    domaindata_id: String,
    grant_domain: String,
    #[serde(default)]
    limit: Option<GrantLimit>,
    #[serde(default)]
    description: BTreeMap<String, String>,
    domain_id: Option<String>,
    /// Reserved in Kuscia; venn signs grants itself, so a given value is refused.
    #[serde(default)]
    signature: String,
}

async fn grant_payload(
    state: &NodeState,
    req: GrantReq,
    id: String,
) -> Result<GrantPayload, ApiError> {
    check_own_domain(state, &req.domain_id)?;
    check_id("domaindatagrant_id", &id)?;
    if !req.signature.is_empty() {
        return Err(ApiError(NodeError::Invalid(
            "signature: leave empty; the node signs grants with its own key".into(),
        )));
    }
    if state.store.domaindata(&req.domaindata_id).await?.is_none() {
        return Err(ApiError(NodeError::Invalid(format!(
            "domaindata_id: no domaindata {:?} on this node",
            req.domaindata_id
        ))));
    }
    if req.grant_domain == state.domain_id() {
        return Err(ApiError(NodeError::Invalid(
            "grant_domain: cannot grant to this node's own domain".into(),
        )));
    }
    match state.store.domain(&req.grant_domain).await? {
        Some(d) if d.role == "partner" => {}
        _ => {
            return Err(ApiError(NodeError::Invalid(format!(
                "grant_domain: {:?} is not a partner of this node (onboard it with `venn peer invite`)",
                req.grant_domain
            ))));
        }
    }
    let limit = req.limit.unwrap_or_default();
    if limit.expiration_time < 0
        || (limit.expiration_time > 0 && limit.expiration_time <= now_unix())
    {
        return Err(ApiError(NodeError::Invalid(
            "limit.expiration_time: must be in the future (Unix seconds) or 0 for none".into(),
        )));
    }
    if limit.use_count < 0 {
        return Err(ApiError(NodeError::Invalid(
            "limit.use_count: must be >= 0 (0 = unlimited)".into(),
        )));
    }
    Ok(GrantPayload {
        domaindatagrant_id: id,
        domain_id: state.domain_id().to_owned(),
        domaindata_id: req.domaindata_id,
        grant_domain: req.grant_domain,
        description: req.description,
        expiration_time: limit.expiration_time,
        use_count: limit.use_count,
        limit_extra: json!({
            "flow_id": limit.flow_id,
            "components": limit.components,
            "initiator": limit.initiator,
            "input_config": limit.input_config,
            "grant_mode": limit.grant_mode,
        }),
    })
}

async fn grant_create(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<GrantReq>,
) -> ApiResult {
    let id = match req.domaindatagrant_id.clone().filter(|s| !s.is_empty()) {
        Some(id) => id,
        None => generated_id("domaindatagrant")?,
    };
    if state.store.grant(&id).await?.is_some() {
        return Err(ApiError(NodeError::Conflict(format!(
            "domaindatagrant_id: {id} already exists"
        ))));
    }
    let payload = grant_payload(&state, req, id.clone()).await?;
    let row = grants::save_and_deliver(&state, payload).await?;
    ok(json!({ "domaindatagrant_id": id, "delivered": row.delivered == 1 }))
}

async fn grant_update(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<GrantReq>,
) -> ApiResult {
    let id = required("domaindatagrant_id", req.domaindatagrant_id.clone())?;
    match state.store.grant(&id).await? {
        Some(g) if g.domain_id == state.domain_id() => {}
        Some(_) => {
            return Err(ApiError(NodeError::Invalid(
                "domaindatagrant_id: a grant received from a partner can only be changed by its grantor".into(),
            )));
        }
        None => {
            return Err(ApiError(NodeError::NotFound(format!(
                "domaindatagrant {id}"
            ))));
        }
    }
    let payload = grant_payload(&state, req, id.clone()).await?;
    let row = grants::save_and_deliver(&state, payload).await?;
    ok(json!({ "domaindatagrant_id": id, "delivered": row.delivered == 1 }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantIdReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    #[allow(dead_code)]
    domain_id: Option<String>,
    domaindatagrant_id: String,
}

fn grant_json(g: &GrantRow) -> Value {
    let mut limit = serde_json::from_str::<Value>(&g.limit_extra).unwrap_or(json!({}));
    if let Some(m) = limit.as_object_mut() {
        m.insert("expiration_time".into(), json!(g.expiration_time));
        m.insert("use_count".into(), json!(g.use_count));
    }
    let expired = g.expiration_time > 0 && g.expiration_time <= now_unix();
    let used_up = g.use_count > 0 && g.used_count >= g.use_count;
    json!({
        "domaindatagrant_id": g.domaindatagrant_id,
        "domain_id": g.domain_id,
        "domaindata_id": g.domaindata_id,
        "grant_domain": g.grant_domain,
        "description": serde_json::from_str::<Value>(&g.description).unwrap_or(json!({})),
        "limit": limit,
        "signature": g.signature,
        "status": {
            "phase": if expired { "Expired" } else if used_up { "UsedUp" } else { "Ready" },
            "delivered": g.delivered == 1,
            "used_count": g.used_count,
        },
    })
}

async fn grant_query(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<GrantIdReq>,
) -> ApiResult {
    let g = state
        .store
        .grant(&req.domaindatagrant_id)
        .await?
        .ok_or_else(|| {
            NodeError::NotFound(format!("domaindatagrant {}", req.domaindatagrant_id))
        })?;
    ok(grant_json(&g))
}

async fn grant_delete(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<GrantIdReq>,
) -> ApiResult {
    let g = state
        .store
        .grant(&req.domaindatagrant_id)
        .await?
        .ok_or_else(|| {
            NodeError::NotFound(format!("domaindatagrant {}", req.domaindatagrant_id))
        })?;
    if g.domain_id != state.domain_id() {
        return Err(ApiError(NodeError::Invalid(
            "domaindatagrant_id: a grant received from a partner can only be deleted by its grantor".into(),
        )));
    }
    state.store.delete_grant(&g.domaindatagrant_id).await?;
    grants::deliver_revocation(&state, &g).await;
    ok(json!({}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantListReq {
    #[serde(default)]
    #[allow(dead_code)]
    header: Option<RequestHeader>,
    /// Grantor filter.
    #[serde(default)]
    domain_id: String,
    /// Grantee filter (`"grant_domain": "bob"` at bob lists what was granted to bob).
    #[serde(default)]
    grant_domain: String,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: String,
}

async fn grant_list(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<GrantListReq>,
) -> ApiResult {
    let page = state
        .store
        .list_grants(
            &req.domain_id,
            &req.grant_domain,
            &req.page_token,
            req.page_size,
        )
        .await?;
    ok(json!({
        "domaindatagrant_list": page.items.iter().map(grant_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    }))
}

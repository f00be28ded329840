//! The local API client used by the `venn` commands (`venn peer invite`, `venn route list`,
//! `venn data upload`, ...).
//!
//! Commands talk to the running node through its API with the token from the data dir, rather
//! than opening the database themselves: the node stays the only writer, every change goes
//! through the same validation as an API call, and a remote operator could do the same with
//! curl. A node that is not running is reported as such, with the address tried.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::Request;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::Config;
use crate::error::{NodeError, Result};
use crate::trust::read_token;

/// The address to dial for this node's API: `api.listen`, with an unspecified IP replaced by
/// loopback.
fn api_addr(config: &Config) -> Result<SocketAddr> {
    let mut addr: SocketAddr = config
        .api
        .listen
        .parse()
        .map_err(|e| NodeError::Config(vec![format!("api.listen: {e}")]))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

/// Asks the running node's `GET /healthZ` (no token) and succeeds only on HTTP 200 with
/// `data.ready == true`, within `timeout`.
///
/// This is `venn health`: the container image's `HEALTHCHECK` and the Kubernetes liveness and
/// readiness probes run it inside the container (an `exec` probe), so the API can stay on
/// loopback instead of being opened to the pod network just for the kubelet.
pub async fn check_health(config: &Config, timeout: Duration) -> Result<()> {
    let addr = api_addr(config)?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| NodeError::Net(format!("cannot reach the node's API at {addr} ({e})")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| NodeError::Net(format!("API: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get("/healthZ")
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| NodeError::Net(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| NodeError::Net(format!("API: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .map_err(|e| NodeError::Net(format!("API answer: {e}")))?
            .to_bytes();
        let ready = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.pointer("/data/ready").and_then(Value::as_bool))
            == Some(true);
        if status.is_success() && ready {
            Ok(())
        } else {
            Err(NodeError::Net(format!(
                "{addr}/healthZ answered HTTP {status} without ready: true"
            )))
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| NodeError::Net(format!("{addr}/healthZ: no answer within {timeout:?}")))?
}

/// A client for this node's API.
pub struct LocalClient {
    addr: SocketAddr,
    token: String,
}

impl LocalClient {
    /// A client for the node described by `config` (reads the token file).
    pub fn new(config: &Config) -> Result<Self> {
        let addr = api_addr(config)?;
        let token = read_token(&config.token_path()).map_err(|e| {
            NodeError::Invalid(format!(
                "cannot read the API token ({e}); has `venn start` run with this configuration?"
            ))
        })?;
        Ok(Self { addr, token })
    }

    async fn send<B>(&self, req: Request<B>) -> Result<Value>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| {
                NodeError::Net(format!(
                    "cannot reach the node's API at {} ({e}); is `venn start` running?",
                    self.addr
                ))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| NodeError::Net(format!("API: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| NodeError::Net(format!("API: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| NodeError::Net(format!("API answer: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| NodeError::Net(format!("API answered HTTP {status} without JSON")))?;
        let code = v
            .pointer("/status/code")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if code != 0 {
            let msg = v
                .pointer("/status/message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_owned();
            return Err(match status.as_u16() {
                400 => NodeError::Invalid(msg),
                401 => NodeError::Unauthorized,
                404 => NodeError::NotFound(msg.trim_end_matches(" not found").to_owned()),
                409 => NodeError::Conflict(msg),
                502 => NodeError::Peer(msg),
                _ => NodeError::Net(format!("API: HTTP {status}: {msg}")),
            });
        }
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    fn request(&self, path_and_query: &str, content_type: &str) -> hyper::http::request::Builder {
        Request::post(path_and_query)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
    }

    /// POSTs a JSON body and returns the envelope's `data`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body).map_err(|e| NodeError::Invalid(e.to_string()))?;
        let req = self
            .request(path, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| NodeError::Net(e.to_string()))?;
        self.send(req).await
    }

    /// Streams a file to `/api/v1/domaindata/upload`.
    pub async fn upload(&self, file: &Path, domaindata_id: &str, name: &str) -> Result<Value> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| NodeError::io(file, e))?;
        let stream = tokio_util::io::ReaderStream::new(f).map_ok(Frame::data);
        let query = format!(
            "/api/v1/domaindata/upload?domaindata_id={}&name={}",
            url::form_urlencoded::byte_serialize(domaindata_id.as_bytes()).collect::<String>(),
            url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        );
        let req = self
            .request(&query, "text/csv")
            .body(StreamBody::new(stream))
            .map_err(|e| NodeError::Net(e.to_string()))?;
        self.send(req).await
    }
}

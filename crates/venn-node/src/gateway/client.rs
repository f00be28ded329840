//! Outbound calls from this node's gateway to a partner's gateway.
//!
//! Every call walks the same steps — DNS, TCP, TLS, HTTP — with a time limit on each, and a
//! failure is reported as the [`Step`] that failed. That is what makes route status explainable
//! (`venn route list` shows `DNS`, `TCP`, `TLS`, `NotAuthorized`, ...), instead of Kuscia's
//! generic "DestinationUnreachable".
//!
//! Control calls are small JSON POSTs over HTTP/1.1 on a fresh mutual-TLS connection: they are
//! rare (a heartbeat every 15 s, onboarding, grants), so connection reuse would buy nothing and
//! a fresh connection re-checks DNS and the peer's certificate each time. Task links use one
//! HTTP/1.1 Upgrade per link on its own connection (see [`super::link`] for why). A route with a
//! transit domain runs the same TLS session inside a tunnel through that domain's gateway
//! ([`super::transit`]); callers do not see the difference.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Endpoint, ProxyAddr};
use crate::state::NodeState;

/// Largest response body accepted from a partner.
const MAX_RESPONSE: usize = 4 << 20;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The step of a partner call that failed, with details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Step {
    /// The host name did not resolve.
    #[error("DNS: {0}")]
    Dns(String),
    /// No TCP connection.
    #[error("TCP: {0}")]
    Tcp(String),
    /// The TLS handshake failed (wrong CA, wrong domain in the certificate, not TLS).
    #[error("TLS: {0}")]
    Tls(String),
    /// The partner answered 401: it does not (or no longer) trust this node.
    #[error(
        "NotAuthorized: the partner refused this node's certificate (is this node added there?)"
    )]
    NotAuthorized,
    /// HTTP-level failure or an unexpected answer.
    #[error("PeerError: {0}")]
    Peer(String),
    /// The configured HTTP proxy failed or refused the CONNECT.
    #[error("Proxy: {0}")]
    Proxy(String),
    /// The transit domain of the route could not be reached or refused to relay.
    #[error("Transit: {0}")]
    Transit(String),
}

impl Step {
    /// The details without the step name.
    pub fn detail(&self) -> String {
        match self {
            Step::Dns(m)
            | Step::Tcp(m)
            | Step::Tls(m)
            | Step::Peer(m)
            | Step::Proxy(m)
            | Step::Transit(m) => m.clone(),
            Step::NotAuthorized => {
                "the partner refused this node's certificate (is this node added there?)".into()
            }
        }
    }

    /// The short reason shown in route status.
    pub fn reason(&self) -> &'static str {
        match self {
            Step::Dns(_) => "DNS",
            Step::Tcp(_) => "TCP",
            Step::Tls(_) => "TLS",
            Step::NotAuthorized => "NotAuthorized",
            Step::Peer(_) => "PeerError",
            Step::Proxy(_) => "Proxy",
            Step::Transit(_) => "Transit",
        }
    }
}

/// Opens a TCP connection to `endpoint`, directly or through an HTTP CONNECT `proxy`.
pub async fn connect(endpoint: &Endpoint, proxy: Option<&ProxyAddr>) -> Result<TcpStream, Step> {
    let Some(proxy) = proxy else {
        return dial(&endpoint.host, endpoint.port, Step::Dns, Step::Tcp).await;
    };
    let mut tcp = dial(&proxy.host, proxy.port, Step::Proxy, Step::Proxy).await?;
    let target = if endpoint.host.contains(':') {
        format!("[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let head = timeout(STEP_TIMEOUT, async {
        tcp.write_all(req.as_bytes()).await?;
        // nothing after the head may be consumed: it belongs to the TLS stream
        read_head(&mut tcp, 8192).await
    })
    .await
    .map_err(|_| Step::Proxy("CONNECT timed out".into()))?
    .map_err(|e| Step::Proxy(format!("CONNECT: {e}")))?;
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let first = line.lines().next().unwrap_or("no answer");
        return Err(Step::Proxy(format!(
            "{}:{} refused CONNECT {target}: {first}",
            proxy.host, proxy.port
        )));
    }
    Ok(tcp)
}

async fn dial(
    host: &str,
    port: u16,
    dns: fn(String) -> Step,
    tcp: fn(String) -> Step,
) -> Result<TcpStream, Step> {
    let addrs: Vec<_> = timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| dns(format!("resolving {host} timed out")))?
        .map_err(|e| dns(format!("{host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(dns(format!("{host} has no address")));
    }
    let stream = timeout(STEP_TIMEOUT, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| tcp(format!("connecting to {host}:{port} timed out")))?
        .map_err(|e| tcp(format!("{host}:{port}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// POSTs `body` as JSON to `path` on the gateway at `endpoint` (through `proxy` if given),
/// verifying the server as `server_name` with `tls`; returns the HTTP status and the JSON answer.
/// Used where no route exists yet (joining, registering); partner calls go through [`call`].
#[allow(clippy::too_many_arguments)] // one call shape, each argument a different concern
pub async fn post_json(
    tls: Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    proxy: Option<&ProxyAddr>,
    server_name: &str,
    self_domain: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), Step> {
    let tcp = connect(endpoint, proxy).await?;
    let stream = tls_connect(tls, server_name, Box::new(tcp)).await?;
    post_json_on(stream, server_name, self_domain, path, body).await
}

/// Calls `path` on `partner`'s gateway over the route to it: directly, or through the route's
/// transit domain with end-to-end mutual TLS ([`super::transit::open`]).
pub async fn call(
    state: &NodeState,
    partner: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), Step> {
    let stream = super::transit::open(state, partner).await?;
    post_json_on(stream, partner, state.domain_id(), path, body).await
}

/// Any byte stream a gateway connection can run over: TCP, or a tunnel inside another TLS
/// connection (transit).
pub type Io = Box<dyn RawStream>;

/// What [`Io`] boxes: a full-duplex async byte stream.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawStream for T {}

/// A client TLS session to a gateway.
pub type GatewayStream = tokio_rustls::client::TlsStream<Io>;

/// Runs the client TLS handshake over `io`, verifying the server as `server_name`.
pub async fn tls_connect(
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    io: Io,
) -> Result<GatewayStream, Step> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| Step::Tls(format!("bad server name {server_name:?}: {e}")))?;
    timeout(
        STEP_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(name, io),
    )
    .await
    .map_err(|_| Step::Tls("handshake timed out".into()))?
    .map_err(|e| Step::Tls(e.to_string()))
}

/// POSTs `body` as JSON to `path` over an established gateway session.
async fn post_json_on(
    stream: GatewayStream,
    server_name: &str,
    self_domain: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), Step> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Step::Peer(format!("HTTP: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = serde_json::to_vec(body).map_err(|e| Step::Peer(e.to_string()))?;
    let req = Request::post(path)
        .header(hyper::header::HOST, server_name)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("venn-source", self_domain)
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| Step::Peer(e.to_string()))?;
    let resp = timeout(STEP_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| Step::Peer("no answer in time".into()))?
        .map_err(|e| Step::Peer(format!("HTTP: {e}")))?;
    let status = resp.status().as_u16();
    let body = timeout(
        STEP_TIMEOUT,
        Limited::new(resp.into_body(), MAX_RESPONSE).collect(),
    )
    .await
    .map_err(|_| Step::Peer("answer body timed out".into()))?
    .map_err(|e| Step::Peer(format!("answer body: {e}")))?
    .to_bytes();
    if status == 401 {
        return Err(Step::NotAuthorized);
    }
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| Step::Peer(format!("HTTP {status}: answer is not JSON")))?
    };
    Ok((status, value))
}

/// Reads an HTTP/1.1 answer head (up to and with the blank line, at most `max` bytes) byte
/// by byte, so that nothing after it is consumed: what follows belongs to the tunnelled or
/// upgraded protocol. Ends early at end of stream.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < max {
        if stream.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// Sends an HTTP/1.1 upgrade request `head` on `stream` and reads the answer head byte by byte
/// (whatever follows belongs to the upgraded protocol), waiting up to `wait`. `Ok` on
/// `101 Switching Protocols`; otherwise the status and the answer's `reason` (or status line).
pub async fn request_upgrade<S>(
    stream: &mut S,
    head: &str,
    wait: Duration,
) -> Result<(), (String, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| (String::new(), e.to_string());
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let answer = timeout(wait, read_head(stream, 16 << 10))
        .await
        .map_err(|_| (String::new(), "no answer in time".to_owned()))?
        .map_err(io)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).unwrap_or("").to_owned();
    if status == "101" {
        return Ok(());
    }
    // A short body for the reason.
    let mut body = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(2), stream.read(&mut body))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let reason = serde_json::from_slice::<Value>(&body[..n])
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str().map(str::to_owned)))
        .unwrap_or_else(|| text.lines().next().unwrap_or("no answer").to_owned());
    Err((status, reason))
}

//! Direct links: TCP, TLS 1.3, token authentication, frames.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::auth::{self, EXPORTER_LABEL, Role};
use crate::tls;

/// Largest frame a link carries.
pub const MAX_FRAME: usize = 64 << 20;
/// Frames queued for sending before `send` blocks.
pub const QUEUE_DEPTH: usize = 32;

const MAGIC: &[u8; 8] = b"VENNLNK1";

/// Why a link could not be made or broke.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A socket operation failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done ("listening on", "connecting to", ...).
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Nothing happened in time.
    #[error("{0}")]
    Timeout(String),
    /// The token proof failed: wrong token, not a venn peer, or someone in between.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer closed the link.
    #[error("the peer closed the connection")]
    Closed,
    /// A frame over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A broken stream after the link was up.
    #[error("connection lost: {0}")]
    Broken(String),
}

/// How to make a link.
#[derive(Clone)]
pub struct LinkOptions {
    /// The shared secret both parties hold.
    pub token: Vec<u8>,
    /// Plain TCP instead of TLS (loopback tests only).
    pub insecure: bool,
    /// How long `listen` waits for an authenticated peer, and `connect`
    /// keeps retrying a refused connection.
    pub wait: Duration,
    /// Limit for one connection's TLS handshake and token proof.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("token", &"<redacted>")
            .field("insecure", &self.insecure)
            .field("wait", &self.wait)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl LinkOptions {
    /// Options with the default timeouts (wait 10 minutes, handshake 20 s).
    pub fn new(token: impl Into<Vec<u8>>) -> Self {
        LinkOptions {
            token: token.into(),
            insecure: false,
            wait: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(20),
        }
    }
}

type BoxStream = Box<dyn Stream>;
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An authenticated, full-duplex frame link to one peer. See the crate docs.
pub struct Link {
    rt: Option<tokio::runtime::Runtime>,
    out: Option<mpsc::Sender<Vec<u8>>>,
    inp: Mutex<mpsc::Receiver<Result<Vec<u8>, LinkError>>>,
    writer: Option<tokio::task::JoinHandle<io::Result<()>>>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    peer: SocketAddr,
}

fn runtime() -> Result<tokio::runtime::Runtime, LinkError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("venn-link")
        .enable_all()
        .build()
        .map_err(|e| LinkError::Io {
            what: "starting the I/O runtime for",
            addr: "the link".into(),
            source: e,
        })
}

impl Link {
    /// Listens on `addr` until a peer proves the token; other connections are
    /// refused (and logged) while waiting.
    pub fn listen(addr: &str, opts: &LinkOptions) -> Result<Link, LinkError> {
        let rt = runtime()?;
        let (stream, peer) = rt.block_on(async {
            let listener = TcpListener::bind(addr).await.map_err(|e| LinkError::Io {
                what: "listening on",
                addr: addr.into(),
                source: e,
            })?;
            tracing::info!(%addr, "waiting for the peer");
            let deadline = tokio::time::sleep(opts.wait);
            tokio::pin!(deadline);
            let mut pending = JoinSet::new();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let (tcp, from) = acc.map_err(|e| LinkError::Io { what: "accepting on", addr: addr.into(), source: e })?;
                        let o = opts.clone();
                        pending.spawn(async move {
                            let r = tokio::time::timeout(o.handshake_timeout, accept_one(tcp, &o)).await;
                            (from, r.unwrap_or_else(|_| Err(LinkError::Timeout("the handshake took too long".into()))))
                        });
                    }
                    Some(done) = pending.join_next() => {
                        if let Ok((from, res)) = done {
                            match res {
                                Ok(s) => return Ok((s, from)),
                                Err(e) => tracing::warn!(%from, "refused a connection: {e}"),
                            }
                        }
                    }
                    _ = &mut deadline => {
                        return Err(LinkError::Timeout(format!(
                            "no peer proved the token on {addr} within {} s", opts.wait.as_secs())));
                    }
                }
            }
        })?;
        Ok(Link::start(rt, stream, peer))
    }

    /// Connects to `addr`, retrying while the peer is not listening yet, and
    /// proves the token.
    pub fn connect(addr: &str, opts: &LinkOptions) -> Result<Link, LinkError> {
        let rt = runtime()?;
        let (stream, peer) = rt.block_on(async {
            let start = tokio::time::Instant::now();
            let tcp = loop {
                match TcpStream::connect(addr).await {
                    Ok(t) => break t,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                        ) && start.elapsed() < opts.wait =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(LinkError::Io {
                            what: "connecting to",
                            addr: addr.into(),
                            source: e,
                        });
                    }
                }
            };
            let peer = tcp.peer_addr().map_err(|e| LinkError::Io {
                what: "connecting to",
                addr: addr.into(),
                source: e,
            })?;
            let s = tokio::time::timeout(opts.handshake_timeout, connect_one(tcp, opts))
                .await
                .unwrap_or_else(|_| {
                    Err(LinkError::Timeout(format!(
                        "the handshake with {addr} took too long"
                    )))
                })?;
            Ok::<_, LinkError>((s, peer))
        })?;
        Ok(Link::start(rt, stream, peer))
    }

    /// Connects through a relay (a node's gateway): dials `addr`, sends `hello` (4-byte
    /// little-endian length, then the bytes), and waits up to `opts.wait` for the relay's answer
    /// line, `OK` once it has paired this connection with the peer's, or a reason. Then the
    /// usual handshake runs end to end over the relayed bytes, as the listener when `listener`
    /// is true (exactly one of the two parties must be).
    ///
    /// What the hello means is the relay's business; venn-link only frames it.
    pub fn via_relay(
        addr: &str,
        hello: &[u8],
        listener: bool,
        opts: &LinkOptions,
    ) -> Result<Link, LinkError> {
        let rt = runtime()?;
        let (stream, peer) = rt.block_on(async {
            let io = |what: &'static str| {
                let addr = addr.to_owned();
                move |e| LinkError::Io {
                    what,
                    addr,
                    source: e,
                }
            };
            let mut tcp = TcpStream::connect(addr)
                .await
                .map_err(io("connecting to the relay"))?;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().map_err(io("connecting to the relay"))?;
            let mut msg = (hello.len() as u32).to_le_bytes().to_vec();
            msg.extend_from_slice(hello);
            write_or(&mut tcp, &msg).await?;
            // The answer line, byte by byte: what follows belongs to the handshake.
            let answer = tokio::time::timeout(opts.wait, async {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while line.len() < 4096 {
                    read_exact_or(&mut tcp, &mut b, "the relay's answer").await?;
                    if b[0] == b'\n' {
                        break;
                    }
                    line.push(b[0]);
                }
                Ok::<_, LinkError>(String::from_utf8_lossy(&line).into_owned())
            })
            .await
            .map_err(|_| {
                LinkError::Timeout(format!(
                    "the relay at {addr} did not pair us with the peer within {} s",
                    opts.wait.as_secs()
                ))
            })??;
            if answer != "OK" {
                return Err(LinkError::Auth(format!("the relay refused: {answer}")));
            }
            let s = tokio::time::timeout(opts.handshake_timeout, async {
                if listener {
                    accept_one(tcp, opts).await
                } else {
                    connect_one(tcp, opts).await
                }
            })
            .await
            .unwrap_or_else(|_| {
                Err(LinkError::Timeout(
                    "the handshake through the relay took too long".into(),
                ))
            })?;
            Ok::<_, LinkError>((s, peer))
        })?;
        Ok(Link::start(rt, stream, peer))
    }

    fn start(rt: tokio::runtime::Runtime, stream: BoxStream, peer: SocketAddr) -> Link {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE_DEPTH);
        let (in_tx, in_rx) = mpsc::channel::<Result<Vec<u8>, LinkError>>(QUEUE_DEPTH);
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let s2 = sent.clone();
        let writer = rt.spawn(async move {
            loop {
                // Flush whenever the queue runs dry: TLS keeps written bytes
                // in its own buffer until flushed, and a peer waiting for
                // our last frame would otherwise wait for ever.
                let frame = match out_rx.try_recv() {
                    Ok(f) => f,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        wr.flush().await?;
                        match out_rx.recv().await {
                            Some(f) => f,
                            None => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                };
                wr.write_all(&(frame.len() as u32).to_le_bytes()).await?;
                wr.write_all(&frame).await?;
                s2.fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
            }
            wr.flush().await?;
            wr.shutdown().await
        });
        let r2 = received.clone();
        rt.spawn(async move {
            loop {
                let mut len = [0u8; 4];
                match rd.read_exact(&mut len).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => {
                        let _ = in_tx.send(Err(LinkError::Broken(e.to_string()))).await;
                        break;
                    }
                }
                let n = u32::from_le_bytes(len) as usize;
                if n > MAX_FRAME {
                    let _ = in_tx.send(Err(LinkError::TooLarge(n))).await;
                    break;
                }
                let mut buf = vec![0u8; n];
                if let Err(e) = rd.read_exact(&mut buf).await {
                    let _ = in_tx.send(Err(LinkError::Broken(e.to_string()))).await;
                    break;
                }
                r2.fetch_add(n as u64 + 4, Ordering::Relaxed);
                if in_tx.send(Ok(buf)).await.is_err() {
                    break;
                }
            }
        });
        Link {
            rt: Some(rt),
            out: Some(out_tx),
            inp: Mutex::new(in_rx),
            writer: Some(writer),
            sent,
            received,
            peer,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Queues one frame; blocks while [`QUEUE_DEPTH`] frames are waiting.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), LinkError> {
        if frame.len() > MAX_FRAME {
            return Err(LinkError::TooLarge(frame.len()));
        }
        self.out
            .as_ref()
            .ok_or(LinkError::Closed)?
            .blocking_send(frame)
            .map_err(|_| LinkError::Closed)
    }

    /// The next frame from the peer.
    pub fn recv(&self) -> Result<Vec<u8>, LinkError> {
        let mut rx = self.inp.lock().map_err(|_| LinkError::Closed)?;
        match rx.blocking_recv() {
            Some(r) => r,
            None => Err(LinkError::Closed),
        }
    }

    /// Bytes written to the socket (frame headers included, TLS overhead not).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the socket (frame headers included).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Sends everything queued, closes the sending side, and stops.
    pub fn close(mut self) -> Result<(), LinkError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LinkError> {
        self.out = None;
        let res = match (self.rt.as_ref(), self.writer.take()) {
            (Some(rt), Some(w)) => rt.block_on(async {
                match tokio::time::timeout(Duration::from_secs(30), w).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(e))) => Err(LinkError::Broken(e.to_string())),
                    Ok(Err(e)) => Err(LinkError::Broken(e.to_string())),
                    Err(_) => Err(LinkError::Timeout(
                        "the peer did not take our last frames within 30 s".into(),
                    )),
                }
            }),
            _ => Ok(()),
        };
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        res
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

async fn read_exact_or<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut [u8],
    what: &str,
) -> Result<(), LinkError> {
    s.read_exact(buf).await.map(|_| ()).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LinkError::Auth(format!("the peer closed the connection during {what}"))
        } else {
            LinkError::Broken(format!("{what}: {e}"))
        }
    })
}

async fn write_or<S: AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> Result<(), LinkError> {
    s.write_all(buf)
        .await
        .map_err(|e| LinkError::Broken(e.to_string()))?;
    s.flush()
        .await
        .map_err(|e| LinkError::Broken(e.to_string()))
}

async fn check_magic<S: AsyncRead + Unpin>(s: &mut S, insecure: bool) -> Result<(), LinkError> {
    let mut m = [0u8; 8];
    read_exact_or(s, &mut m, "the greeting").await?;
    if &m != MAGIC {
        return Err(LinkError::Auth(if insecure {
            "the peer is not speaking venn-link in plaintext (does only one side use --insecure?)"
                .into()
        } else {
            "the peer is not a venn-link endpoint".into()
        }));
    }
    Ok(())
}

fn tls_err(e: io::Error, insecure_hint: bool) -> LinkError {
    let hint = if insecure_hint {
        " (does the peer use --insecure?)"
    } else {
        ""
    };
    LinkError::Tls(format!("{e}{hint}"))
}

/// Plaintext greeting (`--insecure`): magic and a fresh nonce each way; the
/// binding is the listener's nonce then the connector's.
async fn plain_greeting(tcp: TcpStream, role: Role) -> Result<(BoxStream, Vec<u8>), LinkError> {
    let mut s: BoxStream = Box::new(tcp);
    let mine: [u8; 32] = rand::random();
    let mut msg = MAGIC.to_vec();
    msg.extend_from_slice(&mine);
    write_or(&mut s, &msg).await?;
    check_magic(&mut s, true).await?;
    let mut theirs = [0u8; 32];
    read_exact_or(&mut s, &mut theirs, "the greeting").await?;
    let binding = match role {
        Role::Listener => [mine, theirs].concat(),
        Role::Connector => [theirs, mine].concat(),
    };
    Ok((s, binding))
}

/// After a TLS handshake: the session's exporter value becomes the binding,
/// then magic both ways.
async fn tls_greeting<S: Stream + 'static>(
    mut t: S,
    binding: Result<Vec<u8>, rustls::Error>,
) -> Result<(BoxStream, Vec<u8>), LinkError> {
    let b = binding.map_err(|e| LinkError::Tls(e.to_string()))?;
    write_or(&mut t, MAGIC).await?;
    check_magic(&mut t, false).await?;
    Ok((Box::new(t), b))
}

/// Listener side of the handshake.
async fn accept_one(tcp: TcpStream, opts: &LinkOptions) -> Result<BoxStream, LinkError> {
    let _ = tcp.set_nodelay(true);
    let (mut s, binding): (BoxStream, Vec<u8>) = if opts.insecure {
        plain_greeting(tcp, Role::Listener).await?
    } else {
        let cfg = tls::server_config().map_err(LinkError::Tls)?;
        let t = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(tcp)
            .await
            .map_err(|e| tls_err(e, true))?;
        let binding = t
            .get_ref()
            .1
            .export_keying_material(vec![0u8; 32], EXPORTER_LABEL, None);
        tls_greeting(t, binding).await?
    };
    write_or(&mut s, &auth::proof(&opts.token, Role::Listener, &binding)).await?;
    let mut p = [0u8; 32];
    read_exact_or(&mut s, &mut p, "the token proof").await?;
    if !auth::verify(&opts.token, Role::Connector, &binding, &p) {
        let _ = write_or(&mut s, &[0]).await;
        return Err(LinkError::Auth(
            "the connecting party did not prove the token".into(),
        ));
    }
    write_or(&mut s, &[1]).await?;
    Ok(s)
}

/// Connector side of the handshake.
async fn connect_one(tcp: TcpStream, opts: &LinkOptions) -> Result<BoxStream, LinkError> {
    let _ = tcp.set_nodelay(true);
    let (mut s, binding): (BoxStream, Vec<u8>) = if opts.insecure {
        plain_greeting(tcp, Role::Connector).await?
    } else {
        let cfg = tls::client_config().map_err(LinkError::Tls)?;
        let name = rustls::pki_types::ServerName::try_from("venn-link").expect("static name");
        let t = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(e, true))?;
        let binding = t
            .get_ref()
            .1
            .export_keying_material(vec![0u8; 32], EXPORTER_LABEL, None);
        tls_greeting(t, binding).await?
    };
    let mut p = [0u8; 32];
    read_exact_or(&mut s, &mut p, "the token proof").await?;
    if !auth::verify(&opts.token, Role::Listener, &binding, &p) {
        return Err(LinkError::Auth(
            "the listener did not prove the token: the tokens differ, or something between us is not the peer".into(),
        ));
    }
    write_or(&mut s, &auth::proof(&opts.token, Role::Connector, &binding)).await?;
    let mut ok = [0u8; 1];
    read_exact_or(&mut s, &mut ok, "the listener's answer").await?;
    if ok[0] != 1 {
        return Err(LinkError::Auth(
            "the listener refused our token proof".into(),
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        insecure: bool,
        tok_a: &str,
        tok_b: &str,
    ) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let mut oa = LinkOptions::new(tok_a);
        oa.insecure = insecure;
        oa.wait = Duration::from_secs(3);
        let mut ob = LinkOptions::new(tok_b);
        ob.insecure = insecure;
        ob.wait = Duration::from_secs(3);
        std::thread::scope(|s| {
            let a = s.spawn(|| Link::listen(&addr, &oa));
            let b = s.spawn(|| Link::connect(&addr, &ob));
            (a.join().unwrap(), b.join().unwrap())
        })
    }

    #[test]
    fn tls_link_carries_frames_both_ways_at_once() {
        let (a, b) = pair(false, "s3cret-token", "s3cret-token");
        let (a, b) = (a.unwrap(), b.unwrap());
        // both send 8 MiB before reading: must not deadlock
        std::thread::scope(|s| {
            for l in [&a, &b] {
                s.spawn(move || {
                    for i in 0..64u8 {
                        l.send(vec![i; 128 << 10]).unwrap();
                    }
                });
            }
            for l in [&a, &b] {
                for i in 0..64u8 {
                    assert_eq!(l.recv().unwrap(), vec![i; 128 << 10]);
                }
            }
        });
        assert!(a.bytes_sent() >= 64 * (128 << 10));
        a.close().unwrap();
        assert!(matches!(b.recv(), Err(LinkError::Closed)));
    }

    /// Request/response with a reply awaited after every burst: the sender's
    /// last frame must reach the peer without a later frame pushing it out.
    #[test]
    fn last_frame_arrives_while_the_sender_waits() {
        let (a, b) = pair(false, "ping-pong-token", "ping-pong-token");
        let (a, b) = (a.unwrap(), b.unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (round, size) in [1usize, 100, 70_000, 1 << 20, (3 << 20) + 17]
                .iter()
                .cycle()
                .take(40)
                .enumerate()
            {
                // a burst the peer does not read at once: the socket fills up
                for _ in 0..8 {
                    a.send(vec![round as u8; *size]).unwrap();
                }
                if *size > 1 << 19 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                for _ in 0..8 {
                    assert_eq!(b.recv().unwrap().len(), *size);
                }
                b.send(vec![7]).unwrap();
                assert_eq!(a.recv().unwrap(), vec![7]);
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a frame stayed buffered: the link hung");
    }

    #[test]
    fn wrong_token_is_refused() {
        let (a, b) = pair(false, "right", "wrong");
        let eb = b.err().expect("connector must fail").to_string();
        assert!(eb.contains("did not prove the token"), "{eb}");
        let ea = a
            .err()
            .expect("listener keeps waiting, then times out")
            .to_string();
        assert!(ea.contains("no peer proved the token"), "{ea}");
    }

    #[test]
    fn insecure_link_still_checks_the_token() {
        let (a, b) = pair(true, "t", "t");
        let (a, b) = (a.unwrap(), b.unwrap());
        b.send(b"hello".to_vec()).unwrap();
        assert_eq!(a.recv().unwrap(), b"hello");
        let (_, b) = pair(true, "t", "u");
        assert!(b.is_err());
    }

    /// A relay like a node's gateway: reads each side's hello, answers OK to both, then
    /// copies bytes both ways.
    fn relay() -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut ends = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut len = [0u8; 4];
                s.read_exact(&mut len).unwrap();
                let mut hello = vec![0u8; u32::from_le_bytes(len) as usize];
                s.read_exact(&mut hello).unwrap();
                assert!(hello.starts_with(b"hello from"));
                ends.push(s);
            }
            for e in &mut ends {
                e.write_all(b"OK\n").unwrap();
            }
            let (a, b) = (ends.remove(0), ends.remove(0));
            let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
            let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            pipe(a, b2);
            pipe(b, a2);
        });
        addr
    }

    #[test]
    fn links_through_a_relay() {
        for insecure in [true, false] {
            let addr = relay();
            let mut o = LinkOptions::new("task-token");
            o.insecure = insecure;
            o.wait = Duration::from_secs(10);
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| Link::via_relay(&addr, b"hello from a", true, &o));
                let b = s.spawn(|| Link::via_relay(&addr, b"hello from b", false, &o));
                (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
            });
            a.send(vec![7; 100_000]).unwrap();
            assert_eq!(b.recv().unwrap(), vec![7; 100_000]);
            b.send(b"back".to_vec()).unwrap();
            assert_eq!(a.recv().unwrap(), b"back");
            a.close().unwrap();
            assert!(matches!(b.recv(), Err(LinkError::Closed)));
        }
    }

    #[test]
    fn a_relay_refusal_is_reported() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            s.write_all(b"ERR unknown task or wrong secret\n").unwrap();
        });
        let o = LinkOptions::new("t");
        let e = Link::via_relay(&addr, b"hello", true, &o).err().unwrap();
        assert!(
            e.to_string().contains("unknown task or wrong secret"),
            "{e}"
        );
    }
}

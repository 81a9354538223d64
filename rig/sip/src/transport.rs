//! UDP and TCP for SIP: one UDP socket, one TCP listener on the same port, and
//! the TCP connections phones opened (reused to reach them, RFC 3261 §18.2.2)
//! or the rig opened. Everything received goes into one channel as raw bytes;
//! parsing is the endpoint's business so malformed input can be recorded.
//!
//! A flood guard sits in front of everything: UDP datagrams and TCP/TLS
//! connection attempts over its budget are dropped before any copy or
//! parse, and at most `max_connections` connections are open at once, so a
//! flood costs a counter, not memory or the dispatcher's time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use phonerig_core::flood::{FloodGuard, FloodLimits, FloodReport};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::message::Transport;

/// Frames larger than this are refused (no SIP message needs more).
pub const MAX_MESSAGE: usize = 65_535;

/// Bytes from the wire.
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub peer: SocketAddr,
    pub transport: Transport,
}

/// Why a TCP byte stream cannot be split into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("no end of headers within {MAX_MESSAGE} bytes")]
    HeadersTooLong,
    #[error("bad Content-Length `{0}`")]
    BadContentLength(String),
    #[error("Content-Length {0} exceeds {MAX_MESSAGE}")]
    BodyTooLong(usize),
}

/// Takes one complete message off the front of a TCP buffer (RFC 3261 §18.3:
/// Content-Length frames the body). Leading CRLF keep-alives are discarded.
pub fn take_frame(buffer: &mut Vec<u8>) -> Result<Option<Vec<u8>>, FramingError> {
    let leading = buffer
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    buffer.drain(..leading);
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buffer.len() > MAX_MESSAGE {
            Err(FramingError::HeadersTooLong)
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buffer[..end]);
    let mut length = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| FramingError::BadContentLength(value.trim().to_owned()))?;
            }
        }
    }
    if length > MAX_MESSAGE {
        return Err(FramingError::BodyTooLong(length));
    }
    let total = end + 4 + length;
    if buffer.len() < total {
        return Ok(None);
    }
    Ok(Some(buffer.drain(..total).collect()))
}

/// What a TCP reader reports besides messages.
#[derive(Debug)]
pub enum StreamTrouble {
    Framing {
        peer: SocketAddr,
        transport: Transport,
        error: FramingError,
    },
    Handshake {
        peer: SocketAddr,
        error: String,
    },
}

/// Counts a TLS handshake under way for as long as it lives.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn start(count: &Arc<AtomicUsize>) -> Handshaking {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(count.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TLS client that has not finished its handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct SipTransport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    /// Taken out at shutdown so the port is released even while handles live on.
    udp: Mutex<Option<Arc<UdpSocket>>>,
    tcp_enabled: bool,
    local: SocketAddr,
    connections: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>,
    received: mpsc::Sender<Received>,
    trouble: mpsc::UnboundedSender<StreamTrouble>,
    shutdown: CancellationToken,
    /// Every reader/writer task, so closing can wait until the sockets are gone.
    tasks: TaskTracker,
    /// Budget of datagrams and connection attempts, and of `sip.malformed`
    /// events; locked briefly, never across an await.
    guard: Mutex<FloodGuard>,
    /// Accepted TCP/TLS connections (open or in their TLS handshake) at most.
    max_connections: usize,
    /// TLS handshakes under way (their connections are not in `connections` yet).
    handshakes: Arc<AtomicUsize>,
}

/// How much the transport takes in before it drops.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub flood: FloodLimits,
    pub max_connections: usize,
}

impl SipTransport {
    /// Binds UDP (and TCP on the same port when `tcp`) and starts the readers.
    pub async fn bind(
        addr: SocketAddr,
        tcp: bool,
        tls: Option<(u16, TlsAcceptor)>,
        bounds: Bounds,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(
        SipTransport,
        Vec<SocketAddr>,
        mpsc::Receiver<Received>,
        mpsc::UnboundedReceiver<StreamTrouble>,
    )> {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("SIP UDP bind {addr}: {e}"))?;
        let udp_addr = udp.local_addr()?;
        let mut addrs = vec![udp_addr];
        let listener = if tcp {
            let listener = TcpListener::bind(udp_addr)
                .await
                .map_err(|e| anyhow::anyhow!("SIP TCP bind {udp_addr}: {e}"))?;
            addrs.push(listener.local_addr()?);
            Some(listener)
        } else {
            None
        };
        let tls_listener = match tls {
            Some((port, acceptor)) => {
                let tls_addr = SocketAddr::new(udp_addr.ip(), port);
                let listener = TcpListener::bind(tls_addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("SIP TLS bind {tls_addr}: {e}"))?;
                addrs.push(listener.local_addr()?);
                Some((listener, acceptor))
            }
            None => None,
        };
        let (received_tx, received_rx) = mpsc::channel(1024);
        let (trouble_tx, trouble_rx) = mpsc::unbounded_channel();
        let transport = SipTransport {
            inner: Arc::new(TransportInner {
                udp: Mutex::new(Some(Arc::new(udp))),
                tcp_enabled: tcp,
                local: udp_addr,
                connections: Mutex::new(HashMap::new()),
                received: received_tx,
                trouble: trouble_tx,
                shutdown,
                tasks: TaskTracker::new(),
                guard: Mutex::new(FloodGuard::new(bounds.flood, Instant::now())),
                max_connections: bounds.max_connections,
                handshakes: Arc::new(AtomicUsize::new(0)),
            }),
        };
        transport.inner.tasks.spawn(transport.clone().udp_loop());
        if let Some(listener) = listener {
            transport
                .inner
                .tasks
                .spawn(transport.clone().accept_loop(listener));
        }
        if let Some((listener, acceptor)) = tls_listener {
            transport
                .inner
                .tasks
                .spawn(transport.clone().accept_tls_loop(listener, acceptor));
        }
        Ok((transport, addrs, received_rx, trouble_rx))
    }

    fn udp(&self) -> Option<Arc<UdpSocket>> {
        self.inner
            .udp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Releases the UDP and TCP ports and ends the TCP connections (called
    /// on shutdown); returns once every socket task has ended.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner
            .udp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    fn guard(&self) -> MutexGuard<'_, FloodGuard> {
        self.inner.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to publish `sip.malformed` for input from `peer` (the first
    /// few per source and interval); the rest are counted for `sip.flood`.
    pub fn show_malformed(&self, peer: SocketAddr) -> bool {
        self.guard().show_malformed(Instant::now(), peer.ip())
    }

    /// What the flood guard dropped or did not show, once its interval is over.
    pub fn take_flood_report(&self) -> Option<FloodReport> {
        self.guard().take_report(Instant::now())
    }

    /// Everything the flood guard counted and has not reported (at stop).
    pub fn finish_flood_report(&self) -> Option<FloodReport> {
        self.guard().finish()
    }

    /// Whether an accepted connection from `peer` may stay: within the
    /// connection budget and below `max_connections` open at once.
    fn admit_connection(&self, peer: SocketAddr) -> bool {
        let open = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            + self.inner.handshakes.load(Ordering::Relaxed);
        let mut guard = self.guard();
        if open >= self.inner.max_connections {
            guard.count_dropped(peer.ip());
            return false;
        }
        guard.admit(Instant::now(), peer.ip())
    }

    async fn udp_loop(self) {
        let Some(udp) = self.udp() else { return };
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                received = udp.recv_from(&mut buf) => {
                    let Ok((len, peer)) = received else { continue };
                    // Over budget: dropped before it is copied, parsed or recorded.
                    if !self.guard().admit(Instant::now(), peer.ip()) {
                        continue;
                    }
                    // CRLF keep-alives (RFC 5626 §3.5.1) are not messages.
                    if buf[..len].iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    let _ = self.inner.received.send(Received { bytes: buf[..len].to_vec(), peer, transport: Transport::Udp }).await;
                }
            }
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                accepted = listener.accept() => {
                    // Refused connections are closed at once (the stream is dropped).
                    if let Ok((stream, peer)) = accepted {
                        if self.admit_connection(peer) {
                            self.adopt(stream, peer, Transport::Tcp);
                        }
                    }
                }
            }
        }
    }

    /// TLS (RFC 3261 §26.2): the handshake runs in its own task so a slow
    /// or broken client cannot hold up the listener.
    async fn accept_tls_loop(self, listener: TcpListener, acceptor: TlsAcceptor) {
        loop {
            let accepted = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else {
                continue;
            };
            if !self.admit_connection(peer) {
                continue;
            }
            let this = self.clone();
            let acceptor = acceptor.clone();
            let handshaking = Handshaking::start(&self.inner.handshakes);
            self.inner.tasks.spawn(async move {
                let _handshaking = handshaking;
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let result = tokio::select! {
                    _ = this.inner.shutdown.cancelled() => return,
                    result = handshake => result,
                };
                match result {
                    Ok(Ok(tls)) => {
                        this.adopt(tls, peer, Transport::Tls);
                    }
                    Ok(Err(error)) => {
                        let _ = this.inner.trouble.send(StreamTrouble::Handshake {
                            peer,
                            error: error.to_string(),
                        });
                    }
                    Err(_) => {
                        let _ = this.inner.trouble.send(StreamTrouble::Handshake {
                            peer,
                            error: "handshake timed out".into(),
                        });
                    }
                }
            });
        }
    }

    /// Starts reader and writer tasks for a connection and remembers it by peer address.
    fn adopt<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        transport: Transport,
    ) -> mpsc::UnboundedSender<Vec<u8>>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, out_tx.clone());
        let shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = out_rx.recv() => match next {
                        Some(bytes) => if writer.write_all(&bytes).await.is_err() { return },
                        None => return,
                    }
                }
            }
        });
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let mut buffer = Vec::new();
            let mut chunk = vec![0u8; 8192];
            'read: loop {
                let read = tokio::select! {
                    _ = this.inner.shutdown.cancelled() => break 'read,
                    read = reader.read(&mut chunk) => read,
                };
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                loop {
                    match take_frame(&mut buffer) {
                        Ok(Some(bytes)) => {
                            let _ = this
                                .inner
                                .received
                                .send(Received {
                                    bytes,
                                    peer,
                                    transport,
                                })
                                .await;
                        }
                        Ok(None) => break,
                        Err(error) => {
                            // The stream cannot be re-synchronised: record and close.
                            let _ = this.inner.trouble.send(StreamTrouble::Framing {
                                peer,
                                transport,
                                error,
                            });
                            break 'read;
                        }
                    }
                }
            }
            this.inner
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
        });
        out_tx
    }

    /// Whether a TCP connection to `peer` is open.
    pub fn has_connection(&self, peer: SocketAddr) -> bool {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .is_some_and(|sender| !sender.is_closed())
    }

    /// Sends one message; over TCP reuses the peer's connection or opens one.
    pub async fn send(
        &self,
        bytes: &[u8],
        dest: SocketAddr,
        transport: Transport,
    ) -> anyhow::Result<()> {
        match transport {
            Transport::Udp => {
                let udp = self
                    .udp()
                    .ok_or_else(|| anyhow::anyhow!("SIP transport closed"))?;
                udp.send_to(bytes, dest).await?;
            }
            Transport::Tcp => {
                if !self.inner.tcp_enabled {
                    anyhow::bail!("TCP is disabled in this rig's SIP config");
                }
                let existing = self
                    .inner
                    .connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&dest)
                    .cloned();
                let sender = match existing {
                    Some(sender) if !sender.is_closed() => sender,
                    _ => {
                        let local_ip = self.inner.local.ip();
                        let socket = if local_ip.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        socket.bind(SocketAddr::new(local_ip, 0))?;
                        let stream = socket
                            .connect(dest)
                            .await
                            .map_err(|e| anyhow::anyhow!("TCP connect {dest}: {e}"))?;
                        self.adopt(stream, dest, Transport::Tcp)
                    }
                };
                sender
                    .send(bytes.to_vec())
                    .map_err(|_| anyhow::anyhow!("TCP connection to {dest} closed"))?;
            }
            // The rig is the TLS server only: phones keep the connection they
            // registered over open (RFC 5626 style), and requests go down it.
            Transport::Tls => {
                let existing = self
                    .inner
                    .connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&dest)
                    .cloned();
                match existing {
                    Some(sender) if !sender.is_closed() => sender
                        .send(bytes.to_vec())
                        .map_err(|_| anyhow::anyhow!("TLS connection to {dest} closed"))?,
                    _ => anyhow::bail!("no open TLS connection from {dest}; the rig does not connect to phones over TLS"),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn frames_split_on_content_length_and_skip_keepalives() {
        let mut buffer = b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabcBYE sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\nNOTIFY".to_vec();
        let first = take_frame(&mut buffer).unwrap().unwrap();
        assert!(first.starts_with(b"OPTIONS") && first.ends_with(b"\r\n\r\nabc"));
        let second = take_frame(&mut buffer).unwrap().unwrap();
        assert!(second.starts_with(b"BYE") && second.ends_with(b"\r\n\r\n"));
        assert_eq!(take_frame(&mut buffer).unwrap(), None);
        assert_eq!(buffer, b"NOTIFY");
    }

    #[test]
    fn incomplete_body_waits_for_more() {
        let mut buffer = b"INVITE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nv=0".to_vec();
        assert_eq!(take_frame(&mut buffer).unwrap(), None);
        buffer.extend_from_slice(b"\r\no=x\r\n");
        assert!(take_frame(&mut buffer).unwrap().is_some());
        assert!(buffer.is_empty());
    }

    #[rstest]
    #[case(b"INVITE sip:a SIP/2.0\r\nContent-Length: ten\r\n\r\n".to_vec(), FramingError::BadContentLength("ten".into()))]
    #[case(b"INVITE sip:a SIP/2.0\r\nContent-Length: 999999\r\n\r\n".to_vec(), FramingError::BodyTooLong(999_999))]
    #[case(vec![b'A'; MAX_MESSAGE + 1], FramingError::HeadersTooLong)]
    fn unframeable_streams(#[case] mut buffer: Vec<u8>, #[case] error: FramingError) {
        assert_eq!(take_frame(&mut buffer), Err(error));
    }
}

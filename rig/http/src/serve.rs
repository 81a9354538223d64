//! Accepting connections: the connection bound, TLS when asked, and hyper's
//! HTTP/1 server for each connection until the rig stops.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::Timeline;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{Handler, Protocol};

/// A client must send its request head within this time (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long open connections get to finish after the rig stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one `http.overloaded` event per this interval; a connection flood
/// must not flood the timeline too.
const OVERLOAD_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// Shared between the listeners of one service.
pub(crate) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    limit: usize,
    overload: Mutex<OverloadNotes>,
}

#[derive(Default)]
struct OverloadNotes {
    last_event: Option<Instant>,
    queued_since: u64,
}

impl ConnectionLimit {
    pub(crate) fn new(limit: usize) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            overload: Mutex::new(OverloadNotes::default()),
        }
    }

    /// A permit for the connection from `peer`. At the limit the connection
    /// waits for one instead of being closed, and the accept loop with it, so
    /// later connections wait in the kernel's listen backlog — what nginx does
    /// when its worker_connections run out. Closing instead loses requests: a
    /// phone whose provisioning fetch fails boots on without that file (Htek
    /// UC9xx admin guide, "If TFTP/HTTP/FTP/HTTPS fails for any reason … the
    /// phone will stop … and simply boot"), and in a boot storm never registers.
    async fn admit(
        &self,
        peer: SocketAddr,
        protocol: Protocol,
        timeline: &Timeline,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.note_overload(peer, protocol, timeline);
        self.permits.clone().acquire_owned().await.ok()
    }

    fn note_overload(&self, peer: SocketAddr, protocol: Protocol, timeline: &Timeline) {
        let mut notes = self.overload.lock().unwrap_or_else(|p| p.into_inner());
        notes.queued_since += 1;
        if notes
            .last_event
            .is_none_or(|t| t.elapsed() >= OVERLOAD_EVENT_INTERVAL)
        {
            timeline.publish(
                NewEvent::new(Source::Http, "http.overloaded")
                    .field("peer", peer.to_string())
                    .field("protocol", protocol.as_str())
                    .field("limit", self.limit)
                    .field("queued", notes.queued_since),
            );
            notes.last_event = Some(Instant::now());
            notes.queued_since = 0;
        }
    }
}

/// Accepts on `listener` until `shutdown`; connections run on `tracker`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<Handler>,
    limit: Arc<ConnectionLimit>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let protocol = if tls.is_some() {
        Protocol::Https
    } else {
        Protocol::Http
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = limit.admit(peer, protocol, &handler.ctx.timeline) => permit,
        };
        let Some(permit) = permit else {
            // The semaphore is never closed; a closed one would mean no service.
            break;
        };
        let (handler, tls, shutdown) = (handler.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, Protocol::Http, handler, shutdown).await,
                Some(tls) => {
                    if let Some(stream) = handshake(tls, stream, peer, &handler, &shutdown).await {
                        serve_connection(stream, peer, Protocol::Https, handler, shutdown).await;
                    }
                }
            }
        });
    }
}

async fn handshake(
    tls: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    shutdown: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let result = tokio::select! {
        _ = shutdown.cancelled() => return None,
        result = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)) => result,
    };
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            // A client that connects and leaves is no protocol error; garbage
            // (plain HTTP on the HTTPS port, bad TLS) is.
            if error.kind() == std::io::ErrorKind::InvalidData {
                handler.ctx.timeline.publish(
                    NewEvent::new(Source::Http, "http.malformed")
                        .field("peer", peer.to_string())
                        .field("protocol", "https")
                        .field("error", format!("TLS handshake: {error}")),
                );
            }
            None
        }
        Err(_) => None,
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    protocol: Protocol,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeline = handler.ctx.timeline.clone();
    let service = service_fn(move |request| handler.clone().serve(request, peer, protocol));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN_TIMEOUT, connection.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        // Only errors in what the client sent are news; a client hanging up
        // or a transfer the scenario cut on purpose are reported by http.fetch.
        if error.is_parse() {
            timeline.publish(
                NewEvent::new(Source::Http, "http.malformed")
                    .field("peer", peer.to_string())
                    .field("protocol", protocol.as_str())
                    .field("error", error.to_string()),
            );
        }
    }
}

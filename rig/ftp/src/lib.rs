//! The rig's FTP service: the provisioning tree, read-only, over FTP with
//! passive mode (libunftp). Anonymous, or one user and password per scenario
//! (placeholders allowed). Every RETR goes through the tree, so its rules
//! (absent, forced, delay, truncate, templates, confinement) apply as for
//! TFTP and HTTP.
//!
//! Events: `ftp.login`, `ftp.fetch` (one per RETR), `ftp.refused` (writes,
//! path escapes), `service.started` / `service.stopped` (source `rig`).

pub mod login;
pub mod storage;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use libunftp::options::PassiveHost;
use libunftp::ServerBuilder;
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::{RunningService, ServiceContext};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use login::Login;

/// A phone that goes quiet is dropped after this long.
const IDLE_SESSION_TIMEOUT_SECS: u64 = 300;
/// Control connections served at once; more are told 421 and closed.
pub const MAX_SESSIONS: usize = 256;
/// At most one `ftp.overloaded` event per this interval.
const OVERLOAD_EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long sessions get to end after the rig stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Lab-level facts for the FTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtpConfig {
    /// Control port: 21 on a bench, 2121 on loopback; 0 = any free port.
    pub port: u16,
    /// Ports for passive data connections (bound on the bind address only).
    pub passive_ports: RangeInclusive<u16>,
}

impl Default for FtpConfig {
    fn default() -> Self {
        FtpConfig {
            port: 21,
            passive_ports: 50000..=50999,
        }
    }
}

/// `[serve.ftp]` of a scenario.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Required credentials; absent = anonymous (any user, any password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
    /// `false` starts no listener. Default: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Binds the control port and serves until `ctx.shutdown` is cancelled.
pub async fn start(
    ctx: ServiceContext,
    config: FtpConfig,
    settings: Settings,
) -> anyhow::Result<RunningService> {
    start_bounded(ctx, config, settings, MAX_SESSIONS).await
}

/// [`start`] with another session bound (tests use a small one).
#[doc(hidden)]
pub async fn start_bounded(
    ctx: ServiceContext,
    config: FtpConfig,
    settings: Settings,
    max_sessions: usize,
) -> anyhow::Result<RunningService> {
    if settings.enabled == Some(false) {
        return Ok(RunningService {
            name: "ftp",
            addrs: Vec::new(),
            task: tokio::spawn(async {}),
        });
    }
    anyhow::ensure!(
        config.passive_ports.start() <= config.passive_ports.end(),
        "empty FTP passive port range {:?}",
        config.passive_ports
    );
    anyhow::ensure!(
        ctx.bind_ip.is_ipv4(),
        "FTP passive mode (PASV) needs an IPv4 bind address, not {}",
        ctx.bind_ip
    );
    if let Some(login) = &settings.login {
        validate_login(login, &ctx)?;
    }
    let listener = TcpListener::bind((ctx.bind_ip, config.port))
        .await
        .with_context(|| format!("binding FTP to {}:{}", ctx.bind_ip, config.port))?;
    let addr = listener.local_addr()?;
    let shown = vec![addr.to_string()];
    ctx.timeline.publish(
        NewEvent::new(Source::Rig, "service.started")
            .field("service", "ftp")
            .field("addrs", &shown),
    );

    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        config,
        login: settings.login,
    });
    let accept_tracker = tracker.clone();
    let permits = Arc::new(Semaphore::new(max_sessions.max(1)));
    let mut overload = Overload::default();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shared.ctx.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        accept_tracker.spawn(async move {
                            let _permit = permit;
                            shared.serve(stream, peer).await
                        });
                    }
                    Err(_) => {
                        overload.note(&shared.ctx, peer, max_sessions);
                        accept_tracker.spawn(turn_away(stream));
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "ftp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
        shared.ctx.timeline.publish(
            NewEvent::new(Source::Rig, "service.stopped")
                .field("service", "ftp")
                .field("addrs", &shown),
        );
    });
    Ok(RunningService {
        name: "ftp",
        addrs: vec![addr],
        task,
    })
}

/// An unknown placeholder in the credentials is a scenario error, shown at start.
fn validate_login(login: &Login, ctx: &ServiceContext) -> anyhow::Result<()> {
    let mut probe = ctx.placeholders.clone();
    for name in [
        "phone.name",
        "phone.model",
        "phone.mac",
        "phone.MAC",
        "phone.mac_colon",
        "phone.ext",
        "phone.password",
        "phone.devcode",
    ] {
        probe.set(name, "x");
    }
    probe
        .expand(&login.user)
        .map_err(|e| anyhow::anyhow!("serve.ftp.login.user: {e}"))?;
    probe
        .expand(&login.password)
        .map_err(|e| anyhow::anyhow!("serve.ftp.login.password: {e}"))?;
    Ok(())
}

struct Shared {
    ctx: ServiceContext,
    config: FtpConfig,
    login: Option<Login>,
}

impl Shared {
    /// One control connection. libunftp is given a server of its own for it,
    /// so the login check and the storage know the peer and share the session.
    async fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        // A second handle on the socket lets the rig end the session on stop:
        // libunftp's per-connection loop has no shutdown hook of its own.
        // Replies go out as soon as they are written: with Nagle on, the
        // `226` after a `150` waited for the client's delayed ACK (≈40 ms
        // per transfer on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "ftp: cannot set TCP_NODELAY on the control connection");
        }
        let (stream, closer) = match split_closer(stream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "ftp: cannot prepare connection");
                return;
            }
        };
        let session = login::Session::default();
        let check = login::LoginCheck {
            login: self.login.clone(),
            base: self.ctx.placeholders.clone(),
            directory: self.ctx.directory.clone(),
            timeline: self.ctx.timeline.clone(),
            peer,
            session: session.clone(),
        };
        let ctx = self.ctx.clone();
        let storage_session = session.clone();
        let make_storage = Box::new(move || storage::TreeStorage {
            ctx: ctx.clone(),
            peer,
            session: storage_session.clone(),
        });
        let passive_host = match self.ctx.bind_ip {
            std::net::IpAddr::V4(ip) => PassiveHost::Ip(ip),
            std::net::IpAddr::V6(_) => PassiveHost::FromConnection,
        };
        let server = ServerBuilder::with_authenticator(make_storage, Arc::new(check))
            .greeting("phonerig FTP ready")
            .passive_ports(self.config.passive_ports.clone())
            .passive_host(passive_host)
            .idle_session_timeout(IDLE_SESSION_TIMEOUT_SECS)
            .build();
        let server = match server {
            Ok(server) => server,
            Err(error) => {
                tracing::warn!(%error, "ftp: cannot build session");
                return;
            }
        };
        let service = server.service(stream);
        tokio::pin!(service);
        tokio::select! {
            _ = &mut service => {}
            _ = self.ctx.shutdown.cancelled() => {
                let _ = closer.shutdown(std::net::Shutdown::Both);
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut service).await;
            }
        }
    }
}

/// Counts sessions turned away, reported at most once per interval.
#[derive(Default)]
struct Overload {
    last_event: Option<Instant>,
    dropped_since: u64,
}

impl Overload {
    fn note(&mut self, ctx: &ServiceContext, peer: SocketAddr, limit: usize) {
        self.dropped_since += 1;
        if self
            .last_event
            .is_none_or(|t| t.elapsed() >= OVERLOAD_EVENT_INTERVAL)
        {
            ctx.timeline.publish(
                NewEvent::new(Source::Ftp, "ftp.overloaded")
                    .field("peer", peer.to_string())
                    .field("limit", limit)
                    .field("dropped", self.dropped_since),
            );
            self.last_event = Some(Instant::now());
            self.dropped_since = 0;
        }
    }
}

/// RFC 959's answer to a client the server cannot take now.
async fn turn_away(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        stream.write_all(b"421 Too many sessions, try again later\r\n"),
    )
    .await;
}

fn split_closer(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let closer = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, closer))
}

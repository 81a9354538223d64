//! The rig's TFTP server: RFC 1350 with option negotiation (RFC 2347),
//! blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440),
//! serving the scenario's [`ProvisioningTree`](phonerig_core::ProvisioningTree).
//!
//! The listener only reads requests; each transfer runs in its own task on its
//! own ephemeral socket (bound to the listener's address), so a slow or dead
//! phone never holds up another. Every request ends in one event on the
//! timeline (`tftp.fetch` or `tftp.upload`); see `docs/tftp.md`.

mod channel;
pub mod netascii;
pub mod options;
pub mod packet;
mod read;
mod record;
mod source;
pub mod window;
mod write;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use phonerig_core::duration::HumanDuration;
use phonerig_core::event::NewEvent;
use phonerig_core::flood::{FloodGuard, FloodLimits, FloodReport, REPORT_INTERVAL};
use phonerig_core::{
    PhoneDirectory, Placeholders, ProvisioningTree, RunningService, ServiceContext, Source,
    Timeline,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{bind_udp, RECV_BUFFER};
use crate::options::{Limits, DEFAULT_MAX_WINDOWSIZE};
use crate::packet::{encode_error, error_code, Packet, MAX_BLKSIZE};
use crate::record::{Outcome, TransferRecord};

pub use crate::write::MAX_UPLOAD_BYTES;

/// Lab-level facts about the TFTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// 69 on a lab NIC; 6969 (or 0 for any free port) on loopback.
    pub port: u16,
    /// Transfers running at once; further requests get error 0 "busy".
    pub max_transfers: usize,
    /// Largest block size granted (RFC 2348 allows up to 65464).
    pub max_blksize: u16,
    /// Resends of one packet before a transfer is given up as `timed_out`.
    pub retries: u32,
    /// Create the sockets inside this network namespace.
    pub netns: Option<String>,
    /// Budget of datagrams on the request port; the excess is dropped and
    /// reported as `tftp.flood`.
    pub flood: FloodLimits,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            port: 69,
            max_transfers: 256,
            max_blksize: MAX_BLKSIZE,
            retries: 5,
            netns: None,
            flood: FloodLimits::BOOT_STORM,
        }
    }
}

/// The scenario's `[serve.tftp]` table.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Accept uploads (WRQ) into this folder (placeholders allowed, e.g.
    /// `uploads/{phone.name}`). Without it every WRQ is refused with error 2.
    pub upload_dir: Option<PathBuf>,
    /// Retransmission timeout when the client does not negotiate one (default 1s).
    pub timeout: Option<HumanDuration>,
    /// Largest windowsize (RFC 7440) granted (default 64).
    pub windowsize: Option<u16>,
    /// Ignore all options and answer as a plain RFC 1350 server (no OACK).
    pub disable_options: bool,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// What every transfer task needs; one per running service.
pub(crate) struct Shared {
    pub timeline: Timeline,
    pub directory: PhoneDirectory,
    pub tree: ProvisioningTree,
    pub placeholders: Placeholders,
    pub bind_ip: IpAddr,
    pub netns: Option<String>,
    pub limits: Limits,
    pub retries: u32,
    pub disable_options: bool,
    pub upload_dir: Option<PathBuf>,
    pub shutdown: CancellationToken,
}

pub async fn start(
    ctx: ServiceContext,
    config: TftpConfig,
    settings: Settings,
) -> anyhow::Result<RunningService> {
    let default_timeout = settings.timeout.map_or(DEFAULT_TIMEOUT, Duration::from);
    anyhow::ensure!(
        !default_timeout.is_zero(),
        "[serve.tftp] timeout must be longer than zero"
    );
    anyhow::ensure!(
        settings.windowsize != Some(0),
        "[serve.tftp] windowsize must be at least 1"
    );
    anyhow::ensure!(
        config.max_transfers > 0,
        "tftp max_transfers must be at least 1"
    );
    config
        .flood
        .check()
        .map_err(|e| anyhow::anyhow!("tftp {e}"))?;
    anyhow::ensure!(
        config.max_blksize >= packet::MIN_BLKSIZE,
        "tftp max_blksize must be at least {}",
        packet::MIN_BLKSIZE
    );

    let addr = SocketAddr::new(ctx.bind_ip, config.port);
    let socket = bind_udp(addr, config.netns.as_deref())
        .await
        .with_context(|| format!("TFTP cannot listen on {addr}"))?;
    let local = socket.local_addr()?;
    let shared = Arc::new(Shared {
        timeline: ctx.timeline.clone(),
        directory: ctx.directory.clone(),
        tree: ctx.tree.clone(),
        placeholders: ctx.placeholders.clone(),
        bind_ip: ctx.bind_ip,
        netns: config.netns.clone(),
        limits: Limits {
            max_blksize: config.max_blksize.min(MAX_BLKSIZE),
            max_windowsize: settings.windowsize.unwrap_or(DEFAULT_MAX_WINDOWSIZE),
            default_timeout,
        },
        retries: config.retries,
        disable_options: settings.disable_options,
        upload_dir: settings.upload_dir.clone(),
        shutdown: ctx.shutdown.clone(),
    });
    ctx.timeline.publish(
        NewEvent::new(Source::Rig, "service.started")
            .field("service", "tftp")
            .field("addrs", vec![local.to_string()]),
    );
    let listener = Listener {
        shared,
        socket,
        slots: Arc::new(Semaphore::new(config.max_transfers)),
        max_transfers: config.max_transfers,
        active: Arc::new(Mutex::new(HashSet::new())),
        guard: Mutex::new(FloodGuard::new(config.flood, Instant::now())),
        tasks: TaskTracker::new(),
    };
    let task = tokio::spawn(listener.run(local));
    Ok(RunningService {
        name: "tftp",
        addrs: vec![local],
        task,
    })
}

/// The request port: reads RRQ/WRQ and hands each to its own transfer task.
struct Listener {
    shared: Arc<Shared>,
    socket: UdpSocket,
    slots: Arc<Semaphore>,
    max_transfers: usize,
    /// Peers (address and port: their transfer ID) with a transfer running,
    /// so a client resending its RRQ while we wait out a `delay` does not
    /// start a second transfer.
    active: Arc<Mutex<HashSet<SocketAddr>>>,
    /// Bounds the datagrams handled and the `tftp.malformed` events published;
    /// locked only briefly, never across an await.
    guard: Mutex<FloodGuard>,
    tasks: TaskTracker,
}

/// Removes a peer from the active set when its transfer task ends, however it ends.
struct ActiveTransfer {
    active: Arc<Mutex<HashSet<SocketAddr>>>,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

enum Admission {
    Start(ActiveTransfer),
    Repeat,
    Busy,
}

impl Drop for ActiveTransfer {
    fn drop(&mut self) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.peer);
    }
}

impl Listener {
    async fn run(self, local: SocketAddr) {
        let mut buffer = vec![0u8; RECV_BUFFER];
        // A flood that stopped is still reported without waiting for the next datagram.
        let mut report_tick = tokio::time::interval(REPORT_INTERVAL);
        loop {
            let received = tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                _ = report_tick.tick() => {
                    self.report_flood(|guard| guard.take_report(Instant::now()));
                    continue;
                }
                received = self.socket.recv_from(&mut buffer) => received,
            };
            match received {
                Ok((len, peer)) => {
                    if self.admit_datagram(peer) {
                        self.on_datagram(&buffer[..len], peer).await;
                    }
                }
                Err(error) => tracing::debug!(%error, "receive error on the TFTP request port"),
            }
        }
        self.report_flood(FloodGuard::finish);
        drop(self.socket);
        self.tasks.close();
        self.tasks.wait().await;
        self.shared.timeline.publish(
            NewEvent::new(Source::Rig, "service.stopped")
                .field("service", "tftp")
                .field("addrs", vec![local.to_string()]),
        );
    }

    async fn reply(&self, peer: SocketAddr, code: u16, message: &str) {
        if let Err(error) = self
            .socket
            .send_to(&encode_error(code, message), peer)
            .await
        {
            tracing::debug!(%peer, %error, "could not answer on the TFTP request port");
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, FloodGuard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the request port handles this datagram (the flood guard's
    /// budget); a due `tftp.flood` report is published on the way.
    fn admit_datagram(&self, peer: SocketAddr) -> bool {
        let now = Instant::now();
        self.report_flood(|guard| guard.take_report(now));
        self.guard().admit(now, peer.ip())
    }

    fn report_flood(&self, take: impl FnOnce(&mut FloodGuard) -> Option<FloodReport>) {
        let report = take(&mut self.guard());
        if let Some(report) = report {
            self.shared
                .timeline
                .publish(report.event(Source::Tftp, "tftp.flood"));
        }
    }

    /// `tftp.malformed` for the first few from a source; the rest are
    /// counted for the next `tftp.flood`.
    fn malformed(&self, peer: SocketAddr, error: &str) {
        if !self.guard().show_malformed(Instant::now(), peer.ip()) {
            return;
        }
        self.shared.timeline.publish(
            NewEvent::new(Source::Tftp, "tftp.malformed")
                .field("peer", peer.to_string())
                .field("error", error),
        );
    }

    async fn on_datagram(&self, bytes: &[u8], peer: SocketAddr) {
        let packet = match Packet::parse(bytes) {
            Ok(packet) => packet,
            Err(error) => {
                self.malformed(peer, &error.to_string());
                // Never answer something that claims to be an error packet:
                // two servers would bounce errors at each other forever.
                if !bytes.starts_with(&[0, 5]) {
                    self.reply(peer, error_code::ILLEGAL_OPERATION, &error.to_string())
                        .await;
                }
                return;
            }
        };
        match packet {
            Packet::Rrq(request) => self.start_transfer(peer, request, false).await,
            Packet::Wrq(request) => {
                if self.shared.upload_dir.is_none() {
                    let phone = self
                        .shared
                        .directory
                        .identify(peer.ip(), &[&request.filename])
                        .map(|p| p.name.clone());
                    record::publish_refused(
                        &self.shared.timeline,
                        peer,
                        &record::display_path(&request.filename),
                        "uploads are disabled (no upload_dir)",
                        phone,
                    );
                    self.reply(peer, error_code::ACCESS_VIOLATION, "access violation")
                        .await;
                    return;
                }
                self.start_transfer(peer, request, true).await;
            }
            // A client aborting something; there is nothing to answer.
            Packet::Error { .. } => {}
            other => {
                let error = format!(
                    "{} on the request port (only RRQ and WRQ belong here)",
                    other.kind()
                );
                self.malformed(peer, &error);
                self.reply(
                    peer,
                    error_code::ILLEGAL_OPERATION,
                    "illegal TFTP operation",
                )
                .await;
            }
        }
    }

    /// Whether a request from `peer` may start a transfer now.
    fn admit(&self, peer: SocketAddr) -> Admission {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.contains(&peer) {
            return Admission::Repeat;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Admission::Busy;
        };
        active.insert(peer);
        Admission::Start(ActiveTransfer {
            active: self.active.clone(),
            peer,
            _slot: slot,
        })
    }

    /// Every slot is taken: error 0 "busy", a `tftp.refused` and the request's own record.
    async fn refuse_busy(&self, peer: SocketAddr, kind: &str, request: &packet::Request) {
        let phone = self
            .shared
            .directory
            .identify(peer.ip(), &[&request.filename])
            .map(|p| p.name.clone());
        let file = record::display_path(&request.filename);
        let reason = format!("busy: {} transfers running", self.max_transfers);
        record::publish_refused(&self.shared.timeline, peer, &file, &reason, phone.clone());
        let mut record = TransferRecord::begin(file, peer, request.mode.as_str(), &request.options);
        record.phone = phone;
        record
            .end(Outcome::Refused)
            .with_error(error_code::NOT_DEFINED, "busy");
        record.publish(&self.shared.timeline, kind);
        self.reply(peer, error_code::NOT_DEFINED, "busy").await;
    }

    /// Runs a read (`upload` false) or write transfer in its own task, if admitted.
    async fn start_transfer(&self, peer: SocketAddr, request: packet::Request, upload: bool) {
        let kind = if upload { "tftp.upload" } else { "tftp.fetch" };
        match self.admit(peer) {
            Admission::Start(transfer) => {
                let shared = self.shared.clone();
                self.tasks.spawn(async move {
                    let _transfer = transfer;
                    if upload {
                        write::serve(shared, peer, request).await;
                    } else {
                        read::serve(shared, peer, request).await;
                    }
                });
            }
            // The client resent its request before our first answer (for
            // instance during a scenario's `delay`): the running transfer answers it.
            Admission::Repeat => tracing::debug!(%peer, kind, "repeated request ignored"),
            Admission::Busy => self.refuse_busy(peer, kind, &request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn documented_settings_example_parses() {
        let text = r#"
            timeout = "2s"
            windowsize = 16
            disable_options = false
            upload_dir = "uploads/{phone.name}"
        "#;
        let settings: Settings = toml::from_str(text).unwrap();
        assert_eq!(
            settings,
            Settings {
                upload_dir: Some("uploads/{phone.name}".into()),
                timeout: Some(HumanDuration(Duration::from_secs(2))),
                windowsize: Some(16),
                disable_options: false,
            }
        );
    }

    #[rstest]
    #[case::unknown_key("blocksize = 1428", "unknown field")]
    #[case::bad_duration("timeout = \"soon\"", "not a duration")]
    #[case::windowsize_out_of_range("windowsize = 70000", "windowsize")]
    fn bad_settings_are_rejected(#[case] text: &str, #[case] mentions: &str) {
        let error = toml::from_str::<Settings>(text).unwrap_err().to_string();
        assert!(error.contains(mentions), "{error}");
    }

    #[test]
    fn empty_table_means_defaults_and_schema_exists() {
        assert_eq!(toml::from_str::<Settings>("").unwrap(), Settings::default());
        let schema = serde_json::to_value(schemars::schema_for!(Settings)).unwrap();
        assert!(schema["properties"]["upload_dir"].is_object());
    }

    #[tokio::test]
    async fn zero_timeout_is_refused_at_start() {
        let ctx = ServiceContext {
            timeline: Timeline::in_memory(),
            directory: PhoneDirectory::default(),
            bind_ip: "127.69.3.1".parse().unwrap(),
            placeholders: Placeholders::new(),
            tree: ProvisioningTree::new(
                None,
                vec![],
                Placeholders::new(),
                PhoneDirectory::default(),
            ),
            shutdown: CancellationToken::new(),
        };
        let settings = Settings {
            timeout: Some(HumanDuration(Duration::ZERO)),
            ..Settings::default()
        };
        let config = TftpConfig {
            port: 0,
            ..TftpConfig::default()
        };
        let error = start(ctx, config, settings).await.err().expect("refused");
        assert!(error.to_string().contains("timeout"));
    }
}

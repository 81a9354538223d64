//! A server on a loopback address and a small TFTP client that can misbehave
//! on purpose (drop or repeat ACKs, lose a DATA block), for the end-to-end tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use phonerig_core::{
    Event, FileRule, PhoneDirectory, Placeholders, ProvisioningTree, RunningService,
    ServiceContext, Timeline,
};
use phonerig_tftp::packet::{Mode, Packet, Request};
use phonerig_tftp::window::wire_block;
use phonerig_tftp::{Settings, TftpConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub timeline: Timeline,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    service: Option<RunningService>,
}

pub fn config() -> TftpConfig {
    TftpConfig {
        port: 0,
        ..TftpConfig::default()
    }
}

pub async fn start(
    ip: &str,
    root: &Path,
    rules: Vec<FileRule>,
    config: TftpConfig,
    settings: Settings,
) -> Server {
    start_with(ip, root, rules, PhoneDirectory::default(), config, settings).await
}

pub async fn start_with(
    ip: &str,
    root: &Path,
    rules: Vec<FileRule>,
    directory: PhoneDirectory,
    config: TftpConfig,
    settings: Settings,
) -> Server {
    let timeline = Timeline::in_memory();
    let shutdown = CancellationToken::new();
    let ctx = ServiceContext {
        timeline: timeline.clone(),
        directory: directory.clone(),
        bind_ip: ip.parse().unwrap(),
        placeholders: Placeholders::new(),
        tree: ProvisioningTree::new(Some(root.to_owned()), rules, Placeholders::new(), directory),
        shutdown: shutdown.clone(),
    };
    let service = phonerig_tftp::start(ctx, config, settings)
        .await
        .expect("tftp starts");
    let addr = service.addrs[0];
    Server {
        timeline,
        addr,
        shutdown,
        service: Some(service),
    }
}

impl Server {
    /// Waits (bounded) for an event matching `pred`, searching from the start of the run.
    pub async fn event(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Arc<Event> {
        let mut reader = self.timeline.reader_from(0);
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let event = reader.next().await.expect("timeline open");
                if pred(&event) {
                    return event;
                }
            }
        })
        .await;
        match found {
            Ok(event) => event,
            Err(_) => panic!(
                "no {what} event; timeline:\n{}",
                self.timeline
                    .snapshot()
                    .iter()
                    .map(|e| e.brief())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    pub async fn fetch_event(&self, file: &str) -> Arc<Event> {
        self.event(&format!("tftp.fetch for {file}"), |e| {
            e.kind == "tftp.fetch" && e.field_str("file") == Some(file)
        })
        .await
    }

    pub fn count(&self, kind: &str) -> usize {
        self.timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(service) = self.service.take() {
            tokio::time::timeout(Duration::from_secs(10), service.join(&self.timeline))
                .await
                .expect("service stops");
        }
        assert!(self
            .timeline
            .snapshot()
            .iter()
            .any(|e| e.kind == "service.stopped"));
    }
}

/// How the test client should (mis)behave during a download.
#[derive(Clone, Debug)]
pub struct Get {
    pub file: String,
    pub mode: Mode,
    pub options: Vec<(String, String)>,
    /// Do not send the first ACK for this absolute block.
    pub drop_ack_of: Option<u64>,
    /// Send every ACK twice.
    pub duplicate_acks: bool,
    /// Pretend the first copy of this absolute DATA block got lost.
    pub lose_data: Option<u64>,
    /// Client retransmission timeout and how many times it tries.
    pub timeout: Duration,
    pub retries: u32,
    /// After the last block, keep listening this long to catch stray resends.
    pub linger: Duration,
}

impl Get {
    pub fn new(file: &str) -> Get {
        Get {
            file: file.into(),
            mode: Mode::Octet,
            options: vec![],
            drop_ack_of: None,
            duplicate_acks: false,
            lose_data: None,
            timeout: Duration::from_secs(2),
            retries: 5,
            linger: Duration::ZERO,
        }
    }

    pub fn option(mut self, name: &str, value: &str) -> Get {
        self.options.push((name.into(), value.into()));
        self
    }
}

#[derive(Debug, Default)]
pub struct Got {
    pub data: Vec<u8>,
    pub oack: Option<Vec<(String, String)>>,
    pub error: Option<(u16, String)>,
    /// How many times each absolute DATA block arrived.
    pub receptions: HashMap<u64, u32>,
    /// The file ended with a short block (false: the client gave up).
    pub complete: bool,
    pub server_tid: Option<SocketAddr>,
}

impl Got {
    pub fn duplicates(&self) -> u32 {
        self.receptions.values().map(|n| n - 1).sum()
    }
}

pub async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).await.unwrap()
}

fn option_value(options: &[(String, String)], name: &str) -> Option<u64> {
    options
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// Downloads `get.file`, implementing the receiver side of RFC 1350/2347/7440.
pub async fn get(socket: &UdpSocket, server: SocketAddr, get: &Get) -> Got {
    tokio::time::timeout(Duration::from_secs(600), get_inner(socket, server, get))
        .await
        .expect("client finished")
}

async fn get_inner(socket: &UdpSocket, server: SocketAddr, get: &Get) -> Got {
    let request = Packet::Rrq(Request {
        filename: get.file.clone(),
        mode: get.mode,
        options: get.options.clone(),
    })
    .encode();
    socket.send_to(&request, server).await.unwrap();
    let mut got = Got::default();
    let mut blksize = 512usize;
    let mut windowsize = 1u64;
    let mut expected = 1u64;
    let mut in_window = 0u64;
    let mut reacked_at = None;
    let mut last_ack: Option<Vec<u8>> = None;
    let mut dropped_ack = false;
    let mut lost_data = false;
    let mut quiet_rounds = 0;
    let mut buffer = vec![0u8; 65_536];
    loop {
        let received = tokio::time::timeout(get.timeout, socket.recv_from(&mut buffer)).await;
        let (len, from) = match received {
            Ok(result) => result.unwrap(),
            Err(_) => {
                quiet_rounds += 1;
                if quiet_rounds > get.retries {
                    return got;
                }
                match (&last_ack, got.server_tid) {
                    (Some(ack), Some(tid)) => socket.send_to(ack, tid).await.map(|_| ()).unwrap(),
                    _ if got.server_tid.is_none() => {
                        socket.send_to(&request, server).await.map(|_| ()).unwrap()
                    }
                    _ => {}
                }
                continue;
            }
        };
        let tid = *got.server_tid.get_or_insert(from);
        if from != tid {
            continue;
        }
        quiet_rounds = 0;
        match Packet::parse(&buffer[..len]).expect("server sends well-formed packets") {
            Packet::Oack { options } => {
                blksize = option_value(&options, "blksize").map_or(512, |v| v as usize);
                windowsize = option_value(&options, "windowsize").unwrap_or(1);
                got.oack = Some(options);
                let ack = Packet::Ack { block: 0 }.encode();
                last_ack = Some(ack.clone());
                send_ack(socket, tid, ack, get.duplicate_acks).await;
            }
            Packet::Error { code, message } => {
                got.error = Some((code, message));
                return got;
            }
            Packet::Data { block, data } => {
                let absolute = absolute_block(expected, block);
                *got.receptions.entry(absolute).or_default() += 1;
                if get.lose_data == Some(absolute) && !lost_data {
                    lost_data = true;
                    continue;
                }
                if block == wire_block(expected) {
                    got.data.extend_from_slice(&data);
                    in_window += 1;
                    let last = data.len() < blksize;
                    if last || in_window == windowsize {
                        in_window = 0;
                        let ack = Packet::Ack { block }.encode();
                        last_ack = Some(ack.clone());
                        if get.drop_ack_of == Some(absolute) && !dropped_ack {
                            dropped_ack = true;
                        } else {
                            send_ack(socket, tid, ack, get.duplicate_acks).await;
                        }
                    }
                    expected += 1;
                    if last {
                        got.complete = true;
                        linger(socket, &mut got, get.linger, expected).await;
                        return got;
                    }
                } else if reacked_at != Some(expected) {
                    // Duplicate or gap: acknowledge the last block in order, once per position.
                    reacked_at = Some(expected);
                    in_window = 0;
                    let ack = Packet::Ack {
                        block: wire_block(expected - 1),
                    }
                    .encode();
                    last_ack = Some(ack.clone());
                    send_ack(socket, tid, ack, get.duplicate_acks).await;
                }
            }
            other => panic!("unexpected packet from the server: {other:?}"),
        }
    }
}

async fn send_ack(socket: &UdpSocket, to: SocketAddr, bytes: Vec<u8>, twice: bool) {
    socket.send_to(&bytes, to).await.unwrap();
    if twice {
        socket.send_to(&bytes, to).await.unwrap();
    }
}

/// The absolute number of wire block `block` seen while expecting `expected`
/// (the nearest one, ahead or behind).
fn absolute_block(expected: u64, block: u16) -> u64 {
    let ahead = block.wrapping_sub(wire_block(expected));
    if ahead < 0x8000 {
        expected + u64::from(ahead)
    } else {
        expected.saturating_sub(u64::from(ahead.wrapping_neg()))
    }
}

async fn linger(socket: &UdpSocket, got: &mut Got, linger: Duration, expected: u64) {
    let mut buffer = vec![0u8; 65_536];
    let until = tokio::time::Instant::now() + linger;
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(until, socket.recv_from(&mut buffer)).await
    {
        if let Ok(Packet::Data { block, .. }) = Packet::parse(&buffer[..len]) {
            *got.receptions
                .entry(absolute_block(expected, block))
                .or_default() += 1;
        }
    }
}

/// Uploads `data` with a plain lockstep WRQ.
pub async fn put(
    socket: &UdpSocket,
    server: SocketAddr,
    file: &str,
    data: &[u8],
    options: Vec<(String, String)>,
) -> Result<(), (u16, String)> {
    let request = Packet::Wrq(Request {
        filename: file.into(),
        mode: Mode::Octet,
        options,
    })
    .encode();
    socket.send_to(&request, server).await.unwrap();
    let mut buffer = vec![0u8; 65_536];
    let mut tid = None;
    let mut blksize = 512;
    let mut block = 0u64;
    let mut pending: Vec<u8> = request;
    loop {
        let mut attempts = 0;
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
            {
                Ok(Ok((len, from))) => {
                    if *tid.get_or_insert(from) != from {
                        continue;
                    }
                    break Packet::parse(&buffer[..len]).unwrap();
                }
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => {
                    attempts += 1;
                    assert!(attempts < 5, "server stopped answering the upload");
                    socket
                        .send_to(&pending, tid.unwrap_or(server))
                        .await
                        .unwrap();
                }
            }
        };
        match answer {
            Packet::Oack { options } if block == 0 => {
                blksize = option_value(&options, "blksize").map_or(512, |v| v as usize);
            }
            Packet::Ack { block: acked } if acked == wire_block(block) => {}
            Packet::Error { code, message } => return Err((code, message)),
            _ => continue,
        }
        let start = block as usize * blksize;
        if start > data.len() {
            return Ok(());
        }
        block += 1;
        let end = (start + blksize).min(data.len());
        pending = Packet::Data {
            block: wire_block(block),
            data: data[start..end].to_vec(),
        }
        .encode();
        socket.send_to(&pending, tid.unwrap()).await.unwrap();
    }
}

/// Bytes that do not repeat with any block size, so a misplaced block shows.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

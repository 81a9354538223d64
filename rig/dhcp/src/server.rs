//! The protocol: one datagram in, at most one reply out, events on the way.
//!
//! [`Server::handle`] is synchronous and owns all state (lease table, flood
//! guard), so the tokio loop in [`run`] only moves bytes and the handling can
//! be driven directly in tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Encodable};
use phonerig_core::event::NewEvent;
use phonerig_core::placeholder::Placeholders;
use phonerig_core::{Mac, PhoneDirectory, PhoneInfo, ServiceContext, Source, Timeline};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::net::UdpSocket;

use crate::leases::LeaseTable;
use crate::options::{self, Encoded, OptionPlan};
use crate::settings::Settings;
use crate::wire;
use crate::{DhcpConfig, ReplyMode};
use phonerig_core::flood::{FloodGuard, FloodLimits, REPORT_INTERVAL};

/// Some phone firmwares drop replies shorter than a BOOTP message (300 bytes).
const MIN_REPLY_LEN: usize = 300;

/// Refuses a scenario whose option values cannot be sent: an unknown phone
/// name, a bad address, or a placeholder that does not expand. Checked for
/// every phone of the lab, so mistakes surface at start, not at the phone.
pub(crate) fn check_plan(plan: &OptionPlan, ctx: &ServiceContext) -> anyhow::Result<()> {
    let phones = ctx.directory.phones();
    for name in plan.phone_names() {
        if !phones.iter().any(|p| p.name == name) {
            let known: Vec<&str> = phones.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "[serve.dhcp.phone.{name}]: no phone `{name}` in the lab (known: {})",
                known.join(", ")
            );
        }
    }
    for (set, code, value) in plan.all_values() {
        if !options::mentions_phone(value) {
            options::encode(value, &ctx.placeholders)
                .map_err(|e| anyhow::anyhow!("{set} option {code}: {e}"))?;
        }
        for phone in &phones {
            options::encode(value, &ctx.placeholders.clone().with_phone(phone)).map_err(|e| {
                anyhow::anyhow!("{set} option {code} for phone {}: {e}", phone.name)
            })?;
        }
    }
    Ok(())
}

/// A reply and where it goes.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub bytes: Vec<u8>,
    pub to: SocketAddr,
}

/// What a client's message says, as recorded in request events.
#[derive(Serialize)]
struct RequestFields {
    mac: String,
    xid: String,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciaddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_id: Option<String>,
    param_request_list: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
}

#[derive(Serialize)]
struct ReplyFields {
    mac: String,
    xid: String,
    address: String,
    to: String,
    options: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    option_errors: BTreeMap<String, String>,
}

struct Request {
    message: Message,
    kind: MessageType,
    mac: Mac,
    peer: SocketAddr,
    requested_ip: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    vendor_class: Option<String>,
    phone: Option<Arc<PhoneInfo>>,
}

impl Request {
    fn xid(&self) -> String {
        format!("0x{:08x}", self.message.xid())
    }

    fn phone_name(&self) -> Option<String> {
        self.phone.as_ref().map(|p| p.name.clone())
    }

    fn ciaddr(&self) -> Option<Ipv4Addr> {
        Some(self.message.ciaddr()).filter(|ip| !ip.is_unspecified())
    }
}

fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Discover => "discover",
        MessageType::Offer => "offer",
        MessageType::Request => "request",
        MessageType::Decline => "decline",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        MessageType::Release => "release",
        MessageType::Inform => "inform",
        _ => "other",
    }
}

/// The largest DHCP message (UDP payload) the client said it accepts: its
/// option 57, else RFC 2131's 576-byte datagram, less 28 bytes of IP and UDP headers.
fn reply_limit(request: &Message) -> usize {
    let datagram = match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(size)) => usize::from(*size).max(576),
        _ => 576,
    };
    datagram - 28
}

pub(crate) struct Server {
    timeline: Timeline,
    directory: PhoneDirectory,
    placeholders: Placeholders,
    server_ip: Ipv4Addr,
    subnet_mask: Ipv4Addr,
    reply_mode: ReplyMode,
    server_port: u16,
    client_port: u16,
    default_lease: Duration,
    silent: bool,
    nak: bool,
    plan: OptionPlan,
    leases: LeaseTable,
    guard: FloodGuard,
}

impl Server {
    pub fn new(
        ctx: &ServiceContext,
        config: &DhcpConfig,
        settings: &Settings,
        plan: OptionPlan,
        server_ip: Ipv4Addr,
    ) -> Server {
        Server {
            timeline: ctx.timeline.clone(),
            directory: ctx.directory.clone(),
            placeholders: ctx.placeholders.clone(),
            server_ip,
            subnet_mask: config.subnet_mask(),
            reply_mode: config.reply_mode,
            server_port: config.port,
            client_port: config.client_port,
            default_lease: config.default_lease,
            silent: settings.silent,
            nak: settings.nak,
            plan,
            leases: LeaseTable::new(config.pool_start, config.pool_end, server_ip, &config.fixed),
            guard: FloodGuard::new(FloodLimits::BOOT_STORM, Instant::now()),
        }
    }

    /// `dhcp.malformed` for the first few from a source; the rest are
    /// counted for the next `dhcp.flood`.
    fn malformed(&mut self, peer: SocketAddr, len: usize, error: impl ToString, now: Instant) {
        if !self.guard.show_malformed(now, peer.ip()) {
            return;
        }
        self.timeline.publish(
            NewEvent::new(Source::Dhcp, "dhcp.malformed")
                .field("peer", peer.to_string())
                .field("len", len)
                .field("error", error.to_string()),
        );
    }

    /// Handles one datagram; returns the reply to send, if any.
    pub fn handle(&mut self, packet: &[u8], peer: SocketAddr, now: Instant) -> Option<Outgoing> {
        self.report_flood(now);
        if !self.guard.admit(now, peer.ip()) {
            return None;
        }
        if packet.first() == Some(&2) {
            self.foreign_reply(packet, peer, now);
            return None;
        }
        let request = match self.parse(packet, peer) {
            Ok(request) => request,
            Err(error) => {
                self.malformed(peer, packet.len(), error, now);
                return None;
            }
        };
        self.record(&request);
        if self.silent {
            return None;
        }
        match request.kind {
            MessageType::Discover => self.discover(&request, now),
            MessageType::Request => self.request(&request, now),
            MessageType::Release => {
                let ours = request.server_id.is_none_or(|id| id == self.server_ip);
                if let Some(ip) = request.ciaddr().filter(|_| ours) {
                    if self.leases.release(&request.mac, ip) {
                        self.directory.unbind_ip(IpAddr::V4(ip));
                    }
                }
                None
            }
            MessageType::Decline => {
                let ours = request.server_id.is_none_or(|id| id == self.server_ip);
                if let Some(ip) = request.requested_ip.filter(|_| ours) {
                    self.leases.decline(&request.mac, ip);
                    self.directory.unbind_ip(IpAddr::V4(ip));
                }
                None
            }
            MessageType::Inform => self.inform(&request),
            _ => None,
        }
    }

    /// A datagram on the client port: only other servers' replies matter there.
    pub fn watch(&mut self, packet: &[u8], peer: SocketAddr, now: Instant) {
        if packet.first() != Some(&2) {
            return;
        }
        self.report_flood(now);
        if self.guard.admit(now, peer.ip()) {
            self.foreign_reply(packet, peer, now);
        }
    }

    /// `dhcp.flood` for what the guard dropped or did not show, at most
    /// once per report interval (called per datagram and on a timer).
    pub fn report_flood(&mut self, now: Instant) {
        if let Some(report) = self.guard.take_report(now) {
            self.timeline
                .publish(report.event(Source::Dhcp, "dhcp.flood"));
        }
    }

    fn parse(&self, packet: &[u8], peer: SocketAddr) -> Result<Request, String> {
        wire::check_header(packet, true).map_err(|e| e.to_string())?;
        let message = Message::from_bytes(packet).map_err(|e| format!("undecodable: {e}"))?;
        if message.opcode() != Opcode::BootRequest {
            return Err(format!(
                "op {:?} is neither BOOTREQUEST nor BOOTREPLY",
                message.opcode()
            ));
        }
        let opts = message.opts();
        let kind = opts
            .msg_type()
            .ok_or("no DHCP message type (option 53); plain BOOTP is not served")?;
        if !matches!(
            kind,
            MessageType::Discover
                | MessageType::Request
                | MessageType::Release
                | MessageType::Decline
                | MessageType::Inform
        ) {
            return Err(format!("message type {kind:?} is not one a client sends"));
        }
        let mut octets = [0u8; 6];
        octets.copy_from_slice(&message.chaddr()[..6]);
        let mac = Mac(octets);
        let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(bytes)) => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        };
        Ok(Request {
            kind,
            mac,
            peer,
            requested_ip,
            server_id,
            vendor_class,
            phone: self.directory.by_mac(&mac),
            message,
        })
    }

    fn record(&self, request: &Request) {
        let opts = request.message.opts();
        let param_request_list = match opts.get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(codes)) => {
                codes.iter().map(|c| u8::from(*c)).collect()
            }
            _ => Vec::new(),
        };
        let client_id = match opts.get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(bytes)) => Some(hex::encode(bytes)),
            _ => None,
        };
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(name)) => Some(name.clone()),
            _ => None,
        };
        let fields = RequestFields {
            mac: request.mac.colon(),
            xid: request.xid(),
            peer: request.peer.to_string(),
            requested_ip: request.requested_ip.map(|ip| ip.to_string()),
            ciaddr: request.ciaddr().map(|ip| ip.to_string()),
            server_id: request.server_id.map(|ip| ip.to_string()),
            param_request_list,
            vendor_class: request.vendor_class.clone(),
            client_id,
            hostname,
        };
        let kind = format!("dhcp.{}", kind_name(request.kind));
        self.timeline.emit(
            Source::Dhcp,
            &kind,
            request.phone_name().as_deref(),
            &fields,
        );
    }

    fn foreign_reply(&mut self, packet: &[u8], peer: SocketAddr, now: Instant) {
        let message = match wire::check_header(packet, false)
            .map_err(|e| e.to_string())
            .and_then(|_| Message::from_bytes(packet).map_err(|e| e.to_string()))
        {
            Ok(message) => message,
            Err(error) => return self.malformed(peer, packet.len(), error, now),
        };
        let server_id = match message.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        if server_id == Some(self.server_ip) {
            return;
        }
        let server_ip = server_id.map(IpAddr::V4).unwrap_or(peer.ip());
        self.timeline.publish(
            NewEvent::new(Source::Dhcp, "dhcp.foreign_offer")
                .field("server_ip", server_ip.to_string())
                .field("offered", message.yiaddr().to_string())
                .field("peer", peer.to_string()),
        );
    }

    fn discover(&mut self, request: &Request, now: Instant) -> Option<Outgoing> {
        match self.leases.offer(request.mac, request.requested_ip, now) {
            Ok(ip) => {
                let lease = self.lease_time(request);
                Some(self.reply(request, MessageType::Offer, ip, Some(lease), None))
            }
            Err(refusal) => {
                self.timeline.publish(
                    NewEvent::new(Source::Dhcp, "dhcp.no_offer")
                        .phone(request.phone_name())
                        .field("mac", request.mac.colon())
                        .field("xid", request.xid())
                        .field("reason", refusal.to_string()),
                );
                None
            }
        }
    }

    fn request(&mut self, request: &Request, now: Instant) -> Option<Outgoing> {
        if let Some(other) = request.server_id.filter(|id| *id != self.server_ip) {
            // SELECTING another server's offer: ours is no longer wanted.
            tracing::debug!(mac = %request.mac, server = %other, "client chose another DHCP server");
            self.leases.withdraw_offer(&request.mac);
            return None;
        }
        let Some(address) = request.requested_ip.or(request.ciaddr()) else {
            return Some(self.reply(
                request,
                MessageType::Nak,
                Ipv4Addr::UNSPECIFIED,
                None,
                Some("no_address".into()),
            ));
        };
        if self.nak {
            return Some(self.reply(
                request,
                MessageType::Nak,
                address,
                None,
                Some("scenario_nak".into()),
            ));
        }
        let lease = self.lease_time(request);
        match self.leases.bind(request.mac, address, lease, now) {
            Ok(()) => {
                let reply = self.reply(request, MessageType::Ack, address, Some(lease), None);
                self.directory.bind_ip(&request.mac, IpAddr::V4(address));
                Some(reply)
            }
            Err(refusal) => Some(self.reply(
                request,
                MessageType::Nak,
                address,
                None,
                Some(refusal.to_string()),
            )),
        }
    }

    fn inform(&self, request: &Request) -> Option<Outgoing> {
        let address = request.ciaddr().unwrap_or(Ipv4Addr::UNSPECIFIED);
        Some(self.reply(request, MessageType::Ack, address, None, None))
    }

    fn lease_time(&self, request: &Request) -> Duration {
        self.plan
            .resolve(
                request.vendor_class.as_deref(),
                request.phone.as_ref().map(|p| p.name.as_str()),
            )
            .lease_time
            .unwrap_or(self.default_lease)
    }

    /// The configured options for this client, encoded; values that cannot be
    /// expanded for it (a `{phone.*}` value for a MAC not in the lab) are left
    /// out and reported.
    fn configured_options(
        &self,
        request: &Request,
    ) -> (BTreeMap<u8, Encoded>, BTreeMap<String, String>) {
        let resolved = self.plan.resolve(
            request.vendor_class.as_deref(),
            request.phone.as_ref().map(|p| p.name.as_str()),
        );
        let placeholders = match &request.phone {
            Some(phone) => self.placeholders.clone().with_phone(phone),
            None => self.placeholders.clone(),
        };
        let mut encoded = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (code, (value, _origin)) in &resolved.options {
            match options::encode(value, &placeholders) {
                Ok(option) => {
                    encoded.insert(*code, option);
                }
                Err(error) => {
                    errors.insert(code.to_string(), error.to_string());
                }
            }
        }
        (encoded, errors)
    }

    fn destination(&self, request: &Request, kind: MessageType) -> SocketAddr {
        if self.reply_mode == ReplyMode::ToSource {
            return request.peer;
        }
        let giaddr = request.message.giaddr();
        if !giaddr.is_unspecified() {
            return SocketAddr::V4(SocketAddrV4::new(giaddr, self.server_port));
        }
        match request.ciaddr() {
            // RFC 2131 §4.1: a NAK is broadcast; a client with an address gets the rest unicast.
            Some(ciaddr) if kind != MessageType::Nak => {
                SocketAddr::V4(SocketAddrV4::new(ciaddr, self.client_port))
            }
            _ => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, self.client_port)),
        }
    }

    fn reply(
        &self,
        request: &Request,
        kind: MessageType,
        address: Ipv4Addr,
        lease: Option<Duration>,
        reason: Option<String>,
    ) -> Outgoing {
        let asked = &request.message;
        let yiaddr = if matches!(kind, MessageType::Offer)
            || (kind == MessageType::Ack && lease.is_some())
        {
            address
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let mut message = Message::new_with_id(
            asked.xid(),
            asked.ciaddr(),
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            asked.giaddr(),
            asked.chaddr(),
        );
        message
            .set_opcode(Opcode::BootReply)
            .set_htype(asked.htype())
            .set_flags(asked.flags());
        if kind == MessageType::Nak {
            message.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        } else {
            message.set_siaddr(self.server_ip);
        }

        let mut shown = Map::new();
        let mut option_errors = BTreeMap::new();
        let opts = message.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.server_ip));
        shown.insert(
            "54".into(),
            Value::Array(vec![Value::String(self.server_ip.to_string())]),
        );
        if let Some(reason) = &reason {
            opts.insert(DhcpOption::Message(reason.clone()));
        }
        if kind != MessageType::Nak {
            let (configured, errors) = self.configured_options(request);
            option_errors = errors;
            let ip_list = |ip: Ipv4Addr| Encoded {
                bytes: ip.octets().to_vec(),
                shown: Value::Array(vec![Value::String(ip.to_string())]),
            };
            let seconds = |d: Duration| {
                let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
                Encoded {
                    bytes: secs.to_be_bytes().to_vec(),
                    shown: Value::from(secs),
                }
            };
            let mut all: BTreeMap<u8, Encoded> = BTreeMap::new();
            all.insert(1, ip_list(self.subnet_mask));
            // The rig is the bench's only host phones talk to: router and DNS default to it.
            all.insert(3, ip_list(self.server_ip));
            all.insert(6, ip_list(self.server_ip));
            if let Some(lease) = lease {
                all.insert(51, seconds(lease));
                all.insert(58, seconds(lease / 2));
                all.insert(59, seconds(lease * 7 / 8));
            }
            all.extend(configured);
            for (code, option) in all {
                opts.insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::from(code),
                    option.bytes,
                )));
                shown.insert(code.to_string(), option.shown);
            }
        }

        let mut bytes = message.to_vec().unwrap_or_else(|error| {
            // Encoding only fails on impossible lengths (chaddr > 16, sname > 64), which we never set.
            tracing::error!(%error, "cannot encode DHCP reply");
            Vec::new()
        });
        if bytes.len() < MIN_REPLY_LEN {
            bytes.resize(MIN_REPLY_LEN, 0);
        }
        let limit = reply_limit(&request.message);
        if bytes.len() > limit {
            // Sent anyway (the scenario asked for these options), but a phone
            // that drops it would otherwise be a mystery.
            self.timeline.publish(NewEvent::new(Source::Rig, "warning").field("service", "dhcp").field(
                "error",
                format!("{} to {} is {} bytes, more than the {limit} the client accepts (option 57, else 576-byte datagrams)", kind_name(kind), request.mac, bytes.len()),
            ));
        }
        let to = self.destination(request, kind);
        let fields = ReplyFields {
            mac: request.mac.colon(),
            xid: request.xid(),
            address: address.to_string(),
            to: to.to_string(),
            options: shown,
            reason,
            option_errors,
        };
        let event = format!("dhcp.{}", kind_name(kind));
        self.timeline.emit(
            Source::Dhcp,
            &event,
            request.phone_name().as_deref(),
            &fields,
        );
        Outgoing { bytes, to }
    }

    /// Called once the loop ends: a flood still being dropped is reported.
    pub fn finish(&mut self) {
        if let Some(report) = self.guard.finish() {
            self.timeline
                .publish(report.event(Source::Dhcp, "dhcp.flood"));
        }
    }
}

async fn recv_watch(
    watcher: &Option<UdpSocket>,
    buffer: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match watcher {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

/// Receives until shutdown; the sockets are dropped (ports released) when this returns.
pub(crate) async fn run(
    mut server: Server,
    socket: UdpSocket,
    watcher: Option<UdpSocket>,
    ctx: ServiceContext,
) {
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut buffer = vec![0u8; 4096];
    let mut watch_buffer = vec![0u8; 4096];
    // A flood that stopped is still reported without waiting for the next datagram.
    let mut report_tick = tokio::time::interval(REPORT_INTERVAL);
    loop {
        let received = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = report_tick.tick() => {
                server.report_flood(Instant::now());
                continue;
            }
            received = socket.recv_from(&mut buffer) => received,
            watched = recv_watch(&watcher, &mut watch_buffer) => {
                if let Ok((len, peer)) = watched {
                    server.watch(&watch_buffer[..len], peer, Instant::now());
                }
                continue;
            }
        };
        match received {
            Ok((len, peer)) => {
                if let Some(reply) = server.handle(&buffer[..len], peer, Instant::now()) {
                    if let Err(error) = socket.send_to(&reply.bytes, reply.to).await {
                        ctx.timeline.publish(
                            NewEvent::new(Source::Rig, "warning")
                                .field("service", "dhcp")
                                .field("addrs", [&local])
                                .field("error", format!("sending to {}: {error}", reply.to)),
                        );
                    }
                }
            }
            Err(error) => {
                // ICMP errors can surface here on some kernels; they concern a
                // past send, not the socket, so keep serving (after a breath,
                // in case the error repeats).
                tracing::warn!(%error, "DHCP receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    server.finish();
    drop(socket);
    drop(watcher);
    ctx.timeline.publish(
        NewEvent::new(Source::Rig, "service.stopped")
            .field("service", "dhcp")
            .field("addrs", [local]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonerig_core::flood::MALFORMED_SHOWN_PER_SOURCE;
    use phonerig_core::ProvisioningTree;
    use tokio_util::sync::CancellationToken;

    fn server() -> Server {
        let server_ip = Ipv4Addr::new(127, 0, 0, 1);
        let directory = PhoneDirectory::default();
        let ctx = ServiceContext {
            timeline: Timeline::in_memory(),
            tree: ProvisioningTree::new(None, Vec::new(), Placeholders::new(), directory.clone()),
            directory,
            bind_ip: IpAddr::V4(server_ip),
            placeholders: Placeholders::new(),
            shutdown: CancellationToken::new(),
        };
        let config = DhcpConfig::loopback(server_ip);
        let plan = OptionPlan::new(&Settings::default()).unwrap();
        Server::new(&ctx, &config, &Settings::default(), plan, server_ip)
    }

    fn kinds(server: &Server, kind: &str) -> Vec<Arc<phonerig_core::Event>> {
        server
            .timeline
            .snapshot()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    fn peer() -> SocketAddr {
        "127.0.0.2:6868".parse().unwrap()
    }

    fn discover(mac_last: u8) -> Vec<u8> {
        let mut message = Message::new_with_id(
            9,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, mac_last],
        );
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        message.to_vec().unwrap()
    }

    #[test]
    fn a_flood_is_dropped_and_reported_once() {
        let mut server = server();
        let now = Instant::now();
        let garbage = [0u8; 10];
        let burst = FloodLimits::BOOT_STORM.burst as usize;
        for _ in 0..burst + 50 {
            server.handle(&garbage, peer(), now);
        }
        assert_eq!(
            kinds(&server, "dhcp.malformed").len(),
            MALFORMED_SHOWN_PER_SOURCE as usize,
            "the first few are shown, the rest of the burst counted"
        );
        assert!(
            kinds(&server, "dhcp.flood").is_empty(),
            "reported per interval, not per packet"
        );
        let reply = server.handle(&discover(1), peer(), now + REPORT_INTERVAL);
        assert!(reply.is_some(), "served again once the flood subsides");
        let flood = kinds(&server, "dhcp.flood");
        assert_eq!(flood.len(), 1);
        assert_eq!(flood[0].field_u64("dropped"), Some(50));
        assert_eq!(
            flood[0].field_u64("malformed"),
            Some((burst - MALFORMED_SHOWN_PER_SOURCE as usize) as u64)
        );
        assert_eq!(flood[0].fields["sources"][0]["ip"], "127.0.0.2");
    }

    #[test]
    fn a_flood_still_going_at_shutdown_is_reported() {
        let mut server = server();
        let now = Instant::now();
        for _ in 0..(FloodLimits::BOOT_STORM.burst as usize + 3) {
            server.handle(&[1u8], peer(), now);
        }
        server.finish();
        assert_eq!(
            kinds(&server, "dhcp.flood")[0].field_u64("dropped"),
            Some(3)
        );
    }

    fn bootreply(server_id: Option<Ipv4Addr>) -> Vec<u8> {
        let mut message = Message::new_with_id(
            5,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(192, 168, 1, 77),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 5],
        );
        message.set_opcode(Opcode::BootReply);
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        if let Some(id) = server_id {
            message.opts_mut().insert(DhcpOption::ServerIdentifier(id));
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn another_servers_reply_is_reported_and_never_answered() {
        let mut server = server();
        let now = Instant::now();
        assert!(server
            .handle(&bootreply(Some(Ipv4Addr::new(192, 168, 1, 1))), peer(), now)
            .is_none());
        assert!(server
            .handle(&bootreply(None), "127.0.0.9:67".parse().unwrap(), now)
            .is_none());
        assert!(server
            .handle(&bootreply(Some(Ipv4Addr::new(127, 0, 0, 1))), peer(), now)
            .is_none());
        let foreign = kinds(&server, "dhcp.foreign_offer");
        assert_eq!(foreign.len(), 2, "our own replies are not foreign");
        assert_eq!(foreign[0].field_str("server_ip"), Some("192.168.1.1"));
        assert_eq!(foreign[0].field_str("offered"), Some("192.168.1.77"));
        assert_eq!(
            foreign[1].field_str("server_ip"),
            Some("127.0.0.9"),
            "without option 54 the sender is named"
        );
    }

    #[test]
    fn request_for_another_server_withdraws_our_offer_silently() {
        let mut server = server();
        let now = Instant::now();
        let offer = server.handle(&discover(7), peer(), now).unwrap();
        let offered = Message::from_bytes(&offer.bytes).unwrap().yiaddr();
        let mut request = Message::new_with_id(
            9,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 7],
        );
        request
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)));
        assert!(server
            .handle(&request.to_vec().unwrap(), peer(), now)
            .is_none());
        assert!(server.leases.lease(&Mac([2, 0, 0, 0, 0, 7])).is_none());
        // the address is free for the next client at once
        let next = server.handle(&discover(8), peer(), now).unwrap();
        assert_eq!(Message::from_bytes(&next.bytes).unwrap().yiaddr(), offered);
    }

    #[test]
    fn replies_larger_than_the_client_accepts_are_warned_about() {
        let mut settings = Settings::default();
        settings
            .options
            .insert("224".into(), crate::OptionValue::Text("x".repeat(300)));
        let mut server = server();
        server.plan = OptionPlan::new(&settings).unwrap();
        let now = Instant::now();
        let reply = server.handle(&discover(1), peer(), now).unwrap();
        assert!(reply.bytes.len() > 548);
        let warnings = kinds(&server, "warning");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0]
            .field_str("error")
            .unwrap()
            .contains("more than the 548"));

        let mut big = Message::new_with_id(
            9,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 2],
        );
        big.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        big.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
        server.handle(&big.to_vec().unwrap(), peer(), now).unwrap();
        assert_eq!(
            kinds(&server, "warning").len(),
            1,
            "a client that accepts 1500 bytes is fine"
        );
    }

    #[test]
    fn broadcast_mode_destinations_follow_rfc_2131() {
        let mut server = server();
        server.reply_mode = ReplyMode::Broadcast;
        server.client_port = 68;
        server.server_port = 67;
        let now = Instant::now();
        let offer = server.handle(&discover(1), peer(), now).unwrap();
        assert_eq!(offer.to.to_string(), "255.255.255.255:68");
        assert!(offer.bytes.len() >= MIN_REPLY_LEN);

        let mut renew = Message::new_with_id(
            3,
            Ipv4Addr::new(127, 0, 0, 100),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        renew
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let ack = server
            .handle(&renew.to_vec().unwrap(), peer(), now)
            .unwrap();
        assert_eq!(
            ack.to.to_string(),
            "127.0.0.100:68",
            "a client with an address is answered unicast"
        );

        let mut wrong = Message::new_with_id(
            4,
            Ipv4Addr::new(10, 9, 9, 9),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[2, 0, 0, 0, 0, 1],
        );
        wrong
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let nak = server
            .handle(&wrong.to_vec().unwrap(), peer(), now)
            .unwrap();
        assert_eq!(
            nak.to.to_string(),
            "255.255.255.255:68",
            "a NAK is broadcast"
        );

        let mut relayed = Message::new_with_id(
            5,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(127, 0, 0, 254),
            &[2, 0, 0, 0, 0, 2],
        );
        relayed
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let via_relay = server
            .handle(&relayed.to_vec().unwrap(), peer(), now)
            .unwrap();
        assert_eq!(via_relay.to.to_string(), "127.0.0.254:67");
    }
}

//! The endpoint core: receives everything from the transport, records it,
//! routes responses to client transactions and requests to the registrar or
//! the user agent; and the transaction layer (RFC 3261 §17) the rig needs:
//! client non-INVITE (timers E/F), client INVITE (timers A/B, ACK for
//! non-2xx), and server-side absorption of retransmitted requests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phonerig_core::event::NewEvent;
use phonerig_core::{ServiceContext, Source};
use tokio::sync::mpsc;

use crate::call::Calls;
use crate::message::{response_to, user_of, Builder, SipMsg, Transport};
use crate::registrar::Registrar;
use crate::rtp::PortPool;
use crate::server_transactions::{Arrival, ServerKey, ServerTransactions};
use crate::transport::{Bounds, Received, SipTransport, StreamTrouble};
use crate::{AnswerPolicy, Registration, Settings, SipConfig};

/// The last response sent in a server transaction and where it went,
/// resent when the request is retransmitted.
type SentResponse = (SipMsg, SocketAddr, Transport);

/// Server transactions kept at once at most. Each is kept 2·64·T1 after its
/// request arrived; only above 131 072 / 64 s ≈ 2 000 requests/s sustained
/// (the flood guard's default budget is 2 500 datagrams/s) are the oldest
/// forgotten earlier — at ≤ 4 096 requests/s still after ≥ 32 s = 64·T1
/// (default T1), past the last retransmission a client sends (timer F).
const MAX_SERVER_TRANSACTIONS: usize = 131_072;

pub(crate) struct Core {
    pub ctx: ServiceContext,
    pub config: SipConfig,
    pub settings: Settings,
    pub extensions: Vec<String>,
    pub transport: SipTransport,
    pub addrs: Vec<SocketAddr>,
    /// Host in the rig's URIs and the digest realm.
    pub domain: String,
    /// The TLS listener's port, when TLS is on.
    pub tls_port: Option<u16>,
    pub registrar: Registrar,
    pub calls: Calls,
    pub rtp_pool: Arc<PortPool>,
    answer_policies: Mutex<BTreeMap<String, AnswerPolicy>>,
    inbound_labels: Mutex<BTreeMap<String, String>>,
    client_transactions: Mutex<HashMap<String, mpsc::UnboundedSender<SipMsg>>>,
    server_transactions: Mutex<ServerTransactions<SentResponse>>,
    inbox: Mutex<
        Option<(
            mpsc::Receiver<Received>,
            mpsc::UnboundedReceiver<StreamTrouble>,
        )>,
    >,
}

impl Core {
    pub async fn start(
        ctx: ServiceContext,
        config: SipConfig,
        settings: Settings,
    ) -> anyhow::Result<Arc<Core>> {
        let algorithm = settings.auth_algorithm()?;
        config
            .flood
            .check()
            .map_err(|e| anyhow::anyhow!("sip {e}"))?;
        anyhow::ensure!(
            config.max_connections > 0,
            "sip max_connections must be at least 1"
        );
        let bind = SocketAddr::new(ctx.bind_ip, config.port);
        let tls = match &config.tls {
            Some(tls) => Some((tls.port, crate::tls::acceptor(tls)?)),
            None => None,
        };
        let tls_port = config.tls.as_ref().map(|t| t.port);
        let (transport, addrs, received, trouble) = SipTransport::bind(
            bind,
            config.tcp,
            tls,
            Bounds {
                flood: config.flood,
                max_connections: config.max_connections,
            },
            ctx.shutdown.child_token(),
        )
        .await?;
        let domain = config
            .domain
            .clone()
            .unwrap_or_else(|| ctx.bind_ip.to_string());
        let core = Core {
            extensions: settings.extensions(),
            registrar: Registrar::new(domain.clone(), algorithm, settings.register.clone()),
            answer_policies: Mutex::new(settings.answer.clone()),
            inbound_labels: Mutex::new(BTreeMap::new()),
            rtp_pool: Arc::new(PortPool::new(config.rtp_ports.clone())),
            calls: Calls::default(),
            client_transactions: Mutex::new(HashMap::new()),
            server_transactions: Mutex::new(ServerTransactions::new(
                config.timers.timeout() * 2,
                MAX_SERVER_TRANSACTIONS,
            )),
            inbox: Mutex::new(Some((received, trouble))),
            domain,
            tls_port,
            addrs,
            transport,
            ctx,
            config,
            settings,
        };
        Ok(Arc::new(core))
    }

    /// The dispatcher: one message at a time in arrival order; work that
    /// waits (answer delays, transactions) is spawned off.
    pub async fn run(self: Arc<Self>) {
        let Some((mut received, mut trouble)) =
            self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
        else {
            return;
        };
        let shutdown = self.ctx.shutdown.clone();
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = housekeeping.tick() => {
                    crate::registrar::publish_expired(&self);
                    if let Some(report) = self.transport.take_flood_report() {
                        self.ctx.timeline.publish(report.event(Source::Sip, "sip.flood"));
                    }
                }
                Some(trouble) = trouble.recv() => match trouble {
                    StreamTrouble::Framing { peer, transport, error } => self.malformed(peer, transport, 0, &error.to_string()),
                    StreamTrouble::Handshake { peer, error } => self.malformed(peer, Transport::Tls, 0, &format!("TLS handshake: {error}")),
                },
                next = received.recv() => match next {
                    Some(received) => self.dispatch(received),
                    None => break,
                },
            }
        }
        self.transport.close().await;
        if let Some(report) = self.transport.finish_flood_report() {
            self.ctx
                .timeline
                .publish(report.event(Source::Sip, "sip.flood"));
        }
        self.calls.clear();
        self.ctx
            .timeline
            .publish(self.lifecycle_event("service.stopped"));
    }

    /// `service.started` / `service.stopped` (source `rig`), as every service publishes.
    pub fn lifecycle_event(&self, kind: &str) -> NewEvent {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        NewEvent::new(Source::Rig, kind)
            .field("service", "sip")
            .field("addrs", addrs)
    }

    fn dispatch(self: &Arc<Self>, received: Received) {
        let Received {
            bytes,
            peer,
            transport,
        } = received;
        let msg = match SipMsg::parse(&bytes) {
            Ok(msg) => msg,
            Err(error) => return self.malformed(peer, transport, bytes.len(), &error.to_string()),
        };
        self.record(&msg, "in", peer, transport);
        if !msg.is_request() {
            return self.route_response(msg);
        }
        if msg.method() != "ACK" && self.absorb_retransmission(&msg) {
            return;
        }
        let core = self.clone();
        match msg.method().as_str() {
            "REGISTER" => {
                tokio::spawn(
                    async move { crate::registrar::handle(&core, msg, peer, transport).await },
                )
            }
            "INVITE" | "ACK" | "BYE" | "CANCEL" => tokio::spawn(async move {
                crate::call::handle_request(&core, msg, peer, transport).await
            }),
            "OPTIONS" | "INFO" | "NOTIFY" => tokio::spawn(async move {
                core.respond(
                    &msg,
                    response_to(&msg, Some(&crate::message::token(4))),
                    200,
                    peer,
                    transport,
                )
                .await;
            }),
            // The rig offers no event packages (BLF, MWI): RFC 6665 §8.3.1.
            "SUBSCRIBE" | "PUBLISH" => tokio::spawn(async move {
                core.respond(
                    &msg,
                    response_to(&msg, Some(&crate::message::token(4))),
                    489,
                    peer,
                    transport,
                )
                .await;
            }),
            _ => tokio::spawn(async move {
                let allow = response_to(&msg, Some(&crate::message::token(4))).header(
                    "Allow",
                    "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY, REGISTER",
                );
                core.respond(&msg, allow, 405, peer, transport).await;
            }),
        };
    }

    /// `sip.malformed` for the first few from a source; the rest are
    /// counted for the next `sip.flood`.
    fn malformed(&self, peer: SocketAddr, transport: Transport, len: usize, error: &str) {
        if !self.transport.show_malformed(peer) {
            return;
        }
        let phone = self.ctx.directory.by_ip(peer.ip()).map(|p| p.name.clone());
        self.ctx.timeline.publish(
            NewEvent::new(Source::Sip, "sip.malformed")
                .phone(phone)
                .field("peer", peer.to_string())
                .field("transport", transport)
                .field("len", len)
                .field("error", error),
        );
    }

    /// Publishes `sip.message` for one message in or out.
    pub fn record(&self, msg: &SipMsg, direction: &str, peer: SocketAddr, transport: Transport) {
        let call_id = msg.call_id();
        let (mut role, dialog, call_phone) = self.calls.labels(&call_id).unwrap_or_default();
        if role.is_none() && msg.is_request() {
            let ours = if direction == "in" {
                msg.request_user()
            } else {
                user_of(&msg.from())
            };
            role = ours.and_then(|user| self.route(&user).map(|(ext, _)| ext));
        }
        // The phone is the other party: the sender of what came in as a request
        // or went out as a response, the addressee otherwise.
        let other = if (direction == "in") == msg.is_request() {
            msg.from()
        } else {
            msg.to()
        };
        let phone = call_phone
            .or_else(|| self.ctx.directory.by_ip(peer.ip()).map(|p| p.name.clone()))
            .or_else(|| {
                user_of(&other)
                    .and_then(|user| self.ctx.directory.by_ext(&user))
                    .map(|p| p.name.clone())
            });
        let cseq = msg.header("cseq").unwrap_or_default();
        self.ctx.timeline.publish(
            NewEvent::new(Source::Sip, "sip.message")
                .phone(phone)
                .field("direction", direction)
                .field("first_line", msg.first_line())
                .field("method", msg.is_request().then(|| msg.method()))
                .field("status", msg.status())
                .field("call_id", call_id)
                .field("cseq", cseq)
                .field("from", msg.from())
                .field("to", msg.to())
                .field("from_tag", msg.from_tag())
                .field("to_tag", msg.to_tag())
                .field("peer", peer.to_string())
                .field("transport", transport)
                .field("raw", &msg.raw)
                .field("role", role)
                .field("dialog", dialog),
        );
    }

    /// Records and sends one message.
    pub async fn send(
        &self,
        msg: &SipMsg,
        dest: SocketAddr,
        transport: Transport,
    ) -> anyhow::Result<()> {
        self.record(msg, "out", dest, transport);
        self.transport
            .send(msg.raw.as_bytes(), dest, transport)
            .await
    }

    /// Sends a response to `request` and remembers it for retransmissions of the request.
    pub async fn respond(
        &self,
        request: &SipMsg,
        builder: Builder,
        code: u16,
        peer: SocketAddr,
        transport: Transport,
    ) -> SipMsg {
        let response = builder.header("Server", "phonerig").response(code);
        if let Some(key) = ServerKey::of(request) {
            self.server_transactions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answered(key, (response.clone(), peer, transport), Instant::now());
        }
        if let Err(error) = self.send(&response, peer, transport).await {
            tracing::warn!(%error, %peer, "cannot send SIP response");
        }
        response
    }

    /// True when `request` repeats one already seen: the last response (if any) is resent.
    fn absorb_retransmission(self: &Arc<Self>, request: &SipMsg) -> bool {
        let Some(key) = ServerKey::of(request) else {
            return false;
        };
        let arrival = self
            .server_transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .arrived(key, Instant::now());
        match arrival {
            Arrival::New => false,
            Arrival::Again(last_response) => {
                if let Some((response, peer, transport)) = last_response {
                    let core = self.clone();
                    tokio::spawn(async move {
                        let _ = core.send(&response, peer, transport).await;
                    });
                }
                true
            }
        }
    }

    fn route_response(self: &Arc<Self>, response: SipMsg) {
        let key = response
            .branch()
            .map(|branch| client_key(&branch, &response.method()));
        let waiting = key.and_then(|key| {
            self.client_transactions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
        });
        match waiting {
            Some(sender) => {
                let _ = sender.send(response);
            }
            // A 2xx to INVITE outlives its transaction (RFC 3261 §13.2.2.4): the UA re-ACKs.
            None if response.method() == "INVITE"
                && response.status().is_some_and(|s| (200..300).contains(&s)) =>
            {
                let core = self.clone();
                tokio::spawn(async move { crate::call::reack(&core, &response).await });
            }
            None => {}
        }
    }

    fn register_client(&self, key: &str) -> mpsc::UnboundedReceiver<SipMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.client_transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), tx);
        rx
    }

    fn unregister_client(&self, key: &str) {
        self.client_transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// A client non-INVITE transaction (RFC 3261 §17.1.2): retransmits over UDP
    /// at T1, 2·T1 … capped at T2 (at T2 once a provisional came), gives up
    /// after 64·T1. Returns the final response, or `None` on timeout.
    pub async fn non_invite(
        &self,
        request: &SipMsg,
        dest: SocketAddr,
        transport: Transport,
    ) -> anyhow::Result<Option<SipMsg>> {
        let branch = request
            .branch()
            .ok_or_else(|| anyhow::anyhow!("request without branch"))?;
        let key = client_key(&branch, &request.method());
        let mut responses = self.register_client(&key);
        let result = self
            .non_invite_inner(request, dest, transport, &mut responses)
            .await;
        self.unregister_client(&key);
        result
    }

    async fn non_invite_inner(
        &self,
        request: &SipMsg,
        dest: SocketAddr,
        transport: Transport,
        responses: &mut mpsc::UnboundedReceiver<SipMsg>,
    ) -> anyhow::Result<Option<SipMsg>> {
        let timers = self.config.timers;
        let deadline = tokio::time::Instant::now() + timers.timeout();
        let mut interval = timers.t1;
        self.send(request, dest, transport).await?;
        let mut next_retransmit = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = tokio::time::sleep_until(next_retransmit), if transport.is_unreliable() => {
                    self.send(request, dest, transport).await?;
                    interval = (interval * 2).min(timers.t2);
                    next_retransmit = tokio::time::Instant::now() + interval;
                }
                response = responses.recv() => {
                    let Some(response) = response else { return Ok(None) };
                    match response.status() {
                        Some(code) if code >= 200 => return Ok(Some(response)),
                        _ => {
                            interval = timers.t2;
                            next_retransmit = tokio::time::Instant::now() + interval;
                        }
                    }
                }
            }
        }
    }

    /// A client INVITE transaction (RFC 3261 §17.1.1). Responses are passed
    /// on as they come; UDP retransmission (timer A) stops at the first one;
    /// no response within 64·T1 (timer B) ends the channel with `Timeout`.
    /// Non-2xx finals are ACKed here, and their retransmissions re-ACKed
    /// for 64·T1 (timer D).
    pub fn invite_client(
        self: &Arc<Self>,
        invite: SipMsg,
        dest: SocketAddr,
        transport: Transport,
    ) -> mpsc::UnboundedReceiver<InviteEvent> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let core = self.clone();
        tokio::spawn(async move {
            let Some(branch) = invite.branch() else {
                return;
            };
            let key = client_key(&branch, "INVITE");
            let mut responses = core.register_client(&key);
            core.invite_client_inner(&invite, dest, transport, &mut responses, &events_tx)
                .await;
            core.unregister_client(&key);
        });
        events_rx
    }

    async fn invite_client_inner(
        &self,
        invite: &SipMsg,
        dest: SocketAddr,
        transport: Transport,
        responses: &mut mpsc::UnboundedReceiver<SipMsg>,
        events: &mpsc::UnboundedSender<InviteEvent>,
    ) {
        let timers = self.config.timers;
        if let Err(error) = self.send(invite, dest, transport).await {
            let _ = events.send(InviteEvent::Failed(error.to_string()));
            return;
        }
        let timer_b = tokio::time::Instant::now() + timers.timeout();
        let mut interval = timers.t1;
        let mut next_retransmit = tokio::time::Instant::now() + interval;
        let mut answered_at_all = false;
        let mut check_closed = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(timer_b), if !answered_at_all => {
                    let _ = events.send(InviteEvent::Timeout);
                    return;
                }
                _ = tokio::time::sleep_until(next_retransmit), if !answered_at_all && transport.is_unreliable() => {
                    let _ = self.send(invite, dest, transport).await;
                    interval *= 2;
                    next_retransmit = tokio::time::Instant::now() + interval;
                }
                _ = check_closed.tick() => {
                    if events.is_closed() {
                        return;
                    }
                }
                response = responses.recv() => {
                    let Some(response) = response else { return };
                    answered_at_all = true;
                    let code = response.status().unwrap_or(0);
                    if code >= 300 {
                        let ack = ack_for_failure(invite, &response);
                        let _ = self.send(&ack, dest, transport).await;
                        let _ = events.send(InviteEvent::Response(Box::new(response)));
                        // Timer D: absorb retransmitted final responses.
                        let timer_d = tokio::time::Instant::now() + if transport.is_unreliable() { timers.timeout() } else { Duration::ZERO };
                        while let Ok(Some(_again)) = tokio::time::timeout_at(timer_d, responses.recv()).await {
                            let _ = self.send(&ack, dest, transport).await;
                        }
                        return;
                    }
                    let _ = events.send(InviteEvent::Response(Box::new(response)));
                    if code >= 200 {
                        return;
                    }
                }
            }
        }
    }

    /// Where requests to a registered phone go: the address its REGISTER came
    /// from (right through NAT, and the phone's own TCP connection) — unless
    /// that TCP connection has closed, then its Contact (RFC 3261 §18.2.2).
    pub fn registration_target(&self, registration: &Registration) -> SocketAddr {
        if registration.transport == Transport::Tcp
            && !self.transport.has_connection(registration.source)
        {
            return crate::message::socket_of_uri(&registration.contact)
                .unwrap_or(registration.source);
        }
        registration.source
    }

    /// The label calls arriving at `ext` carry in their events.
    pub fn inbound_label(&self, ext: &str) -> Option<String> {
        self.inbound_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ext)
            .cloned()
    }

    pub fn set_inbound_label(&self, ext: &str, label: Option<String>) {
        let mut labels = self
            .inbound_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match label {
            Some(label) => labels.insert(ext.to_owned(), label),
            None => labels.remove(ext),
        };
    }

    /// The extension an INVITE's Request-URI user reaches, and whether it came
    /// through the silent-intercom feature code (answered at once). `None`: 404.
    pub fn route(&self, requested: &str) -> Option<(String, bool)> {
        if self.extensions.iter().any(|e| e == requested) {
            return Some((requested.to_owned(), false));
        }
        let prefix = self.settings.silent_intercom.as_deref()?;
        let ext = requested.strip_prefix(prefix).filter(|e| !e.is_empty())?;
        self.extensions
            .iter()
            .any(|e| e == ext)
            .then(|| (ext.to_owned(), true))
    }

    pub fn answer_policy(&self, ext: &str) -> AnswerPolicy {
        self.answer_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ext)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_answer_policy(&self, ext: &str, policy: AnswerPolicy) {
        self.answer_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ext.to_owned(), policy);
    }

    /// `Via` for a new request from the rig.
    pub fn via(&self, transport: Transport, branch: &str) -> String {
        let local = self.transport.local_addr();
        let port = match transport {
            Transport::Tls => self.tls_port.unwrap_or(5061),
            Transport::Udp | Transport::Tcp => local.port(),
        };
        let sent_by = SocketAddr::new(local.ip(), port);
        format!(
            "SIP/2.0/{} {sent_by};branch={branch};rport",
            transport.via_name()
        )
    }

    /// `Contact` for the rig playing `user`.
    pub fn contact(&self, user: &str, transport: Transport) -> String {
        let local = self.transport.local_addr();
        match transport {
            Transport::Udp => format!("<sip:{user}@{local}>"),
            Transport::Tcp => format!("<sip:{user}@{local};transport=tcp>"),
            Transport::Tls => {
                let tls = SocketAddr::new(local.ip(), self.tls_port.unwrap_or(5061));
                format!("<sip:{user}@{tls};transport=tls>")
            }
        }
    }
}

/// What an INVITE client transaction reports.
#[derive(Debug)]
pub enum InviteEvent {
    Response(Box<SipMsg>),
    Timeout,
    Failed(String),
}

/// Client transactions are matched by branch and CSeq method (RFC 3261 §17.1.3):
/// a CANCEL shares its INVITE's branch.
fn client_key(branch: &str, method: &str) -> String {
    format!("{branch} {method}")
}

/// The ACK of RFC 3261 §17.1.1.3: same branch and Request-URI, To from the response.
fn ack_for_failure(invite: &SipMsg, response: &SipMsg) -> SipMsg {
    let via = invite
        .headers_named("via")
        .into_iter()
        .next()
        .unwrap_or_default();
    let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    let uri = invite.request_uri().unwrap_or_default();
    Builder::new()
        .header("Via", via)
        .header("Max-Forwards", "70")
        .header("From", invite.from())
        .header("To", response.to())
        .header("Call-ID", invite.call_id())
        .header("CSeq", format!("{cseq} ACK"))
        .request(rsip::Method::Ack, &uri)
        .unwrap_or_else(|_| invite.clone())
}

//! The extensions the rig plays, as user agents (RFC 3261 §12–15, RFC 3264):
//! answering INVITEs routed by Request-URI user, placing calls to phones,
//! hold/resume by re-INVITE, BYE and CANCEL. Each call owns one RTP stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use phonerig_core::event::NewEvent;
use phonerig_core::{PhoneInfo, Source};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

use crate::endpoint::{Core, InviteEvent};
use crate::message::{
    header_param, new_branch, response_to, socket_of_uri, token, uri_of, user_of, Builder, SipMsg,
    Transport,
};
use crate::rtp::{MediaPlan, PortLease, RtpStream, StreamLabels};
use crate::sdp::{self, Direction, RemoteMedia};
use crate::{AnswerPolicy, CallId, CallOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallDirection {
    Inbound,
    Outbound,
}

impl CallDirection {
    fn as_str(self) -> &'static str {
        match self {
            CallDirection::Inbound => "inbound",
            CallDirection::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallState {
    /// INVITE sent, nothing back yet.
    Calling,
    Ringing,
    Answered,
    Ended,
}

/// What the dispatcher and the handle need without locking a call.
#[derive(Debug, Clone)]
struct CallMeta {
    role: String,
    dialog: Option<String>,
    phone: Option<String>,
    state: CallState,
    direction: CallDirection,
    order: u64,
}

/// Ended calls whose labels are kept for late messages (ACK, retransmissions).
const ENDED_KEPT: usize = 256;

/// Live calls plus the labels of ended ones (late messages still get their role).
#[derive(Default)]
pub(crate) struct Calls {
    live: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Call>>>>,
    meta: Mutex<HashMap<String, CallMeta>>,
    /// ACKs sent for 2xx, resent when the 2xx is retransmitted.
    acks: Mutex<HashMap<String, (SipMsg, SocketAddr, Transport)>>,
    order: AtomicU64,
}

impl Calls {
    /// Adds a call unless `max` calls are live already (checked and inserted
    /// under one lock, so concurrent INVITEs cannot overshoot the bound).
    fn insert(&self, call: Call, max: usize) -> Option<Arc<tokio::sync::Mutex<Call>>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() >= max {
            return None;
        }
        let meta = CallMeta {
            role: call.role.clone(),
            dialog: call.dialog.clone(),
            phone: call.phone.clone(),
            state: call.state,
            direction: call.direction,
            order: self.order.fetch_add(1, Ordering::Relaxed),
        };
        let call_id = call.call_id.clone();
        let shared = Arc::new(tokio::sync::Mutex::new(call));
        self.meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call_id.clone(), meta);
        live.insert(call_id, shared.clone());
        Some(shared)
    }

    fn get(&self, call_id: &str) -> Option<Arc<tokio::sync::Mutex<Call>>> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(call_id)
            .cloned()
    }

    fn set_state(&self, call_id: &str, state: CallState) {
        if let Some(meta) = self
            .meta
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(call_id)
        {
            meta.state = state;
        }
        if state == CallState::Ended {
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(call_id);
            self.acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(call_id);
            self.forget_oldest_ended();
        }
    }

    /// Keeps the labels of the last [`ENDED_KEPT`] ended calls only.
    fn forget_oldest_ended(&self) {
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended: Vec<(u64, String)> = meta
            .iter()
            .filter(|(_, m)| m.state == CallState::Ended)
            .map(|(id, m)| (m.order, id.clone()))
            .collect();
        if ended.len() > ENDED_KEPT {
            ended.sort();
            for (_, id) in &ended[..ended.len() - ENDED_KEPT] {
                meta.remove(id);
            }
        }
    }

    /// `(role, dialog, phone)` for a Call-ID the rig knows.
    pub fn labels(
        &self,
        call_id: &str,
    ) -> Option<(Option<String>, Option<String>, Option<String>)> {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        meta.get(call_id)
            .map(|m| (Some(m.role.clone()), m.dialog.clone(), m.phone.clone()))
    }

    /// The newest live call at `ext` that `accept` likes.
    fn find(
        &self,
        ext: &str,
        accept: impl Fn(CallState, CallDirection) -> bool,
    ) -> Option<Arc<tokio::sync::Mutex<Call>>> {
        let meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let call_id = meta
            .iter()
            .filter(|(_, m)| m.role == ext && accept(m.state, m.direction))
            .max_by_key(|(_, m)| m.order)
            .map(|(id, _)| id.clone())?;
        drop(meta);
        self.get(&call_id)
    }

    fn active(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Drops every call (their RTP streams stop): service shutdown.
    pub fn clear(&self) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

pub(crate) struct Call {
    call_id: String,
    /// The extension the rig plays in this call.
    role: String,
    /// The other side's user (the phone's extension).
    remote_user: String,
    direction: CallDirection,
    dialog: Option<String>,
    phone: Option<String>,
    state: CallState,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our and their From/To values without tags.
    local_uri: String,
    remote_uri: String,
    /// Their Contact: Request-URI of in-dialog requests.
    remote_target: String,
    peer: SocketAddr,
    transport: Transport,
    local_cseq: u32,
    /// Inbound: the INVITE being answered. Outbound: the INVITE sent (for CANCEL).
    invite: SipMsg,
    session_id: u64,
    sdp_version: u64,
    /// What the rig wants: sendrecv, or sendonly while it holds the call.
    wanted: Direction,
    local_dir: Option<Direction>,
    remote_media: Option<RemoteMedia>,
    payload_type: u8,
    rtp_socket: Option<(UdpSocket, PortLease)>,
    rtp_local: SocketAddr,
    stream: Option<RtpStream>,
    acked: Arc<Notify>,
    cancel_requested: bool,
    /// The phone holds us (its last offer was sendonly/inactive).
    held_by_remote: bool,
}

impl Call {
    fn plan(&self) -> MediaPlan {
        let remote = self.remote_media.as_ref();
        let send = self.local_dir.is_some_and(Direction::sends)
            && remote.is_some_and(|m| m.direction.receives());
        MediaPlan {
            remote: remote.and_then(|m| m.rtp),
            send,
            payload_type: self.payload_type,
        }
    }

    /// Where in-dialog requests go: the TCP connection, or their Contact over UDP.
    fn dialog_dest(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp | Transport::Tls => self.peer,
            Transport::Udp => socket_of_uri(&self.remote_target).unwrap_or(self.peer),
        }
    }

    /// Our SDP: the RTP socket is bound to the service address, which is also the media address.
    fn sdp(&self, payload_types: &[u8], direction: Direction) -> String {
        sdp::build(
            self.session_id,
            self.sdp_version,
            self.rtp_local.ip(),
            self.rtp_local.port(),
            payload_types,
            direction,
        )
    }
}

/// A From/To value without its tag parameter.
fn without_tag(value: &str) -> String {
    let Some(tag) = header_param(value, "tag") else {
        return value.to_owned();
    };
    value.replace(&format!(";tag={tag}"), "")
}

/// The payload type the rig answers with: the offerer's first that it can encode.
fn choose_codec(offer: &RemoteMedia) -> u8 {
    offer
        .payload_types
        .iter()
        .copied()
        .find(|pt| sdp::can_encode(*pt))
        .or_else(|| offer.common_codec())
        .unwrap_or(0)
}

fn emit_state(core: &Core, call: &Call, state: &str, code: Option<u16>) {
    core.ctx.timeline.publish(
        NewEvent::new(Source::Sip, "call.state")
            .phone(call.phone.clone())
            .field("call_id", &call.call_id)
            .field("role", &call.role)
            .field("remote", &call.remote_user)
            .field("direction", call.direction.as_str())
            .field("state", state)
            .field("code", code)
            .field("local_sdp_direction", call.local_dir.map(Direction::as_str))
            .field(
                "remote_sdp_direction",
                call.remote_media.as_ref().map(|m| m.direction.as_str()),
            )
            .field("dialog", &call.dialog),
    );
}

fn set_state(core: &Core, call: &mut Call, state: CallState) {
    call.state = state;
    core.calls.set_state(&call.call_id, state);
    if state == CallState::Ended {
        call.stream = None;
        call.rtp_socket = None;
    }
}

fn start_or_update_stream(core: &Core, call: &mut Call) {
    let plan = call.plan();
    if let Some(stream) = &call.stream {
        stream.update(plan);
        return;
    }
    let Some((socket, lease)) = call.rtp_socket.take() else {
        return;
    };
    let labels = StreamLabels {
        call_id: call.call_id.clone(),
        local_ext: call.role.clone(),
        remote_ext: call.remote_user.clone(),
        dialog: call.dialog.clone(),
        phone: call.phone.clone(),
    };
    match RtpStream::start(
        socket,
        lease,
        plan,
        labels,
        core.settings.audio,
        core.ctx.timeline.clone(),
        &core.ctx.shutdown,
    ) {
        Ok(stream) => call.stream = Some(stream),
        Err(error) => tracing::warn!(%error, "cannot start RTP stream"),
    }
}

fn phone_name(core: &Core, user: &str, peer: SocketAddr) -> Option<String> {
    core.ctx
        .directory
        .by_ext(user)
        .or_else(|| core.ctx.directory.by_ip(peer.ip()))
        .map(|p| p.name.clone())
}

pub(crate) async fn handle_request(
    core: &Arc<Core>,
    request: SipMsg,
    peer: SocketAddr,
    transport: Transport,
) {
    match request.method().as_str() {
        "INVITE" if request.to_tag().is_some() => {
            reinvite_from_phone(core, request, peer, transport).await
        }
        "INVITE" => new_inbound(core, request, peer, transport).await,
        "ACK" => ack_received(core, request).await,
        "BYE" => bye_received(core, request, peer, transport).await,
        "CANCEL" => cancel_received(core, request, peer, transport).await,
        _ => {}
    }
}

async fn new_inbound(core: &Arc<Core>, invite: SipMsg, peer: SocketAddr, transport: Transport) {
    let tag = token(4);
    let requested = invite.request_user().unwrap_or_default();
    let Some((ext, silent_intercom)) = core.route(&requested) else {
        core.respond(
            &invite,
            response_to(&invite, Some(&tag)),
            404,
            peer,
            transport,
        )
        .await;
        return;
    };
    let (socket, lease) = match core.rtp_pool.bind(core.ctx.bind_ip).await {
        Ok(bound) => bound,
        Err(error) => {
            core.respond(
                &invite,
                response_to(&invite, Some(&tag))
                    .header("Warning", format!("399 phonerig \"{error}\"")),
                503,
                peer,
                transport,
            )
            .await;
            return;
        }
    };
    let remote_user = user_of(&invite.from()).unwrap_or_default();
    let remote_media = if invite.body().is_empty() {
        None
    } else {
        sdp::parse(&invite.body_text())
    };
    let contact = invite
        .header("contact")
        .map(|c| uri_of(&c))
        .unwrap_or_else(|| uri_of(&invite.from()));
    let rtp_local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(core.ctx.bind_ip, lease.port));
    let call = Call {
        call_id: invite.call_id(),
        role: ext.clone(),
        phone: phone_name(core, &remote_user, peer),
        remote_user,
        direction: CallDirection::Inbound,
        dialog: core.inbound_label(&ext),
        state: CallState::Ringing,
        local_tag: tag.clone(),
        remote_tag: invite.from_tag(),
        local_uri: invite.to(),
        remote_uri: without_tag(&invite.from()),
        remote_target: contact,
        peer,
        transport,
        local_cseq: 1,
        invite: invite.clone(),
        session_id: u64::from(rand::random::<u32>()),
        sdp_version: 1,
        wanted: Direction::SendRecv,
        local_dir: None,
        payload_type: remote_media.as_ref().map(choose_codec).unwrap_or(0),
        remote_media,
        rtp_socket: Some((socket, lease)),
        rtp_local,
        stream: None,
        acked: Arc::new(Notify::new()),
        cancel_requested: false,
        held_by_remote: false,
    };
    let Some(shared) = core.calls.insert(call, core.config.max_calls) else {
        let busy = response_to(&invite, Some(&tag))
            .header("Warning", "399 phonerig \"max_calls reached\"");
        core.respond(&invite, busy, 486, peer, transport).await;
        return;
    };
    let mut call = shared.lock().await;
    core.respond(&invite, response_to(&invite, None), 100, peer, transport)
        .await;
    core.respond(
        &invite,
        response_to(&invite, Some(&tag)).header("Contact", core.contact(&ext, transport)),
        180,
        peer,
        transport,
    )
    .await;
    emit_state(core, &call, "ringing", Some(180));
    // A silent intercom is answered by the PBX for the extension: no policy applies.
    let policy = if silent_intercom {
        AnswerPolicy::Immediately
    } else {
        core.answer_policy(&ext)
    };
    match policy {
        AnswerPolicy::Immediately => answer_locked(core, &mut call).await,
        AnswerPolicy::Reject(code) => reject_locked(core, &mut call, code).await,
        AnswerPolicy::Ring => {}
        AnswerPolicy::After(delay) => {
            let core = core.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay.0).await;
                let mut call = shared.lock().await;
                if call.state == CallState::Ringing {
                    answer_locked(&core, &mut call).await;
                }
            });
        }
    }
}

async fn answer_locked(core: &Arc<Core>, call: &mut Call) {
    let (local_dir, payload_types) = match &call.remote_media {
        Some(offer) => (
            Direction::answer_to(offer.direction, call.wanted),
            vec![call.payload_type],
        ),
        None => (call.wanted, sdp::CODECS.iter().map(|(pt, _)| *pt).collect()),
    };
    call.local_dir = Some(local_dir);
    let body = call.sdp(&payload_types, local_dir);
    let builder = response_to(&call.invite, Some(&call.local_tag))
        .header("Contact", core.contact(&call.role, call.transport))
        .body("application/sdp", body);
    let ok = core
        .respond(&call.invite, builder, 200, call.peer, call.transport)
        .await;
    set_state(core, call, CallState::Answered);
    start_or_update_stream(core, call);
    emit_state(core, call, "answered", Some(200));
    retransmit_2xx(core, ok, call.peer, call.transport, call.acked.clone());
}

/// RFC 3261 §13.3.1.4: the UAS resends its 2xx over UDP until the ACK comes.
fn retransmit_2xx(
    core: &Arc<Core>,
    ok: SipMsg,
    peer: SocketAddr,
    transport: Transport,
    acked: Arc<Notify>,
) {
    if !transport.is_unreliable() {
        return;
    }
    let core = core.clone();
    tokio::spawn(async move {
        let timers = core.config.timers;
        let give_up = tokio::time::Instant::now() + timers.timeout();
        let mut interval = timers.t1;
        loop {
            tokio::select! {
                _ = acked.notified() => return,
                // A stopped service sends nothing more: the next case's phone
                // must not receive (and the timeline not record) a stale 200.
                _ = core.ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {
                    if tokio::time::Instant::now() >= give_up {
                        return;
                    }
                    let _ = core.send(&ok, peer, transport).await;
                    interval = (interval * 2).min(timers.t2);
                }
            }
        }
    });
}

async fn reject_locked(core: &Arc<Core>, call: &mut Call, code: u16) {
    core.respond(
        &call.invite,
        response_to(&call.invite, Some(&call.local_tag)),
        code,
        call.peer,
        call.transport,
    )
    .await;
    set_state(core, call, CallState::Ended);
    emit_state(core, call, "rejected", Some(code));
}

async fn reinvite_from_phone(
    core: &Arc<Core>,
    invite: SipMsg,
    peer: SocketAddr,
    transport: Transport,
) {
    let Some(shared) = core.calls.get(&invite.call_id()) else {
        core.respond(&invite, response_to(&invite, None), 481, peer, transport)
            .await;
        return;
    };
    let mut call = shared.lock().await;
    if let Some(contact) = invite.header("contact") {
        call.remote_target = uri_of(&contact);
    }
    let offer = if invite.body().is_empty() {
        None
    } else {
        sdp::parse(&invite.body_text())
    };
    if let Some(offer) = &offer {
        call.local_dir = Some(Direction::answer_to(offer.direction, call.wanted));
        if sdp::can_encode(choose_codec(offer)) {
            call.payload_type = choose_codec(offer);
        }
        call.remote_media = Some(offer.clone());
    }
    call.sdp_version += 1;
    let local_dir = call.local_dir.unwrap_or(call.wanted);
    let body = call.sdp(&[call.payload_type], local_dir);
    call.acked = Arc::new(Notify::new());
    let builder = response_to(&invite, Some(&call.local_tag))
        .header("Contact", core.contact(&call.role, transport))
        .body("application/sdp", body);
    let ok = core.respond(&invite, builder, 200, peer, transport).await;
    retransmit_2xx(core, ok, peer, transport, call.acked.clone());
    start_or_update_stream(core, &mut call);
    if let Some(offer) = offer {
        // A phone that holds offers sendonly (music on hold) or inactive: it stops receiving.
        let holding = !offer.direction.receives();
        if holding != call.held_by_remote {
            call.held_by_remote = holding;
            emit_state(
                core,
                &call,
                if holding { "held" } else { "resumed" },
                Some(200),
            );
        }
    }
}

async fn ack_received(core: &Arc<Core>, ack: SipMsg) {
    let Some(shared) = core.calls.get(&ack.call_id()) else {
        return;
    };
    let mut call = shared.lock().await;
    call.acked.notify_one();
    // Late offer: our 200 carried the offer, the ACK carries the answer.
    if !ack.body().is_empty() && call.state == CallState::Answered {
        if let Some(answer) = sdp::parse(&ack.body_text()) {
            if let Some(pt) = answer.common_codec() {
                call.payload_type = pt;
            }
            call.remote_media = Some(answer);
            start_or_update_stream(core, &mut call);
        }
    }
}

async fn bye_received(core: &Arc<Core>, bye: SipMsg, peer: SocketAddr, transport: Transport) {
    let Some(shared) = core.calls.get(&bye.call_id()) else {
        core.respond(&bye, response_to(&bye, None), 481, peer, transport)
            .await;
        return;
    };
    let mut call = shared.lock().await;
    core.respond(&bye, response_to(&bye, None), 200, peer, transport)
        .await;
    set_state(core, &mut call, CallState::Ended);
    emit_state(core, &call, "ended", None);
}

async fn cancel_received(core: &Arc<Core>, cancel: SipMsg, peer: SocketAddr, transport: Transport) {
    let shared = core.calls.get(&cancel.call_id());
    let Some(shared) = shared else {
        core.respond(&cancel, response_to(&cancel, None), 481, peer, transport)
            .await;
        return;
    };
    let mut call = shared.lock().await;
    let same_transaction =
        call.direction == CallDirection::Inbound && call.invite.branch() == cancel.branch();
    if !same_transaction {
        core.respond(&cancel, response_to(&cancel, None), 481, peer, transport)
            .await;
        return;
    }
    core.respond(&cancel, response_to(&cancel, None), 200, peer, transport)
        .await;
    if call.state == CallState::Ringing {
        let invite = call.invite.clone();
        core.respond(
            &invite,
            response_to(&invite, Some(&call.local_tag)),
            487,
            call.peer,
            call.transport,
        )
        .await;
        set_state(core, &mut call, CallState::Ended);
        emit_state(core, &call, "cancelled", Some(487));
    }
}

/// Resends the ACK for a retransmitted 2xx (our ACK was lost).
pub(crate) async fn reack(core: &Arc<Core>, response: &SipMsg) {
    let ack = core
        .calls
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&response.call_id())
        .cloned();
    if let Some((ack, dest, transport)) = ack {
        if ack.cseq().map(|(n, _)| n) == response.cseq().map(|(n, _)| n) {
            let _ = core.send(&ack, dest, transport).await;
        }
    }
}

/// The auto-answer header lines for `setting` (see `Settings::auto_answer_header`).
fn auto_answer_lines(setting: Option<&str>, domain: &str) -> Vec<String> {
    let alert = format!("Alert-Info: <http://{domain}>;info=alert-autoanswer");
    let call_info = format!("Call-Info: <sip:{domain}>;answer-after=0");
    match setting.map(str::trim) {
        None => vec![alert, call_info],
        Some(s) if s.eq_ignore_ascii_case("alert-info") => vec![alert],
        Some(s) if s.eq_ignore_ascii_case("call-info") => vec![call_info],
        Some(line) => vec![line.to_owned()],
    }
}

/// A request inside the call's dialog (RFC 3261 §12.2.1.1).
fn in_dialog(core: &Core, call: &Call, method: rsip::Method, cseq: u32, branch: &str) -> Builder {
    let to = match &call.remote_tag {
        Some(tag) => format!("{};tag={tag}", call.remote_uri),
        None => call.remote_uri.clone(),
    };
    Builder::new()
        .header("Via", core.via(call.transport, branch))
        .header("Max-Forwards", "70")
        .header("From", format!("{};tag={}", call.local_uri, call.local_tag))
        .header("To", to)
        .header("Call-ID", call.call_id.clone())
        .header("CSeq", format!("{cseq} {method}"))
}

pub(crate) async fn place(
    core: &Arc<Core>,
    from_ext: &str,
    to: &PhoneInfo,
    opts: CallOptions,
) -> anyhow::Result<CallId> {
    if !core.extensions.iter().any(|e| e == from_ext) {
        anyhow::bail!(
            "extension {from_ext} is not played by the rig (extensions: {})",
            core.extensions.join(", ")
        );
    }
    if core.calls.active() >= core.config.max_calls {
        anyhow::bail!("max_calls ({}) reached", core.config.max_calls);
    }
    let (dest, transport, request_uri) = match (opts.target, core.registrar.get(&to.ext)) {
        (Some(target), _) => {
            let transport = opts.transport.unwrap_or(Transport::Udp);
            let param = match transport {
                Transport::Udp => "",
                Transport::Tcp => ";transport=tcp",
                Transport::Tls => ";transport=tls",
            };
            (target, transport, format!("sip:{}@{target}{param}", to.ext))
        }
        (None, Some(reg)) => (core.registration_target(&reg), reg.transport, reg.contact),
        (None, None) => anyhow::bail!(
            "phone {} (ext {}) is not registered and no target address was given",
            to.name,
            to.ext
        ),
    };
    let (socket, lease) = core.rtp_pool.bind(core.ctx.bind_ip).await?;
    let rtp_local = socket.local_addr()?;
    let domain = core.domain.clone();
    let local_uri = format!("<sip:{from_ext}@{domain}>");
    let remote_uri = format!("<sip:{}@{domain}>", to.ext);
    let mut call = Call {
        call_id: format!("{}@{domain}", token(8)),
        role: from_ext.to_owned(),
        remote_user: to.ext.clone(),
        direction: CallDirection::Outbound,
        dialog: opts.dialog.clone(),
        phone: Some(to.name.clone()),
        state: CallState::Calling,
        local_tag: token(4),
        remote_tag: None,
        local_uri,
        remote_uri,
        remote_target: request_uri.clone(),
        peer: dest,
        transport,
        local_cseq: 1,
        invite: Builder::new().response(100), // replaced below, once the INVITE exists
        session_id: u64::from(rand::random::<u32>()),
        sdp_version: 1,
        wanted: Direction::SendRecv,
        local_dir: Some(Direction::SendRecv),
        remote_media: None,
        payload_type: 0,
        rtp_socket: Some((socket, lease)),
        rtp_local,
        stream: None,
        acked: Arc::new(Notify::new()),
        cancel_requested: false,
        held_by_remote: false,
    };
    let all_codecs: Vec<u8> = sdp::CODECS.iter().map(|(pt, _)| *pt).collect();
    let mut builder = in_dialog(core, &call, rsip::Method::Invite, 1, &new_branch())
        .header("Contact", core.contact(from_ext, transport))
        .header("User-Agent", "phonerig")
        .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY");
    if opts.auto_answer {
        for line in auto_answer_lines(core.settings.auto_answer_header.as_deref(), &domain) {
            builder = builder.header_line(&line);
        }
    }
    let invite = builder
        .body(
            "application/sdp",
            call.sdp(&all_codecs, Direction::SendRecv),
        )
        .request(rsip::Method::Invite, &request_uri)?;
    call.invite = invite.clone();
    let call_id = CallId(call.call_id.clone());
    let Some(shared) = core.calls.insert(call, core.config.max_calls) else {
        anyhow::bail!("max_calls ({}) reached", core.config.max_calls);
    };
    let events = core.invite_client(invite, dest, transport);
    tokio::spawn(drive_outbound(core.clone(), shared, events));
    Ok(call_id)
}

async fn drive_outbound(
    core: Arc<Core>,
    shared: Arc<tokio::sync::Mutex<Call>>,
    mut events: mpsc::UnboundedReceiver<InviteEvent>,
) {
    while let Some(event) = events.recv().await {
        let mut call = shared.lock().await;
        match event {
            InviteEvent::Response(response) => {
                let code = response.status().unwrap_or(0);
                if (101..200).contains(&code) {
                    if call.remote_tag.is_none() {
                        call.remote_tag = response.to_tag();
                    }
                    if call.state == CallState::Calling {
                        set_state(&core, &mut call, CallState::Ringing);
                        emit_state(&core, &call, "ringing", Some(code));
                    }
                } else if (200..300).contains(&code) {
                    outbound_answered(&core, &mut call, &response).await;
                    return;
                } else if code >= 300 {
                    let state = if code == 487 && call.cancel_requested {
                        "cancelled"
                    } else {
                        "rejected"
                    };
                    set_state(&core, &mut call, CallState::Ended);
                    emit_state(&core, &call, state, Some(code));
                    return;
                }
            }
            InviteEvent::Timeout => {
                set_state(&core, &mut call, CallState::Ended);
                emit_state(&core, &call, "ended", Some(408));
                return;
            }
            InviteEvent::Failed(error) => {
                tracing::warn!(%error, "INVITE could not be sent");
                set_state(&core, &mut call, CallState::Ended);
                emit_state(&core, &call, "ended", None);
                return;
            }
        }
    }
}

async fn outbound_answered(core: &Arc<Core>, call: &mut Call, response: &SipMsg) {
    call.remote_tag = response.to_tag();
    if let Some(contact) = response.header("contact") {
        call.remote_target = uri_of(&contact);
    }
    if let Some(answer) = sdp::parse(&response.body_text()) {
        if let Some(pt) = answer.common_codec() {
            call.payload_type = pt;
        }
        call.remote_media = Some(answer);
    }
    send_ack(core, call, response).await;
    if call.cancel_requested {
        // Our CANCEL crossed their 200 (RFC 3261 §9.1): confirm, then end.
        let _ = bye_locked(core, call).await;
        return;
    }
    set_state(core, call, CallState::Answered);
    start_or_update_stream(core, call);
    emit_state(core, call, "answered", Some(200));
}

/// ACK for a 2xx: a new transaction to the remote target (RFC 3261 §13.2.2.4).
async fn send_ack(core: &Arc<Core>, call: &Call, response: &SipMsg) -> Option<SipMsg> {
    let cseq = response.cseq().map(|(n, _)| n).unwrap_or(call.local_cseq);
    let ack = in_dialog(core, call, rsip::Method::Ack, cseq, &new_branch())
        .request(rsip::Method::Ack, &call.remote_target)
        .ok()?;
    let dest = call.dialog_dest();
    let _ = core.send(&ack, dest, call.transport).await;
    core.calls
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(call.call_id.clone(), (ack.clone(), dest, call.transport));
    Some(ack)
}

async fn bye_locked(core: &Arc<Core>, call: &mut Call) -> anyhow::Result<()> {
    call.local_cseq += 1;
    let bye = in_dialog(
        core,
        call,
        rsip::Method::Bye,
        call.local_cseq,
        &new_branch(),
    )
    .request(rsip::Method::Bye, &call.remote_target)?;
    let outcome = core
        .non_invite(&bye, call.dialog_dest(), call.transport)
        .await;
    set_state(core, call, CallState::Ended);
    let code = outcome
        .as_ref()
        .ok()
        .and_then(|r| r.as_ref().and_then(SipMsg::status));
    emit_state(core, call, "ended", code);
    // The call is over for the rig either way; the runner learns whether the phone agreed.
    match outcome? {
        Some(response) if response.status().is_some_and(|c| (200..300).contains(&c)) => Ok(()),
        Some(response) => anyhow::bail!(
            "BYE answered {}; call ended locally",
            response.status().unwrap_or(0)
        ),
        None => anyhow::bail!("BYE not answered within 64·T1; call ended locally"),
    }
}

fn not_found(ext: &str, what: &str) -> anyhow::Error {
    anyhow::anyhow!("no {what} call at extension {ext}")
}

pub(crate) async fn answer(core: &Arc<Core>, ext: &str) -> anyhow::Result<()> {
    let shared = core
        .calls
        .find(ext, |s, d| {
            s == CallState::Ringing && d == CallDirection::Inbound
        })
        .ok_or_else(|| not_found(ext, "ringing"))?;
    let mut call = shared.lock().await;
    if call.state != CallState::Ringing {
        anyhow::bail!("the call at {ext} stopped ringing");
    }
    answer_locked(core, &mut call).await;
    Ok(())
}

pub(crate) async fn reject(core: &Arc<Core>, ext: &str, code: u16) -> anyhow::Result<()> {
    if !(300..700).contains(&code) {
        anyhow::bail!("reject code {code} is not a final error response (300-699)");
    }
    let shared = core
        .calls
        .find(ext, |s, d| {
            s == CallState::Ringing && d == CallDirection::Inbound
        })
        .ok_or_else(|| not_found(ext, "ringing"))?;
    let mut call = shared.lock().await;
    if call.state != CallState::Ringing {
        anyhow::bail!("the call at {ext} stopped ringing");
    }
    reject_locked(core, &mut call, code).await;
    Ok(())
}

pub(crate) async fn reinvite(core: &Arc<Core>, ext: &str, wanted: Direction) -> anyhow::Result<()> {
    let shared = core
        .calls
        .find(ext, |s, _| s == CallState::Answered)
        .ok_or_else(|| not_found(ext, "answered"))?;
    let mut call = shared.lock().await;
    call.wanted = wanted;
    call.sdp_version += 1;
    call.local_cseq += 1;
    let body = call.sdp(&[call.payload_type], wanted);
    let invite = in_dialog(
        core,
        &call,
        rsip::Method::Invite,
        call.local_cseq,
        &new_branch(),
    )
    .header("Contact", core.contact(&call.role, call.transport))
    .body("application/sdp", body)
    .request(rsip::Method::Invite, &call.remote_target)?;
    let mut events = core.invite_client(invite, call.dialog_dest(), call.transport);
    while let Some(event) = events.recv().await {
        match event {
            InviteEvent::Response(response) => {
                let code = response.status().unwrap_or(0);
                if (200..300).contains(&code) {
                    if let Some(answer) = sdp::parse(&response.body_text()) {
                        call.remote_media = Some(answer);
                    }
                    call.local_dir = Some(wanted);
                    send_ack(core, &call, &response).await;
                    start_or_update_stream(core, &mut call);
                    emit_state(
                        core,
                        &call,
                        if wanted.receives() { "resumed" } else { "held" },
                        Some(code),
                    );
                    return Ok(());
                }
                if code >= 300 {
                    anyhow::bail!("re-INVITE answered {code}");
                }
            }
            InviteEvent::Timeout => anyhow::bail!("re-INVITE timed out"),
            InviteEvent::Failed(error) => anyhow::bail!("re-INVITE not sent: {error}"),
        }
    }
    anyhow::bail!("re-INVITE ended without a final response")
}

pub(crate) async fn hangup(core: &Arc<Core>, ext: &str) -> anyhow::Result<()> {
    let shared = core
        .calls
        .find(ext, |s, _| s != CallState::Ended)
        .ok_or_else(|| not_found(ext, "live"))?;
    let (state, direction) = {
        let call = shared.lock().await;
        (call.state, call.direction)
    };
    match (state, direction) {
        (CallState::Answered, _) => bye_locked(core, &mut *shared.lock().await).await,
        (CallState::Calling | CallState::Ringing, CallDirection::Outbound) => {
            cancel(core, ext).await
        }
        (CallState::Ringing, CallDirection::Inbound) => reject(core, ext, 603).await,
        _ => Err(not_found(ext, "live")),
    }
}

pub(crate) async fn cancel(core: &Arc<Core>, ext: &str) -> anyhow::Result<()> {
    let shared = core
        .calls
        .find(ext, |s, d| {
            matches!(s, CallState::Calling | CallState::Ringing) && d == CallDirection::Outbound
        })
        .ok_or_else(|| not_found(ext, "unanswered outgoing"))?;
    let (cancel, dest, transport) = {
        let mut call = shared.lock().await;
        call.cancel_requested = true;
        let invite = &call.invite;
        let via = invite
            .headers_named("via")
            .into_iter()
            .next()
            .unwrap_or_default();
        let cseq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
        // RFC 3261 §9.1: same Request-URI, Call-ID, From, To, branch as the INVITE.
        let cancel = Builder::new()
            .header("Via", via)
            .header("Max-Forwards", "70")
            .header("From", invite.from())
            .header("To", invite.to())
            .header("Call-ID", invite.call_id())
            .header("CSeq", format!("{cseq} CANCEL"))
            .request(
                rsip::Method::Cancel,
                &invite.request_uri().unwrap_or_default(),
            )?;
        (cancel, call.peer, call.transport)
    };
    match core.non_invite(&cancel, dest, transport).await? {
        Some(response) if response.status() == Some(200) => Ok(()),
        Some(response) => anyhow::bail!("CANCEL answered {}", response.status().unwrap_or(0)),
        None => anyhow::bail!("CANCEL timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("<sip:4002@h>;tag=abc", "<sip:4002@h>")]
    #[case("\"Desk\" <sip:4002@h>;tag=abc;x=1", "\"Desk\" <sip:4002@h>;x=1")]
    #[case("<sip:4002@h>", "<sip:4002@h>")]
    fn tags_are_removed(#[case] value: &str, #[case] expected: &str) {
        assert_eq!(without_tag(value), expected);
    }

    #[rstest]
    #[case(None, 2)]
    #[case(Some("alert-info"), 1)]
    #[case(Some("Call-Info"), 1)]
    #[case(Some("X-Auto: yes"), 1)]
    fn auto_answer_header_choices(#[case] setting: Option<&str>, #[case] lines: usize) {
        let found = auto_answer_lines(setting, "rig");
        assert_eq!(found.len(), lines);
        if setting.is_none() {
            assert!(found[0].starts_with("Alert-Info: <http://rig>;info=alert-autoanswer"));
            assert_eq!(found[1], "Call-Info: <sip:rig>;answer-after=0");
        }
        if setting == Some("X-Auto: yes") {
            assert_eq!(found[0], "X-Auto: yes");
        }
    }

    #[rstest]
    #[case(vec![9, 8, 0], 8)]
    #[case(vec![0, 8], 0)]
    #[case(vec![9], 9)]
    #[case(vec![18], 0)]
    fn codec_choice_prefers_what_the_rig_can_encode(#[case] offered: Vec<u8>, #[case] chosen: u8) {
        let offer = RemoteMedia {
            rtp: None,
            payload_types: offered,
            direction: Direction::SendRecv,
        };
        assert_eq!(choose_codec(&offer), chosen);
    }
}

//! Calls: incoming INVITE (ringing, answer, reject, CANCEL, auto answer), outgoing
//! INVITE (auth, CANCEL), BYE, hold/resume by re-INVITE both ways, keys, and the
//! rules the silent and monitor calls follow when the user does something else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{random_token, reason_phrase, Inner, Model};
use crate::api::*;
use crate::fault::Fault;
use crate::rtp::{MediaFlags, RtpStream};
use crate::sdp::{self, AudioSdp};
use crate::sip::message::{header_param, split_list, uri_of, user_of, SipMessage};
use crate::sip::timers::RetransmitSchedule;

/// One call (a dialog, or an INVITE that may become one).
pub struct Call {
    pub(crate) id: String,
    local_tag: String,
    remote_tag: Option<String>,
    local_uri: String,
    remote_uri: String,
    remote_target: String,
    route_set: Vec<String>,
    /// Where requests of this call are sent (the registrar/proxy or the INVITE's source).
    peer: SocketAddr,
    direction: CallDirection,
    pub(crate) kind: CallKind,
    pub(crate) status: CallStatus,
    remote_user: String,
    local_cseq: u32,
    /// Inbound: the INVITE being answered. Outbound: the INVITE sent (for CANCEL).
    invite: SipMessage,
    /// Last 2xx to the peer's INVITE, retransmitted until the ACK comes.
    last_2xx: Option<Vec<u8>>,
    acked: bool,
    /// Our ACK to their 2xx, repeated when the 2xx is retransmitted.
    last_ack: Option<Vec<u8>>,
    pub(crate) held_locally: bool,
    held_by_remote: bool,
    /// Direction written in our last SDP.
    local_dir: Direction,
    /// Direction in the far end's last SDP (as they wrote it) and the first one.
    remote_dir: Option<Direction>,
    remote_initial_dir: Option<Direction>,
    remote_rtp: Option<SocketAddr>,
    rtp: RtpStream,
    sdp_session: u64,
    sdp_version: u64,
}

impl Call {
    pub(crate) fn snapshot(&self) -> CallSnapshot {
        CallSnapshot {
            call_id: self.id.clone(),
            remote: self.remote_user.clone(),
            direction: self.direction,
            kind: self.kind,
            status: self.status,
            held_locally: self.held_locally,
            held_by_remote: self.held_by_remote,
            local_sdp: self.local_dir.attribute(),
            remote_sdp: self.remote_dir.map(|d| d.attribute()),
            rtp_sent: self.rtp.sent(),
            rtp_received: self.rtp.received(),
            rtp_played: self.rtp.played(),
        }
    }

    /// The direction this call wants now: its kind's, minus receiving while we hold.
    fn wanted_direction(&self) -> Direction {
        let base = self.kind.base_direction();
        Direction {
            send: base.send,
            recv: base.recv && !self.held_locally,
        }
    }

    /// What may flow, given both SDPs.
    fn negotiated(&self) -> Direction {
        match self.remote_dir {
            Some(remote) => self.local_dir.intersect(remote.mirrored()),
            None => Direction::INACTIVE,
        }
    }

    fn update_media(&self) {
        let established = self.status == CallStatus::Established;
        let flow = self.negotiated();
        self.rtp.set_flags(MediaFlags {
            remote: self.remote_rtp,
            send: established && flow.send && self.kind.sends_audio() && !self.held_locally,
            // A silent call never offers to receive, unless the fault switch made it.
            play: established
                && flow.recv
                && (self.kind.plays_audio() || self.local_dir.recv)
                && !self.held_locally,
        });
    }

    fn label(&self) -> String {
        match self.kind {
            CallKind::Normal => format!("call with {}", self.remote_user),
            CallKind::Silent => format!("silent call to {}", self.remote_user),
            CallKind::Monitor => format!("monitor call to {}", self.remote_user),
            CallKind::Intercom => format!("intercom call with {}", self.remote_user),
        }
    }

    fn take_remote_sdp(&mut self, sdp: &AudioSdp) {
        let dir = sdp.effective_direction();
        self.remote_dir = Some(dir);
        self.remote_initial_dir.get_or_insert(dir);
        self.remote_rtp = sdp.rtp_target();
    }

    /// The far end holds us when it gave up a direction it had at the start.
    fn remote_is_holding(&self) -> bool {
        match (self.remote_initial_dir, self.remote_dir) {
            (Some(first), Some(now)) => (first.send && !now.send) || (first.recv && !now.recv),
            _ => false,
        }
    }

    fn stats(&self) -> String {
        format!(
            "[RTP] {}: sent {} received {} played {}",
            self.label(),
            self.rtp.sent(),
            self.rtp.received(),
            self.rtp.played()
        )
    }
}

fn parse_sdp_body(msg: &SipMessage) -> Option<Result<AudioSdp, sdp::SdpError>> {
    if msg.body.is_empty() {
        return None;
    }
    Some(match std::str::from_utf8(&msg.body) {
        Ok(text) => sdp::parse(text),
        Err(_) => Err(sdp::SdpError("body is not UTF-8".into())),
    })
}

/// Auto answer asked for by the caller: `Alert-Info: …;info=alert-autoanswer`
/// (→ now) or `Call-Info: …;answer-after=N` (→ after N s).
fn intercom_request(invite: &SipMessage) -> Option<Duration> {
    let mut found = None;
    for value in invite.headers_named("call-info") {
        for item in split_list(value) {
            if let Some(secs) =
                header_param(item, "answer-after").and_then(|v| v.parse::<u64>().ok())
            {
                found = Some(Duration::from_secs(secs));
            }
        }
    }
    if found.is_none()
        && invite.headers_named("alert-info").any(|v| {
            v.to_ascii_lowercase().contains("alert-autoanswer")
                || v.to_ascii_lowercase().contains("auto answer")
        })
    {
        found = Some(Duration::ZERO);
    }
    found
}

impl Inner {
    fn open_rtp(&self) -> std::io::Result<RtpStream> {
        RtpStream::open(
            self.cfg.local_ip,
            self.cfg.rtp_port_base,
            self.stop.child_token(),
        )
    }

    fn sdp_for(&self, call: &Call) -> Vec<u8> {
        sdp::build(
            &self.cfg.user,
            call.sdp_session,
            call.sdp_version,
            self.cfg.local_ip,
            call.rtp.local.port(),
            call.local_dir,
        )
        .into_bytes()
    }

    fn refresh_media(m: &Model) {
        for call in &m.calls {
            call.update_media();
        }
    }

    /// A request inside the call's dialog (RFC 3261 §12.2.1.1).
    fn dialog_request(&self, call: &mut Call, method: &str) -> SipMessage {
        if method != "ACK" {
            call.local_cseq += 1;
        }
        let mut r = SipMessage::request(method, &call.remote_target);
        r.add_header("Via", self.via(&Self::new_branch()));
        r.add_header("Max-Forwards", "70");
        for route in &call.route_set {
            r.add_header("Route", route.clone());
        }
        r.add_header(
            "From",
            format!("<{}>;tag={}", call.local_uri, call.local_tag),
        );
        let to_tag = call
            .remote_tag
            .as_deref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        r.add_header("To", format!("<{}>{to_tag}", call.remote_uri));
        r.add_header("Call-ID", call.id.clone());
        r.add_header("CSeq", format!("{} {method}", call.local_cseq));
        if method == "INVITE" {
            r.add_header("Contact", self.contact());
            r.add_header("Allow", super::ALLOW);
        }
        r.add_header("User-Agent", self.cfg.user_agent.clone());
        r
    }

    // ----- incoming requests -------------------------------------------------

    pub(super) fn on_invite(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        if req.to_tag().is_some() {
            return self.on_reinvite(req, peer);
        }
        let offer = match parse_sdp_body(&req) {
            None => None,
            Some(Ok(o)) if o.offers_pcmu() => Some(o),
            Some(Ok(_)) | Some(Err(_)) => {
                self.say(format!(
                    "[SIP] INVITE from {peer} refused: no usable PCMU offer"
                ));
                let resp = self.response(&req, 488, Some(&random_token(10)));
                return self.send_response(&req, resp, peer);
            }
        };
        let from_user = user_of(uri_of(req.header("from").unwrap_or_default())).to_string();
        let local_tag = random_token(10);
        let refused = self.with_model(|m| {
            if m.call_index(req.call_id()).is_some() {
                // Same Call-ID with a new branch: a loop or a fork we already have.
                return Some(482);
            }
            if m.dnd {
                m.say(format!(
                    "[CALL] incoming call from {from_user} refused: DND is on"
                ));
                m.emit(UaEvent::Rejected {
                    call_id: req.call_id().to_string(),
                    code: 480,
                    by_remote: false,
                });
                return Some(480);
            }
            if let Some(target) = &m.forward {
                m.say(format!(
                    "[CALL] incoming call from {from_user} forwarded to {target}"
                ));
                return Some(302);
            }
            None
        });
        if let Some(code) = refused {
            let mut resp = self.response(&req, code, Some(&local_tag));
            if code == 302 {
                let target = self
                    .model
                    .lock()
                    .unwrap()
                    .forward
                    .clone()
                    .unwrap_or_default();
                resp.add_header("Contact", format!("<sip:{target}@{}>", self.domain()));
            }
            return self.send_response(&req, resp, peer);
        }
        let trying = self.response(&req, 100, None);
        self.send_response(&req, trying, peer);
        let rtp = match self.open_rtp() {
            Ok(r) => r,
            Err(e) => {
                self.say(format!("[RTP] cannot open an RTP port: {e}"));
                let resp = self.response(&req, 500, Some(&local_tag));
                return self.send_response(&req, resp, peer);
            }
        };
        let mut call = Call {
            id: req.call_id().to_string(),
            local_tag: local_tag.clone(),
            remote_tag: req.from_tag().map(str::to_string),
            local_uri: uri_of(req.header("to").unwrap_or_default()).to_string(),
            remote_uri: uri_of(req.header("from").unwrap_or_default()).to_string(),
            remote_target: req
                .header("contact")
                .map(|c| uri_of(c).to_string())
                .unwrap_or_else(|| uri_of(req.header("from").unwrap_or_default()).to_string()),
            route_set: req
                .headers_named("record-route")
                .map(str::to_string)
                .collect(),
            peer,
            direction: CallDirection::Inbound,
            kind: CallKind::Normal,
            status: CallStatus::Ringing,
            remote_user: from_user.clone(),
            local_cseq: 0,
            invite: req.clone(),
            last_2xx: None,
            acked: false,
            last_ack: None,
            held_locally: false,
            held_by_remote: false,
            local_dir: CallKind::Normal.base_direction(),
            remote_dir: None,
            remote_initial_dir: None,
            remote_rtp: None,
            rtp,
            sdp_session: fastrand::u64(1..1 << 40),
            sdp_version: 1,
        };
        if let Some(offer) = &offer {
            call.take_remote_sdp(offer);
        }
        let mut ringing = self.response(&req, 180, Some(&local_tag));
        ringing.add_header("Contact", self.contact());
        self.send_response(&req, ringing, peer);
        let call_id = call.id.clone();
        self.with_model(|m| {
            m.last_caller = Some(from_user.clone());
            m.calls.push(call);
            m.say(format!("[CALL] incoming call from {from_user}: ringing"));
            m.emit(UaEvent::IncomingCall {
                call_id: call_id.clone(),
                from: from_user.clone(),
            });
        });
        let auto = match intercom_request(&req) {
            Some(delay) if self.cfg.intercom_auto_answer => Some((delay, "intercom")),
            _ => self.cfg.auto_answer.map(|d| (d, "auto answer")),
        };
        if let Some((delay, why)) = auto {
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                let inner2 = inner.clone();
                inner.with_model(|m| {
                    let Some(idx) = m.call_index(&call_id) else {
                        return;
                    };
                    if m.calls[idx].status != CallStatus::Ringing {
                        return;
                    }
                    // H680: "话机处于通话状态时，不会再自动接听" — never while in a call.
                    if m.phone_state() == PhoneState::InCall {
                        m.say(format!("[CALL] {why}: not answering while in a call"));
                        return;
                    }
                    m.say(format!(
                        "[CALL] {why}: answering call from {}",
                        m.calls[idx].remote_user
                    ));
                    inner2.answer(m, idx);
                });
            });
        }
    }

    fn on_reinvite(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        let inner = self.clone();
        let answered = self.with_model(|m| {
            let idx = m.call_index(req.call_id())?;
            let call = &mut m.calls[idx];
            if call.status != CallStatus::Established
                || call.local_tag != req.to_tag().unwrap_or_default()
            {
                return None;
            }
            let offer = match parse_sdp_body(&req) {
                Some(Ok(o)) if o.offers_pcmu() => Some(o),
                Some(_) => return Some(Err(488)),
                None => None,
            };
            let was_held = call.held_by_remote;
            let wanted = call.wanted_direction();
            match &offer {
                Some(o) => {
                    call.take_remote_sdp(o);
                    call.local_dir = Direction::answer_to(o.effective_direction(), wanted);
                }
                // No offer: we offer in the 200 and get the answer in the ACK.
                None => call.local_dir = wanted,
            }
            call.sdp_version += 1;
            call.held_by_remote = call.remote_is_holding();
            let mut ok = inner.response(&req, 200, None);
            ok.add_header("Contact", inner.contact());
            ok.set_body("application/sdp", inner.sdp_for(call));
            call.acked = false;
            let bytes = ok.to_bytes();
            call.last_2xx = Some(bytes.clone());
            let (id, label, now_held) = (call.id.clone(), call.label(), call.held_by_remote);
            if now_held != was_held {
                m.say(format!(
                    "[CALL] {label} {} by the far end",
                    if now_held { "put on hold" } else { "resumed" }
                ));
                m.emit(if now_held {
                    UaEvent::CallHeld {
                        call_id: id.clone(),
                        by_remote: true,
                    }
                } else {
                    UaEvent::CallResumed {
                        call_id: id.clone(),
                        by_remote: true,
                    }
                });
            }
            Self::refresh_media(m);
            Some(Ok((ok, id)))
        });
        match answered {
            None => {
                let resp = self.response(&req, 481, None);
                self.send_response(&req, resp, peer);
            }
            Some(Err(code)) => {
                let resp = self.response(&req, code, None);
                self.send_response(&req, resp, peer);
            }
            Some(Ok((ok, id))) => {
                self.send_response(&req, ok, peer);
                self.retransmit_2xx_until_ack(id, peer);
            }
        }
    }

    pub(super) fn on_ack(self: Arc<Self>, req: SipMessage) {
        self.with_model(|m| {
            let Some(idx) = m.call_index(req.call_id()) else {
                return;
            };
            let call = &mut m.calls[idx];
            if call.status != CallStatus::Established {
                return; // ACK for an error answer
            }
            call.acked = true;
            if let Some(Ok(answer)) = parse_sdp_body(&req) {
                call.take_remote_sdp(&answer);
            }
            Self::refresh_media(m);
        });
    }

    pub(super) fn on_bye(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        let found = self.with_model(|m| {
            let idx = m.call_index(req.call_id())?;
            let call = m.calls.remove(idx);
            call.rtp.close();
            m.say(format!("[CALL] {} ended by the far end", call.label()));
            m.say(call.stats());
            m.emit(UaEvent::CallEnded {
                call_id: call.id.clone(),
                reason: "remote hangup".into(),
            });
            Self::refresh_media(m);
            Some(())
        });
        let code = if found.is_some() { 200 } else { 481 };
        let resp = self.response(&req, code, None);
        self.send_response(&req, resp, peer);
    }

    pub(super) fn on_cancel(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        let inner = self.clone();
        let invite_answer = self.with_model(|m| {
            let idx = m.call_index(req.call_id())?;
            let call = &m.calls[idx];
            if call.direction != CallDirection::Inbound || call.invite.branch() != req.branch() {
                return None;
            }
            if call.status != CallStatus::Ringing {
                return Some(None); // already answered: CANCEL has no effect
            }
            let call = m.calls.remove(idx);
            call.rtp.close();
            m.say(format!(
                "[CALL] incoming call from {} cancelled by the caller",
                call.remote_user
            ));
            m.emit(UaEvent::CallEnded {
                call_id: call.id.clone(),
                reason: "cancelled".into(),
            });
            let terminated = inner.response(&call.invite, 487, Some(&call.local_tag));
            Some(Some((call.invite, terminated)))
        });
        let code = if invite_answer.is_some() { 200 } else { 481 };
        let resp = self.response(&req, code, None);
        self.send_response(&req, resp, peer);
        if let Some(Some((invite, terminated))) = invite_answer {
            self.send_response(&invite, terminated, peer);
        }
    }

    /// 2xx to an INVITE whose transaction is gone: repeat our ACK, or, when the
    /// call was already given up (CANCEL crossed the 200), ACK and BYE it.
    pub(super) fn on_stray_invite_2xx(self: Arc<Self>, resp: SipMessage, peer: SocketAddr) {
        let inner = self.clone();
        let handled = self.with_model(|m| {
            let idx = m.call_index(resp.call_id())?;
            let ack = m.calls[idx].last_ack.clone()?;
            inner.transmit(&ack, m.calls[idx].peer);
            Some(())
        });
        if handled.is_some() {
            return;
        }
        let target = resp
            .header("contact")
            .map(|c| uri_of(c).to_string())
            .unwrap_or_else(|| uri_of(resp.header("to").unwrap_or_default()).to_string());
        let n = resp.cseq().map(|(n, _)| n).unwrap_or(1);
        for (method, cseq) in [("ACK", n), ("BYE", n + 1)] {
            let mut r = SipMessage::request(method, &target);
            r.add_header("Via", self.via(&Self::new_branch()));
            r.add_header("Max-Forwards", "70");
            r.add_header("From", resp.header("from").unwrap_or_default());
            r.add_header("To", resp.header("to").unwrap_or_default());
            r.add_header("Call-ID", resp.call_id());
            r.add_header("CSeq", format!("{cseq} {method}"));
            if method == "ACK" {
                self.transmit(&r.to_bytes(), peer);
            } else {
                let inner = self.clone();
                tokio::spawn(async move {
                    let _ = inner.request(r, peer).await;
                });
            }
        }
        self.say(format!(
            "[CALL] late 200 OK for abandoned call {}: ACK and BYE",
            resp.call_id()
        ));
    }

    fn retransmit_2xx_until_ack(self: &Arc<Self>, call_id: String, peer: SocketAddr) {
        let inner = self.clone();
        tokio::spawn(async move {
            let schedule = RetransmitSchedule::non_invite(inner.cfg.t1, inner.cfg.t2);
            let start = tokio::time::Instant::now();
            for offset in schedule.sends.iter().skip(1) {
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(start + *offset) => {}
                }
                let pending = {
                    let m = inner.model.lock().unwrap();
                    m.call_index(&call_id)
                        .map(|i| &m.calls[i])
                        .filter(|c| !c.acked)
                        .and_then(|c| c.last_2xx.clone())
                };
                match pending {
                    Some(bytes) => inner.transmit(&bytes, peer),
                    None => return,
                }
            }
            tokio::select! {
                _ = inner.stop.cancelled() => return,
                _ = tokio::time::sleep_until(start + schedule.give_up) => {}
            }
            let inner2 = inner.clone();
            inner.with_model(|m| {
                if let Some(idx) = m.call_index(&call_id) {
                    if !m.calls[idx].acked {
                        inner2.hang_up(m, idx, "no ACK for 200 OK");
                    }
                }
            });
        });
    }

    // ----- actions (run under the model lock) --------------------------------

    /// Answer ringing call `idx`: a silent call is interrupted (document 000), any
    /// other active call is put on hold (call waiting).
    pub(super) fn answer(self: &Arc<Self>, m: &mut Model, idx: usize) {
        let call_id = m.calls[idx].id.clone();
        if !self.cfg.faults.has(Fault::SilentCallNotInterruptedByAnswer) {
            self.interrupt_silent_calls(m, "4002 answered another call");
        }
        self.hold_active_calls(m, Some(&call_id));
        let Some(idx) = m.call_index(&call_id) else {
            return;
        };
        let call = &mut m.calls[idx];
        let wanted = call.wanted_direction();
        call.local_dir = match call.remote_dir {
            Some(offer) => Direction::answer_to(offer, wanted),
            None => wanted,
        };
        call.status = CallStatus::Established;
        let mut ok = self.response(&call.invite, 200, Some(&call.local_tag));
        ok.add_header("Contact", self.contact());
        ok.add_header("Allow", super::ALLOW);
        ok.set_body("application/sdp", self.sdp_for(call));
        call.last_2xx = Some(ok.to_bytes());
        let (invite, peer, label, remote) = (
            call.invite.clone(),
            call.peer,
            call.label(),
            call.remote_user.clone(),
        );
        self.send_response(&invite, ok, peer);
        m.say(format!("[CALL] answered {label}"));
        m.emit(UaEvent::CallEstablished {
            call_id: call_id.clone(),
            remote,
        });
        Self::refresh_media(m);
        self.retransmit_2xx_until_ack(call_id, peer);
    }

    pub(super) fn reject(self: &Arc<Self>, m: &mut Model, idx: usize, code: u16) {
        let call = m.calls.remove(idx);
        call.rtp.close();
        let resp = self.response(&call.invite, code, Some(&call.local_tag));
        self.send_response(&call.invite, resp, call.peer);
        m.say(format!(
            "[CALL] rejected call from {} ({code} {})",
            call.remote_user,
            reason_phrase(code)
        ));
        m.emit(UaEvent::Rejected {
            call_id: call.id,
            code,
            by_remote: false,
        });
    }

    /// End call `idx` in whatever state it is: BYE, CANCEL or reject.
    pub(super) fn hang_up(self: &Arc<Self>, m: &mut Model, idx: usize, reason: &str) {
        match m.calls[idx].status {
            CallStatus::Ringing => return self.reject(m, idx, 486),
            CallStatus::Calling => return self.cancel(m, idx, reason),
            CallStatus::Established => {}
        }
        let mut call = m.calls.remove(idx);
        call.rtp.close();
        let bye = self.dialog_request(&mut call, "BYE");
        let peer = call.peer;
        let inner = self.clone();
        tokio::spawn(async move {
            let outcome = inner.request(bye, peer).await;
            if let Ok((resp, _)) = outcome {
                tracing::debug!("BYE answered {:?}", resp.code());
            }
        });
        m.say(format!("[CALL] {} ended ({reason})", call.label()));
        m.say(call.stats());
        m.emit(UaEvent::CallEnded {
            call_id: call.id.clone(),
            reason: reason.to_string(),
        });
        Self::refresh_media(m);
    }

    /// Give up an outgoing call before it is answered (RFC 3261 §9.1). The call
    /// leaves the model at once; a 200 that crosses the CANCEL is ACKed and BYEd.
    fn cancel(self: &Arc<Self>, m: &mut Model, idx: usize, reason: &str) {
        let call = m.calls.remove(idx);
        call.rtp.close();
        let inv = &call.invite;
        let mut cancel = SipMessage::request("CANCEL", inv.uri().unwrap_or_default());
        if let Some(via) = inv.top_via() {
            cancel.add_header("Via", via);
        }
        for route in inv.headers_named("route") {
            cancel.add_header("Route", route);
        }
        cancel.add_header("Max-Forwards", "70");
        cancel.add_header("From", inv.header("from").unwrap_or_default());
        cancel.add_header("To", inv.header("to").unwrap_or_default());
        cancel.add_header("Call-ID", inv.call_id());
        cancel.add_header(
            "CSeq",
            format!("{} CANCEL", inv.cseq().map(|(n, _)| n).unwrap_or(1)),
        );
        cancel.add_header("User-Agent", self.cfg.user_agent.clone());
        let (inner, peer) = (self.clone(), call.peer);
        tokio::spawn(async move {
            let _ = inner.request(cancel, peer).await;
        });
        m.say(format!("[CALL] {} cancelled ({reason})", call.label()));
        m.emit(UaEvent::CallEnded {
            call_id: call.id.clone(),
            reason: format!("cancelled: {reason}"),
        });
    }

    /// Hold (re-INVITE with sendonly/inactive) every visible established call that is
    /// not held yet, except `keep`.
    pub(super) fn hold_active_calls(self: &Arc<Self>, m: &mut Model, keep: Option<&str>) {
        let ids: Vec<String> = m
            .calls
            .iter()
            .filter(|c| {
                c.kind.visible()
                    && c.status == CallStatus::Established
                    && !c.held_locally
                    && Some(c.id.as_str()) != keep
            })
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            if let Some(idx) = m.call_index(&id) {
                self.set_hold(m, idx, true);
            }
        }
    }

    pub(super) fn set_hold(self: &Arc<Self>, m: &mut Model, idx: usize, hold: bool) {
        let call = &mut m.calls[idx];
        if call.status != CallStatus::Established || call.held_locally == hold {
            return;
        }
        call.held_locally = hold;
        call.local_dir = call.wanted_direction();
        call.sdp_version += 1;
        let mut reinvite = self.dialog_request(call, "INVITE");
        reinvite.set_body("application/sdp", self.sdp_for(call));
        let (id, label, peer) = (call.id.clone(), call.label(), call.peer);
        m.say(format!(
            "[CALL] {label} {} (a={})",
            if hold { "put on hold" } else { "resumed" },
            m.calls[idx].local_dir.attribute()
        ));
        m.emit(if hold {
            UaEvent::CallHeld {
                call_id: id.clone(),
                by_remote: false,
            }
        } else {
            UaEvent::CallResumed {
                call_id: id.clone(),
                by_remote: false,
            }
        });
        Self::refresh_media(m);
        let inner = self.clone();
        tokio::spawn(async move { inner.finish_reinvite(id, reinvite, peer).await });
    }

    async fn finish_reinvite(
        self: Arc<Self>,
        call_id: String,
        reinvite: SipMessage,
        peer: SocketAddr,
    ) {
        let outcome = self.request(reinvite, peer).await;
        let inner = self.clone();
        self.with_model(|m| {
            let Some(idx) = m.call_index(&call_id) else {
                return;
            };
            let call = &mut m.calls[idx];
            match outcome {
                Ok((resp, sent)) if resp.code().is_some_and(|c| (200..300).contains(&c)) => {
                    if let Some((n, _)) = sent.cseq() {
                        call.local_cseq = call.local_cseq.max(n);
                    }
                    if let Some(Ok(answer)) = parse_sdp_body(&resp) {
                        call.take_remote_sdp(&answer);
                    }
                    let ack = inner.ack_for_2xx(call, &sent);
                    inner.transmit(&ack, call.peer);
                    call.last_ack = Some(ack);
                    Self::refresh_media(m);
                }
                Ok((resp, _)) => {
                    let (code, label) = (resp.code().unwrap_or(0), call.label());
                    m.say(format!("[CALL] re-INVITE for {label} refused: {code}"));
                }
                Err(_) => {
                    let label = call.label();
                    m.say(format!("[CALL] re-INVITE for {label} timed out"));
                }
            }
        });
    }

    /// ACK for a 2xx to our (re-)INVITE: a new transaction with the INVITE's CSeq,
    /// carrying the INVITE's credentials (RFC 3261 §13.2.2.4).
    fn ack_for_2xx(&self, call: &mut Call, invite: &SipMessage) -> Vec<u8> {
        let mut ack = self.dialog_request(call, "ACK");
        let n = invite.cseq().map(|(n, _)| n).unwrap_or(call.local_cseq);
        ack.set_header("CSeq", format!("{n} ACK"));
        for name in ["Authorization", "Proxy-Authorization"] {
            if let Some(v) = invite.header(name) {
                ack.add_header(name, v);
            }
        }
        ack.to_bytes()
    }

    /// Silent calls end whenever the user does something visible (document 000:
    /// answering, calling out, off-hook).
    pub(super) fn interrupt_silent_calls(self: &Arc<Self>, m: &mut Model, why: &str) {
        self.end_calls_where(
            m,
            |c| c.kind == CallKind::Silent,
            &format!("silent call interrupted: {why}"),
        );
    }

    pub(super) fn end_calls_where(
        self: &Arc<Self>,
        m: &mut Model,
        pred: impl Fn(&Call) -> bool,
        reason: &str,
    ) {
        let ids: Vec<String> = m
            .calls
            .iter()
            .filter(|c| pred(c))
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            if let Some(idx) = m.call_index(&id) {
                self.hang_up(m, idx, reason);
            }
        }
    }

    /// Place a call to `target` (digits or feature code) through the registrar.
    pub(super) fn place_call(
        self: &Arc<Self>,
        m: &mut Model,
        target: &str,
        kind: CallKind,
        extra_headers: &[(&str, String)],
    ) -> Result<String, String> {
        let rtp = self
            .open_rtp()
            .map_err(|e| format!("cannot open an RTP port: {e}"))?;
        let domain = self.domain();
        let remote_uri = format!("sip:{target}@{domain}");
        let mut call = Call {
            id: format!("{}@{}", random_token(20), self.cfg.local_ip),
            local_tag: random_token(10),
            remote_tag: None,
            local_uri: self.aor(),
            remote_uri: remote_uri.clone(),
            remote_target: remote_uri,
            route_set: Vec::new(),
            peer: self.cfg.registrar,
            direction: CallDirection::Outbound,
            kind,
            status: CallStatus::Calling,
            remote_user: target.to_string(),
            local_cseq: 0,
            invite: SipMessage::request("INVITE", "sip:invalid"),
            last_2xx: None,
            acked: false,
            last_ack: None,
            held_locally: false,
            held_by_remote: false,
            // Document 000: a silent call only sends ("4002 does not hear 4004").
            local_dir: if kind == CallKind::Silent
                && self.cfg.faults.has(Fault::SilentCallPlaysAudio)
            {
                Direction::SENDRECV
            } else {
                kind.base_direction()
            },
            remote_dir: None,
            remote_initial_dir: None,
            remote_rtp: None,
            rtp,
            sdp_session: fastrand::u64(1..1 << 40),
            sdp_version: 1,
        };
        let mut invite = self.dialog_request(&mut call, "INVITE");
        for (name, value) in extra_headers {
            invite.add_header(name, value.clone());
        }
        invite.set_body("application/sdp", self.sdp_for(&call));
        call.invite = invite.clone();
        let id = call.id.clone();
        m.say(format!(
            "[CALL] calling {target} ({}; a={})",
            call.label(),
            call.local_dir.attribute()
        ));
        m.emit(UaEvent::OutgoingCall {
            call_id: id.clone(),
            to: target.to_string(),
            kind,
        });
        m.calls.push(call);
        let inner = self.clone();
        let call_id = id.clone();
        tokio::spawn(async move { inner.run_outgoing_invite(call_id, invite).await });
        Ok(id)
    }

    async fn run_outgoing_invite(self: Arc<Self>, call_id: String, mut invite: SipMessage) {
        let dest = self.cfg.registrar;
        let mut challenges = 0;
        loop {
            let mut rx = self.start_transaction(invite.clone(), dest);
            let mut retry_with_credentials = false;
            while let Some(ev) = rx.recv().await {
                use super::transaction::TxEvent;
                match ev {
                    TxEvent::Provisional(resp) => {
                        let code = resp.code().unwrap_or(0);
                        if code == 180 || code == 183 {
                            self.with_model(|m| {
                                if let Some(idx) = m.call_index(&call_id) {
                                    let label = m.calls[idx].label();
                                    m.say(format!("[CALL] {label}: far end ringing ({code})"));
                                }
                            });
                        }
                    }
                    TxEvent::Final(resp) => {
                        let code = resp.code().unwrap_or(0);
                        if (200..300).contains(&code) {
                            return self.outgoing_answered(&call_id, &invite, resp);
                        }
                        if (code == 401 || code == 407) && challenges < 2 {
                            let still_there =
                                self.model.lock().unwrap().call_index(&call_id).is_some();
                            if let (true, Some(next)) =
                                (still_there, self.authorize(&invite, &resp))
                            {
                                challenges += 1;
                                invite = next;
                                self.with_model(|m| {
                                    if let Some(idx) = m.call_index(&call_id) {
                                        let call = &mut m.calls[idx];
                                        call.invite = invite.clone();
                                        call.local_cseq = invite
                                            .cseq()
                                            .map(|(n, _)| n)
                                            .unwrap_or(call.local_cseq);
                                    }
                                });
                                retry_with_credentials = true;
                                break;
                            }
                        }
                        self.with_model(|m| {
                            let Some(idx) = m.call_index(&call_id) else {
                                return;
                            };
                            let call = m.calls.remove(idx);
                            call.rtp.close();
                            m.say(format!(
                                "[CALL] {} refused by the far end: {code} {}",
                                call.label(),
                                reason_phrase(code)
                            ));
                            m.emit(UaEvent::Rejected {
                                call_id: call.id,
                                code,
                                by_remote: true,
                            });
                        });
                        return;
                    }
                    TxEvent::Timeout => {
                        self.with_model(|m| {
                            let Some(idx) = m.call_index(&call_id) else {
                                return;
                            };
                            let call = m.calls.remove(idx);
                            call.rtp.close();
                            m.say(format!(
                                "[CALL] {}: no answer from the network (timeout)",
                                call.label()
                            ));
                            m.emit(UaEvent::CallEnded {
                                call_id: call.id,
                                reason: "timeout".into(),
                            });
                        });
                        return;
                    }
                }
            }
            if !retry_with_credentials {
                return;
            }
        }
    }

    fn outgoing_answered(self: &Arc<Self>, call_id: &str, invite: &SipMessage, resp: SipMessage) {
        let inner = self.clone();
        let known = self.with_model(|m| {
            let idx = m.call_index(call_id)?;
            let call = &mut m.calls[idx];
            call.remote_tag = resp.to_tag().map(str::to_string);
            if let Some(contact) = resp.header("contact") {
                call.remote_target = uri_of(contact).to_string();
            }
            let mut routes: Vec<String> = resp
                .headers_named("record-route")
                .map(str::to_string)
                .collect();
            routes.reverse();
            call.route_set = routes;
            match parse_sdp_body(&resp) {
                Some(Ok(answer)) => call.take_remote_sdp(&answer),
                _ => {
                    let label = call.label();
                    m.say(format!("[CALL] {label}: answer carries no usable SDP"));
                }
            }
            let call = &mut m.calls[idx];
            call.status = CallStatus::Established;
            let ack = inner.ack_for_2xx(call, invite);
            inner.transmit(&ack, call.peer);
            call.last_ack = Some(ack);
            call.acked = true;
            let (label, remote, dir) = (call.label(), call.remote_user.clone(), call.negotiated());
            m.say(format!(
                "[CALL] {label} established (media {})",
                dir.attribute()
            ));
            m.emit(UaEvent::CallEstablished {
                call_id: call_id.to_string(),
                remote,
            });
            Self::refresh_media(m);
            Some(())
        });
        if known.is_none() {
            // Hung up while the 200 was on its way.
            self.clone().on_stray_invite_2xx(resp, self.cfg.registrar);
        }
    }

    // ----- keys ------------------------------------------------------------------

    pub(super) fn key(self: &Arc<Self>, m: &mut Model, key: Key) {
        let newest = |m: &Model, pred: &dyn Fn(&Call) -> bool| m.calls.iter().rposition(pred);
        let active =
            |c: &Call| c.kind.visible() && c.status == CallStatus::Established && !c.held_locally;
        let calling = |c: &Call| c.kind.visible() && c.status == CallStatus::Calling;
        let ringing = |c: &Call| c.status == CallStatus::Ringing;
        match key {
            Key::Answer => match newest(m, &ringing) {
                Some(idx) => self.answer(m, idx),
                None => m.say("[KEY] answer: nothing is ringing"),
            },
            Key::Reject => match newest(m, &ringing) {
                Some(idx) => self.reject(m, idx, 486),
                None => m.say("[KEY] reject: nothing is ringing"),
            },
            Key::Hangup | Key::OnHook => {
                if let Some(idx) = newest(m, &active) {
                    self.hang_up(m, idx, "local hangup");
                } else if let Some(idx) = newest(m, &calling) {
                    self.hang_up(m, idx, "local hangup");
                } else if key == Key::Hangup && newest(m, &ringing).is_some() {
                    let idx = newest(m, &ringing).unwrap_or_default();
                    self.reject(m, idx, 486);
                } else if m.dialing.take().is_some() {
                    m.say("[CALL] back on hook: idle");
                }
            }
            Key::Speaker | Key::Headset | Key::Handset => {
                let device = format!("{key:?}").to_ascii_lowercase();
                // Document 000: off-hook on the button phone interrupts a silent call,
                // but never a monitor call (that is an ordinary visible call).
                if !self
                    .cfg
                    .faults
                    .has(Fault::SilentCallNotInterruptedByOffHook)
                {
                    self.interrupt_silent_calls(m, &format!("off-hook ({device})"));
                }
                if self.cfg.faults.has(Fault::MonitorInterruptedByOffHook) {
                    self.end_calls_where(
                        m,
                        |c| c.kind == CallKind::Monitor,
                        &format!("monitor call interrupted: off-hook ({device})"),
                    );
                }
                if newest(m, &active).is_some() || newest(m, &calling).is_some() {
                    m.say(format!("[AUDIO] audio switched to {device}"));
                } else if let Some(idx) = newest(m, &ringing) {
                    self.answer(m, idx);
                } else if m.dialing.is_none() {
                    m.dialing = Some(String::new());
                    m.say(format!("[CALL] off hook ({device}): dial tone"));
                }
            }
            Key::Hold => match newest(m, &active) {
                Some(idx) => self.set_hold(m, idx, true),
                None => m.say("[KEY] hold: no active call"),
            },
            Key::Resume => {
                let held = |c: &Call| {
                    c.kind.visible() && c.status == CallStatus::Established && c.held_locally
                };
                match newest(m, &held) {
                    Some(idx) => {
                        let id = m.calls[idx].id.clone();
                        self.hold_active_calls(m, Some(&id));
                        if let Some(idx) = m.call_index(&id) {
                            self.set_hold(m, idx, false);
                        }
                    }
                    None => m.say("[KEY] resume: no held call"),
                }
            }
            Key::Dial(digits) => {
                if digits.is_empty() {
                    if m.dialing.is_none() {
                        m.dialing = Some(String::new());
                        m.say("[CALL] dial screen open");
                    }
                    return;
                }
                let number = format!("{}{digits}", m.dialing.take().unwrap_or_default());
                // Document 000: calling out interrupts silent and monitor calls.
                if !self
                    .cfg
                    .faults
                    .has(Fault::SilentCallNotInterruptedByDialing)
                {
                    self.interrupt_silent_calls(m, &format!("calling {number}"));
                }
                self.end_calls_where(
                    m,
                    |c| c.kind == CallKind::Monitor,
                    &format!("monitor call interrupted: calling {number}"),
                );
                self.hold_active_calls(m, None);
                m.last_dialed = Some(number.clone());
                if let Err(e) = self.place_call(m, &number, CallKind::Normal, &[]) {
                    m.say(format!("[CALL] cannot call {number}: {e}"));
                }
            }
        }
    }
}

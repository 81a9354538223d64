//! The user agent: one UDP socket, a receive loop that dispatches requests and
//! responses, client transactions with RFC 3261 retransmission, and the phone's
//! call model behind one lock. Console lines and events produced under the lock are
//! queued and delivered after it is released, so callbacks may call back in.

mod calls;
mod panic;
mod register;
mod transaction;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::*;
use crate::sip::message::SipMessage;

pub use calls::Call;

/// Serial console sink of the phone body.
pub type Console = Arc<dyn Fn(String) + Send + Sync>;
/// Decides how an out-of-dialog NOTIFY is answered, from its Event header.
pub type NotifyHandler = Arc<dyn Fn(&str) -> NotifyDecision + Send + Sync>;

enum Output {
    Console(String),
    Event(UaEvent),
}

/// Everything the phone knows about its calls and features.
pub(crate) struct Model {
    calls: Vec<Call>,
    /// Off-hook dial screen with the digits entered so far (a prefix key fills it).
    dialing: Option<String>,
    dnd: bool,
    forward: Option<String>,
    registered: bool,
    panic: Option<PanicButton>,
    last_dialed: Option<String>,
    last_caller: Option<String>,
    registration: register::Binding,
    outbox: Vec<Output>,
}

impl Model {
    fn say(&mut self, line: impl Into<String>) {
        self.outbox.push(Output::Console(line.into()));
    }

    fn emit(&mut self, event: UaEvent) {
        self.outbox.push(Output::Event(event));
    }

    /// The state the user sees on the LCD; a silent call is invisible.
    fn phone_state(&self) -> PhoneState {
        let visible = || self.calls.iter().filter(|c| c.kind.visible());
        if visible().any(|c| c.status == CallStatus::Established && !c.held_locally) {
            PhoneState::InCall
        } else if self.dialing.is_some() || visible().any(|c| c.status == CallStatus::Calling) {
            PhoneState::Dialing
        } else if self.calls.iter().any(|c| c.status == CallStatus::Ringing) {
            PhoneState::Ringing
        } else if visible().any(|c| c.status == CallStatus::Established && c.held_locally) {
            PhoneState::Holding
        } else {
            PhoneState::Idle
        }
    }

    fn call_index(&self, call_id: &str) -> Option<usize> {
        self.calls.iter().position(|c| c.id == call_id)
    }
}

pub(crate) struct Inner {
    cfg: UaConfig,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    console: Console,
    on_notify: NotifyHandler,
    events: broadcast::Sender<UaEvent>,
    model: Mutex<Model>,
    transactions: transaction::Transactions,
    stop: CancellationToken,
    register_task: Mutex<Option<JoinHandle<()>>>,
    nonce_counts: Mutex<HashMap<String, u32>>,
}

/// Handle to a running phone telephony part; clones share the same phone.
#[derive(Clone)]
pub struct Telephony {
    inner: Arc<Inner>,
    /// One per handle: `inner`'s count less this one's is the number of
    /// tasks still running, which is what shutdown waits for. (Counting
    /// `inner` alone made every shutdown with a second handle alive wait its
    /// full deadline.)
    handles: Arc<()>,
}

impl Telephony {
    /// Bind the SIP port and start answering; does not register yet.
    pub async fn start(
        cfg: UaConfig,
        console: Console,
        on_notify: NotifyHandler,
    ) -> anyhow::Result<Telephony> {
        let socket = UdpSocket::bind(SocketAddr::new(cfg.local_ip, cfg.sip_port))
            .await
            .map_err(|e| anyhow::anyhow!("bind SIP port {}:{}: {e}", cfg.local_ip, cfg.sip_port))?;
        let local = socket.local_addr()?;
        let (events, _) = broadcast::channel(512);
        let inner = Arc::new(Inner {
            cfg,
            socket: Arc::new(socket),
            local,
            console,
            on_notify,
            events,
            model: Mutex::new(Model {
                calls: Vec::new(),
                dialing: None,
                dnd: false,
                forward: None,
                registered: false,
                panic: None,
                last_dialed: None,
                last_caller: None,
                registration: register::Binding::new(local),
                outbox: Vec::new(),
            }),
            transactions: transaction::Transactions::default(),
            stop: CancellationToken::new(),
            register_task: Mutex::new(None),
            nonce_counts: Mutex::new(HashMap::new()),
        });
        tokio::spawn(inner.clone().receive_loop());
        (inner.console)(format!("[SIP] user agent listening on udp {local}"));
        Ok(Telephony {
            inner,
            handles: Arc::new(()),
        })
    }

    /// The SIP address actually bound (useful when `sip_port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    pub fn events(&self) -> broadcast::Receiver<UaEvent> {
        self.inner.events.subscribe()
    }

    /// Register now; keeps refreshing before expiry (and retrying after failures)
    /// until shutdown. Returns the outcome of the first attempt.
    pub async fn register(&self) -> anyhow::Result<()> {
        self.inner.clone().start_registration().await
    }

    pub async fn key(&self, key: Key) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        inner.with_model(|m| inner.key(m, key));
        Ok(())
    }

    pub fn set_panic_button(&self, button: Option<PanicButton>) {
        self.inner.with_model(|m| m.panic = button);
    }

    pub async fn panic_press(&self) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        inner.with_model(|m| inner.panic_press(m));
        Ok(())
    }

    pub fn state(&self) -> CallStateSnapshot {
        let m = self.inner.model.lock().unwrap();
        CallStateSnapshot {
            state: m.phone_state(),
            registered: m.registered,
            dnd: m.dnd,
            forward: m.forward.clone(),
            calls: m.calls.iter().map(Call::snapshot).collect(),
        }
    }

    /// Stop everything. `unregister = true` sends REGISTER with Expires: 0 first
    /// (orderly reboot); `false` is a power cut: nothing more goes on the wire.
    /// Returns once every task of the phone has ended (at most 2 s); the SIP
    /// socket closes when the last handle is dropped.
    pub async fn shutdown(self, unregister: bool) {
        self.shutdown_within(unregister, std::time::Duration::from_secs(2))
            .await;
    }

    /// `shutdown` that waits at most `limit` for the tasks; whether they all ended.
    async fn shutdown_within(self, unregister: bool, limit: std::time::Duration) -> bool {
        if let Some(task) = self.inner.register_task.lock().unwrap().take() {
            task.abort();
        }
        if unregister && self.inner.model.lock().unwrap().registered {
            self.inner.clone().unregister().await;
        }
        self.inner.stop.cancel();
        self.inner.with_model(|m| {
            m.calls.clear();
            m.dialing = None;
            m.registered = false;
        });
        // Every task holds the Inner (and so the socket) until it sees the stop
        // token; wait for them so the port is free when we return.
        let deadline = tokio::time::Instant::now() + limit;
        while self.tasks_running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.tasks_running() == 0
    }
}

impl Telephony {
    fn tasks_running(&self) -> usize {
        Arc::strong_count(&self.inner).saturating_sub(Arc::strong_count(&self.handles))
    }
}

impl Inner {
    fn with_model<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        let (result, outbox) = {
            let mut m = self.model.lock().unwrap();
            let result = f(&mut m);
            (result, std::mem::take(&mut m.outbox))
        };
        for out in outbox {
            match out {
                Output::Console(line) => (self.console)(line),
                Output::Event(ev) => {
                    let _ = self.events.send(ev);
                }
            }
        }
        result
    }

    fn say(&self, line: String) {
        (self.console)(line);
    }

    /// Send a datagram without waiting (usable under the model lock).
    fn transmit(&self, bytes: &[u8], dest: SocketAddr) {
        match self.socket.try_send_to(bytes, dest) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let socket = self.socket.clone();
                let bytes = bytes.to_vec();
                tokio::spawn(async move {
                    let _ = socket.send_to(&bytes, dest).await;
                });
            }
            Err(e) => tracing::debug!("send to {dest} failed: {e}"),
        }
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.local)
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.cfg.user, self.local)
    }

    fn domain(&self) -> String {
        if self.cfg.domain.is_empty() {
            self.cfg.registrar.ip().to_string()
        } else {
            self.cfg.domain.clone()
        }
    }

    fn aor(&self) -> String {
        format!("sip:{}@{}", self.cfg.user, self.domain())
    }

    async fn receive_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, peer) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    // ICMP errors from earlier sends surface here; keep serving.
                    Err(_) => continue,
                },
            };
            let data = &buf[..n];
            if data.iter().all(|b| b.is_ascii_whitespace()) {
                continue; // CRLF keep-alive
            }
            match SipMessage::parse(data) {
                Err(e) => self.say(format!("[SIP] dropped malformed message from {peer}: {e}")),
                Ok(msg) if msg.is_request() => self.clone().on_request(msg, peer),
                Ok(msg) => self.on_response(msg, peer),
            }
        }
    }

    fn on_response(self: &Arc<Self>, resp: SipMessage, peer: SocketAddr) {
        if self.transactions.deliver(&resp) {
            return;
        }
        // A 2xx to INVITE outlives its transaction (RFC 3261 §13.2.2.4): re-ACK it.
        let is_invite = resp.cseq().is_some_and(|(_, m)| m == "INVITE");
        if is_invite && resp.code().is_some_and(|c| (200..300).contains(&c)) {
            self.clone().on_stray_invite_2xx(resp, peer);
        }
    }

    fn on_request(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        let method = req.method().unwrap_or_default().to_ascii_uppercase();
        if method != "ACK" && self.transactions.retransmit_cached_response(&self, &req) {
            return;
        }
        match method.as_str() {
            "INVITE" => self.on_invite(req, peer),
            "ACK" => self.on_ack(req),
            "BYE" => self.on_bye(req, peer),
            "CANCEL" => self.on_cancel(req, peer),
            "NOTIFY" => self.on_notify_request(req, peer),
            "OPTIONS" => {
                let mut resp = self.response(&req, 200, None);
                resp.add_header("Accept", "application/sdp");
                self.send_response(&req, resp, peer);
            }
            "INFO" => {
                let resp = self.response(&req, 200, None);
                self.send_response(&req, resp, peer);
            }
            "SUBSCRIBE" | "REFER" | "MESSAGE" | "PUBLISH" | "UPDATE" | "PRACK" => {
                let resp = self.response(&req, 405, None);
                self.send_response(&req, resp, peer);
            }
            _ => {
                let resp = self.response(&req, 501, None);
                self.send_response(&req, resp, peer);
            }
        }
    }

    fn on_notify_request(self: Arc<Self>, req: SipMessage, peer: SocketAddr) {
        let event = req.header("event").unwrap_or_default().to_string();
        let decision = (self.on_notify)(&event);
        let code = match decision {
            NotifyDecision::Accept => 200,
            NotifyDecision::Reject(code) => code,
        };
        let resp = self.response(&req, code, None);
        self.send_response(&req, resp, peer);
        self.say(format!(
            "[SIP] NOTIFY (Event: {event}) answered {code} {}",
            reason_phrase(code)
        ));
        let _ = self.events.send(UaEvent::Notify { event, decision });
    }

    /// A response with our User-Agent and, for dialog-creating answers, Contact.
    fn response(&self, req: &SipMessage, code: u16, to_tag: Option<&str>) -> SipMessage {
        let mut resp = SipMessage::response_to(req, code, reason_phrase(code), to_tag);
        resp.add_header("User-Agent", self.cfg.user_agent.clone());
        if code == 405 || (req.method() == Some("OPTIONS") && code == 200) {
            resp.add_header("Allow", ALLOW);
        }
        resp
    }

    /// Send a response to where the request came from (RFC 3581 style) and keep it
    /// for answering retransmissions of the request.
    fn send_response(&self, req: &SipMessage, resp: SipMessage, peer: SocketAddr) {
        let bytes = resp.to_bytes();
        self.transmit(&bytes, peer);
        self.transactions
            .cache_response(req, bytes, peer, self.cfg.t1 * 64);
    }

    fn new_branch() -> String {
        format!("z9hG4bK{}", random_token(16))
    }
}

pub(crate) const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, NOTIFY, OPTIONS, INFO";

pub(crate) fn random_token(len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect()
}

pub(crate) fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NotifyDecision;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// The session keeps its handle while a clone shuts down (so a power cut
    /// mid-shutdown can still end it); the shutdown must see the tasks end
    /// with that handle alive. (Counting every reference to the phone as a
    /// task waited out the whole deadline, 2 s per power-off of every phone.)
    #[tokio::test]
    async fn shutdown_waits_for_tasks_not_for_other_handles() {
        let cfg = UaConfig {
            local_ip: Ipv4Addr::new(127, 187, 0, 2).into(),
            sip_port: 0,
            rtp_port_base: 0,
            ..UaConfig::default()
        };
        let phone = Telephony::start(
            cfg,
            Arc::new(|_| {}),
            Arc::new(|_: &str| NotifyDecision::Reject(489)),
        )
        .await
        .unwrap();
        let kept = phone.clone();
        assert_eq!(kept.tasks_running(), 1, "the receive loop");
        assert!(
            phone.shutdown_within(false, Duration::from_secs(10)).await,
            "tasks still running: {}",
            kept.tasks_running()
        );
        assert_eq!(kept.tasks_running(), 0);
    }
}

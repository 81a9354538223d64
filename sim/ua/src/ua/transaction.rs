//! Client transactions (send, retransmit per T1/T2, time out at 64 × T1, ACK non-2xx
//! INVITE answers) and the server side's cache of sent responses, which answers
//! retransmitted requests without running the request logic twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Inner;
use crate::sip::message::SipMessage;
use crate::sip::timers::RetransmitSchedule;

/// What a client transaction reports to its user.
#[derive(Debug)]
pub(crate) enum TxEvent {
    Provisional(SipMessage),
    Final(SipMessage),
    Timeout,
}

/// How long an INVITE may stay in the proceeding state once something answered
/// (RFC 3261 timer C is "greater than 3 minutes").
const PROCEEDING_LIMIT: Duration = Duration::from_secs(181);

#[derive(Default)]
pub(crate) struct Transactions {
    client: Mutex<HashMap<String, mpsc::UnboundedSender<SipMessage>>>,
    responses: Mutex<HashMap<String, CachedResponse>>,
}

struct CachedResponse {
    bytes: Vec<u8>,
    peer: SocketAddr,
    until: Instant,
}

fn key(branch: &str, method: &str) -> String {
    format!("{branch}|{method}")
}

fn message_key(msg: &SipMessage) -> Option<String> {
    let (_, method) = msg.cseq()?;
    Some(key(msg.branch()?, &method))
}

impl Transactions {
    /// Route a response to its client transaction; false when none matches.
    pub(crate) fn deliver(&self, resp: &SipMessage) -> bool {
        let Some(k) = message_key(resp) else {
            return false;
        };
        match self.client.lock().unwrap().get(&k) {
            Some(tx) => tx.send(resp.clone()).is_ok(),
            None => false,
        }
    }

    pub(crate) fn cache_response(
        &self,
        req: &SipMessage,
        bytes: Vec<u8>,
        peer: SocketAddr,
        keep: Duration,
    ) {
        let Some(k) = message_key(req) else { return };
        let now = Instant::now();
        let mut cache = self.responses.lock().unwrap();
        cache.retain(|_, c| c.until > now);
        cache.insert(
            k,
            CachedResponse {
                bytes,
                peer,
                until: now + keep,
            },
        );
    }

    /// Answer a retransmitted request with the last response sent for it.
    pub(crate) fn retransmit_cached_response(&self, inner: &Inner, req: &SipMessage) -> bool {
        let Some(k) = message_key(req) else {
            return false;
        };
        let cache = self.responses.lock().unwrap();
        match cache.get(&k) {
            Some(c) if c.until > Instant::now() => {
                inner.transmit(&c.bytes, c.peer);
                true
            }
            _ => false,
        }
    }
}

impl Inner {
    /// Send `req` to `dest` as a new client transaction.
    pub(crate) fn start_transaction(
        self: &Arc<Self>,
        req: SipMessage,
        dest: SocketAddr,
    ) -> mpsc::UnboundedReceiver<TxEvent> {
        let (user_tx, user_rx) = mpsc::unbounded_channel();
        let (wire_tx, wire_rx) = mpsc::unbounded_channel();
        let Some(k) = message_key(&req) else {
            let _ = user_tx.send(TxEvent::Timeout);
            return user_rx;
        };
        self.transactions
            .client
            .lock()
            .unwrap()
            .insert(k.clone(), wire_tx);
        let bytes = req.to_bytes();
        self.transmit(&bytes, dest);
        tokio::spawn(
            self.clone()
                .run_client_transaction(k, req, bytes, dest, wire_rx, user_tx),
        );
        user_rx
    }

    async fn run_client_transaction(
        self: Arc<Self>,
        k: String,
        req: SipMessage,
        bytes: Vec<u8>,
        dest: SocketAddr,
        mut from_wire: mpsc::UnboundedReceiver<SipMessage>,
        to_user: mpsc::UnboundedSender<TxEvent>,
    ) {
        let invite = req.method() == Some("INVITE");
        let schedule = if invite {
            RetransmitSchedule::invite(self.cfg.t1)
        } else {
            RetransmitSchedule::non_invite(self.cfg.t1, self.cfg.t2)
        };
        let start = Instant::now();
        let mut next = 1usize;
        let mut deadline = start + schedule.give_up;
        let mut retransmitting = true;
        loop {
            let next_send = retransmitting
                .then(|| schedule.sends.get(next).map(|o| start + *o))
                .flatten();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                msg = from_wire.recv() => {
                    let Some(resp) = msg else { break };
                    let code = resp.code().unwrap_or(0);
                    if code < 200 {
                        if invite {
                            // Timer A stops once anything answered; wait for the final answer.
                            retransmitting = false;
                            deadline = Instant::now() + PROCEEDING_LIMIT;
                        }
                        let _ = to_user.send(TxEvent::Provisional(resp));
                        continue;
                    }
                    if invite && code >= 300 {
                        let ack = ack_for_error(&req, &resp);
                        self.transmit(&ack.to_bytes(), dest);
                    }
                    let _ = to_user.send(TxEvent::Final(resp));
                    break;
                }
                _ = sleep_until_opt(next_send) => {
                    self.transmit(&bytes, dest);
                    next += 1;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = to_user.send(TxEvent::Timeout);
                    break;
                }
            }
        }
        self.transactions.client.lock().unwrap().remove(&k);
        // Answer retransmitted non-2xx finals with the same ACK for a while (timer D).
        if invite {
            let linger = start + schedule.give_up;
            while let Ok(Some(resp)) = tokio::time::timeout_at(linger, from_wire.recv()).await {
                if resp.code().is_some_and(|c| c >= 300) {
                    self.transmit(&ack_for_error(&req, &resp).to_bytes(), dest);
                }
            }
        }
    }

    /// Run a request to its final answer, answering up to two digest challenges
    /// (401/407). Returns the final response and the request that got it.
    pub(crate) async fn request(
        self: &Arc<Self>,
        mut req: SipMessage,
        dest: SocketAddr,
    ) -> Result<(SipMessage, SipMessage), TxFailure> {
        let mut challenges = 0;
        loop {
            let mut rx = self.start_transaction(req.clone(), dest);
            let fin = loop {
                match rx.recv().await {
                    Some(TxEvent::Provisional(_)) => continue,
                    Some(TxEvent::Final(r)) => break r,
                    Some(TxEvent::Timeout) | None => return Err(TxFailure::Timeout),
                }
            };
            let code = fin.code().unwrap_or(0);
            if (code == 401 || code == 407) && challenges < 2 {
                if let Some(next) = self.authorize(&req, &fin) {
                    req = next;
                    challenges += 1;
                    continue;
                }
            }
            return Ok((fin, req));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxFailure {
    Timeout,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// RFC 3261 §17.1.1.3: the ACK for a non-2xx final answer to INVITE belongs to the
/// INVITE transaction (same branch, same Request-URI, To from the response).
pub(crate) fn ack_for_error(invite: &SipMessage, resp: &SipMessage) -> SipMessage {
    let mut ack = SipMessage::request("ACK", invite.uri().unwrap_or_default());
    if let Some(via) = invite.top_via() {
        ack.add_header("Via", via);
    }
    for route in invite.headers_named("route") {
        ack.add_header("Route", route);
    }
    ack.add_header("Max-Forwards", "70");
    ack.add_header("From", invite.header("from").unwrap_or_default());
    ack.add_header("To", resp.header("to").unwrap_or_default());
    ack.add_header("Call-ID", invite.call_id());
    let n = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    ack.add_header("CSeq", format!("{n} ACK"));
    ack
}

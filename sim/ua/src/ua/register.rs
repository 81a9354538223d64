//! Registration: REGISTER with digest answers, refresh before expiry, retry after a
//! failure, and un-registration (Expires: 0).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::transaction::TxFailure;
use super::{random_token, reason_phrase, Inner};
use crate::api::{RegisterFailure, UaEvent};
use crate::sip::digest::{authorization, Challenge, DigestInput};
use crate::sip::message::{header_param, split_list, uri_of, SipMessage};

/// The registration dialog-less "binding": one Call-ID and From tag for the life of
/// the phone, CSeq growing across refreshes (RFC 3261 §10.2).
pub(crate) struct Binding {
    call_id: String,
    from_tag: String,
    cseq: u32,
}

impl Binding {
    pub(crate) fn new(local: SocketAddr) -> Binding {
        Binding {
            call_id: format!("{}@{}", random_token(20), local.ip()),
            from_tag: random_token(10),
            cseq: 0,
        }
    }
}

/// When to refresh a binding granted for `expires` seconds: halfway for short
/// bindings, a minute early for long ones.
pub(crate) fn refresh_after(expires: u32) -> Duration {
    let secs = (expires / 2).max(expires.saturating_sub(60)).max(1);
    Duration::from_secs(secs as u64)
}

impl Inner {
    pub(crate) async fn start_registration(self: Arc<Self>) -> anyhow::Result<()> {
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(self.clone().registration_loop(first_tx));
        if let Some(old) = self.register_task.lock().unwrap().replace(task) {
            old.abort();
        }
        match first_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(anyhow::anyhow!("registration failed: {f:?}")),
            Err(_) => Err(anyhow::anyhow!("registration stopped")),
        }
    }

    async fn registration_loop(
        self: Arc<Self>,
        first: oneshot::Sender<Result<(), RegisterFailure>>,
    ) {
        let mut first = Some(first);
        loop {
            let outcome = self.register_once(self.cfg.expires).await;
            let wait = match &outcome {
                Ok(granted) => {
                    let granted = *granted;
                    self.with_model(|m| {
                        m.registered = true;
                        m.say(format!("[SIP] REGISTER 200 OK (expires {granted})"));
                        m.emit(UaEvent::Registered { expires: granted });
                    });
                    refresh_after(granted)
                }
                Err(reason) => {
                    let reason = reason.clone();
                    self.with_model(|m| {
                        m.registered = false;
                        m.say(match &reason {
                            RegisterFailure::Status(c) => {
                                format!("[SIP] REGISTER failed: {c} {}", reason_phrase(*c))
                            }
                            RegisterFailure::Timeout => {
                                "[SIP] REGISTER failed: no answer (timeout)".to_string()
                            }
                            RegisterFailure::Network(e) => format!("[SIP] REGISTER failed: {e}"),
                        });
                        m.emit(UaEvent::RegisterFailed { reason });
                    });
                    self.cfg.register_retry
                }
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(outcome.map(|_| ()));
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    pub(crate) async fn unregister(self: Arc<Self>) {
        match self.register_once(0).await {
            Ok(_) => self.with_model(|m| {
                m.registered = false;
                m.say("[SIP] unregistered (REGISTER Expires: 0 answered 200 OK)");
                m.emit(UaEvent::Unregistered);
            }),
            Err(reason) => self.say(format!("[SIP] un-REGISTER failed: {reason:?}")),
        }
    }

    /// One REGISTER exchange; `Ok(granted expiry)` on 2xx.
    async fn register_once(self: &Arc<Self>, expires: u32) -> Result<u32, RegisterFailure> {
        let req = self.with_model(|m| {
            m.registration.cseq += 1;
            let b = &m.registration;
            let domain = self.domain();
            let mut r = SipMessage::request("REGISTER", &format!("sip:{domain}"));
            r.add_header("Via", self.via(&Self::new_branch()));
            r.add_header("Max-Forwards", "70");
            r.add_header("From", format!("<{}>;tag={}", self.aor(), b.from_tag));
            r.add_header("To", format!("<{}>", self.aor()));
            r.add_header("Call-ID", b.call_id.clone());
            r.add_header("CSeq", format!("{} REGISTER", b.cseq));
            r.add_header("Contact", self.contact());
            r.add_header("Expires", expires.to_string());
            r.add_header("Allow", super::ALLOW);
            r.add_header("User-Agent", self.cfg.user_agent.clone());
            r
        });
        let (resp, sent) = match self.request(req, self.cfg.registrar).await {
            Ok(v) => v,
            Err(TxFailure::Timeout) => return Err(RegisterFailure::Timeout),
        };
        if let Some((n, _)) = sent.cseq() {
            self.with_model(|m| m.registration.cseq = m.registration.cseq.max(n));
        }
        let code = resp.code().unwrap_or(0);
        if !(200..300).contains(&code) {
            return Err(RegisterFailure::Status(code));
        }
        Ok(self.granted_expiry(&resp, expires))
    }

    /// Expiry the registrar granted: our Contact's `expires` parameter, else the
    /// Expires header, else what we asked for.
    fn granted_expiry(&self, resp: &SipMessage, asked: u32) -> u32 {
        let ours = format!("sip:{}@{}", self.cfg.user, self.local);
        for contact in resp.headers_named("contact") {
            for item in split_list(contact) {
                if uri_of(item) == ours {
                    if let Some(v) = header_param(item, "expires").and_then(|v| v.parse().ok()) {
                        return v;
                    }
                }
            }
        }
        resp.header("expires")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(asked)
    }

    /// The same request again with credentials for the challenge in `resp`,
    /// a new branch and the next CSeq; `None` if the challenge cannot be answered.
    pub(crate) fn authorize(&self, req: &SipMessage, resp: &SipMessage) -> Option<SipMessage> {
        let (challenge_header, answer_header) = match resp.code()? {
            407 => ("proxy-authenticate", "Proxy-Authorization"),
            _ => ("www-authenticate", "Authorization"),
        };
        let challenge = Challenge::pick(resp.headers_named(challenge_header))?;
        let nc = {
            let mut counts = self.nonce_counts.lock().unwrap();
            let n = counts.entry(challenge.nonce.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let username = if self.cfg.auth_user.is_empty() {
            &self.cfg.user
        } else {
            &self.cfg.auth_user
        };
        let (n, method) = req.cseq()?;
        let uri = req.uri()?.to_string();
        let mut next = req.clone();
        next.remove_header(answer_header);
        next.set_header("Via", self.via(&Self::new_branch()));
        next.set_header("CSeq", format!("{} {method}", n + 1));
        let cnonce = random_token(16);
        next.add_header(
            answer_header,
            authorization(
                &challenge,
                &DigestInput {
                    username,
                    password: &self.cfg.password,
                    method: &method,
                    uri: &uri,
                    cnonce: &cnonce,
                    nc,
                },
            ),
        );
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(3600, 3540)]
    #[case(120, 60)]
    #[case(60, 30)]
    #[case(2, 1)]
    #[case(1, 1)]
    fn refresh_timing(#[case] expires: u32, #[case] secs: u64) {
        assert_eq!(refresh_after(expires), Duration::from_secs(secs));
    }
}

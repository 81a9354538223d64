//! The registrar: digest-authenticates REGISTER against the lab's phone
//! directory (the AOR's user part is the phone's extension), keeps the
//! registration table, and reports every attempt as `sip.register`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use phonerig_core::event::NewEvent;
use phonerig_core::Source;

use crate::digest::{self, Algorithm, Credentials};
use crate::endpoint::Core;
use crate::message::{header_param, response_to, token, uri_of, user_of, SipMsg, Transport};
use crate::nonce_store::NonceStore;
use crate::{user_agent, RegisterPolicy, Registration};

/// How long an issued nonce is honoured (kamailio's `nonce_expire`
/// default); an answer with an older one gets a `stale=true` re-challenge.
/// Phones answer a 401 within a round trip; a phone reusing the nonce
/// for its next refresh gets a fresh one after this.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Nonces held at once at most (about 12 MB), so a REGISTER flood costs bounded
/// memory: beyond it the oldest are forgotten early. At the flood guard's
/// default 2 500 datagrams/s every nonce still lives ≥ 26 s.
const MAX_NONCES: usize = 65_536;
const DEFAULT_EXPIRES: u32 = 3600;

pub(crate) struct Registrar {
    realm: String,
    algorithm: Option<Algorithm>,
    policy: RegisterPolicy,
    table: Mutex<BTreeMap<String, Registration>>,
    nonces: Mutex<NonceStore>,
}

/// What the registrar decided for one REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Challenge {
        stale: bool,
    },
    Reject(u16),
    Accept,
    /// Send nothing back.
    Ignore,
}

impl Registrar {
    pub fn new(realm: String, algorithm: Option<Algorithm>, policy: RegisterPolicy) -> Registrar {
        Registrar {
            realm,
            algorithm,
            policy,
            table: Mutex::new(BTreeMap::new()),
            nonces: Mutex::new(NonceStore::new(NONCE_LIFETIME, MAX_NONCES)),
        }
    }

    pub fn get(&self, ext: &str) -> Option<Registration> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ext)
            .filter(|r| r.is_current())
            .cloned()
    }

    pub fn all(&self) -> BTreeMap<String, Registration> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, r)| r.is_current())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Removes registrations whose expiry passed without a refresh.
    fn take_expired(&self) -> Vec<Registration> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<String> = table
            .iter()
            .filter(|(_, r)| !r.is_current())
            .map(|(k, _)| k.clone())
            .collect();
        expired.iter().filter_map(|ext| table.remove(ext)).collect()
    }

    fn new_nonce(&self) -> String {
        let nonce = token(16);
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .issue(nonce.clone(), Instant::now());
        nonce
    }

    fn knows_nonce(&self, nonce: &str) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_valid(nonce, Instant::now())
    }

    fn verdict(&self, request: &SipMsg, password: Option<&str>) -> Verdict {
        match self.policy {
            RegisterPolicy::Reject { code } => return Verdict::Reject(code),
            RegisterPolicy::ChallengeForever => return Verdict::Challenge { stale: false },
            RegisterPolicy::Ignore => return Verdict::Ignore,
            RegisterPolicy::Accept => {}
        }
        let Some(algorithm) = self.algorithm else {
            return Verdict::Accept;
        };
        let Some(password) = password else {
            return Verdict::Reject(404);
        };
        let credentials = request
            .headers_named("authorization")
            .iter()
            .filter_map(|h| Credentials::parse(h))
            .find(|c| c.realm == self.realm);
        let Some(credentials) = credentials else {
            return Verdict::Challenge { stale: false };
        };
        if credentials.algorithm != algorithm {
            return Verdict::Challenge { stale: false };
        }
        if !self.knows_nonce(&credentials.nonce) {
            return Verdict::Challenge { stale: true };
        }
        let user = user_of(&request.to()).unwrap_or_default();
        if credentials.username != user || !credentials.verify(password, "REGISTER") {
            return Verdict::Reject(403);
        }
        Verdict::Accept
    }
}

/// Expiry asked for: the Contact's `expires` parameter, else the Expires header, else 3600.
fn requested_expires(request: &SipMsg, contact: &str) -> u32 {
    header_param(contact, "expires")
        .and_then(|e| e.parse().ok())
        .or_else(|| {
            request
                .header("expires")
                .and_then(|e| e.trim().parse().ok())
        })
        .unwrap_or(DEFAULT_EXPIRES)
}

/// Publishes `sip.register` with result `expired` for every binding the phone
/// did not refresh in time (a phone that stopped re-registering is a finding).
pub(crate) fn publish_expired(core: &Core) {
    for registration in core.registrar.take_expired() {
        let phone = core
            .ctx
            .directory
            .by_ext(&registration.ext)
            .map(|p| p.name.clone());
        core.ctx.timeline.publish(
            NewEvent::new(Source::Sip, "sip.register")
                .phone(phone)
                .field("aor", &registration.aor)
                .field("contact", &registration.contact)
                .field("expires", registration.expires)
                .field("user_agent", &registration.user_agent)
                .field("peer", registration.source.to_string())
                .field("transport", registration.transport)
                .field("result", "expired"),
        );
    }
}

pub(crate) async fn handle(core: &Core, request: SipMsg, peer: SocketAddr, transport: Transport) {
    let registrar = &core.registrar;
    let to = request.to();
    let ext = user_of(&to).unwrap_or_default();
    let aor = uri_of(&to);
    let phone = core.ctx.directory.by_ext(&ext);
    let contact = request.header("contact").unwrap_or_default();
    let user_agent = request.header("user-agent");
    let mut expires = requested_expires(&request, &contact);
    let to_tag = token(4);

    let verdict = registrar.verdict(&request, phone.as_ref().map(|p| p.password.as_str()));
    let (code, result, builder) = match verdict {
        Verdict::Challenge { stale } => {
            let algorithm = registrar.algorithm.unwrap_or(Algorithm::Md5);
            let mut challenge =
                digest::challenge(&registrar.realm, &registrar.new_nonce(), algorithm);
            if stale {
                challenge.push_str(", stale=true");
            }
            (
                401,
                "challenged",
                response_to(&request, Some(&to_tag)).header("WWW-Authenticate", challenge),
            )
        }
        Verdict::Reject(code) => (code, "rejected", response_to(&request, Some(&to_tag))),
        Verdict::Ignore => {
            // No response: retransmissions of this request are absorbed by the
            // endpoint (recorded as `sip.message`, nothing resent) until the phone gives up.
            publish_attempt(
                core, &request, phone, peer, transport, expires, "ignored", None,
            );
            return;
        }
        Verdict::Accept => {
            let removing = contact.trim() == "*" || expires == 0 || contact.is_empty();
            let mut table = registrar.table.lock().unwrap_or_else(|p| p.into_inner());
            if removing {
                table.remove(&ext);
                expires = 0;
                drop(table);
                (200, "unregistered", response_to(&request, Some(&to_tag)))
            } else {
                table.insert(
                    ext.clone(),
                    Registration {
                        ext: ext.clone(),
                        aor: aor.clone(),
                        contact: uri_of(&contact),
                        expires,
                        transport,
                        source: peer,
                        user_agent: user_agent.clone(),
                        registered_at: Instant::now(),
                    },
                );
                drop(table);
                let granted = format!("<{}>;expires={expires}", uri_of(&contact));
                (
                    200,
                    "ok",
                    response_to(&request, Some(&to_tag))
                        .header("Contact", granted)
                        .header("Expires", expires.to_string()),
                )
            }
        }
    };
    core.respond(&request, builder, code, peer, transport).await;
    publish_attempt(
        core,
        &request,
        phone,
        peer,
        transport,
        expires,
        result,
        Some(code),
    );
}

/// One `sip.register` event for a REGISTER the registrar decided on.
#[allow(clippy::too_many_arguments)]
fn publish_attempt(
    core: &Core,
    request: &SipMsg,
    phone: Option<std::sync::Arc<phonerig_core::PhoneInfo>>,
    peer: SocketAddr,
    transport: Transport,
    expires: u32,
    result: &str,
    code: Option<u16>,
) {
    let contact = request.header("contact").unwrap_or_default();
    let user_agent = request.header("user-agent");
    let parsed = user_agent.as_deref().and_then(user_agent::parse);
    let phone_name = phone
        .map(|p| p.name.clone())
        .or_else(|| core.ctx.directory.by_ip(peer.ip()).map(|p| p.name.clone()));
    core.ctx.timeline.publish(
        NewEvent::new(Source::Sip, "sip.register")
            .phone(phone_name)
            .field("aor", uri_of(&request.to()))
            .field("contact", contact)
            .field("expires", expires)
            .field("user_agent", user_agent)
            .field("ua_vendor", parsed.as_ref().map(|p| p.vendor.clone()))
            .field("ua_model", parsed.as_ref().map(|p| p.model.clone()))
            .field("ua_version", parsed.as_ref().map(|p| p.version.clone()))
            .field("peer", peer.to_string())
            .field("transport", transport)
            .field("result", result)
            .field("code", code),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn register(extra: &str) -> SipMsg {
        let text = format!(
            "REGISTER sip:rig SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK1\r\nFrom: <sip:4002@rig>;tag=a\r\nTo: <sip:4002@rig>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:4002@127.0.0.2>\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        SipMsg::parse(text.as_bytes()).unwrap()
    }

    fn answered(registrar: &Registrar, password: &str, algorithm: Algorithm) -> SipMsg {
        let challenge =
            digest::Challenge::parse(&digest::challenge("rig", &registrar.new_nonce(), algorithm))
                .unwrap();
        register(&format!(
            "Authorization: {}\r\n",
            challenge.answer("4002", password, "REGISTER", "sip:rig", "cn")
        ))
    }

    #[rstest]
    #[case(Algorithm::Md5)]
    #[case(Algorithm::Sha256)]
    fn digest_round(#[case] algorithm: Algorithm) {
        let registrar = Registrar::new("rig".into(), Some(algorithm), RegisterPolicy::Accept);
        assert_eq!(
            registrar.verdict(&register(""), Some("pw")),
            Verdict::Challenge { stale: false }
        );
        assert_eq!(
            registrar.verdict(&answered(&registrar, "pw", algorithm), Some("pw")),
            Verdict::Accept
        );
        assert_eq!(
            registrar.verdict(&answered(&registrar, "wrong", algorithm), Some("pw")),
            Verdict::Reject(403)
        );
        assert_eq!(registrar.verdict(&register(""), None), Verdict::Reject(404));
    }

    #[test]
    fn unknown_nonce_is_stale_and_wrong_algorithm_rechallenged() {
        let registrar = Registrar::new(
            "rig".into(),
            Some(Algorithm::Sha256),
            RegisterPolicy::Accept,
        );
        let forged =
            digest::Challenge::parse(&digest::challenge("rig", "not-issued", Algorithm::Sha256))
                .unwrap();
        let request = register(&format!(
            "Authorization: {}\r\n",
            forged.answer("4002", "pw", "REGISTER", "sip:rig", "cn")
        ));
        assert_eq!(
            registrar.verdict(&request, Some("pw")),
            Verdict::Challenge { stale: true }
        );
        assert_eq!(
            registrar.verdict(&answered(&registrar, "pw", Algorithm::Md5), Some("pw")),
            Verdict::Challenge { stale: false }
        );
    }

    /// The nonce of a 401 is still honoured after many other challenges
    /// went out (a registration burst), not only after a few hundred.
    #[rstest]
    #[case(0)]
    #[case(256)]
    #[case(10_000)]
    fn a_nonce_survives_a_burst_of_other_challenges(#[case] others: usize) {
        let registrar = Registrar::new("rig".into(), Some(Algorithm::Md5), RegisterPolicy::Accept);
        let first = answered(&registrar, "pw", Algorithm::Md5);
        for _ in 0..others {
            registrar.new_nonce();
        }
        assert_eq!(registrar.verdict(&first, Some("pw")), Verdict::Accept);
    }

    #[rstest]
    #[case(RegisterPolicy::Reject { code: 403 }, Verdict::Reject(403))]
    #[case(RegisterPolicy::ChallengeForever, Verdict::Challenge { stale: false })]
    #[case(RegisterPolicy::Ignore, Verdict::Ignore)]
    fn forced_policies_ignore_good_credentials(
        #[case] policy: RegisterPolicy,
        #[case] expected: Verdict,
    ) {
        let registrar = Registrar::new("rig".into(), Some(Algorithm::Md5), policy);
        assert_eq!(
            registrar.verdict(&answered(&registrar, "pw", Algorithm::Md5), Some("pw")),
            expected
        );
    }

    #[rstest]
    #[case("", "<sip:4002@h>", 3600)]
    #[case("Expires: 60\r\n", "<sip:4002@h>", 60)]
    #[case("Expires: 60\r\n", "<sip:4002@h>;expires=0", 0)]
    fn expiry(#[case] extra: &str, #[case] contact: &str, #[case] expected: u32) {
        assert_eq!(requested_expires(&register(extra), contact), expected);
    }
}

//! Basic and Digest authentication of tree requests, as a scenario asks for
//! it. Credentials may use placeholders (`{phone.ext}`), so the expected
//! user and password depend on who is asking: the identified requester, or —
//! when the rig cannot tell yet — any phone of the lab whose credentials match.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use phonerig_core::{PhoneDirectory, PhoneInfo, Placeholders};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::digest::{self, Algorithm, DigestInput};

/// Realm used when the scenario names none.
pub const DEFAULT_REALM: &str = "phonerig";
/// Issued nonces remembered; older ones are answered with `stale=true`.
const NONCES_KEPT: usize = 4096;

/// `[serve.http.auth]` of a scenario.
#[derive(Deserialize, Serialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub scheme: AuthScheme,
    /// May contain placeholders, e.g. `{phone.ext}`.
    pub user: String,
    /// May contain placeholders, e.g. `{phone.password}`.
    pub password: String,
    /// Defaults to `phonerig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

#[derive(Deserialize, Serialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Basic,
    Digest,
}

/// The result of checking one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Credentials match; the phone whose placeholders made them match, if any.
    Ok(Option<Arc<PhoneInfo>>),
    /// No (usable) `Authorization` header for the configured scheme.
    Missing,
    /// Wrong credentials. `stale`: the digest was right for a nonce the rig
    /// no longer remembers, so the client may retry without asking the user.
    Failed { stale: bool },
}

struct Credentials {
    user: String,
    password: String,
    realm: String,
    phone: Option<Arc<PhoneInfo>>,
}

pub struct Authenticator {
    auth: Auth,
    base: Placeholders,
    directory: PhoneDirectory,
    nonces: Mutex<VecDeque<String>>,
}

impl Authenticator {
    pub fn new(auth: Auth, base: Placeholders, directory: PhoneDirectory) -> Self {
        Authenticator {
            auth,
            base,
            directory,
            nonces: Mutex::new(VecDeque::new()),
        }
    }

    /// Fails when a placeholder in the settings is unknown, so a scenario
    /// typo shows at start instead of as a mysterious 401.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut probe = self.base.clone();
        for name in [
            "phone.name",
            "phone.model",
            "phone.mac",
            "phone.MAC",
            "phone.mac_colon",
            "phone.ext",
            "phone.password",
            "phone.devcode",
        ] {
            probe.set(name, "x");
        }
        for (what, text) in [
            ("user", Some(&self.auth.user)),
            ("password", Some(&self.auth.password)),
            ("realm", self.auth.realm.as_ref()),
        ] {
            if let Some(text) = text {
                probe
                    .expand(text)
                    .map_err(|e| anyhow::anyhow!("serve.http.auth.{what}: {e}"))?;
            }
        }
        Ok(())
    }

    fn expand_for(&self, phone: Option<&PhoneInfo>) -> Option<Credentials> {
        let placeholders = match phone {
            Some(p) => self.base.clone().with_phone(p),
            None => self.base.clone(),
        };
        let realm = match &self.auth.realm {
            Some(realm) => placeholders.expand(realm).ok()?,
            None => DEFAULT_REALM.to_owned(),
        };
        Some(Credentials {
            user: placeholders.expand(&self.auth.user).ok()?,
            password: placeholders.expand(&self.auth.password).ok()?,
            realm,
            phone: None,
        })
    }

    /// Every set of credentials that may be valid for this request.
    fn candidates(&self, requester: Option<Arc<PhoneInfo>>) -> Vec<Credentials> {
        let per_phone = [&self.auth.user, &self.auth.password]
            .into_iter()
            .chain(self.auth.realm.as_ref())
            .any(|t| Placeholders::mentions_phone(t));
        if !per_phone {
            return self.expand_for(None).into_iter().collect();
        }
        let phones = match requester {
            Some(phone) => vec![phone],
            None => self.directory.phones(),
        };
        phones
            .into_iter()
            .filter_map(|phone| {
                self.expand_for(Some(&phone)).map(|c| Credentials {
                    phone: Some(phone),
                    ..c
                })
            })
            .collect()
    }

    /// The realm to announce. One naming `{phone.*}` needs a known requester;
    /// without one the default realm is announced (and will not match).
    fn realm_for(&self, requester: Option<&PhoneInfo>) -> String {
        let Some(realm) = &self.auth.realm else {
            return DEFAULT_REALM.to_owned();
        };
        let placeholders = match requester {
            Some(p) => self.base.clone().with_phone(p),
            None => self.base.clone(),
        };
        placeholders
            .expand(realm)
            .unwrap_or_else(|_| DEFAULT_REALM.to_owned())
    }

    /// The `WWW-Authenticate` values of a 401. Digest offers SHA-256 first and
    /// MD5 second (RFC 7616 §3.7): clients take the first they support.
    pub fn challenges(&self, requester: Option<&PhoneInfo>, stale: bool) -> Vec<String> {
        let realm = quote(&self.realm_for(requester));
        match self.auth.scheme {
            AuthScheme::Basic => vec![format!("Basic realm={realm}, charset=\"UTF-8\"")],
            AuthScheme::Digest => {
                let nonce = self.issue_nonce();
                let stale = if stale { ", stale=true" } else { "" };
                [Algorithm::Sha256, Algorithm::Md5]
                    .iter()
                    .map(|alg| format!("Digest realm={realm}, qop=\"auth\", algorithm={}, nonce=\"{nonce}\", opaque=\"{nonce}\"{stale}", alg.name()))
                    .collect()
            }
        }
    }

    fn issue_nonce(&self) -> String {
        let mut random = [0u8; 18];
        if getrandom::fill(&mut random).is_err() {
            // Without an entropy source a counter still gives unique nonces;
            // this server guards a test bench, not secrets.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            random[..16].copy_from_slice(&t.to_le_bytes());
        }
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if nonces.len() >= NONCES_KEPT {
            nonces.pop_front();
        }
        nonces.push_back(nonce.clone());
        nonce
    }

    fn knows_nonce(&self, nonce: &str) -> bool {
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == nonce)
    }

    /// Checks the `Authorization` header of a request for `target` (the
    /// request-target as sent: path and query).
    pub fn check(
        &self,
        method: &str,
        target: &str,
        header: Option<&str>,
        requester: Option<Arc<PhoneInfo>>,
    ) -> AuthVerdict {
        let Some(header) = header else {
            return AuthVerdict::Missing;
        };
        let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        match self.auth.scheme {
            AuthScheme::Basic if scheme.eq_ignore_ascii_case("basic") => {
                self.check_basic(rest, requester)
            }
            AuthScheme::Digest if scheme.eq_ignore_ascii_case("digest") => {
                self.check_digest(method, target, rest, requester)
            }
            _ => AuthVerdict::Missing,
        }
    }

    fn check_basic(&self, encoded: &str, requester: Option<Arc<PhoneInfo>>) -> AuthVerdict {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return AuthVerdict::Failed { stale: false };
        };
        let decoded = String::from_utf8_lossy(&decoded);
        let Some((user, password)) = decoded.split_once(':') else {
            return AuthVerdict::Failed { stale: false };
        };
        self.candidates(requester)
            .into_iter()
            .find(|c| c.user == user && c.password == password)
            .map_or(AuthVerdict::Failed { stale: false }, |c| {
                AuthVerdict::Ok(c.phone)
            })
    }

    fn check_digest(
        &self,
        method: &str,
        target: &str,
        params: &str,
        requester: Option<Arc<PhoneInfo>>,
    ) -> AuthVerdict {
        let failed = AuthVerdict::Failed { stale: false };
        let Ok(params) = digest::parse_params(params) else {
            return failed;
        };
        let get = |key: &str| params.get(key).map(String::as_str);
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(given)) = (
            get("username"),
            get("realm"),
            get("nonce"),
            get("uri"),
            get("response"),
        ) else {
            return failed;
        };
        let Some(algorithm) = Algorithm::parse(get("algorithm")) else {
            return failed;
        };
        // The digest covers `uri`; it must name what was requested, or a
        // captured header could be replayed for another file.
        if uri != target {
            return failed;
        }
        let qop_auth = match get("qop") {
            None => None,
            Some(qop) if qop.eq_ignore_ascii_case("auth") => match (get("nc"), get("cnonce")) {
                (Some(nc), Some(cnonce)) => Some((nc, cnonce)),
                _ => return failed,
            },
            Some(_) => return failed,
        };
        let matched = self.candidates(requester).into_iter().find(|c| {
            c.user == user
                && c.realm == realm
                && digest::response(&DigestInput {
                    algorithm,
                    username: user,
                    realm,
                    password: &c.password,
                    method,
                    uri,
                    nonce,
                    qop_auth,
                })
                .eq_ignore_ascii_case(given)
        });
        match matched {
            Some(_) if !self.knows_nonce(nonce) => AuthVerdict::Failed { stale: true },
            Some(c) => AuthVerdict::Ok(c.phone),
            None => failed,
        }
    }
}

/// A quoted-string (RFC 9110 §5.6.4).
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn phone(name: &str, mac: &str, ext: &str) -> PhoneInfo {
        PhoneInfo {
            name: name.into(),
            model: "htek-uc924".into(),
            mac: mac.parse().unwrap(),
            ext: ext.into(),
            password: format!("pw{ext}"),
            devcode: None,
        }
    }

    fn authenticator(scheme: AuthScheme, user: &str, password: &str) -> Authenticator {
        let directory = PhoneDirectory::new([
            phone("a", "001fc110d3a9", "4002"),
            phone("b", "001fc110d3aa", "4003"),
        ]);
        Authenticator::new(
            Auth {
                scheme,
                user: user.into(),
                password: password.into(),
                realm: None,
            },
            Placeholders::new(),
            directory,
        )
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[rstest]
    #[case(None, AuthVerdict::Missing)]
    #[case(Some("Bearer x"), AuthVerdict::Missing)]
    #[case(Some("Basic !!!"), AuthVerdict::Failed { stale: false })]
    #[case(Some("Basic YWRtaW4="), AuthVerdict::Failed { stale: false })]
    fn basic_rejections(#[case] header: Option<&str>, #[case] expected: AuthVerdict) {
        let auth = authenticator(AuthScheme::Basic, "admin", "secret");
        assert_eq!(auth.check("GET", "/x", header, None), expected);
    }

    #[test]
    fn basic_with_fixed_credentials() {
        let auth = authenticator(AuthScheme::Basic, "admin", "secret");
        assert_eq!(
            auth.check("GET", "/x", Some(&basic("admin", "secret")), None),
            AuthVerdict::Ok(None)
        );
        assert_eq!(
            auth.check("GET", "/x", Some(&basic("admin", "wrong")), None),
            AuthVerdict::Failed { stale: false }
        );
    }

    #[test]
    fn per_phone_credentials_identify_the_phone() {
        let auth = authenticator(AuthScheme::Basic, "{phone.ext}", "{phone.password}");
        match auth.check("GET", "/x", Some(&basic("4003", "pw4003")), None) {
            AuthVerdict::Ok(Some(phone)) => assert_eq!(phone.name, "b"),
            other => panic!("{other:?}"),
        }
        // A known requester must use its own credentials, not another phone's.
        let a = Arc::new(phone("a", "001fc110d3a9", "4002"));
        assert_eq!(
            auth.check("GET", "/x", Some(&basic("4003", "pw4003")), Some(a)),
            AuthVerdict::Failed { stale: false }
        );
    }

    fn digest_header(
        algorithm: Algorithm,
        user: &str,
        password: &str,
        uri: &str,
        nonce: &str,
    ) -> String {
        let response = digest::response(&DigestInput {
            algorithm,
            username: user,
            realm: DEFAULT_REALM,
            password,
            method: "GET",
            uri,
            nonce,
            qop_auth: Some(("00000001", "abc")),
        });
        format!(
            "Digest username=\"{user}\", realm=\"{DEFAULT_REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"abc\", response=\"{response}\"",
            algorithm.name()
        )
    }

    fn nonce_of(challenge: &str) -> String {
        let params = digest::parse_params(challenge.strip_prefix("Digest ").unwrap()).unwrap();
        params["nonce"].clone()
    }

    #[rstest]
    #[case(Algorithm::Md5)]
    #[case(Algorithm::Sha256)]
    #[case(Algorithm::Md5Sess)]
    fn digest_round_trip(#[case] algorithm: Algorithm) {
        let auth = authenticator(AuthScheme::Digest, "admin", "secret");
        let challenges = auth.challenges(None, false);
        assert!(
            challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5")
        );
        let nonce = nonce_of(&challenges[0]);
        let good = digest_header(algorithm, "admin", "secret", "/cfg.xml", &nonce);
        assert_eq!(
            auth.check("GET", "/cfg.xml", Some(&good), None),
            AuthVerdict::Ok(None)
        );
        let wrong_password = digest_header(algorithm, "admin", "nope", "/cfg.xml", &nonce);
        assert_eq!(
            auth.check("GET", "/cfg.xml", Some(&wrong_password), None),
            AuthVerdict::Failed { stale: false }
        );
        // Same header for another file: the uri does not match the request.
        assert_eq!(
            auth.check("GET", "/other.xml", Some(&good), None),
            AuthVerdict::Failed { stale: false }
        );
    }

    #[test]
    fn digest_with_forgotten_nonce_is_stale() {
        let auth = authenticator(AuthScheme::Digest, "admin", "secret");
        let header = digest_header(Algorithm::Md5, "admin", "secret", "/x", "never-issued");
        assert_eq!(
            auth.check("GET", "/x", Some(&header), None),
            AuthVerdict::Failed { stale: true }
        );
        assert!(auth.challenges(None, true)[0].ends_with("stale=true"));
    }

    #[test]
    fn fixed_realm_is_announced_even_when_the_user_is_per_phone() {
        let mut auth = authenticator(AuthScheme::Digest, "{phone.ext}", "{phone.password}");
        auth.auth.realm = Some("htek".into());
        assert!(auth
            .challenges(None, false)
            .iter()
            .all(|c| c.contains("realm=\"htek\"")));
        auth.auth.realm = Some("{phone.name}".into());
        assert!(auth.challenges(None, false)[0].contains("realm=\"phonerig\""));
        let a = phone("a", "001fc110d3a9", "4002");
        assert!(auth.challenges(Some(&a), false)[0].contains("realm=\"a\""));
    }

    #[test]
    fn unknown_placeholder_fails_validation() {
        let auth = authenticator(AuthScheme::Basic, "{phone.extension}", "x");
        assert!(auth
            .validate()
            .unwrap_err()
            .to_string()
            .contains("phone.extension"));
        assert!(
            authenticator(AuthScheme::Basic, "{phone.ext}", "{phone.password}")
                .validate()
                .is_ok()
        );
    }
}

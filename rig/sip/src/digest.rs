//! HTTP Digest as SIP uses it: RFC 2617 / RFC 7616 computation with MD5 or
//! SHA-256 (RFC 8760 names SHA-256 for SIP). The registrar checks phones'
//! answers; the NOTIFY client answers phones' challenges.

use std::collections::BTreeMap;

use md5::Md5;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// From an `algorithm=` value; absent means MD5 (RFC 2617 §3.2.1).
    pub fn parse(text: Option<&str>) -> Option<Algorithm> {
        match text.map(|t| t.trim().to_ascii_uppercase()) {
            None => Some(Algorithm::Md5),
            Some(t) if t == "MD5" => Some(Algorithm::Md5),
            Some(t) if t == "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn hash(self, text: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(text.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(text.as_bytes())),
        }
    }
}

/// `name=value` / `name="value"` pairs after the `Digest` scheme, names lower-cased.
pub fn parse_params(header_value: &str) -> Option<BTreeMap<String, String>> {
    let value = header_value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.trim().is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => {
                        val.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        params.insert(name.trim().to_ascii_lowercase(), val.trim().to_owned());
    }
    Some(params)
}

/// The inputs of one digest computation.
#[derive(Debug, Clone)]
pub struct DigestInput<'a> {
    pub algorithm: Algorithm,
    pub username: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a str,
    /// `(qop, nc, cnonce)` when the challenge offered qop=auth.
    pub qop: Option<(&'a str, &'a str, &'a str)>,
}

/// The `response=` value (RFC 7616 §3.4.1, `auth` quality of protection or none).
pub fn response(input: &DigestInput) -> String {
    let alg = input.algorithm;
    let ha1 = alg.hash(&format!(
        "{}:{}:{}",
        input.username, input.realm, input.password
    ));
    let ha2 = alg.hash(&format!("{}:{}", input.method, input.uri));
    match input.qop {
        Some((qop, nc, cnonce)) => {
            alg.hash(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", input.nonce))
        }
        None => alg.hash(&format!("{ha1}:{}:{ha2}", input.nonce)),
    }
}

/// A challenge header value the registrar sends.
pub fn challenge(realm: &str, nonce: &str, algorithm: Algorithm) -> String {
    format!(
        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
        algorithm.name()
    )
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    /// Whether `auth` was among the offered qop values.
    pub qop_auth: bool,
}

impl Challenge {
    pub fn parse(header_value: &str) -> Option<Challenge> {
        let params = parse_params(header_value)?;
        Some(Challenge {
            realm: params.get("realm")?.clone(),
            nonce: params.get("nonce")?.clone(),
            algorithm: Algorithm::parse(params.get("algorithm").map(String::as_str))?,
            opaque: params.get("opaque").cloned(),
            qop_auth: params
                .get("qop")
                .is_some_and(|q| q.split(',').any(|v| v.trim().eq_ignore_ascii_case("auth"))),
        })
    }

    /// The `Authorization` value answering this challenge for `method uri`.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> String {
        let nc = "00000001";
        let qop = self.qop_auth.then_some(("auth", nc, cnonce));
        let response = response(&DigestInput {
            algorithm: self.algorithm,
            username,
            realm: &self.realm,
            password,
            method,
            uri,
            nonce: &self.nonce,
            qop,
        });
        let mut value = format!(
            "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.name()
        );
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{opaque}\""));
        }
        value
    }
}

/// An `Authorization` header as the registrar reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

impl Credentials {
    pub fn parse(header_value: &str) -> Option<Credentials> {
        let params = parse_params(header_value)?;
        Some(Credentials {
            username: params.get("username")?.clone(),
            realm: params.get("realm")?.clone(),
            nonce: params.get("nonce")?.clone(),
            uri: params.get("uri")?.clone(),
            response: params.get("response")?.to_ascii_lowercase(),
            algorithm: Algorithm::parse(params.get("algorithm").map(String::as_str))?,
            qop: params.get("qop").cloned(),
            nc: params.get("nc").cloned(),
            cnonce: params.get("cnonce").cloned(),
        })
    }

    /// Whether `response=` is right for `password` and `method`.
    pub fn verify(&self, password: &str, method: &str) -> bool {
        let qop = match (&self.qop, &self.nc, &self.cnonce) {
            (Some(qop), Some(nc), Some(cnonce)) => {
                Some((qop.as_str(), nc.as_str(), cnonce.as_str()))
            }
            (None, _, _) => None,
            _ => return false,
        };
        let expected = response(&DigestInput {
            algorithm: self.algorithm,
            username: &self.username,
            realm: &self.realm,
            password,
            method,
            uri: &self.uri,
            nonce: &self.nonce,
            qop,
        });
        expected == self.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // RFC 2617 §3.5 and RFC 7616 §3.9.1 worked examples.
    #[rstest]
    #[case::rfc2617_md5(
        Algorithm::Md5,
        "testrealm@host.com",
        "Circle Of Life",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "0a4f113b",
        "6629fae49393a05397450978507c4ef1"
    )]
    #[case::rfc7616_md5(
        Algorithm::Md5,
        "http-auth@example.org",
        "Circle of Life",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "8ca523f5e9506fed4657c9700eebdbec"
    )]
    #[case::rfc7616_sha256(
        Algorithm::Sha256,
        "http-auth@example.org",
        "Circle of Life",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )]
    fn rfc_vectors(
        #[case] algorithm: Algorithm,
        #[case] realm: &str,
        #[case] password: &str,
        #[case] nonce: &str,
        #[case] cnonce: &str,
        #[case] expected: &str,
    ) {
        let input = DigestInput {
            algorithm,
            username: "Mufasa",
            realm,
            password,
            method: "GET",
            uri: "/dir/index.html",
            nonce,
            qop: Some(("auth", "00000001", cnonce)),
        };
        assert_eq!(response(&input), expected);
    }

    #[rstest]
    #[case(Algorithm::Md5)]
    #[case(Algorithm::Sha256)]
    fn our_answer_verifies_and_a_wrong_password_does_not(#[case] algorithm: Algorithm) {
        let challenge = Challenge::parse(&challenge("phonerig", "n0nce", algorithm)).unwrap();
        assert_eq!(challenge.algorithm, algorithm);
        let answer = challenge.answer("4002", "secret", "REGISTER", "sip:127.0.0.1", "c1");
        let creds = Credentials::parse(&answer).unwrap();
        assert!(creds.verify("secret", "REGISTER"));
        assert!(!creds.verify("Secret", "REGISTER"));
        assert!(!creds.verify("secret", "INVITE"));
    }

    #[test]
    fn challenge_without_qop_or_algorithm_is_rfc2069_md5() {
        let challenge = Challenge::parse("Digest realm=\"pbx\",nonce=\"abc\"").unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        assert!(!challenge.qop_auth);
        let creds =
            Credentials::parse(&challenge.answer("u", "p", "NOTIFY", "sip:u@h", "x")).unwrap();
        assert_eq!(creds.qop, None);
        let ha1 = Algorithm::Md5.hash("u:pbx:p");
        let ha2 = Algorithm::Md5.hash("NOTIFY:sip:u@h");
        assert_eq!(
            creds.response,
            Algorithm::Md5.hash(&format!("{ha1}:abc:{ha2}"))
        );
    }

    #[rstest]
    #[case("Basic realm=\"x\"")]
    #[case("Digest realm=\"x\"")]
    #[case("Digest realm=\"x\", nonce=\"y\", algorithm=SHA-512-256")]
    fn unusable_challenges_are_refused(#[case] value: &str) {
        assert!(Challenge::parse(value).is_none());
    }

    #[test]
    fn quoted_values_may_hold_commas_and_escapes() {
        let params =
            parse_params(r#"Digest realm="a, \"b\"", nonce=n1,qop="auth,auth-int""#).unwrap();
        assert_eq!(params["realm"], "a, \"b\"");
        assert_eq!(params["nonce"], "n1");
        assert_eq!(params["qop"], "auth,auth-int");
    }
}

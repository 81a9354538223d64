//! HTTP digest authentication as SIP uses it (RFC 3261 §22.4, RFC 2617; SHA-256 per
//! RFC 8760/7616). The phone answers a 401/407 challenge; it never challenges.

use md5::Md5;
use sha2::{Digest as _, Sha256};

use super::message::split_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// One `Digest …` challenge from a WWW-Authenticate or Proxy-Authenticate header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `true` when the server offered `qop="auth"` (we never use auth-int).
    pub qop_auth: bool,
}

impl Challenge {
    /// Parse one header value; `None` for non-Digest schemes or unsupported algorithms.
    pub fn parse(value: &str) -> Option<Challenge> {
        let rest = value.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop_auth = false;
        for param in split_list(params) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "opaque" => opaque = Some(v),
                "algorithm" => {
                    algorithm = match v.to_ascii_uppercase().as_str() {
                        "MD5" => Algorithm::Md5,
                        "SHA-256" => Algorithm::Sha256,
                        _ => return None,
                    }
                }
                "qop" => qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                _ => {}
            }
        }
        Some(Challenge {
            realm: realm?,
            nonce: nonce?,
            opaque,
            algorithm,
            qop_auth,
        })
    }

    /// Pick the challenge to answer from all headers of a 401/407: the strongest
    /// algorithm we support wins (RFC 8760 §2.4: prefer SHA-256 over MD5).
    pub fn pick<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
        let mut all: Vec<Challenge> = values.filter_map(Challenge::parse).collect();
        all.sort_by_key(|c| match c.algorithm {
            Algorithm::Sha256 => 0,
            Algorithm::Md5 => 1,
        });
        all.into_iter().next()
    }
}

/// Credentials computation for one request.
pub struct DigestInput<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub cnonce: &'a str,
    pub nc: u32,
}

/// The `response=` value (RFC 2617 §3.2.2.1).
pub fn response(ch: &Challenge, input: &DigestInput<'_>) -> String {
    let alg = ch.algorithm;
    let ha1 = alg.hash(&format!(
        "{}:{}:{}",
        input.username, ch.realm, input.password
    ));
    let ha2 = alg.hash(&format!("{}:{}", input.method, input.uri));
    if ch.qop_auth {
        alg.hash(&format!(
            "{ha1}:{}:{:08x}:{}:auth:{ha2}",
            ch.nonce, input.nc, input.cnonce
        ))
    } else {
        alg.hash(&format!("{ha1}:{}:{ha2}", ch.nonce))
    }
}

/// The full Authorization / Proxy-Authorization header value.
pub fn authorization(ch: &Challenge, input: &DigestInput<'_>) -> String {
    let mut v = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}",
        input.username,
        ch.realm,
        ch.nonce,
        input.uri,
        response(ch, input),
        ch.algorithm.name()
    );
    if ch.qop_auth {
        v.push_str(&format!(
            ", qop=auth, nc={:08x}, cnonce=\"{}\"",
            input.nc, input.cnonce
        ));
    }
    if let Some(opaque) = &ch.opaque {
        v.push_str(&format!(", opaque=\"{opaque}\""));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // Reference values from RFC 2617 §3.5 and RFC 7616 §3.9.1.
    #[rstest]
    #[case::rfc2617_md5(
        "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        "Circle Of Life",
        "0a4f113b",
        "6629fae49393a05397450978507c4ef1"
    )]
    #[case::rfc7616_md5(
        "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        "Circle of Life",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "8ca523f5e9506fed4657c9700eebdbec"
    )]
    #[case::rfc7616_sha256(
        "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        "Circle of Life",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )]
    fn matches_rfc_examples(
        #[case] header: &str,
        #[case] password: &str,
        #[case] cnonce: &str,
        #[case] want: &str,
    ) {
        let ch = Challenge::parse(header).unwrap();
        let input = DigestInput {
            username: "Mufasa",
            password,
            method: "GET",
            uri: "/dir/index.html",
            cnonce,
            nc: 1,
        };
        assert_eq!(response(&ch, &input), want);
        let header = authorization(&ch, &input);
        assert!(header.contains(&format!("response=\"{want}\"")), "{header}");
        assert!(header.contains("nc=00000001"), "{header}");
    }

    #[test]
    fn without_qop_uses_rfc2069_form() {
        let ch = Challenge::parse("Digest realm=\"asterisk\", nonce=\"abc\"").unwrap();
        let input = DigestInput {
            username: "4002",
            password: "secret",
            method: "REGISTER",
            uri: "sip:pbx.test",
            cnonce: "unused",
            nc: 1,
        };
        let ha1 = hex::encode(Md5::digest(b"4002:asterisk:secret"));
        let ha2 = hex::encode(Md5::digest(b"REGISTER:sip:pbx.test"));
        let want = hex::encode(Md5::digest(format!("{ha1}:abc:{ha2}").as_bytes()));
        assert_eq!(response(&ch, &input), want);
        assert!(!authorization(&ch, &input).contains("qop"));
    }

    #[test]
    fn prefers_sha256_and_skips_unknown() {
        let headers = [
            "Digest realm=\"r\", nonce=\"1\", algorithm=MD5",
            "Digest realm=\"r\", nonce=\"2\", algorithm=SHA-512-256",
            "Basic realm=\"r\"",
            "Digest realm=\"r\", nonce=\"3\", algorithm=SHA-256",
        ];
        let ch = Challenge::pick(headers.into_iter()).unwrap();
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        assert_eq!(ch.nonce, "3");
        assert!(Challenge::pick(["Basic realm=\"r\""].into_iter()).is_none());
    }
}

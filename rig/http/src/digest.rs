//! HTTP Digest access authentication (RFC 7616): the response computation
//! and the parameter list of `Authorization: Digest …` headers.

use std::collections::HashMap;

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// The algorithms RFC 7616 defines that phones use (`-sess` variants included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// `algorithm=` value; absent means MD5 (RFC 7616 §3.3).
    pub fn parse(text: Option<&str>) -> Option<Algorithm> {
        match text.map(str::to_ascii_uppercase).as_deref() {
            None | Some("MD5") => Some(Algorithm::Md5),
            Some("MD5-SESS") => Some(Algorithm::Md5Sess),
            Some("SHA-256") => Some(Algorithm::Sha256),
            Some("SHA-256-SESS") => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_session(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex of the hash of `data`.
    pub fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => {
                hex::encode(Sha256::digest(data.as_bytes()))
            }
        }
    }
}

/// Everything the `response` value depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestInput<'a> {
    pub algorithm: Algorithm,
    pub username: &'a str,
    pub realm: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nonce: &'a str,
    /// `qop=auth` with its `nc` and `cnonce`; `None` for RFC 2069 clients.
    pub qop_auth: Option<(&'a str, &'a str)>,
}

/// The `response` a client that knows the password sends (RFC 7616 §3.4.1).
pub fn response(input: &DigestInput<'_>) -> String {
    let h = |data: &str| input.algorithm.hash(data);
    let mut ha1 = h(&format!(
        "{}:{}:{}",
        input.username, input.realm, input.password
    ));
    if input.algorithm.is_session() {
        let cnonce = input.qop_auth.map_or("", |(_, cnonce)| cnonce);
        ha1 = h(&format!("{ha1}:{}:{cnonce}", input.nonce));
    }
    let ha2 = h(&format!("{}:{}", input.method, input.uri));
    match input.qop_auth {
        Some((nc, cnonce)) => h(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", input.nonce)),
        None => h(&format!("{ha1}:{}:{ha2}", input.nonce)),
    }
}

/// Parses the `k=v, k="v"` list after `Digest ` (keys lower-cased).
pub fn parse_params(text: &str) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("expected `key=value` at `{rest}`"))?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("bad parameter name `{key}`"));
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => out.push(escaped),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    other => out.push(other),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated quoted value for `{key}`"))?;
            value = out;
            rest = &quoted[end + 1..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.insert(key, value);
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected `,` at `{rest}`"));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// RFC 7616 §3.9.1 (MD5 and SHA-256) and RFC 2617 §3.5 (MD5, other
    /// password and realm) — published vectors, not values computed here.
    #[rstest]
    #[case(
        Algorithm::Md5,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "8ca523f5e9506fed4657c9700eebdbec"
    )]
    #[case(
        Algorithm::Sha256,
        "Mufasa",
        "http-auth@example.org",
        "Circle of Life",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )]
    #[case(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "0a4f113b",
        "6629fae49393a05397450978507c4ef1"
    )]
    fn rfc_example_vectors(
        #[case] algorithm: Algorithm,
        #[case] username: &str,
        #[case] realm: &str,
        #[case] password: &str,
        #[case] nonce: &str,
        #[case] cnonce: &str,
        #[case] expected: &str,
    ) {
        let input = DigestInput {
            algorithm,
            username,
            realm,
            password,
            method: "GET",
            uri: "/dir/index.html",
            nonce,
            qop_auth: Some(("00000001", cnonce)),
        };
        assert_eq!(response(&input), expected);
    }

    #[test]
    fn rfc2069_response_without_qop_differs_from_qop_auth() {
        let mut input = DigestInput {
            algorithm: Algorithm::Md5,
            username: "u",
            realm: "r",
            password: "p",
            method: "GET",
            uri: "/x",
            nonce: "n",
            qop_auth: None,
        };
        let ha1 = Algorithm::Md5.hash("u:r:p");
        let ha2 = Algorithm::Md5.hash("GET:/x");
        assert_eq!(
            response(&input),
            Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"))
        );
        input.qop_auth = Some(("00000001", "c"));
        assert_ne!(
            response(&input),
            Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"))
        );
    }

    #[test]
    fn session_variant_rehashes_ha1_with_nonces() {
        let input = DigestInput {
            algorithm: Algorithm::Sha256Sess,
            username: "u",
            realm: "r",
            password: "p",
            method: "GET",
            uri: "/x",
            nonce: "n",
            qop_auth: Some(("00000001", "c")),
        };
        let h = |d: &str| Algorithm::Sha256.hash(d);
        let ha1 = h(&format!("{}:n:c", h("u:r:p")));
        let ha2 = h("GET:/x");
        assert_eq!(
            response(&input),
            h(&format!("{ha1}:n:00000001:c:auth:{ha2}"))
        );
    }

    #[rstest]
    #[case("algorithm")]
    #[case("SHA-1")]
    #[case("SHA-512-256")]
    fn unknown_algorithms_are_rejected(#[case] name: &str) {
        assert_eq!(Algorithm::parse(Some(name)), None);
    }

    #[rstest]
    #[case(None, Algorithm::Md5)]
    #[case(Some("sha-256"), Algorithm::Sha256)]
    #[case(Some("MD5-sess"), Algorithm::Md5Sess)]
    fn known_algorithms(#[case] name: Option<&str>, #[case] expected: Algorithm) {
        assert_eq!(Algorithm::parse(name), Some(expected));
    }

    #[test]
    fn parses_curl_style_header() {
        let params = parse_params(
            r#"username="Mufasa", realm="http-auth@example.org", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html", cnonce="f2/w", nc=00000001, qop=auth, response="8ca5", algorithm=MD5, opaque="a\"b""#,
        )
        .unwrap();
        assert_eq!(params["username"], "Mufasa");
        assert_eq!(params["nc"], "00000001");
        assert_eq!(params["qop"], "auth");
        assert_eq!(params["opaque"], "a\"b");
        assert_eq!(params["uri"], "/dir/index.html");
    }

    #[rstest]
    #[case(r#"username="unterminated"#)]
    #[case("username")]
    #[case(r#"username="a" realm="b""#)]
    #[case(r#"=x"#)]
    fn malformed_headers_are_errors(#[case] text: &str) {
        assert!(parse_params(text).is_err(), "{text}");
    }
}

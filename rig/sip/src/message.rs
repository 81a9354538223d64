//! SIP messages as the rig sees them: parsed by `rsip`, kept together with the
//! raw text they came from (events carry the exact bytes, not a re-rendering),
//! plus the few header accessors the registrar and the UA need.
//!
//! Header lookups go by name over rsip's header list so that compact forms
//! (`i:`, `v:`, `f:` …), which rsip keeps as "other" headers, are found too.

use std::fmt;
use std::net::SocketAddr;

use rsip::message::HasHeaders;

/// Wire transport of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Lower case, as in events and `;transport=` parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Upper case, as in the Via sent-protocol.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Whether the transaction layer retransmits (RFC 3261 §17: unreliable transports only).
    pub fn is_unreliable(self) -> bool {
        self == Transport::Udp
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compact header forms (RFC 3261 §7.3.3) and their long names.
const COMPACT: [(&str, &str); 10] = [
    ("i", "call-id"),
    ("m", "contact"),
    ("e", "content-encoding"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("f", "from"),
    ("s", "subject"),
    ("k", "supported"),
    ("t", "to"),
    ("v", "via"),
];

fn long_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    COMPACT
        .iter()
        .find(|(short, _)| *short == lower)
        .map(|(_, long)| (*long).to_owned())
        .unwrap_or(lower)
}

/// A received or built SIP message with its raw text.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub parsed: rsip::SipMessage,
    pub raw: String,
}

/// Why a datagram or stream frame is not a usable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedError {
    #[error("not SIP: {0}")]
    Unparsable(String),
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("bad CSeq `{0}`")]
    BadCseq(String),
}

impl SipMsg {
    /// Parses one complete message and checks the headers every transaction needs.
    pub fn parse(bytes: &[u8]) -> Result<SipMsg, MalformedError> {
        let parsed = rsip::SipMessage::try_from(bytes)
            .map_err(|e| MalformedError::Unparsable(first_chars(&e.to_string(), 200)))?;
        let msg = SipMsg {
            parsed,
            raw: String::from_utf8_lossy(bytes).into_owned(),
        };
        for (name, label) in [
            ("call-id", "Call-ID"),
            ("cseq", "CSeq"),
            ("from", "From"),
            ("to", "To"),
            ("via", "Via"),
        ] {
            if msg.header(name).is_none() {
                return Err(MalformedError::MissingHeader(label));
            }
        }
        if msg.cseq().is_none() {
            return Err(MalformedError::BadCseq(
                msg.header("cseq").unwrap_or_default(),
            ));
        }
        Ok(msg)
    }

    /// Wraps a message the rig built itself.
    pub fn from_built(parsed: rsip::SipMessage) -> SipMsg {
        let raw = parsed.to_string();
        SipMsg { parsed, raw }
    }

    fn header_pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.parsed.headers().iter().filter_map(|header| {
            let text = header.to_string();
            let (name, value) = text.split_once(':')?;
            Some((long_name(name), value.trim().to_owned()))
        })
    }

    /// Value of the first header called `name` (case-insensitive, compact forms included).
    pub fn header(&self, name: &str) -> Option<String> {
        let wanted = long_name(name);
        self.header_pairs()
            .find(|(n, _)| *n == wanted)
            .map(|(_, v)| v)
    }

    /// Every value of headers called `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        let wanted = long_name(name);
        self.header_pairs()
            .filter(|(n, _)| *n == wanted)
            .map(|(_, v)| v)
            .collect()
    }

    pub fn is_request(&self) -> bool {
        self.parsed.is_request()
    }

    /// The request method, or for a response the method named in CSeq.
    pub fn method(&self) -> String {
        match &self.parsed {
            rsip::SipMessage::Request(request) => request.method.to_string(),
            rsip::SipMessage::Response(_) => self.cseq().map(|(_, m)| m).unwrap_or_default(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.parsed {
            rsip::SipMessage::Response(response) => Some(response.status_code.code()),
            rsip::SipMessage::Request(_) => None,
        }
    }

    pub fn first_line(&self) -> String {
        self.raw
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    }

    pub fn request_uri(&self) -> Option<String> {
        match &self.parsed {
            rsip::SipMessage::Request(request) => Some(request.uri.to_string()),
            rsip::SipMessage::Response(_) => None,
        }
    }

    /// User part of the Request-URI (`4004` in `INVITE sip:4004@…`).
    pub fn request_user(&self) -> Option<String> {
        match &self.parsed {
            rsip::SipMessage::Request(request) => request.uri.user().map(str::to_owned),
            rsip::SipMessage::Response(_) => None,
        }
    }

    pub fn call_id(&self) -> String {
        self.header("call-id").unwrap_or_default()
    }

    /// `(number, METHOD)` from CSeq.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let value = self.header("cseq")?;
        let mut parts = value.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        let method = parts.next()?.to_ascii_uppercase();
        Some((number, method))
    }

    pub fn from(&self) -> String {
        self.header("from").unwrap_or_default()
    }

    pub fn to(&self) -> String {
        self.header("to").unwrap_or_default()
    }

    pub fn from_tag(&self) -> Option<String> {
        header_param(&self.from(), "tag")
    }

    pub fn to_tag(&self) -> Option<String> {
        header_param(&self.to(), "tag")
    }

    /// Branch parameter of the topmost Via: the transaction key (RFC 3261 §17.2.3).
    pub fn branch(&self) -> Option<String> {
        let via = self.headers_named("via").into_iter().next()?;
        let first = via.split(',').next().unwrap_or_default().to_owned();
        header_param(&first, "branch")
    }

    pub fn body(&self) -> &[u8] {
        self.parsed.body()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body()).into_owned()
    }
}

fn first_chars(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// The URI inside a name-addr (`"Bob" <sip:4002@h>;tag=1` → `sip:4002@h`) or
/// the addr-spec before any header parameters.
pub fn uri_of(header_value: &str) -> String {
    let value = header_value.trim();
    if let Some(start) = value.find('<') {
        if let Some(len) = value[start + 1..].find('>') {
            return value[start + 1..start + 1 + len].trim().to_owned();
        }
    }
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Header parameter outside the `<…>` URI (`tag`, `expires`, `branch` …).
pub fn header_param(header_value: &str, name: &str) -> Option<String> {
    let after_uri = match header_value.rfind('>') {
        Some(end) => &header_value[end + 1..],
        None => header_value,
    };
    after_uri
        .split(';')
        .skip(usize::from(!header_value.contains('>')))
        .find_map(|param| {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().trim_matches('"').to_owned())
        })
}

/// User part of the URI in a From/To/Contact value.
pub fn user_of(header_value: &str) -> Option<String> {
    let uri = rsip::Uri::try_from(uri_of(header_value).as_str()).ok()?;
    uri.user().map(str::to_owned)
}

/// Host and port of a SIP URI as a socket address (port 5060 when absent), if the host is an IP.
pub fn socket_of_uri(uri: &str) -> Option<SocketAddr> {
    let parsed = rsip::Uri::try_from(uri_of(uri).as_str()).ok()?;
    let ip = match parsed.host() {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(domain) => domain.to_string().parse().ok()?,
    };
    let port = parsed
        .port()
        .and_then(|p| p.to_string().parse().ok())
        .unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// Builds requests and responses as `rsip` values from header name/value pairs,
/// adding Content-Length last so it always matches the body.
pub struct Builder {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Builder {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn header_opt(self, name: &str, value: Option<impl Into<String>>) -> Builder {
        match value {
            Some(value) => self.header(name, value),
            None => self,
        }
    }

    /// A raw `Name: value` line (scenario-configured extra headers).
    pub fn header_line(self, line: &str) -> Builder {
        match line.split_once(':') {
            Some((name, value)) => self.header(name.trim(), value.trim()),
            None => self,
        }
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Builder {
        self.body = body.into();
        self.header("Content-Type", content_type)
    }

    fn rsip_headers(&self) -> rsip::Headers {
        let mut headers: Vec<rsip::Header> = self
            .headers
            .iter()
            .map(|(n, v)| rsip::Header::Other(n.clone(), v.clone()))
            .collect();
        headers.push(rsip::Header::Other(
            "Content-Length".into(),
            self.body.len().to_string(),
        ));
        headers.into()
    }

    pub fn request(self, method: rsip::Method, uri: &str) -> anyhow::Result<SipMsg> {
        let uri = rsip::Uri::try_from(uri)
            .map_err(|e| anyhow::anyhow!("bad Request-URI `{uri}`: {e}"))?;
        let request = rsip::Request {
            method,
            uri,
            version: rsip::Version::V2,
            headers: self.rsip_headers(),
            body: self.body,
        };
        Ok(SipMsg::from_built(request.into()))
    }

    pub fn response(self, code: u16) -> SipMsg {
        let response = rsip::Response {
            status_code: code.into(),
            version: rsip::Version::V2,
            headers: self.rsip_headers(),
            body: self.body,
        };
        SipMsg::from_built(response.into())
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

/// A response to `request` carrying its Via, From, To (with `to_tag` added when
/// the request's To has none), Call-ID and CSeq (RFC 3261 §8.2.6.2).
pub fn response_to(request: &SipMsg, to_tag: Option<&str>) -> Builder {
    let mut builder = Builder::new();
    for via in request.headers_named("via") {
        builder = builder.header("Via", via);
    }
    let to = request.to();
    let to = match (request.to_tag(), to_tag) {
        (None, Some(tag)) => format!("{to};tag={tag}"),
        _ => to,
    };
    builder
        .header("From", request.from())
        .header("To", to)
        .header("Call-ID", request.call_id())
        .header("CSeq", request.header("cseq").unwrap_or_default())
}

/// Random token for tags, branches, Call-IDs and nonces.
pub fn token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// A fresh RFC 3261 branch (magic cookie prefix).
pub fn new_branch() -> String {
    format!("z9hG4bK{}", token(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const REGISTER: &str = "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
        v: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKabc;rport\r\n\
        From: <sip:4002@127.0.0.1>;tag=f1\r\n\
        t: \"Desk\" <sip:4002@127.0.0.1>\r\n\
        i: cid-1@127.0.0.2\r\n\
        CSeq: 7 REGISTER\r\n\
        Contact: <sip:4002@127.0.0.2:5060>;expires=120\r\n\
        User-Agent: Htek UC924 2.0.4.4.36\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn compact_headers_are_found_by_long_name() {
        let msg = SipMsg::parse(REGISTER.as_bytes()).unwrap();
        assert_eq!(msg.call_id(), "cid-1@127.0.0.2");
        assert_eq!(msg.branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(msg.cseq(), Some((7, "REGISTER".into())));
        assert_eq!(msg.from_tag().as_deref(), Some("f1"));
        assert_eq!(msg.to_tag(), None);
        assert_eq!(user_of(&msg.to()).as_deref(), Some("4002"));
        assert_eq!(msg.method(), "REGISTER");
        assert_eq!(msg.first_line(), "REGISTER sip:127.0.0.1 SIP/2.0");
    }

    #[rstest]
    #[case::garbage("hello world\r\n\r\n")]
    #[case::no_call_id("OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")]
    #[case::bad_cseq("OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: x\r\nCSeq: one\r\nContent-Length: 0\r\n\r\n")]
    fn malformed_messages_are_refused(#[case] text: &str) {
        assert!(SipMsg::parse(text.as_bytes()).is_err());
    }

    #[rstest]
    #[case("<sip:4002@10.0.0.1:5062>;expires=60", "expires", Some("60"))]
    #[case("\"A;B\" <sip:4002@h;transport=tcp>;tag=xy", "tag", Some("xy"))]
    #[case("<sip:4002@h;tag=inside>", "tag", None)]
    #[case("sip:4002@h;tag=plain", "tag", Some("plain"))]
    #[case(
        "SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK9;rport",
        "branch",
        Some("z9hG4bK9")
    )]
    fn header_params_outside_the_uri(
        #[case] value: &str,
        #[case] name: &str,
        #[case] expected: Option<&str>,
    ) {
        assert_eq!(header_param(value, name).as_deref(), expected);
    }

    #[test]
    fn responses_copy_transaction_headers_and_add_a_to_tag() {
        let request = SipMsg::parse(REGISTER.as_bytes()).unwrap();
        let response = response_to(&request, Some("rt1")).response(200);
        let reparsed = SipMsg::parse(response.raw.as_bytes()).unwrap();
        assert_eq!(reparsed.status(), Some(200));
        assert_eq!(reparsed.to_tag().as_deref(), Some("rt1"));
        assert_eq!(reparsed.branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(reparsed.call_id(), "cid-1@127.0.0.2");
        assert_eq!(reparsed.method(), "REGISTER");
        assert_eq!(reparsed.header("content-length").as_deref(), Some("0"));
    }

    #[test]
    fn socket_of_uri_defaults_port() {
        assert_eq!(
            socket_of_uri("<sip:4002@127.0.0.5>"),
            Some("127.0.0.5:5060".parse().unwrap())
        );
        assert_eq!(
            socket_of_uri("sip:4002@127.0.0.5:5070;transport=tcp"),
            Some("127.0.0.5:5070".parse().unwrap())
        );
        assert_eq!(socket_of_uri("sip:4002@pbx.example"), None);
    }
}

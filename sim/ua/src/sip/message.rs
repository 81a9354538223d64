//! A small SIP message model: parse a datagram, look headers up, build requests and
//! responses. Written for the virtual phone alone (not shared with the rig's SIP
//! service) so that the two sides of every test are independent implementations.

use std::fmt;

/// First line of a SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// A parsed (or to-be-sent) SIP message. Header names keep their spelling; lookups
/// are case-insensitive and understand the compact forms of RFC 3261 §7.3.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed SIP message: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Long name of a compact header form; other names are returned unchanged.
fn expand_compact(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "o" => "event",
        "e" => "content-encoding",
        _ => name,
    }
}

fn same_header(a: &str, b: &str) -> bool {
    expand_compact(a).eq_ignore_ascii_case(expand_compact(b))
}

impl SipMessage {
    pub fn request(method: &str, uri: &str) -> Self {
        SipMessage {
            start: StartLine::Request {
                method: method.to_string(),
                uri: uri.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let split = find_subslice(data, b"\r\n\r\n")
            .map(|i| (i, i + 4))
            .or_else(|| find_subslice(data, b"\n\n").map(|i| (i, i + 2)))
            .ok_or_else(|| ParseError("no end of headers".into()))?;
        let head = std::str::from_utf8(&data[..split.0])
            .map_err(|_| ParseError("headers are not UTF-8".into()))?;
        let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
        let first = lines.next().unwrap_or_default();
        let start = parse_start_line(first)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Header folding (obsolete but legal): continue the previous value.
                let last = headers
                    .last_mut()
                    .ok_or_else(|| ParseError("continuation line before any header".into()))?;
                last.1.push(' ');
                last.1.push_str(line.trim());
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| ParseError(format!("header line without colon: {line:?}")))?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(ParseError(format!("bad header name {name:?}")));
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let rest = &data[split.1..];
        let mut msg = SipMessage {
            start,
            headers,
            body: Vec::new(),
        };
        let body_len = match msg.header("content-length") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| ParseError(format!("bad Content-Length {v:?}")))?,
            // Over UDP a missing Content-Length means "the rest of the datagram".
            None => rest.len(),
        };
        if body_len > rest.len() {
            return Err(ParseError(format!(
                "Content-Length {body_len} exceeds the {} body bytes received",
                rest.len()
            )));
        }
        msg.body = rest[..body_len].to_vec();
        for required in ["via", "from", "to", "call-id", "cseq"] {
            if msg.header(required).is_none() {
                return Err(ParseError(format!("missing {required} header")));
            }
        }
        if msg.cseq().is_none() {
            return Err(ParseError("bad CSeq".into()));
        }
        Ok(msg)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for (name, value) in &self.headers {
            if same_header(name, "content-length") {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    pub fn first_line(&self) -> String {
        match &self.start {
            StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0"),
            StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}"),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    pub fn add_header(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn set_header(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        if let Some(slot) = self.headers.iter_mut().find(|(n, _)| same_header(n, name)) {
            slot.1 = value;
        } else {
            self.headers.push((name.to_string(), value));
        }
        self
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !same_header(n, name));
    }

    pub fn set_body(&mut self, content_type: &str, body: Vec<u8>) {
        self.set_header("Content-Type", content_type);
        self.body = body;
    }

    pub fn call_id(&self) -> &str {
        self.header("call-id").unwrap_or_default()
    }

    /// `(number, method)` of the CSeq header.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let value = self.header("cseq")?;
        let mut parts = value.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        let method = parts.next()?.to_ascii_uppercase();
        Some((number, method))
    }

    /// Value of the topmost Via (the first of a comma-separated list).
    pub fn top_via(&self) -> Option<&str> {
        self.header("via")
            .map(|v| split_list(v).into_iter().next().unwrap_or(v))
    }

    pub fn branch(&self) -> Option<&str> {
        self.top_via().and_then(|v| header_param(v, "branch"))
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.header("from").and_then(|v| header_param(v, "tag"))
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.header("to").and_then(|v| header_param(v, "tag"))
    }

    /// Build a response that copies the headers RFC 3261 §8.2.6.2 requires.
    pub fn response_to(
        request: &SipMessage,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
    ) -> Self {
        let mut resp = SipMessage {
            start: StartLine::Response {
                code,
                reason: reason.to_string(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for via in request.headers_named("via") {
            resp.add_header("Via", via);
        }
        for rr in request.headers_named("record-route") {
            resp.add_header("Record-Route", rr);
        }
        resp.add_header("From", request.header("from").unwrap_or_default());
        let to = request.header("to").unwrap_or_default();
        let to = match to_tag {
            Some(tag) if header_param(to, "tag").is_none() => format!("{to};tag={tag}"),
            _ => to.to_string(),
        };
        resp.add_header("To", to);
        resp.add_header("Call-ID", request.call_id());
        resp.add_header("CSeq", request.header("cseq").unwrap_or_default());
        resp
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .map_err(|_| ParseError(format!("bad status code in {line:?}")))?;
        if !(100..700).contains(&code) {
            return Err(ParseError(format!("status code {code} out of range")));
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(uri), Some("SIP/2.0"), None)
            if !method.is_empty()
                && method.chars().all(|c| c.is_ascii_alphabetic())
                && !uri.is_empty() =>
        {
            Ok(StartLine::Request {
                method: method.to_string(),
                uri: uri.to_string(),
            })
        }
        _ => Err(ParseError(format!("bad start line {line:?}"))),
    }
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Split a header value at commas that are outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_quotes, mut in_angle, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => in_angle = true,
            '>' if !in_quotes => in_angle = false,
            ',' if !in_quotes && !in_angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out
}

/// A `;name=value` parameter of a header value (outside the `<uri>` part).
pub fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.split_once(';').map(|(_, p)| p).map_or("", |p| p),
    };
    let params = params.trim_start_matches(';');
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The URI inside a name-addr (`"x" <sip:a@b>;tag=1`) or addr-spec (`sip:a@b;tag=1`).
pub fn uri_of(value: &str) -> &str {
    if let (Some(s), Some(e)) = (value.find('<'), value.find('>')) {
        if s < e {
            return &value[s + 1..e];
        }
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// The user part of a SIP URI (`sip:4004@pbx;user=phone` → `4004`).
pub fn user_of(uri: &str) -> &str {
    let without_scheme = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    match without_scheme.split_once('@') {
        Some((user, _)) => user.split(';').next().unwrap_or(user),
        None => without_scheme.split([';', '?']).next().unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const INVITE: &str = "INVITE sip:4002@pbx.test SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1;rport, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-0\r\n\
f: \"Helper, Desk\" <sip:4006@pbx.test>;tag=abc\r\n\
t: <sip:4002@pbx.test>\r\n\
i: call-1@127.0.0.1\r\n\
CSeq: 7 invite\r\n\
Subject: folded\r\n  value\r\n\
l: 4\r\n\r\nv=0\r\nignored";

    #[test]
    fn parses_compact_headers_folding_and_body_length() {
        let msg = SipMessage::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(msg.method(), Some("INVITE"));
        assert_eq!(msg.uri(), Some("sip:4002@pbx.test"));
        assert_eq!(msg.call_id(), "call-1@127.0.0.1");
        assert_eq!(msg.cseq(), Some((7, "INVITE".to_string())));
        assert_eq!(msg.branch(), Some("z9hG4bK-1"));
        assert_eq!(msg.from_tag(), Some("abc"));
        assert_eq!(msg.to_tag(), None);
        assert_eq!(msg.header("subject"), Some("folded value"));
        assert_eq!(msg.body, b"v=0\r");
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_to_tag() {
        let req = SipMessage::parse(INVITE.as_bytes()).unwrap();
        let resp = SipMessage::response_to(&req, 180, "Ringing", Some("xyz"));
        let again = SipMessage::parse(&resp.to_bytes()).unwrap();
        assert_eq!(again.code(), Some(180));
        assert_eq!(again.to_tag(), Some("xyz"));
        assert_eq!(again.from_tag(), Some("abc"));
        assert_eq!(again.branch(), Some("z9hG4bK-1"));
        assert_eq!(again.cseq(), Some((7, "INVITE".to_string())));
        assert_eq!(again.header("content-length"), Some("0"));
    }

    #[rstest]
    #[case::no_blank_line("INVITE sip:a@b SIP/2.0\r\nVia: x\r\n")]
    #[case::bad_version("INVITE sip:a@b SIP/3.0\r\n\r\n")]
    #[case::missing_call_id("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 OPTIONS\r\n\r\n")]
    #[case::bad_cseq("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: one\r\n\r\n")]
    #[case::long_body("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 10\r\n\r\nabc")]
    #[case::status_out_of_range("SIP/2.0 999 What\r\n\r\n")]
    fn rejects_malformed(#[case] text: &str) {
        assert!(SipMessage::parse(text.as_bytes()).is_err());
    }

    #[rstest]
    #[case(
        "\"A\" <sip:4004@pbx;user=phone>;tag=9",
        "sip:4004@pbx;user=phone",
        "4004"
    )]
    #[case("sip:4006@127.0.0.1:5060;tag=1", "sip:4006@127.0.0.1:5060", "4006")]
    #[case("<sip:*554004@pbx>", "sip:*554004@pbx", "*554004")]
    #[case("<tel:+4930123>", "tel:+4930123", "+4930123")]
    fn extracts_uri_and_user(#[case] value: &str, #[case] uri: &str, #[case] user: &str) {
        assert_eq!(uri_of(value), uri);
        assert_eq!(user_of(uri_of(value)), user);
    }

    #[rstest]
    #[case("<sip:a@b;lr>;tag=x;expires=60", "expires", Some("60"))]
    #[case("<sip:a@b;tag=inside>", "tag", None)]
    #[case("SIP/2.0/UDP h:5060;rport;branch=z9hG4bKq", "branch", Some("z9hG4bKq"))]
    #[case("Digest realm=\"r\"", "expires", None)]
    fn reads_header_params(#[case] value: &str, #[case] name: &str, #[case] want: Option<&str>) {
        assert_eq!(header_param(value, name), want);
    }
}

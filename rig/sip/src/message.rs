//! SIP messages as the rig sees them: read by a small RFC 3261 §7 reader of
//! our own (see [`SipMsg::parse`] for why not `rsip`'s), kept together with the
//! raw text they came from (events carry the exact bytes, not a re-rendering),
//! plus the few header accessors the registrar and the UA need. Messages the
//! rig sends are built with `rsip` types ([`Builder`]).
//!
//! Header lookups go by long lower-case name, so compact forms (`i:`, `v:`,
//! `f:` …) are found too.

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
///
/// Received messages are read by the small reader below, not by `rsip`: see
/// [`SipMsg::parse`] for why, and docs/sip.md ("Parsing").
#[derive(Debug, Clone)]
pub struct SipMsg {
    start: StartLine,
    /// `(long lower-case name, value)` in wire order; folded lines joined by
    /// one space, the value trimmed of surrounding whitespace.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The exact text received (lossy UTF-8) or sent: what events carry.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16 },
}

/// Why a datagram or stream frame is not a usable SIP message. Each variant
/// names the rule of RFC 3261 the input breaks, so `sip.malformed` events
/// explain themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedError {
    #[error("no empty line ends the header section (RFC 3261 §7)")]
    NoEndOfHeaders,
    #[error("bad start line `{line}`: {reason}")]
    StartLine { line: String, reason: &'static str },
    #[error("bad header line `{line}`: {reason}")]
    HeaderLine { line: String, reason: &'static str },
    #[error("missing mandatory header {0}")]
    MissingHeader(&'static str),
    #[error("bad CSeq `{0}` (RFC 3261 §8.1.1.5: a number below 2^31 and a method)")]
    BadCseq(String),
    #[error("CSeq method {cseq} does not match the request method {method}")]
    CseqMethodMismatch { cseq: String, method: String },
    #[error("bad {name} `{value}`: {reason}")]
    BadHeader {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("Content-Length {declared} but only {received} body bytes arrived")]
    TruncatedBody { declared: usize, received: usize },
}

/// Longest excerpt of offending input quoted in an error.
const EXCERPT: usize = 120;

impl SipMsg {
    /// Reads one complete message (a UDP datagram or a framed TCP/TLS
    /// message) and checks what the rig relies on.
    ///
    /// Why a reader of our own rather than `rsip`'s: `rsip` 0.4 refuses legal
    /// RFC 3261 syntax (folded header lines, whitespace before a colon, a
    /// status line without a reason phrase, an escaped or `;` user part in the
    /// Request-URI — RFC 4475 wsinv, esc01, semiuri, noreason), and it never
    /// looks at Content-Length (the body is whatever follows the empty line).
    /// Pre-normalising its input could fix the first kind but not the URIs,
    /// and every accessor here works on header text anyway; so the framing
    /// (RFC 3261 §7) is read here and only the fields the rig uses are checked:
    ///
    /// - start line: exactly `Method SP Request-URI SP SIP/2.0` (one space,
    ///   nothing after the version), a Request-URI with a scheme and no `<>`,
    ///   spaces or quotes; or `SIP/2.0 SP 3DIGIT [SP reason]` with 100–699;
    /// - header lines `name: value` with a token name, continuation lines
    ///   folded in, no control characters;
    /// - Via, From, To, Call-ID and CSeq present; CSeq `number method` with a
    ///   number below 2^31 and, in a request, the request's method;
    /// - Content-Length digits only, no larger than the body (a longer body is
    ///   cut to it, RFC 3261 §18.3); Max-Forwards 0–255;
    /// - Via, Contact, From and To: no empty list elements or parameters.
    pub fn parse(bytes: &[u8]) -> Result<SipMsg, MalformedError> {
        let msg = read(bytes)?;
        msg.validate()?;
        Ok(msg)
    }

    /// Wraps a message the rig built itself (no checks: the builder's output).
    pub fn from_built(parsed: rsip::SipMessage) -> SipMsg {
        let raw = parsed.to_string();
        let start = match &parsed {
            rsip::SipMessage::Request(request) => StartLine::Request {
                method: request.method.to_string(),
                uri: request.uri.to_string(),
            },
            rsip::SipMessage::Response(response) => StartLine::Response {
                code: response.status_code.code(),
            },
        };
        let headers = parsed
            .headers()
            .iter()
            .filter_map(|header| {
                let text = header.to_string();
                let (name, value) = text.split_once(':')?;
                Some((long_name(name), value.trim().to_owned()))
            })
            .collect();
        SipMsg {
            start,
            headers,
            body: parsed.body().clone(),
            raw,
        }
    }

    /// The checks of [`SipMsg::parse`] beyond the framing [`read`] does.
    fn validate(&self) -> Result<(), MalformedError> {
        for (name, label) in [
            ("call-id", "Call-ID"),
            ("cseq", "CSeq"),
            ("from", "From"),
            ("to", "To"),
            ("via", "Via"),
        ] {
            if self.header(name).is_none() {
                return Err(MalformedError::MissingHeader(label));
            }
        }
        let cseq = self.header("cseq").unwrap_or_default();
        let cseq_method =
            strict_cseq(&cseq).ok_or_else(|| MalformedError::BadCseq(excerpt(&cseq)))?;
        if let StartLine::Request { method, .. } = &self.start {
            // RFC 3261 §8.1.1.5: the CSeq method MUST match the request's
            // (methods are case-sensitive).
            if cseq_method != method {
                return Err(MalformedError::CseqMethodMismatch {
                    cseq: excerpt(cseq_method),
                    method: method.clone(),
                });
            }
        }
        for value in self.headers_named("max-forwards") {
            // RFC 3261 §20.22: an integer in the range 0-255.
            if !is_digits(&value) || value.parse::<u16>().map_or(true, |n| n > 255) {
                return Err(bad_header(
                    "Max-Forwards",
                    &value,
                    "not a number from 0 to 255",
                ));
            }
        }
        for value in self.headers_named("via") {
            check_via(&value)?;
        }
        for value in self.headers_named("contact") {
            if value != "*" {
                for element in split_outside_quotes(&value, ',') {
                    check_address(&value, element, "Contact")?;
                }
            }
        }
        check_address(&self.from(), &self.from(), "From")?;
        check_address(&self.to(), &self.to(), "To")?;
        Ok(())
    }

    /// Value of the first header called `name` (case-insensitive, compact forms included).
    pub fn header(&self, name: &str) -> Option<String> {
        let wanted = long_name(name);
        self.headers
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, v)| v.clone())
    }

    /// Every value of headers called `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        let wanted = long_name(name);
        self.headers
            .iter()
            .filter(|(n, _)| *n == wanted)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, or for a response the method named in CSeq.
    pub fn method(&self) -> String {
        match &self.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { .. } => self.cseq().map(|(_, m)| m).unwrap_or_default(),
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn first_line(&self) -> String {
        self.raw
            .trim_start_matches(['\r', '\n'])
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    }

    /// The Request-URI as it came (no re-rendering: a CANCEL or ACK must repeat it).
    pub fn request_uri(&self) -> Option<String> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri.clone()),
            StartLine::Response { .. } => None,
        }
    }

    /// User part of the Request-URI (`4004` in `INVITE sip:4004@…`), unescaped.
    pub fn request_user(&self) -> Option<String> {
        self.request_uri().as_deref().and_then(uri_user)
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
        &self.body
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body()).into_owned()
    }
}

/// RFC 3261 §7: start line, header lines up to the empty line, body sized
/// by Content-Length. Never panics, whatever the bytes (fuzzed).
fn read(bytes: &[u8]) -> Result<SipMsg, MalformedError> {
    // §7.5: CRLFs before the start line are ignored (keep-alives, stream gaps).
    let leading = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let message = &bytes[leading..];
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(MalformedError::NoEndOfHeaders)?;
    let head = String::from_utf8_lossy(&message[..end]);
    let mut lines = head.split("\r\n");
    let start = start_line(lines.next().unwrap_or_default())?;

    // Unfold: a line starting with SP/HTAB continues the previous header
    // (§7.3.1); the line break and leading whitespace become one space.
    let mut logical: Vec<String> = Vec::new();
    for line in lines {
        if let Some(bad) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(MalformedError::HeaderLine {
                line: excerpt(line),
                reason: if bad == '\r' || bad == '\n' {
                    "a bare CR or LF (lines end in CRLF)"
                } else {
                    "a control character"
                },
            });
        }
        if line.starts_with([' ', '\t']) {
            let Some(previous) = logical.last_mut() else {
                return Err(MalformedError::HeaderLine {
                    line: excerpt(line),
                    reason: "a continuation line before any header",
                });
            };
            previous.push(' ');
            previous.push_str(line.trim_matches([' ', '\t']));
        } else {
            logical.push(line.to_owned());
        }
    }
    let mut headers = Vec::with_capacity(logical.len());
    for line in &logical {
        let Some((name, value)) = line.split_once(':') else {
            return Err(MalformedError::HeaderLine {
                line: excerpt(line),
                reason: "no colon",
            });
        };
        // HCOLON = *( SP / HTAB ) ":" SWS
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(MalformedError::HeaderLine {
                line: excerpt(line),
                reason: "the header name is not a token",
            });
        }
        headers.push((long_name(name), value.trim_matches([' ', '\t']).to_owned()));
    }

    let received = &message[end + 4..];
    let mut declared: Option<usize> = None;
    for (name, value) in &headers {
        if name != "content-length" {
            continue;
        }
        // 1*DIGIT: no sign (RFC 4475 ncl), no overflow.
        let length = is_digits(value)
            .then(|| value.parse::<usize>().ok())
            .flatten()
            .ok_or_else(|| bad_header("Content-Length", value, "not a decimal byte count"))?;
        if declared.is_some_and(|d| d != length) {
            return Err(bad_header(
                "Content-Length",
                value,
                "differs from an earlier Content-Length",
            ));
        }
        declared = Some(length);
    }
    // §18.3: a body longer than Content-Length is cut to it (the rest is
    // discarded); a shorter one means the message is incomplete. Without
    // Content-Length (allowed over UDP) the body is the rest of the datagram.
    let body = match declared {
        Some(length) if length > received.len() => {
            return Err(MalformedError::TruncatedBody {
                declared: length,
                received: received.len(),
            })
        }
        Some(length) => received[..length].to_vec(),
        None => received.to_vec(),
    };
    Ok(SipMsg {
        start,
        headers,
        body,
        raw: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// `Method SP Request-URI SP SIP-Version` or `SIP-Version SP Status-Code SP
/// Reason-Phrase` (RFC 3261 §7.1, §7.2): single spaces, nothing trailing.
fn start_line(line: &str) -> Result<StartLine, MalformedError> {
    let fail = |reason| MalformedError::StartLine {
        line: excerpt(line),
        reason,
    };
    if line.chars().any(|c| c.is_control()) {
        return Err(fail(
            "a control character (single spaces separate the parts)",
        ));
    }
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(fail("not SIP/2.0"));
        }
        let code = parts.next().unwrap_or_default();
        // Status-Code = 3DIGIT; classes 1xx–6xx exist (RFC 4475 bigcode).
        // The reason phrase may be empty, and its space missing (noreason).
        if code.len() != 3 || !is_digits(code) {
            return Err(fail("the status code is not three digits"));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| fail("the status code is not three digits"))?;
        if !(100..=699).contains(&code) {
            return Err(fail("the status code is outside 100-699"));
        }
        return Ok(StartLine::Response { code });
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(fail(
            "not `Method SP Request-URI SP SIP/2.0` with single spaces",
        ));
    };
    if !is_token(method) {
        return Err(fail("the method is not a token"));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(fail("not SIP/2.0"));
    }
    check_request_uri(uri).map_err(fail)?;
    Ok(StartLine::Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
    })
}

/// Request-URI = SIP-URI / SIPS-URI / absoluteURI: a scheme, a colon and a
/// non-empty rest without the characters no URI may hold unescaped.
fn check_request_uri(uri: &str) -> Result<(), &'static str> {
    let (scheme, rest) = uri.split_once(':').ok_or("the Request-URI has no scheme")?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        // `<sip:…>` lands here (RFC 4475 ltgtruri).
        return Err("the Request-URI does not start with a scheme (no `<>` around it)");
    }
    if rest.is_empty() {
        return Err("the Request-URI is empty after its scheme");
    }
    if rest
        .chars()
        .any(|c| !c.is_ascii_graphic() || matches!(c, '<' | '>' | '"'))
    {
        return Err("the Request-URI holds a character URIs must escape");
    }
    Ok(())
}

/// The CSeq method, if the value is `1*DIGIT LWS Method` with a number
/// below 2^31 (RFC 3261 §8.1.1.5; RFC 4475 scalar02).
fn strict_cseq(value: &str) -> Option<&str> {
    let mut parts = value.split_whitespace();
    let (number, method) = (parts.next()?, parts.next()?);
    let fits = is_digits(number) && number.parse::<u32>().is_ok_and(|n| n < 1 << 31);
    (fits && is_token(method) && parts.next().is_none()).then_some(method)
}

/// `via-parm *(COMMA via-parm)`, each `protocol / version / transport LWS
/// sent-by *(SEMI via-params)`, whitespace allowed around `/` (RFC 4475 wsinv).
fn check_via(value: &str) -> Result<(), MalformedError> {
    for element in split_outside_quotes(value, ',') {
        let fail = |reason| bad_header("Via", value, reason);
        let mut params = split_outside_quotes(element, ';').into_iter();
        let sent = params.next().unwrap_or_default();
        let protocol: Vec<&str> = sent.splitn(3, '/').map(str::trim).collect();
        let [name, version, rest] = protocol[..] else {
            return Err(fail("no `SIP/2.0/transport`"));
        };
        let (transport, sent_by) = rest
            .split_once([' ', '\t'])
            .ok_or_else(|| fail("no sent-by after the transport"))?;
        let sent_by = sent_by.trim();
        if !is_token(name) || !is_token(version) || !is_token(transport) {
            return Err(fail("no `SIP/2.0/transport`"));
        }
        if sent_by.is_empty() || sent_by.contains([' ', '\t']) {
            return Err(fail("the sent-by is not one host[:port]"));
        }
        for param in params {
            check_param(param).map_err(fail)?;
        }
    }
    Ok(())
}

/// One name-addr or addr-spec with its header parameters (From, To, one
/// Contact): an URI, then `;name[=value]` parameters none of which is empty
/// (RFC 4475 badinv01: `Contact: "Joe" <sip:joe@example.org>;;;;`).
fn check_address(whole: &str, element: &str, name: &'static str) -> Result<(), MalformedError> {
    let fail = |reason| bad_header(name, whole, reason);
    let element = element.trim();
    let params = match find_outside_quotes(element, '<') {
        Some(open) => {
            let close = element[open..]
                .find('>')
                .map(|i| open + i)
                .ok_or_else(|| fail("a `<` without `>`"))?;
            if element[open + 1..close].trim().is_empty() {
                return Err(fail("an empty `<>`"));
            }
            let after = element[close + 1..].trim_start();
            if after.is_empty() {
                return Ok(());
            }
            after
                .strip_prefix(';')
                .ok_or_else(|| fail("text after `>` that is not a parameter"))?
        }
        None => {
            let (uri, params) = element.split_once(';').unwrap_or((element, ""));
            if uri.trim().is_empty() {
                return Err(fail("no URI"));
            }
            if !element.contains(';') {
                return Ok(());
            }
            params
        }
    };
    for param in split_outside_quotes(params, ';') {
        check_param(param).map_err(fail)?;
    }
    Ok(())
}

/// generic-param = token [ EQUAL gen-value ]: not empty, a token name, and a
/// value when there is an `=`.
fn check_param(param: &str) -> Result<(), &'static str> {
    let (name, value) = match param.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (param.trim(), None),
    };
    if name.is_empty() {
        return Err("an empty parameter");
    }
    if !is_token(name) {
        return Err("a parameter name that is not a token");
    }
    if value.is_some_and(str::is_empty) {
        return Err("a parameter with `=` and no value");
    }
    Ok(())
}

/// Splits at `separator` where it is outside a quoted string (with `\`
/// escapes) and outside `<…>`.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = false;
    for (i, c) in text.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '<' => angle = true,
            '>' => angle = false,
            c if c == separator && !angle => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Byte index of `wanted` outside quoted strings.
fn find_outside_quotes(text: &str, wanted: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (true, ..) => {}
            (false, _, '"') => quoted = true,
            (false, _, c) if c == wanted => return Some(i),
            _ => {}
        }
    }
    None
}

/// token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
                )
        })
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn bad_header(name: &'static str, value: &str, reason: &'static str) -> MalformedError {
    MalformedError::BadHeader {
        name,
        value: excerpt(value),
        reason,
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT).collect()
}

/// The user part of a SIP/SIPS URI, %-escapes decoded (RFC 3261 §19.1.4:
/// escaped and plain characters compare equal), so `sip:%34004@h` is 4004.
/// The user may itself hold `;` (RFC 4475 semiuri): it ends at the `@`,
/// which the user part can only hold escaped.
pub fn uri_user(uri: &str) -> Option<String> {
    let (_, rest) = uri.trim().split_once(':')?;
    let (userinfo, _) = rest.split_once('@')?;
    let user = userinfo.split(':').next().unwrap_or_default();
    Some(percent_decode(user))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    uri_user(&uri_of(header_value))
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

    /// A minimal valid OPTIONS around `start` and extra header lines.
    fn options(start: &str, extra: &str, body: &str) -> String {
        format!(
            "{start}\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n{extra}\r\n{body}"
        )
    }

    #[rstest]
    #[case::request("OPTIONS sip:a@h SIP/2.0", None)]
    #[case::lower_case_version("OPTIONS sip:a@h sip/2.0", None)]
    #[case::tel_uri("OPTIONS tel:+4930123 SIP/2.0", None)]
    #[case::two_spaces("OPTIONS  sip:a@h SIP/2.0", Some("single spaces"))]
    #[case::trailing_space("OPTIONS sip:a@h SIP/2.0 ", Some("single spaces"))]
    #[case::tab("OPTIONS sip:a@h\tSIP/2.0", Some("control character"))]
    #[case::angle_brackets("OPTIONS <sip:a@h> SIP/2.0", Some("scheme"))]
    #[case::no_scheme("OPTIONS a@h SIP/2.0", Some("no scheme"))]
    #[case::empty_after_scheme("OPTIONS sip: SIP/2.0", Some("empty after its scheme"))]
    #[case::quote_in_uri("OPTIONS sip:a\"b@h SIP/2.0", Some("escape"))]
    #[case::method_not_token("OPT:IONS sip:a@h SIP/2.0", Some("method is not a token"))]
    #[case::version("OPTIONS sip:a@h SIP/3.0", Some("not SIP/2.0"))]
    #[case::one_word("hello", Some("single spaces"))]
    fn request_lines(#[case] start: &str, #[case] refused: Option<&str>) {
        let outcome = SipMsg::parse(options(start, "", "").as_bytes());
        match refused {
            None => assert!(outcome.is_ok(), "{start}: {outcome:?}"),
            Some(reason) => {
                let error = outcome.unwrap_err().to_string();
                assert!(
                    error.contains(reason),
                    "{start}: `{error}` lacks `{reason}`"
                );
            }
        }
    }

    #[rstest]
    #[case::with_reason("SIP/2.0 180 Ringing", Some(180))]
    #[case::no_reason("SIP/2.0 100", Some(100))]
    #[case::empty_reason("SIP/2.0 486 ", Some(486))]
    #[case::utf8_reason("SIP/2.0 200 Très bien", Some(200))]
    #[case::highest("SIP/2.0 699 x", Some(699))]
    #[case::too_small("SIP/2.0 099 x", None)]
    #[case::seven_hundred("SIP/2.0 700 x", None)]
    #[case::four_digits("SIP/2.0 1000 x", None)]
    #[case::huge("SIP/2.0 4294967301 x", None)]
    #[case::sign("SIP/2.0 +20 x", None)]
    #[case::no_code("SIP/2.0", None)]
    fn status_lines(#[case] start: &str, #[case] status: Option<u16>) {
        let outcome = SipMsg::parse(options(start, "", "").as_bytes());
        assert_eq!(
            outcome.as_ref().ok().and_then(SipMsg::status),
            status,
            "{outcome:?}"
        );
    }

    #[rstest]
    #[case::exact("Content-Length: 4\r\n", "abcd", Ok(4))]
    #[case::longer_body_is_cut("Content-Length: 2\r\n", "abcd", Ok(2))]
    #[case::compact("l: 0\r\n", "", Ok(0))]
    #[case::absent_takes_the_rest("", "abc", Ok(3))]
    #[case::repeated_equal("l: 1\r\nContent-Length: 1\r\n", "a", Ok(1))]
    #[case::shorter_body("Content-Length: 10\r\n", "abcd", Err("only 4 body bytes"))]
    #[case::negative("Content-Length: -1\r\n", "", Err("not a decimal byte count"))]
    #[case::plus("Content-Length: +1\r\n", "a", Err("not a decimal byte count"))]
    #[case::overflow(
        "Content-Length: 99999999999999999999999\r\n",
        "",
        Err("not a decimal byte count")
    )]
    #[case::conflicting("l: 1\r\nContent-Length: 2\r\n", "ab", Err("differs"))]
    fn content_length(
        #[case] header: &str,
        #[case] body: &str,
        #[case] expected: Result<usize, &str>,
    ) {
        let outcome = SipMsg::parse(options("OPTIONS sip:a@h SIP/2.0", header, body).as_bytes());
        match (outcome, expected) {
            (Ok(msg), Ok(len)) => assert_eq!(msg.body(), &body.as_bytes()[..len]),
            (Err(error), Err(reason)) => {
                assert!(
                    error.to_string().contains(reason),
                    "`{error}` lacks `{reason}`"
                )
            }
            (outcome, expected) => panic!("{header}: {outcome:?}, expected {expected:?}"),
        }
    }

    #[rstest]
    #[case::folded_value("Subject: one\r\n two\r\n\tthree\r\n", Ok("one two three"))]
    #[case::space_before_colon("Subject  : x\r\n", Ok("x"))]
    #[case::compact_name("s:x\r\n", Ok("x"))]
    #[case::empty_value("Subject:\r\n", Ok(""))]
    #[case::no_colon("Subject x\r\n", Err("no colon"))]
    #[case::name_with_space("Sub ject: x\r\n", Err("not a token"))]
    #[case::empty_name(": x\r\n", Err("not a token"))]
    #[case::nul("Subject: a\0b\r\n", Err("control character"))]
    #[case::bare_lf("Subject: a\nb\r\n", Err("bare CR or LF"))]
    fn header_lines(#[case] extra: &str, #[case] expected: Result<&str, &str>) {
        let outcome = SipMsg::parse(options("OPTIONS sip:a@h SIP/2.0", extra, "").as_bytes());
        match (outcome, expected) {
            (Ok(msg), Ok(value)) => assert_eq!(msg.header("subject").as_deref(), Some(value)),
            (Err(error), Err(reason)) => {
                assert!(
                    error.to_string().contains(reason),
                    "`{error}` lacks `{reason}`"
                )
            }
            (outcome, expected) => panic!("{extra:?}: {outcome:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_continuation_line_needs_a_header_before_it() {
        let text = "OPTIONS sip:a@h SIP/2.0\r\n folded\r\n\r\n";
        let error = SipMsg::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(
            error.contains("continuation line before any header"),
            "{error}"
        );
    }

    #[rstest]
    #[case::cseq_mismatch("CSeq: 1 INVITE", "does not match")]
    #[case::cseq_method_case("CSeq: 1 options", "does not match")]
    #[case::cseq_2_31("CSeq: 2147483648 OPTIONS", "bad CSeq")]
    #[case::cseq_negative("CSeq: -1 OPTIONS", "bad CSeq")]
    #[case::cseq_extra_word("CSeq: 1 OPTIONS x", "bad CSeq")]
    #[case::max_forwards_256("Max-Forwards: 256", "Max-Forwards")]
    #[case::max_forwards_text("Max-Forwards: ten", "Max-Forwards")]
    #[case::via_empty_element("Via: SIP/2.0/UDP h;branch=z9hG4bK2,,", "Via")]
    #[case::via_empty_param("Via: SIP/2.0/UDP h;;branch=z9hG4bK2", "an empty parameter")]
    #[case::via_no_sent_by("Via: SIP/2.0/UDP", "no sent-by")]
    #[case::via_no_protocol("Via: h;branch=z9hG4bK2", "no `SIP/2.0/transport`")]
    #[case::via_param_without_value("Via: SIP/2.0/UDP h;branch=", "no value")]
    #[case::contact_empty_params("Contact: \"Joe\" <sip:joe@h>;;;;", "an empty parameter")]
    #[case::contact_unclosed("Contact: <sip:joe@h", "without `>`")]
    #[case::contact_empty_uri("Contact: <>", "empty `<>`")]
    #[case::contact_junk_after("Contact: <sip:joe@h> junk", "not a parameter")]
    #[case::contact_empty_element("Contact: <sip:a@h>,,<sip:b@h>", "no URI")]
    fn header_values_refused(#[case] line: &str, #[case] reason: &str) {
        // The line goes first, so it is the one the lookups find.
        let text = options("OPTIONS sip:a@h SIP/2.0", "", "").replacen(
            "\r\n",
            &format!("\r\n{line}\r\n"),
            1,
        );
        let error = SipMsg::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(error.contains(reason), "{line}: `{error}` lacks `{reason}`");
    }

    #[rstest]
    #[case::star("Contact: *")]
    #[case::list("Contact: \"A, B\" <sip:a@h>;q=0.5, sip:b@h;expires=60")]
    #[case::quoted_angle("Contact: \"<x>\" <sip:a@h;lr>;+sip.instance=\"<urn:uuid:1>\"")]
    #[case::via_lws("Via: SIP / 2.0 / TCP h ; branch = z9hG4bK3 , SIP/2.0/UDP [::1]:5060;rport")]
    #[case::max_forwards("Max-Forwards: 0070")]
    fn header_values_accepted(#[case] line: &str) {
        let text = options("OPTIONS sip:a@h SIP/2.0", "", "").replacen(
            "\r\n",
            &format!("\r\n{line}\r\n"),
            1,
        );
        assert!(SipMsg::parse(text.as_bytes()).is_ok(), "{line}");
    }

    #[test]
    fn leading_crlfs_are_ignored_and_raw_is_kept() {
        let text = format!("\r\n\r\n{}", options("OPTIONS sip:a@h SIP/2.0", "", ""));
        let msg = SipMsg::parse(text.as_bytes()).unwrap();
        assert_eq!(msg.first_line(), "OPTIONS sip:a@h SIP/2.0");
        assert_eq!(msg.raw, text);
        let error = SipMsg::parse(b"OPTIONS sip:a@h SIP/2.0\r\nCall-ID: x\r\n").unwrap_err();
        assert_eq!(error, MalformedError::NoEndOfHeaders);
    }

    #[rstest]
    #[case("sip:4004@127.0.0.1", Some("4004"))]
    #[case("sip:%34004@h", Some("4004"))]
    #[case("sips:alice:secret@h:5061", Some("alice"))]
    #[case(
        "sip:user;par=u%40example.net@example.com",
        Some("user;par=u@example.net")
    )]
    #[case("sip:a%2@h", Some("a%2"))]
    #[case("sip:a%+1@h", Some("a%+1"))]
    #[case("sip:h;transport=tcp", None)]
    #[case("no-scheme", None)]
    fn uri_users(#[case] uri: &str, #[case] user: Option<&str>) {
        assert_eq!(uri_user(uri).as_deref(), user);
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

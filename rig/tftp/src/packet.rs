//! TFTP packets on the wire: RFC 1350 (RRQ, WRQ, DATA, ACK, ERROR) and the
//! RFC 2347 option acknowledgement (OACK). Parsing never panics and never
//! trusts a length: every malformed datagram becomes a [`PacketError`] that
//! says what was wrong, so the server can log it and answer with error 4.

use std::fmt;

/// Smallest and largest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// Block size without negotiation (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest datagram a conforming peer can send: a DATA packet at the largest block size.
pub const MAX_PACKET_LEN: usize = 4 + MAX_BLKSIZE as usize;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// Transfer mode of a request. `mail` (obsolete since RFC 1350) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text: the sender turns LF into CR LF and CR into CR NUL.
    Netascii,
    Octet,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read or write request. Option names are kept lower-cased (RFC 2347 says
/// they are case-insensitive); values are kept as sent and validated by
/// [`crate::options`], so that a bad value is ignored rather than fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    pub options: Vec<(String, String)>,
}

/// TFTP error codes (RFC 1350 section 5, RFC 2347 for 8).
pub mod error_code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const DISK_FULL: u16 = 3;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TRANSFER_ID: u16 = 5;
    pub const FILE_EXISTS: u16 = 6;
    pub const NO_SUCH_USER: u16 = 7;
    pub const OPTION_NEGOTIATION: u16 = 8;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack { options: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is too short for a TFTP header")]
    TooShort(usize),
    #[error("packet of {0} bytes is longer than any TFTP packet ({MAX_PACKET_LEN})")]
    TooLong(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0} is not NUL-terminated")]
    MissingNul(&'static str),
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} is not ASCII text")]
    NotText(&'static str),
    #[error("unsupported transfer mode `{0}`")]
    UnsupportedMode(String),
    #[error("option `{0}` has no value")]
    OptionWithoutValue(String),
    #[error("{kind} packet must be {expected} bytes, got {got}")]
    BadLength {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
}

impl Packet {
    pub fn parse(bytes: &[u8]) -> Result<Packet, PacketError> {
        if bytes.len() > MAX_PACKET_LEN {
            return Err(PacketError::TooLong(bytes.len()));
        }
        if bytes.len() < 2 {
            return Err(PacketError::TooShort(bytes.len()));
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        match opcode {
            OP_RRQ => parse_request(body).map(Packet::Rrq),
            OP_WRQ => parse_request(body).map(Packet::Wrq),
            OP_DATA => {
                let block = block_number(bytes)?;
                Ok(Packet::Data {
                    block,
                    data: bytes[4..].to_vec(),
                })
            }
            OP_ACK => {
                if bytes.len() != 4 {
                    return Err(PacketError::BadLength {
                        kind: "ACK",
                        expected: 4,
                        got: bytes.len(),
                    });
                }
                Ok(Packet::Ack {
                    block: block_number(bytes)?,
                })
            }
            OP_ERROR => {
                let code = block_number(bytes)?;
                let mut fields = Fields::new(&bytes[4..]);
                let message = fields.message("error message")?;
                Ok(Packet::Error { code, message })
            }
            OP_OACK => {
                let mut fields = Fields::new(body);
                Ok(Packet::Oack {
                    options: fields.options()?,
                })
            }
            other => Err(PacketError::UnknownOpcode(other)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Packet::Rrq(request) => encode_request(OP_RRQ, request),
            Packet::Wrq(request) => encode_request(OP_WRQ, request),
            Packet::Data { block, data } => encode_data(*block, data),
            Packet::Ack { block } => {
                let mut out = OP_ACK.to_be_bytes().to_vec();
                out.extend_from_slice(&block.to_be_bytes());
                out
            }
            Packet::Error { code, message } => encode_error(*code, message),
            Packet::Oack { options } => {
                let mut out = OP_OACK.to_be_bytes().to_vec();
                push_options(&mut out, options);
                out
            }
        }
    }

    /// Short name for events and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Rrq(_) => "RRQ",
            Packet::Wrq(_) => "WRQ",
            Packet::Data { .. } => "DATA",
            Packet::Ack { .. } => "ACK",
            Packet::Error { .. } => "ERROR",
            Packet::Oack { .. } => "OACK",
        }
    }
}

/// A DATA packet without building a [`Packet`] (the hot path of a transfer).
pub fn encode_data(block: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = OP_ERROR.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    // A NUL inside the message would end it early on the peer's side.
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

fn encode_request(opcode: u16, request: &Request) -> Vec<u8> {
    let mut out = opcode.to_be_bytes().to_vec();
    out.extend_from_slice(request.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(request.mode.as_str().as_bytes());
    out.push(0);
    push_options(&mut out, &request.options);
    out
}

fn push_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

fn block_number(bytes: &[u8]) -> Result<u16, PacketError> {
    match bytes.get(2..4) {
        Some(number) => Ok(u16::from_be_bytes([number[0], number[1]])),
        None => Err(PacketError::TooShort(bytes.len())),
    }
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let mut fields = Fields::new(body);
    let filename = fields.text("file name", false)?;
    let mode_text = fields.text("mode", false)?;
    let mode = match mode_text.to_ascii_lowercase().as_str() {
        "netascii" => Mode::Netascii,
        "octet" => Mode::Octet,
        _ => return Err(PacketError::UnsupportedMode(mode_text)),
    };
    let options = fields.options()?;
    Ok(Request {
        filename,
        mode,
        options,
    })
}

/// NUL-terminated strings one after another.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Fields { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn raw(&mut self, what: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(PacketError::MissingNul(what))?;
        let raw = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(raw)
    }

    /// A name or option: printable UTF-8 (the RFCs say ASCII). A file name in
    /// another encoding is refused here rather than guessed at.
    fn text(&mut self, what: &'static str, empty_ok: bool) -> Result<String, PacketError> {
        let raw = self.raw(what)?;
        if raw.is_empty() && !empty_ok {
            return Err(PacketError::Empty(what));
        }
        match std::str::from_utf8(raw) {
            Ok(text) if !text.chars().any(char::is_control) => Ok(text.to_owned()),
            _ => Err(PacketError::NotText(what)),
        }
    }

    /// Free text for humans (error messages): anything goes, shown lossily.
    fn message(&mut self, what: &'static str) -> Result<String, PacketError> {
        Ok(String::from_utf8_lossy(self.raw(what)?).into_owned())
    }

    fn options(&mut self) -> Result<Vec<(String, String)>, PacketError> {
        let mut options = Vec::new();
        while !self.is_empty() {
            let name = self.text("option name", false)?.to_ascii_lowercase();
            if self.is_empty() {
                return Err(PacketError::OptionWithoutValue(name));
            }
            let value = self.text("option value", true)?;
            options.push((name, value));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn rrq(filename: &str, mode: Mode, options: &[(&str, &str)]) -> Packet {
        Packet::Rrq(Request {
            filename: filename.into(),
            mode,
            options: opts(options),
        })
    }

    #[rstest]
    #[case::plain_rrq(b"\x00\x01cfg.xml\x00octet\x00".to_vec(), rrq("cfg.xml", Mode::Octet, &[]))]
    #[case::mode_is_case_insensitive(b"\x00\x01a\x00NetASCII\x00".to_vec(), rrq("a", Mode::Netascii, &[]))]
    #[case::options_lowercased(
        b"\x00\x01fw.rom\x00octet\x00BLKSIZE\x001428\x00tsize\x000\x00".to_vec(),
        rrq("fw.rom", Mode::Octet, &[("blksize", "1428"), ("tsize", "0")])
    )]
    #[case::wrq(
        b"\x00\x02log.txt\x00octet\x00".to_vec(),
        Packet::Wrq(Request { filename: "log.txt".into(), mode: Mode::Octet, options: vec![] })
    )]
    #[case::data(b"\x00\x03\x00\x07abc".to_vec(), Packet::Data { block: 7, data: b"abc".to_vec() })]
    #[case::empty_data(b"\x00\x03\xff\xff".to_vec(), Packet::Data { block: 65535, data: vec![] })]
    #[case::ack(b"\x00\x04\x01\x00".to_vec(), Packet::Ack { block: 256 })]
    #[case::error(b"\x00\x05\x00\x01not found\x00".to_vec(), Packet::Error { code: 1, message: "not found".into() })]
    #[case::error_empty_message(b"\x00\x05\x00\x08\x00".to_vec(), Packet::Error { code: 8, message: "".into() })]
    #[case::oack(b"\x00\x06blksize\x00512\x00".to_vec(), Packet::Oack { options: opts(&[("blksize", "512")]) })]
    #[case::empty_option_value_kept(b"\x00\x01a\x00octet\x00tsize\x00\x00".to_vec(), rrq("a", Mode::Octet, &[("tsize", "")]))]
    fn parses(#[case] bytes: Vec<u8>, #[case] expected: Packet) {
        assert_eq!(Packet::parse(&bytes), Ok(expected));
    }

    #[rstest]
    #[case::empty(vec![], PacketError::TooShort(0))]
    #[case::one_byte(vec![0], PacketError::TooShort(1))]
    #[case::bad_opcode(b"\x00\x09xx".to_vec(), PacketError::UnknownOpcode(9))]
    #[case::opcode_zero(b"\x00\x00".to_vec(), PacketError::UnknownOpcode(0))]
    #[case::filename_without_nul(b"\x00\x01cfg.xml".to_vec(), PacketError::MissingNul("file name"))]
    #[case::mode_without_nul(b"\x00\x01cfg.xml\x00octet".to_vec(), PacketError::MissingNul("mode"))]
    #[case::no_mode(b"\x00\x01cfg.xml\x00".to_vec(), PacketError::MissingNul("mode"))]
    #[case::empty_filename(b"\x00\x01\x00octet\x00".to_vec(), PacketError::Empty("file name"))]
    #[case::mail_mode(b"\x00\x01a\x00mail\x00".to_vec(), PacketError::UnsupportedMode("mail".into()))]
    #[case::unknown_mode(b"\x00\x01a\x00binary\x00".to_vec(), PacketError::UnsupportedMode("binary".into()))]
    #[case::option_without_value(b"\x00\x01a\x00octet\x00blksize\x00".to_vec(), PacketError::OptionWithoutValue("blksize".into()))]
    #[case::option_value_without_nul(b"\x00\x01a\x00octet\x00blksize\x00512".to_vec(), PacketError::MissingNul("option value"))]
    #[case::empty_option_name(b"\x00\x01a\x00octet\x00\x00512\x00".to_vec(), PacketError::Empty("option name"))]
    #[case::control_char_in_name(b"\x00\x01a\nb\x00octet\x00".to_vec(), PacketError::NotText("file name"))]
    #[case::non_utf8_name(b"\x00\x01\xff\xfe\x00octet\x00".to_vec(), PacketError::NotText("file name"))]
    #[case::short_data(b"\x00\x03\x00".to_vec(), PacketError::TooShort(3))]
    #[case::short_ack(b"\x00\x04\x00".to_vec(), PacketError::BadLength { kind: "ACK", expected: 4, got: 3 })]
    #[case::long_ack(b"\x00\x04\x00\x01\x00".to_vec(), PacketError::BadLength { kind: "ACK", expected: 4, got: 5 })]
    #[case::error_without_nul(b"\x00\x05\x00\x01oops".to_vec(), PacketError::MissingNul("error message"))]
    #[case::error_without_code(b"\x00\x05\x00".to_vec(), PacketError::TooShort(3))]
    #[case::oack_option_without_value(b"\x00\x06tsize\x00".to_vec(), PacketError::OptionWithoutValue("tsize".into()))]
    #[case::oversize_data({ let mut p = b"\x00\x03\x00\x01".to_vec(); p.resize(MAX_PACKET_LEN + 1, 0x55); p }, PacketError::TooLong(MAX_PACKET_LEN + 1))]
    fn rejects(#[case] bytes: Vec<u8>, #[case] expected: PacketError) {
        assert_eq!(Packet::parse(&bytes), Err(expected));
    }

    #[rstest]
    #[case(rrq("dir/cfg.xml", Mode::Netascii, &[("blksize", "1428"), ("windowsize", "16")]))]
    #[case(Packet::Wrq(Request { filename: "up.bin".into(), mode: Mode::Octet, options: opts(&[("tsize", "99")]) }))]
    #[case(Packet::Data { block: 65535, data: vec![0; 512] })]
    #[case(Packet::Data { block: 0, data: vec![] })]
    #[case(Packet::Ack { block: 0 })]
    #[case(Packet::Error { code: 5, message: "unknown transfer ID".into() })]
    #[case(Packet::Oack { options: opts(&[("tsize", "123456"), ("timeout", "3")]) })]
    fn encode_then_parse_round_trips(#[case] packet: Packet) {
        assert_eq!(Packet::parse(&packet.encode()), Ok(packet));
    }

    #[test]
    fn largest_data_packet_is_accepted() {
        let bytes = encode_data(1, &vec![1u8; MAX_BLKSIZE as usize]);
        assert_eq!(bytes.len(), MAX_PACKET_LEN);
        assert!(
            matches!(Packet::parse(&bytes), Ok(Packet::Data { block: 1, data }) if data.len() == MAX_BLKSIZE as usize)
        );
    }

    #[test]
    fn error_message_with_nul_stays_one_field() {
        let bytes = encode_error(0, "a\0b");
        assert_eq!(
            Packet::parse(&bytes),
            Ok(Packet::Error {
                code: 0,
                message: "ab".into()
            })
        );
    }
}

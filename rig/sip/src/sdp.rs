//! The SDP the rig offers and answers (RFC 4566 subset, RFC 3264 offer/answer):
//! one audio stream, PCMU/PCMA (G.722 listed), a direction attribute.

use std::net::{IpAddr, SocketAddr};

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(attr: &str) -> Option<Direction> {
        match attr.trim() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_flags(send: bool, receive: bool) -> Direction {
        match (send, receive) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// The answerer's direction (RFC 3264 §6.1): send only what the offerer
    /// will receive, receive only what it will send, within what we want.
    pub fn answer_to(offer: Direction, wanted: Direction) -> Direction {
        Direction::from_flags(
            wanted.sends() && offer.receives(),
            wanted.receives() && offer.sends(),
        )
    }
}

/// Codecs the rig lists, in preference order: (payload type, rtpmap).
pub const CODECS: [(u8, &str); 3] = [(0, "PCMU/8000"), (8, "PCMA/8000"), (9, "G722/8000")];

/// Codecs the rig can generate audio for (G.722 is listed only, see docs/sip.md).
pub fn can_encode(payload_type: u8) -> bool {
    matches!(payload_type, 0 | 8)
}

/// What the rig learns from a peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where to send RTP, `None` when the stream is disabled (port 0) or has no address.
    pub rtp: Option<SocketAddr>,
    pub payload_types: Vec<u8>,
    pub direction: Direction,
}

impl RemoteMedia {
    /// The first payload type of theirs the rig can also speak.
    pub fn common_codec(&self) -> Option<u8> {
        self.payload_types
            .iter()
            .copied()
            .find(|pt| CODECS.iter().any(|(ours, _)| ours == pt))
    }
}

/// Reads the first audio stream of an SDP body.
pub fn parse(body: &str) -> Option<RemoteMedia> {
    let mut session_ip: Option<IpAddr> = None;
    let mut session_dir: Option<Direction> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut media_dir: Option<Direction> = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    for line in body.lines().map(str::trim) {
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "m" => {
                if audio.is_some() {
                    break; // only the first audio stream matters
                }
                seen_media = true;
                let mut parts = value.split_whitespace();
                in_audio = parts.next() == Some("audio");
                if in_audio {
                    let port = parts.next()?.split('/').next()?.parse().ok()?;
                    let _proto = parts.next()?;
                    audio = Some((port, parts.filter_map(|p| p.parse().ok()).collect()));
                }
            }
            "c" => {
                let ip = value
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok());
                if !seen_media {
                    session_ip = ip;
                } else if in_audio {
                    media_ip = ip;
                }
            }
            "a" => {
                if let Some(dir) = Direction::parse(value) {
                    if !seen_media {
                        session_dir = Some(dir);
                    } else if in_audio {
                        media_dir = Some(dir);
                    }
                }
            }
            _ => {}
        }
    }
    let (port, payload_types) = audio?;
    let ip = media_ip.or(session_ip);
    // RFC 3264 §8.4: an address of 0.0.0.0 is the old way to say "hold".
    let rtp = ip
        .filter(|ip| !ip.is_unspecified() && port != 0)
        .map(|ip| SocketAddr::new(ip, port));
    let mut direction = media_dir.or(session_dir).unwrap_or(Direction::SendRecv);
    if ip.is_some_and(|ip| ip.is_unspecified()) && direction == Direction::SendRecv {
        direction = Direction::Inactive;
    }
    Some(RemoteMedia {
        rtp,
        payload_types,
        direction,
    })
}

/// Our SDP: `payload_types` in order (all of [`CODECS`] in an offer, the chosen one in an answer).
pub fn build(
    session_id: u64,
    version: u64,
    ip: IpAddr,
    port: u16,
    payload_types: &[u8],
    direction: Direction,
) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut sdp = format!(
        "v=0\r\no=phonerig {session_id} {version} IN {family} {ip}\r\ns=phonerig\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        payload_types.iter().map(u8::to_string).collect::<Vec<_>>().join(" ")
    );
    for pt in payload_types {
        if let Some((_, map)) = CODECS.iter().find(|(p, _)| p == pt) {
            sdp.push_str(&format!("a=rtpmap:{pt} {map}\r\n"));
        }
    }
    sdp.push_str(&format!("a=ptime:20\r\na={}\r\n", direction.as_str()));
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use Direction::*;

    // RFC 3264 §6.1 table, for an answerer that wants both ways and one that wants to send only.
    #[rstest]
    #[case(SendRecv, SendRecv, SendRecv)]
    #[case(SendOnly, SendRecv, RecvOnly)]
    #[case(RecvOnly, SendRecv, SendOnly)]
    #[case(Inactive, SendRecv, Inactive)]
    #[case(SendRecv, SendOnly, SendOnly)]
    #[case(SendOnly, SendOnly, Inactive)]
    #[case(RecvOnly, RecvOnly, Inactive)]
    #[case(SendRecv, RecvOnly, RecvOnly)]
    #[case(SendRecv, Inactive, Inactive)]
    fn answer_direction_table(
        #[case] offer: Direction,
        #[case] wanted: Direction,
        #[case] expected: Direction,
    ) {
        assert_eq!(Direction::answer_to(offer, wanted), expected);
    }

    #[test]
    fn our_offer_reads_back() {
        let sdp = build(
            7,
            1,
            "127.0.0.9".parse().unwrap(),
            40000,
            &[0, 8, 9],
            SendOnly,
        );
        let media = parse(&sdp).unwrap();
        assert_eq!(media.rtp, Some("127.0.0.9:40000".parse().unwrap()));
        assert_eq!(media.payload_types, vec![0, 8, 9]);
        assert_eq!(media.direction, SendOnly);
        assert!(sdp.contains("a=rtpmap:9 G722/8000\r\n"));
    }

    #[rstest]
    #[case::media_level_wins("v=0\r\nc=IN IP4 10.0.0.1\r\na=sendrecv\r\nt=0 0\r\nm=audio 5004 RTP/AVP 8 0\r\na=recvonly\r\n", Some("10.0.0.1:5004"), RecvOnly, Some(8))]
    #[case::session_level_default(
        "v=0\r\nc=IN IP4 10.0.0.1\r\na=sendonly\r\nm=audio 5004 RTP/AVP 0\r\n",
        Some("10.0.0.1:5004"),
        SendOnly,
        Some(0)
    )]
    #[case::no_attribute_means_sendrecv(
        "v=0\r\nm=audio 6000 RTP/AVP 18 0\r\nc=IN IP4 10.0.0.2\r\n",
        Some("10.0.0.2:6000"),
        SendRecv,
        Some(0)
    )]
    #[case::old_style_hold(
        "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 6000 RTP/AVP 0\r\n",
        None,
        Inactive,
        Some(0)
    )]
    #[case::port_zero(
        "v=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 0 RTP/AVP 0\r\n",
        None,
        SendRecv,
        Some(0)
    )]
    #[case::video_first("v=0\r\nc=IN IP4 10.0.0.2\r\nm=video 7000 RTP/AVP 96\r\na=inactive\r\nm=audio 6000 RTP/AVP 18 9\r\n", Some("10.0.0.2:6000"), SendRecv, Some(9))]
    fn parsing(
        #[case] body: &str,
        #[case] rtp: Option<&str>,
        #[case] direction: Direction,
        #[case] codec: Option<u8>,
    ) {
        let media = parse(body).unwrap();
        assert_eq!(media.rtp, rtp.map(|r| r.parse().unwrap()));
        assert_eq!(media.direction, direction);
        assert_eq!(media.common_codec(), codec);
    }

    #[test]
    fn no_audio_stream_is_none() {
        assert!(parse("v=0\r\nm=video 7000 RTP/AVP 96\r\n").is_none());
    }
}

//! The little SDP the virtual phone needs (RFC 4566 / RFC 3264): one audio stream,
//! PCMU, and the direction attribute that carries hold, silent call and monitor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Media direction as seen by the side that wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Direction {
    pub send: bool,
    pub recv: bool,
}

impl Direction {
    pub const SENDRECV: Direction = Direction {
        send: true,
        recv: true,
    };
    pub const SENDONLY: Direction = Direction {
        send: true,
        recv: false,
    };
    pub const RECVONLY: Direction = Direction {
        send: false,
        recv: true,
    };
    pub const INACTIVE: Direction = Direction {
        send: false,
        recv: false,
    };

    pub fn attribute(self) -> &'static str {
        match (self.send, self.recv) {
            (true, true) => "sendrecv",
            (true, false) => "sendonly",
            (false, true) => "recvonly",
            (false, false) => "inactive",
        }
    }

    pub fn from_attribute(a: &str) -> Option<Direction> {
        Some(match a {
            "sendrecv" => Direction::SENDRECV,
            "sendonly" => Direction::SENDONLY,
            "recvonly" => Direction::RECVONLY,
            "inactive" => Direction::INACTIVE,
            _ => return None,
        })
    }

    /// The direction the other side wrote, seen from our side (sendonly ↔ recvonly).
    pub fn mirrored(self) -> Direction {
        Direction {
            send: self.recv,
            recv: self.send,
        }
    }

    pub fn intersect(self, other: Direction) -> Direction {
        Direction {
            send: self.send && other.send,
            recv: self.recv && other.recv,
        }
    }

    /// RFC 3264 §6.1: the answer's direction given the offer and what we want.
    pub fn answer_to(offer: Direction, wanted: Direction) -> Direction {
        wanted.intersect(offer.mirrored())
    }
}

/// The audio part of a session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioSdp {
    pub addr: IpAddr,
    pub port: u16,
    pub payload_types: Vec<u8>,
    pub direction: Direction,
}

impl AudioSdp {
    /// Where to send RTP; `None` when the stream is refused (port 0) or the old
    /// RFC 2543 hold form `c=0.0.0.0` is used.
    pub fn rtp_target(&self) -> Option<SocketAddr> {
        (self.port != 0 && !self.addr.is_unspecified())
            .then(|| SocketAddr::new(self.addr, self.port))
    }

    pub fn offers_pcmu(&self) -> bool {
        self.payload_types.contains(&0)
    }

    /// Direction with the `c=0.0.0.0` hold convention folded in: a side that asks
    /// for nothing to be sent to it does not receive.
    pub fn effective_direction(&self) -> Direction {
        if self.addr.is_unspecified() {
            Direction {
                send: self.direction.send,
                recv: false,
            }
        } else {
            self.direction
        }
    }
}

/// Build our SDP (offer or answer). `version` must grow with each change (RFC 3264 §8).
pub fn build(
    user: &str,
    session_id: u64,
    version: u64,
    addr: IpAddr,
    port: u16,
    dir: Direction,
) -> String {
    let ip = match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    format!(
        "v=0\r\n\
o={user} {session_id} {version} IN {ip} {addr}\r\n\
s=phonerig-sim\r\n\
c=IN {ip} {addr}\r\n\
t=0 0\r\n\
m=audio {port} RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=ptime:20\r\n\
a={}\r\n",
        dir.attribute()
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError(pub String);

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad SDP: {}", self.0)
    }
}

impl std::error::Error for SdpError {}

/// Parse the first audio stream of an SDP body.
pub fn parse(body: &str) -> Result<AudioSdp, SdpError> {
    let mut session_addr: Option<IpAddr> = None;
    let mut session_dir = Direction::SENDRECV;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut media_addr: Option<IpAddr> = None;
    let mut media_dir: Option<Direction> = None;
    // Lines after the first m= line belong to that media section; a second m=
    // section (video …) is skipped.
    let mut section = 0usize;
    for raw in body.lines() {
        let line = raw.trim_end();
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "m" => {
                section += 1;
                let mut parts = value.split_whitespace();
                let media = parts.next().unwrap_or_default();
                if media == "audio" && audio.is_none() {
                    let port = parts
                        .next()
                        .and_then(|p| p.split('/').next())
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| SdpError(format!("bad m= line {line:?}")))?;
                    let _proto = parts.next();
                    let pts = parts.filter_map(|p| p.parse().ok()).collect();
                    audio = Some((port, pts));
                } else if audio.is_some() {
                    // Past the audio section: ignore the rest.
                    section = usize::MAX;
                }
            }
            "c" => {
                let addr = value
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| SdpError(format!("bad c= line {line:?}")))?;
                match section {
                    0 => session_addr = Some(addr),
                    usize::MAX => {}
                    _ if audio.is_some() => media_addr = Some(addr),
                    _ => {}
                }
            }
            "a" => {
                if let Some(dir) = Direction::from_attribute(value) {
                    match section {
                        0 => session_dir = dir,
                        usize::MAX => {}
                        _ if audio.is_some() => media_dir = Some(dir),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (port, payload_types) = audio.ok_or_else(|| SdpError("no audio stream".into()))?;
    let addr = media_addr
        .or(session_addr)
        .or_else(|| (port == 0).then_some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
        .ok_or_else(|| SdpError("no connection address".into()))?;
    Ok(AudioSdp {
        addr,
        port,
        payload_types,
        direction: media_dir.unwrap_or(session_dir),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(Direction::SENDRECV)]
    #[case(Direction::SENDONLY)]
    #[case(Direction::RECVONLY)]
    #[case(Direction::INACTIVE)]
    fn build_then_parse_keeps_direction(#[case] dir: Direction) {
        let text = build("4002", 7, 3, "127.0.0.9".parse().unwrap(), 40000, dir);
        let sdp = parse(&text).unwrap();
        assert_eq!(sdp.direction, dir);
        assert_eq!(sdp.port, 40000);
        assert_eq!(sdp.rtp_target(), Some("127.0.0.9:40000".parse().unwrap()));
        assert!(sdp.offers_pcmu());
        assert!(text.contains(&format!("a={}\r\n", dir.attribute())));
        assert!(text.contains("o=4002 7 3 IN IP4 127.0.0.9"));
    }

    // RFC 3264 §6.1 answer table, plus what each of our call kinds wants.
    #[rstest]
    #[case::normal_call(Direction::SENDRECV, Direction::SENDRECV, Direction::SENDRECV)]
    #[case::silent_offer_answered(Direction::SENDONLY, Direction::SENDRECV, Direction::RECVONLY)]
    #[case::monitor_offer_answered(Direction::RECVONLY, Direction::SENDRECV, Direction::SENDONLY)]
    #[case::hold_offer(Direction::SENDONLY, Direction::SENDRECV, Direction::RECVONLY)]
    #[case::inactive_offer(Direction::INACTIVE, Direction::SENDRECV, Direction::INACTIVE)]
    #[case::we_hold_while_answering(Direction::SENDRECV, Direction::SENDONLY, Direction::SENDONLY)]
    #[case::both_hold(Direction::SENDONLY, Direction::SENDONLY, Direction::INACTIVE)]
    fn answers(#[case] offer: Direction, #[case] wanted: Direction, #[case] answer: Direction) {
        assert_eq!(Direction::answer_to(offer, wanted), answer);
    }

    #[test]
    fn media_level_attributes_override_session_level() {
        let text = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 8 0 101\r\nc=IN IP4 127.0.0.2\r\na=inactive\r\n\
m=video 5006 RTP/AVP 96\r\nc=IN IP4 127.0.0.3\r\na=recvonly\r\n";
        let sdp = parse(text).unwrap();
        assert_eq!(sdp.addr, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(sdp.direction, Direction::INACTIVE);
        assert_eq!(sdp.payload_types, vec![8, 0, 101]);

        let session_only = "v=0\nc=IN IP4 127.0.0.1\na=sendonly\nm=audio 5004 RTP/AVP 8\n";
        let sdp = parse(session_only).unwrap();
        assert_eq!(sdp.direction, Direction::SENDONLY);
        assert!(!sdp.offers_pcmu());
    }

    #[test]
    fn old_style_hold_means_do_not_send_to_me() {
        let sdp = parse("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 5004 RTP/AVP 0\r\n").unwrap();
        assert_eq!(sdp.rtp_target(), None);
        assert_eq!(sdp.effective_direction(), Direction::SENDONLY);
    }

    #[rstest]
    #[case::no_audio("v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 5000 RTP/AVP 96\r\n")]
    #[case::no_address("v=0\r\nm=audio 5000 RTP/AVP 0\r\n")]
    #[case::bad_port("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio port RTP/AVP 0\r\n")]
    #[case::bad_address("v=0\r\nc=IN IP4 nowhere\r\nm=audio 5000 RTP/AVP 0\r\n")]
    fn rejects(#[case] text: &str) {
        assert!(parse(text).is_err());
    }
}

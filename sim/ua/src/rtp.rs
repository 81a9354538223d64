//! One RTP stream per call: PCMU, 20 ms packets of a 1 kHz tone while the call may
//! send, and counters for what arrived. Whether the phone *plays* what arrives is a
//! separate flag: a silent call receives nothing audible, a monitor call sends nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub const PCMU: u8 = 0;
pub const PACKET_TIME: Duration = Duration::from_millis(20);
/// 8 kHz × 20 ms.
pub const SAMPLES_PER_PACKET: usize = 160;

/// G.711 µ-law encoding of one 16-bit linear sample (ITU-T G.711, the classic
/// segment/bias algorithm).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// One 20 ms payload of a 1 kHz tone at 8 kHz (eight samples per period).
pub fn tone_payload() -> [u8; SAMPLES_PER_PACKET] {
    let mut out = [0u8; SAMPLES_PER_PACKET];
    for (i, b) in out.iter_mut().enumerate() {
        let phase = (i % 8) as f64 / 8.0 * std::f64::consts::TAU;
        *b = linear_to_ulaw((phase.sin() * 8000.0) as i16);
    }
    out
}

/// An RTP fixed header (RFC 3550 §5.1) with no CSRCs or extension.
pub fn packet(seq: u16, timestamp: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(PCMU);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Counts an inbound datagram only when it looks like RTP version 2.
pub fn is_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2
}

/// What the stream may do right now; the call logic changes it on hold, resume …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaFlags {
    pub remote: Option<SocketAddr>,
    pub send: bool,
    pub play: bool,
}

#[derive(Debug, Default)]
pub struct RtpCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub played: AtomicU64,
}

/// A bound RTP port with its sender and receiver tasks.
pub struct RtpStream {
    pub local: SocketAddr,
    pub counters: Arc<RtpCounters>,
    flags: Arc<Mutex<MediaFlags>>,
    stop: CancellationToken,
}

impl RtpStream {
    /// Bind an even port starting at `base` (0 = any port); tries the next even
    /// ports when one is busy so that concurrent calls get their own. Must be
    /// called inside a tokio runtime.
    pub fn open(ip: IpAddr, base: u16, stop: CancellationToken) -> std::io::Result<RtpStream> {
        let socket = if base == 0 {
            std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?
        } else {
            let mut result = Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "no free RTP port",
            ));
            for k in 0..200u16 {
                let Some(port) = base.checked_add(k * 2) else {
                    break;
                };
                result = std::net::UdpSocket::bind(SocketAddr::new(ip, port));
                if result.is_ok() {
                    break;
                }
            }
            result?
        };
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket)?;
        let local = socket.local_addr()?;
        let socket = Arc::new(socket);
        let counters = Arc::new(RtpCounters::default());
        let flags = Arc::new(Mutex::new(MediaFlags::default()));
        tokio::spawn(send_loop(
            socket.clone(),
            flags.clone(),
            counters.clone(),
            stop.clone(),
        ));
        tokio::spawn(receive_loop(
            socket,
            flags.clone(),
            counters.clone(),
            stop.clone(),
        ));
        Ok(RtpStream {
            local,
            counters,
            flags,
            stop,
        })
    }

    pub fn set_flags(&self, flags: MediaFlags) {
        *self.flags.lock().unwrap() = flags;
    }

    pub fn flags(&self) -> MediaFlags {
        *self.flags.lock().unwrap()
    }

    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }

    pub fn played(&self) -> u64 {
        self.counters.played.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for RtpStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn send_loop(
    socket: Arc<UdpSocket>,
    flags: Arc<Mutex<MediaFlags>>,
    counters: Arc<RtpCounters>,
    stop: CancellationToken,
) {
    let payload = tone_payload();
    let ssrc = fastrand::u32(..);
    let mut seq = fastrand::u16(..);
    let mut timestamp = fastrand::u32(..);
    let mut tick = tokio::time::interval(PACKET_TIME);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = *flags.lock().unwrap();
        // The timestamp advances with the clock even in silence (RFC 3550 §5.1).
        timestamp = timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
        let (true, Some(remote)) = (now.send, now.remote) else {
            continue;
        };
        let pkt = packet(seq, timestamp, ssrc, &payload);
        seq = seq.wrapping_add(1);
        if socket.send_to(&pkt, remote).await.is_ok() {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    flags: Arc<Mutex<MediaFlags>>,
    counters: Arc<RtpCounters>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                // ICMP port unreachable from an earlier send shows up here on Linux.
                Err(_) => continue,
            },
        };
        if !is_rtp(&buf[..n]) {
            continue;
        }
        counters.received.fetch_add(1, Ordering::Relaxed);
        if flags.lock().unwrap().play {
            counters.played.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    // Reference points of the G.711 µ-law table.
    #[rstest]
    #[case(0, 0xff)]
    #[case(-1, 0x7f)]
    #[case(32767, 0x80)]
    #[case(-32768, 0x00)]
    #[case(1000, 0xce)]
    #[case(-1000, 0x4e)]
    fn ulaw_reference_values(#[case] sample: i16, #[case] code: u8) {
        assert_eq!(linear_to_ulaw(sample), code);
    }

    #[test]
    fn packet_header_and_tone() {
        let payload = tone_payload();
        // A tone, not silence: the samples vary and repeat every 8.
        assert_ne!(payload[0], payload[2]);
        assert_eq!(payload[0], payload[8]);
        let p = packet(0x1234, 0xdeadbeef, 7, &payload);
        assert_eq!(p.len(), 172);
        assert_eq!(
            &p[..12],
            &[0x80, 0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7]
        );
        assert!(is_rtp(&p));
        assert!(!is_rtp(&[0x40; 20]));
    }

    #[tokio::test]
    async fn sends_only_while_allowed_and_counts_played_separately() {
        let ip: IpAddr = "127.61.0.1".parse().unwrap();
        let a = RtpStream::open(ip, 0, CancellationToken::new()).unwrap();
        let b = RtpStream::open(ip, 0, CancellationToken::new()).unwrap();
        a.set_flags(MediaFlags {
            remote: Some(b.local),
            send: true,
            play: false,
        });
        b.set_flags(MediaFlags {
            remote: Some(a.local),
            send: false,
            play: false,
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while b.received() < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("b receives a's packets");
        assert_eq!(b.played(), 0, "b does not play");
        assert_eq!(a.received(), 0, "b never sent");
        b.set_flags(MediaFlags {
            remote: Some(a.local),
            send: false,
            play: true,
        });
        let before = b.played();
        tokio::time::timeout(Duration::from_secs(5), async {
            while b.played() < before + 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("b plays once allowed");
        a.close();
        b.close();
    }
}

//! The RTP meter: one UDP socket per call that sends 20 ms packets while the
//! rig's side should talk, and counts what arrives (RFC 3550 loss and
//! interarrival jitter). `from`/`to` in events are extensions, so a scenario
//! can say "4004 hears 4002" without knowing ports.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phonerig_core::event::NewEvent;
use phonerig_core::{Source, Timeline};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// 20 ms of 8 kHz audio.
pub const SAMPLES_PER_PACKET: usize = 160;
const PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Quiet this long after packets flowed → `rtp.stopped`.
const SILENCE_MEANS_STOPPED: Duration = Duration::from_millis(1500);
const STATS_INTERVAL: Duration = Duration::from_secs(1);
const CLOCK_RATE: f64 = 8000.0;

/// The fixed RTP header fields the meter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    pub fn parse(packet: &[u8]) -> Option<RtpHeader> {
        if packet.len() < 12 || packet[0] >> 6 != 2 {
            return None;
        }
        let csrc_count = usize::from(packet[0] & 0x0f);
        if packet.len() < 12 + 4 * csrc_count {
            return None;
        }
        Some(RtpHeader {
            payload_type: packet[1] & 0x7f,
            marker: packet[1] & 0x80 != 0,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        })
    }

    pub fn write(&self, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(12 + payload.len());
        packet.push(0x80);
        packet.push(self.payload_type | if self.marker { 0x80 } else { 0 });
        packet.extend_from_slice(&self.sequence.to_be_bytes());
        packet.extend_from_slice(&self.timestamp.to_be_bytes());
        packet.extend_from_slice(&self.ssrc.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }
}

/// Receive statistics of one stream (RFC 3550 A.1 sequence accounting, A.8 jitter).
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    pub packets: u64,
    base_seq: u32,
    /// Highest extended sequence number seen (cycles in the upper 16 bits).
    max_ext_seq: u32,
    started: bool,
    /// Interarrival jitter in timestamp units.
    jitter: f64,
    last_transit: Option<f64>,
}

impl ReceiveStats {
    /// Records one packet that arrived at `arrival_secs` (any fixed origin).
    pub fn record(&mut self, sequence: u16, timestamp: u32, arrival_secs: f64) {
        self.packets += 1;
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(sequence);
            self.max_ext_seq = u32::from(sequence);
        } else {
            let max_low = self.max_ext_seq as u16;
            let delta = sequence.wrapping_sub(max_low);
            if delta != 0 && delta < 0x8000 {
                // Ahead of the highest seen (possibly wrapped): advance.
                self.max_ext_seq = self.max_ext_seq.wrapping_add(u32::from(delta));
            }
        }
        let transit = arrival_secs * CLOCK_RATE - f64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        u64::from(self.max_ext_seq.wrapping_sub(self.base_seq)) + 1
    }

    /// Packets never seen (duplicates can make the raw difference negative: clamp).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }

    pub fn jitter_ms(&self) -> f64 {
        (self.jitter / CLOCK_RATE * 1000.0 * 1000.0).round() / 1000.0
    }
}

/// G.711 µ-law of a 16-bit sample (ITU-T G.711 segment encoding).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut pcm = i32::from(sample);
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(CLIP) + BIAS;
    // Segment = position of the highest set bit above bit 7 (0..=7).
    let exponent = (31 - (pcm as u32).leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (pcm >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// G.711 A-law of a 16-bit sample.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample) >> 3; // 13-bit
    let sign = if pcm >= 0 {
        0x80
    } else {
        pcm = -pcm - 1;
        0x00
    };
    let pcm = pcm.min(0x0fff);
    let encoded = if pcm < 32 {
        (pcm >> 1) as u8
    } else {
        let exponent = (31 - (pcm as u32).leading_zeros()) as i32 - 4; // 1..=7
        let mantissa = (pcm >> exponent) & 0x0f;
        ((exponent << 4) as u8) | mantissa as u8
    };
    (sign | encoded) ^ 0x55
}

/// What the rig sends: a 1 kHz tone (audible on the phone) or digital silence.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Audio {
    #[default]
    Tone,
    Silence,
}

/// One packet's payload for `payload_type`, starting at sample `offset`.
pub fn payload(audio: Audio, payload_type: u8, offset: u64) -> Vec<u8> {
    (0..SAMPLES_PER_PACKET as u64)
        .map(|i| {
            let sample = match audio {
                Audio::Tone => {
                    let t = (offset + i) as f64 / CLOCK_RATE;
                    (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
                }
                Audio::Silence => 0,
            };
            match payload_type {
                8 => linear_to_alaw(sample),
                // PCMU, and the frames sent under a negotiated G.722 (see docs/sip.md).
                _ => linear_to_ulaw(sample),
            }
        })
        .collect()
}

/// RTP ports handed out to calls; bounds the number of concurrent streams.
#[derive(Debug)]
pub struct PortPool {
    free: Mutex<BTreeSet<u16>>,
}

impl PortPool {
    /// Even ports of `range` (RTP convention; RTCP would use the odd one above).
    pub fn new(range: RangeInclusive<u16>) -> PortPool {
        PortPool {
            free: Mutex::new(range.filter(|p| p % 2 == 0).collect()),
        }
    }

    /// Binds a socket on the first free port that is actually bindable.
    pub async fn bind(self: &Arc<Self>, ip: IpAddr) -> anyhow::Result<(UdpSocket, PortLease)> {
        let candidates: Vec<u16> = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        for port in candidates {
            let taken = self
                .free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&port);
            if !taken {
                continue;
            }
            match UdpSocket::bind(SocketAddr::new(ip, port)).await {
                Ok(socket) => {
                    return Ok((
                        socket,
                        PortLease {
                            pool: self.clone(),
                            port,
                        },
                    ))
                }
                Err(_) => {
                    self.free
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(port);
                }
            }
        }
        anyhow::bail!("no free RTP port")
    }
}

/// Returns its port to the pool when dropped.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    pub port: u16,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.port);
    }
}

/// What the stream should do now; changed by offer/answer (hold, resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPlan {
    /// Where to send, when the rig's side talks.
    pub remote: Option<SocketAddr>,
    pub send: bool,
    pub payload_type: u8,
}

/// Names the call in events.
#[derive(Debug, Clone)]
pub struct StreamLabels {
    pub call_id: String,
    /// The extension the rig plays.
    pub local_ext: String,
    /// The phone's extension (or the remote user).
    pub remote_ext: String,
    pub dialog: Option<String>,
    pub phone: Option<String>,
}

/// A running stream; dropping it (or cancelling) ends both directions.
pub struct RtpStream {
    pub local: SocketAddr,
    plan: watch::Sender<MediaPlan>,
    stop: CancellationToken,
    _lease: PortLease,
}

impl RtpStream {
    pub fn start(
        socket: UdpSocket,
        lease: PortLease,
        plan: MediaPlan,
        labels: StreamLabels,
        audio: Audio,
        timeline: Timeline,
        parent: &CancellationToken,
    ) -> anyhow::Result<RtpStream> {
        let local = socket.local_addr()?;
        let socket = Arc::new(socket);
        let (plan_tx, plan_rx) = watch::channel(plan);
        let stop = parent.child_token();
        tokio::spawn(receive_loop(
            socket.clone(),
            labels.clone(),
            timeline.clone(),
            stop.clone(),
        ));
        tokio::spawn(send_loop(
            socket,
            plan_rx,
            labels,
            audio,
            timeline,
            stop.clone(),
        ));
        Ok(RtpStream {
            local,
            plan: plan_tx,
            stop,
            _lease: lease,
        })
    }

    pub fn update(&self, plan: MediaPlan) {
        self.plan.send_replace(plan);
    }

    pub fn plan(&self) -> MediaPlan {
        self.plan.borrow().clone()
    }
}

impl Drop for RtpStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn rtp_event(kind: &str, labels: &StreamLabels, flow: &Flow, stats: (u64, u64, f64)) -> NewEvent {
    let (packets, lost, jitter_ms) = stats;
    NewEvent::new(Source::Rtp, kind)
        .phone(labels.phone.clone())
        .field("call_id", &labels.call_id)
        .field("from", flow.from)
        .field("to", flow.to)
        .field("observed", flow.observed)
        .field("packets", packets)
        .field("lost", lost)
        .field("jitter_ms", jitter_ms)
        .field("dialog", &labels.dialog)
}

/// One direction of a call's media as events name it.
struct Flow<'a> {
    from: &'a str,
    to: &'a str,
    /// `received` (counted by the rig on arrival) or `sent` (what the rig sent).
    observed: &'static str,
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    labels: StreamLabels,
    timeline: Timeline,
    stop: CancellationToken,
) {
    let origin = Instant::now();
    let mut stats = ReceiveStats::default();
    let mut flowing = false;
    let mut last_packet = Instant::now();
    let mut last_report = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut buf = vec![0u8; 2048];
    let flow = Flow {
        from: &labels.remote_ext,
        to: &labels.local_ext,
        observed: "received",
    };
    let event = |kind: &str, stats: &ReceiveStats| {
        rtp_event(
            kind,
            &labels,
            &flow,
            (stats.packets, stats.lost(), stats.jitter_ms()),
        )
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _peer)) = received else { continue };
                let Some(header) = RtpHeader::parse(&buf[..len]) else { continue };
                stats.record(header.sequence, header.timestamp, origin.elapsed().as_secs_f64());
                last_packet = Instant::now();
                if !flowing {
                    flowing = true;
                    last_report = Instant::now();
                    timeline.publish(event("rtp.started", &stats));
                }
            }
            _ = ticker.tick() => {
                if flowing && last_packet.elapsed() >= SILENCE_MEANS_STOPPED {
                    flowing = false;
                    timeline.publish(event("rtp.stopped", &stats));
                } else if flowing && last_report.elapsed() >= STATS_INTERVAL {
                    last_report = Instant::now();
                    timeline.publish(event("rtp.stats", &stats));
                }
            }
        }
    }
    if flowing {
        timeline.publish(event("rtp.stopped", &stats));
    }
}

async fn send_loop(
    socket: Arc<UdpSocket>,
    mut plan: watch::Receiver<MediaPlan>,
    labels: StreamLabels,
    audio: Audio,
    timeline: Timeline,
    stop: CancellationToken,
) {
    let ssrc: u32 = rand::random();
    let mut sequence: u16 = rand::random();
    let mut timestamp: u32 = rand::random();
    let mut samples: u64 = 0;
    let mut sent: u64 = 0;
    let mut sending = false;
    let mut last_report = Instant::now();
    let mut ticker = tokio::time::interval(PACKET_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let flow = Flow {
        from: &labels.local_ext,
        to: &labels.remote_ext,
        observed: "sent",
    };
    let event = |kind: &str, sent: u64| rtp_event(kind, &labels, &flow, (sent, 0, 0.0));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {
                let current = plan.borrow_and_update().clone();
                match (current.send, current.remote) {
                    (true, Some(remote)) => {
                        let header = RtpHeader { payload_type: current.payload_type, marker: !sending, sequence, timestamp, ssrc };
                        let packet = header.write(&payload(audio, current.payload_type, samples));
                        if socket.send_to(&packet, remote).await.is_ok() {
                            sent += 1;
                        }
                        sequence = sequence.wrapping_add(1);
                        timestamp = timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
                        samples += SAMPLES_PER_PACKET as u64;
                        if !sending {
                            sending = true;
                            last_report = Instant::now();
                            timeline.publish(event("rtp.started", sent));
                        } else if last_report.elapsed() >= STATS_INTERVAL {
                            last_report = Instant::now();
                            timeline.publish(event("rtp.stats", sent));
                        }
                    }
                    _ => {
                        if sending {
                            sending = false;
                            timeline.publish(event("rtp.stopped", sent));
                        }
                    }
                }
            }
        }
    }
    if sending {
        timeline.publish(event("rtp.stopped", sent));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn header_round_trip() {
        let header = RtpHeader {
            payload_type: 8,
            marker: true,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 42,
        };
        let packet = header.write(&[1, 2, 3]);
        assert_eq!(RtpHeader::parse(&packet), Some(header));
        assert_eq!(packet.len(), 15);
        assert_eq!(RtpHeader::parse(&packet[..11]), None);
        let mut v1 = packet.clone();
        v1[0] = 0x40;
        assert_eq!(RtpHeader::parse(&v1), None);
    }

    /// Sequence numbers arriving (ts advances 160 per packet, sent every 20 ms).
    #[rstest]
    #[case::in_order(vec![10, 11, 12, 13], 4, 0)]
    #[case::gap_of_two(vec![10, 11, 14, 15], 6, 2)]
    #[case::reordered(vec![10, 12, 11, 13], 4, 0)]
    #[case::wraps(vec![65534, 65535, 0, 1, 3], 6, 1)]
    #[case::duplicate_does_not_count_negative(vec![5, 6, 6, 7], 3, 0)]
    fn loss_from_sequence_gaps(#[case] seqs: Vec<u16>, #[case] expected: u64, #[case] lost: u64) {
        let mut stats = ReceiveStats::default();
        for (i, seq) in seqs.iter().enumerate() {
            stats.record(
                *seq,
                u32::from(seq.wrapping_sub(seqs[0])) * 160,
                i as f64 * 0.02,
            );
        }
        assert_eq!(stats.expected(), expected);
        assert_eq!(stats.lost(), lost);
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing_and_grows_with_variation() {
        let mut perfect = ReceiveStats::default();
        for i in 0..50u32 {
            perfect.record(i as u16, i * 160, f64::from(i) * 0.02);
        }
        assert_eq!(perfect.jitter_ms(), 0.0);

        // Every other packet 10 ms late: |D| alternates 80 ts units; J → 80 ts units = 10 ms.
        let mut shaky = ReceiveStats::default();
        for i in 0..400u32 {
            let late = if i % 2 == 1 { 0.010 } else { 0.0 };
            shaky.record(i as u16, i * 160, f64::from(i) * 0.02 + late);
        }
        assert!(
            (shaky.jitter_ms() - 10.0).abs() < 0.1,
            "jitter {}",
            shaky.jitter_ms()
        );
    }

    #[rstest]
    #[case(0, 0xff)]
    #[case(-1, 0x7f)]
    #[case(32767, 0x80)]
    #[case(-32768, 0x00)]
    #[case(1000, 0xce)]
    fn ulaw_reference_points(#[case] sample: i16, #[case] code: u8) {
        assert_eq!(linear_to_ulaw(sample), code);
    }

    #[rstest]
    #[case(0, 0xd5)]
    #[case(-8, 0x55)]
    #[case(32767, 0xaa)]
    #[case(-32768, 0x2a)]
    fn alaw_reference_points(#[case] sample: i16, #[case] code: u8) {
        assert_eq!(linear_to_alaw(sample), code);
    }

    #[test]
    fn payloads_are_one_packet_long() {
        assert_eq!(payload(Audio::Tone, 0, 0).len(), 160);
        assert!(payload(Audio::Silence, 0, 0).iter().all(|b| *b == 0xff));
        assert!(payload(Audio::Silence, 8, 0).iter().all(|b| *b == 0xd5));
        assert!(payload(Audio::Tone, 0, 0).iter().any(|b| *b != 0xff));
    }
}

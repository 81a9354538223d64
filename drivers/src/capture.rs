//! Every frame on the lab NIC into `capture.pcap`, on a dedicated thread, and
//! `capture.*` events for what the services never see: ARP (address
//! conflicts, gratuitous ARP after DHCP), LLDP (phones announcing themselves,
//! LLDP-MED voice VLAN) and frames from MAC addresses the lab file does not
//! know (a stray device on the bench segment).
//!
//! The packet socket is opened in [`Capture::start`], on the caller's thread,
//! so a caller inside a network namespace (tests, `in_netns`) captures there.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use phonerig_core::event::NewEvent;
use phonerig_core::{Mac, Source, Timeline};
use pnet_datalink::{Channel, DataLinkReceiver};
use pnet_packet::arp::{ArpOperations, ArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::Packet;
use serde_json::Value;

use crate::error::DriverError;
use crate::pcap::PcapWriter;

pub const ETHERTYPE_LLDP: u16 = 0x88cc;
const ETHERTYPE_VLAN: u16 = 0x8100;

#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// The lab NIC.
    pub interface: String,
    /// Usually `<run dir>/capture.pcap`.
    pub pcap_path: PathBuf,
    /// Phones of the lab file: frames from these MACs are expected.
    pub phones: Vec<(String, Mac)>,
    pub snaplen: u32,
}

impl CaptureSettings {
    pub fn new(interface: &str, pcap_path: PathBuf, phones: Vec<(String, Mac)>) -> Self {
        CaptureSettings {
            interface: interface.to_owned(),
            pcap_path,
            phones,
            snaplen: 65_535,
        }
    }
}

/// Counts published as `capture.stats` when the capture stops.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CaptureStats {
    pub frames: u64,
    pub bytes: u64,
    pub arp: u64,
    pub lldp: u64,
    pub unknown_macs: u64,
}

/// A running capture; [`Capture::stop`] ends it and closes the pcap.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CaptureStats>>,
}

fn mac_of(bytes: [u8; 6]) -> Mac {
    Mac(bytes)
}

/// Knows which MACs to expect and which unknown ones were already reported.
pub struct FrameClassifier {
    phones: Vec<(String, Mac)>,
    own: Option<Mac>,
    reported_unknown: HashSet<Mac>,
}

impl FrameClassifier {
    pub fn new(phones: Vec<(String, Mac)>, own: Option<Mac>) -> Self {
        FrameClassifier {
            phones,
            own,
            reported_unknown: HashSet::new(),
        }
    }

    fn phone_of(&self, mac: &Mac) -> Option<&str> {
        self.phones
            .iter()
            .find(|(_, m)| m == mac)
            .map(|(name, _)| name.as_str())
    }

    /// The events one frame gives rise to (most give none).
    pub fn classify(&mut self, frame: &[u8], stats: &mut CaptureStats) -> Vec<NewEvent> {
        let Some(ethernet) = EthernetPacket::new(frame) else {
            return Vec::new();
        };
        let src = mac_of(ethernet.get_source().octets());
        let dst = mac_of(ethernet.get_destination().octets());
        let mut ethertype = ethernet.get_ethertype().0;
        let mut payload = ethernet.payload();
        let mut vlan = None;
        if ethertype == ETHERTYPE_VLAN && payload.len() >= 4 {
            vlan = Some(u16::from_be_bytes([payload[0], payload[1]]) & 0x0fff);
            ethertype = u16::from_be_bytes([payload[2], payload[3]]);
            payload = &payload[4..];
        }
        let phone = self.phone_of(&src).map(str::to_owned);
        let base = |kind: &str| {
            let mut event = NewEvent::new(Source::Capture, kind)
                .phone(phone.clone())
                .field("src_mac", src.colon())
                .field("dst_mac", dst.colon())
                .field("ethertype", format!("0x{ethertype:04x}"));
            if let Some(vlan) = vlan {
                event = event.field("vlan", vlan);
            }
            event
        };
        let mut events = Vec::new();
        let multicast_source = src.0[0] & 1 == 1;
        if phone.is_none()
            && Some(src) != self.own
            && !multicast_source
            && self.reported_unknown.insert(src)
        {
            stats.unknown_macs += 1;
            let mut event = base("capture.unknown_mac");
            if ethertype == EtherTypes::Ipv4.0 && payload.len() >= 20 {
                event = event.field(
                    "src_ip",
                    std::net::Ipv4Addr::new(payload[12], payload[13], payload[14], payload[15])
                        .to_string(),
                );
            }
            events.push(event);
        }
        if ethertype == EtherTypes::Arp.0 {
            if let Some(arp) = ArpPacket::new(payload) {
                stats.arp += 1;
                let op = match arp.get_operation() {
                    ArpOperations::Request => "request".to_owned(),
                    ArpOperations::Reply => "reply".to_owned(),
                    other => other.0.to_string(),
                };
                let sender_ip = arp.get_sender_proto_addr();
                let target_ip = arp.get_target_proto_addr();
                events.push(
                    base("capture.arp")
                        .field("op", op)
                        .field(
                            "sender_mac",
                            mac_of(arp.get_sender_hw_addr().octets()).colon(),
                        )
                        .field("sender_ip", sender_ip.to_string())
                        .field("target_ip", target_ip.to_string())
                        // Announcements (sender = target) and probes (sender 0.0.0.0, RFC 5227).
                        .field("gratuitous", sender_ip == target_ip)
                        .field("probe", sender_ip.is_unspecified()),
                );
            }
        } else if ethertype == ETHERTYPE_LLDP {
            stats.lldp += 1;
            let mut event = base("capture.lldp");
            for (name, value) in parse_lldp(payload) {
                event = event.field(name, value);
            }
            events.push(event);
        }
        events
    }
}

/// The identifying TLVs of an LLDPDU (IEEE 802.1AB): chassis id, port id,
/// TTL, system name and description.
pub fn parse_lldp(mut data: &[u8]) -> Vec<(&'static str, Value)> {
    let mut fields = Vec::new();
    while data.len() >= 2 {
        let header = u16::from_be_bytes([data[0], data[1]]);
        let (kind, len) = (header >> 9, (header & 0x01ff) as usize);
        let Some(value) = data.get(2..2 + len) else {
            break;
        };
        data = &data[2 + len..];
        match kind {
            0 => break,
            1 | 2 if !value.is_empty() => {
                let (subtype, id) = (value[0], &value[1..]);
                // Subtype 4 (chassis) / 3 (port) is a MAC address; most others are text.
                let is_mac = (kind == 1 && subtype == 4) || (kind == 2 && subtype == 3);
                let shown = if is_mac && id.len() == 6 {
                    Mac([id[0], id[1], id[2], id[3], id[4], id[5]]).colon()
                } else {
                    String::from_utf8_lossy(id).into_owned()
                };
                fields.push((
                    if kind == 1 { "chassis_id" } else { "port_id" },
                    Value::from(shown),
                ));
            }
            3 if value.len() == 2 => {
                fields.push(("ttl", Value::from(u16::from_be_bytes([value[0], value[1]]))))
            }
            5 => fields.push((
                "system_name",
                Value::from(String::from_utf8_lossy(value).into_owned()),
            )),
            6 => fields.push((
                "system_description",
                Value::from(String::from_utf8_lossy(value).into_owned()),
            )),
            _ => {}
        }
    }
    fields
}

impl Capture {
    /// Opens the interface now (errors are immediate) and captures on a thread.
    pub fn start(settings: CaptureSettings, timeline: Timeline) -> Result<Capture, DriverError> {
        let interface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == settings.interface)
            .ok_or_else(|| {
                DriverError::Unavailable(format!(
                    "capture: no network interface `{}` (see `ip link`)",
                    settings.interface
                ))
            })?;
        let config = pnet_datalink::Config {
            read_timeout: Some(Duration::from_millis(200)),
            read_buffer_size: 65_536,
            promiscuous: true,
            ..Default::default()
        };
        let receiver = match pnet_datalink::channel(&interface, config) {
            Ok(Channel::Ethernet(_, rx)) => rx,
            Ok(_) => return Err(DriverError::Unavailable(format!("capture: `{}` is not an Ethernet interface", settings.interface))),
            Err(e) => {
                return Err(DriverError::Unavailable(format!(
                    "capture on `{}`: {e} (needs root or CAP_NET_RAW: sudo setcap cap_net_raw,cap_net_bind_service+ep rig)",
                    settings.interface
                )))
            }
        };
        if let Some(parent) = settings.pcap_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| DriverError::io(format!("creating {}", parent.display()), e))?;
        }
        let file = File::create(&settings.pcap_path).map_err(|e| {
            DriverError::io(format!("creating {}", settings.pcap_path.display()), e)
        })?;
        let writer = PcapWriter::new(BufWriter::new(file), settings.snaplen)
            .map_err(|e| DriverError::io(format!("writing {}", settings.pcap_path.display()), e))?;
        let own = interface.mac.map(|m| mac_of(m.octets()));
        let classifier = FrameClassifier::new(settings.phones.clone(), own);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("capture-{}", settings.interface))
            .spawn(move || capture_loop(receiver, writer, classifier, timeline, settings, flag))
            .map_err(|e| DriverError::io("starting the capture thread", e))?;
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops capturing, flushes the pcap, publishes and returns `capture.stats`.
    pub fn stop(mut self) -> CaptureStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn capture_loop(
    mut receiver: Box<dyn DataLinkReceiver>,
    mut writer: PcapWriter<BufWriter<File>>,
    mut classifier: FrameClassifier,
    timeline: Timeline,
    settings: CaptureSettings,
    stop: Arc<AtomicBool>,
) -> CaptureStats {
    let mut stats = CaptureStats::default();
    let mut write_failed = false;
    let mut last_flush = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match receiver.next() {
            Ok(frame) => {
                stats.frames += 1;
                stats.bytes += frame.len() as u64;
                if let Err(error) = writer.write_frame(SystemTime::now(), frame) {
                    if !write_failed {
                        write_failed = true;
                        timeline.publish(
                            NewEvent::new(Source::Capture, "capture.error")
                                .field("error", format!("writing the pcap: {error}")),
                        );
                    }
                }
                for event in classifier.classify(frame, &mut stats) {
                    timeline.publish(event);
                }
                // A crash loses at most a second of frames.
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    let _ = writer.flush();
                    last_flush = Instant::now();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                let _ = writer.flush();
                last_flush = Instant::now();
            }
            Err(error) => {
                timeline.publish(
                    NewEvent::new(Source::Capture, "capture.error")
                        .field("interface", &settings.interface)
                        .field("error", error.to_string()),
                );
                // The interface went away; do not spin on it.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let _ = writer.flush();
    timeline.publish(
        NewEvent::new(Source::Capture, "capture.stats")
            .field("interface", &settings.interface)
            .field("file", settings.pcap_path.display().to_string())
            .fields_from(&stats),
    );
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: [u8; 6] = [0x00, 0x1f, 0xc1, 0x00, 0x00, 0x01];
    const STRANGER: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];
    const OWN: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

    fn ethernet(src: [u8; 6], dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn arp(op: u16, sender: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
        p.extend_from_slice(&op.to_be_bytes());
        p.extend_from_slice(&sender);
        p.extend_from_slice(&sender_ip);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&target_ip);
        p
    }

    fn classifier() -> FrameClassifier {
        FrameClassifier::new(vec![("uc924-1".into(), Mac(PHONE))], Some(Mac(OWN)))
    }

    #[test]
    fn arp_from_a_phone_is_reported_with_its_addresses() {
        let mut stats = CaptureStats::default();
        let frame = ethernet(
            PHONE,
            [0xff; 6],
            0x0806,
            &arp(1, PHONE, [198, 18, 0, 10], [198, 18, 0, 10]),
        );
        let events = classifier().classify(&frame, &mut stats);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, "capture.arp");
        assert_eq!(e.phone.as_deref(), Some("uc924-1"));
        assert_eq!(e.fields["op"], "request");
        assert_eq!(e.fields["sender_ip"], "198.18.0.10");
        assert_eq!(e.fields["gratuitous"], true);
        assert_eq!(e.fields["probe"], false);
        assert_eq!(e.fields["ethertype"], "0x0806");
        assert_eq!(e.fields["dst_mac"], "ff:ff:ff:ff:ff:ff");
        assert_eq!(stats.arp, 1);
    }

    #[test]
    fn unknown_mac_is_reported_once() {
        let mut classifier = classifier();
        let mut stats = CaptureStats::default();
        let mut ipv4 = vec![
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 99, 198, 18, 0, 1,
        ];
        ipv4.extend_from_slice(&[0; 8]);
        let frame = ethernet(STRANGER, OWN, 0x0800, &ipv4);
        let first = classifier.classify(&frame, &mut stats);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, "capture.unknown_mac");
        assert_eq!(first[0].fields["src_mac"], "02:00:00:aa:bb:cc");
        assert_eq!(first[0].fields["src_ip"], "198.18.0.99");
        assert!(classifier.classify(&frame, &mut stats).is_empty());
        assert!(
            classifier
                .classify(&ethernet(OWN, STRANGER, 0x0800, &ipv4), &mut stats)
                .is_empty(),
            "own MAC is known"
        );
        assert!(
            classifier
                .classify(&ethernet(PHONE, OWN, 0x0800, &ipv4), &mut stats)
                .is_empty(),
            "phone MAC is known"
        );
        assert_eq!(stats.unknown_macs, 1);
    }

    #[test]
    fn lldp_behind_a_vlan_tag_is_parsed() {
        let mut lldpdu = Vec::new();
        let tlv = |kind: u16, value: &[u8]| {
            let mut t = ((kind << 9) | value.len() as u16).to_be_bytes().to_vec();
            t.extend_from_slice(value);
            t
        };
        lldpdu.extend(tlv(1, &[4, 0x00, 0x1f, 0xc1, 0x00, 0x00, 0x01]));
        lldpdu.extend(tlv(2, b"\x05LAN"));
        lldpdu.extend(tlv(3, &120u16.to_be_bytes()));
        lldpdu.extend(tlv(5, b"UC924"));
        lldpdu.extend(tlv(0, &[]));
        let mut tagged = vec![0x00, 0x64, 0x88, 0xcc];
        tagged.extend_from_slice(&lldpdu);
        let frame = ethernet(PHONE, [0x01, 0x80, 0xc2, 0, 0, 0x0e], 0x8100, &tagged);
        let mut stats = CaptureStats::default();
        let events = classifier().classify(&frame, &mut stats);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, "capture.lldp");
        assert_eq!(e.fields["vlan"], 100);
        assert_eq!(e.fields["ethertype"], "0x88cc");
        assert_eq!(e.fields["chassis_id"], "00:1f:c1:00:00:01");
        assert_eq!(e.fields["port_id"], "LAN");
        assert_eq!(e.fields["ttl"], 120);
        assert_eq!(e.fields["system_name"], "UC924");
    }

    #[test]
    fn truncated_frames_give_nothing() {
        let mut stats = CaptureStats::default();
        assert!(classifier().classify(&[1, 2, 3], &mut stats).is_empty());
        assert!(
            parse_lldp(&[0x02, 0x07, 4]).is_empty(),
            "a TLV longer than the frame stops parsing"
        );
    }
}

//! Rogue/duplicate DHCP server detection before the server starts.
//!
//! The rig sends one DISCOVER on the lab NIC, as a phone would, and listens
//! for OFFERs. Our own server is not running yet, so any OFFER comes from
//! another server on the segment: the office's, a home router plugged into
//! the lab switch, or a second rig. Its MAC is only in the Ethernet header,
//! which a UDP socket does not show, so the replies are read from a packet
//! socket bound to the interface (the server needs root or CAP_NET_RAW on a
//! NIC anyway, for port 67 and SO_BINDTODEVICE).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use phonerig_core::Mac;
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire;

/// Another server's answer to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignServer {
    /// Its server identifier (option 54), else the IP source of the OFFER.
    pub server_ip: Ipv4Addr,
    /// The Ethernet source of the OFFER.
    pub mac: Mac,
    pub offered: Ipv4Addr,
}

impl std::fmt::Display for ForeignServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (MAC {}) offered {}",
            self.server_ip,
            self.mac.colon(),
            self.offered
        )
    }
}

const ETH_P_IP: u16 = 0x0800;

/// A packet socket receiving the IPv4 frames of one interface, Ethernet header included.
fn packet_socket(interface: &str) -> io::Result<Socket> {
    let index = nix::net::if_::if_nametoindex(interface)
        .map_err(|e| io::Error::other(format!("interface `{interface}`: {e}")))?;
    // SAFETY: plain socket(2)/bind(2) calls on a fresh descriptor that is
    // owned (and closed) by the returned Socket; sockaddr_ll is zeroed and
    // then filled with the fields packet(7) requires.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_IP.to_be()),
        );
        if fd < 0 {
            return Err(io::Error::new(
                io::Error::last_os_error().kind(),
                format!(
                    "packet socket for the DHCP probe: {} (needs root or CAP_NET_RAW)",
                    io::Error::last_os_error()
                ),
            ));
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP.to_be();
        addr.sll_ifindex = index as i32;
        let rc = libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket::from(owned))
    }
}

/// The interface's own MAC, for the probe's chaddr.
fn interface_mac(interface: &str) -> Option<Mac> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .map(Mac)
}

/// A DISCOVER asking for a broadcast reply, so the OFFER reaches the segment
/// even though the rig's socket is not the one the server would unicast to.
pub fn discover(xid: u32, mac: Mac) -> Vec<u8> {
    let mut message = Message::default();
    message
        .set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac.0);
    message
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    message
        .opts_mut()
        .insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::ServerIdentifier,
        ]));
    message.to_vec().expect("a DISCOVER always encodes")
}

/// An OFFER in an Ethernet frame for our probe: to UDP `client_port`, our `xid`.
pub fn offer_in_frame(frame: &[u8], client_port: u16, xid: u32) -> Option<ForeignServer> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let mac = Mac(frame.get(6..12)?.try_into().ok()?);
    let ip = frame.get(14..)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || header_len < 20 || *ip.get(9)? != 17 {
        return None;
    }
    let source = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
    let udp = ip.get(header_len..)?;
    if u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?) != client_port {
        return None;
    }
    let payload = udp.get(8..)?;
    wire::check_header(payload, false).ok()?;
    let message = Message::from_bytes(payload).ok()?;
    if message.opcode() != Opcode::BootReply || message.xid() != xid {
        return None;
    }
    if !matches!(
        message.opts().get(OptionCode::MessageType),
        Some(DhcpOption::MessageType(MessageType::Offer))
    ) {
        return None;
    }
    let server_ip = match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => *id,
        _ => source,
    };
    Some(ForeignServer {
        server_ip,
        mac,
        offered: message.yiaddr(),
    })
}

/// Sends one DISCOVER on `interface` (of the calling thread's namespace) to
/// `server_port` and returns every server that offered within `wait`.
pub fn probe_here(
    interface: &str,
    server_port: u16,
    client_port: u16,
    wait: Duration,
) -> io::Result<Vec<ForeignServer>> {
    let listener = packet_socket(interface)?;
    let sender = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sender.bind_device(Some(interface.as_bytes()))?;
    sender.set_broadcast(true)?;
    sender.set_reuse_address(true)?;
    // Port 68 as a phone uses; if something holds it, any port will do:
    // servers answer to 68 by broadcast, which the packet socket sees.
    let bound =
        sender.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, client_port)).into());
    if bound.is_err() {
        sender.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())?;
    }
    let mac = interface_mac(interface).unwrap_or(Mac([0x02, 0x70, 0x72, 0x6f, 0x62, 0x65]));
    let xid = std::process::id().rotate_left(16)
        ^ Instant::now().elapsed().subsec_nanos()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, server_port));
    sender.send_to(&discover(xid, mac), &to.into())?;

    let deadline = Instant::now() + wait;
    let mut found: Vec<ForeignServer> = Vec::new();
    let mut listener = listener;
    let mut frame = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        listener.set_read_timeout(Some(left))?;
        match listener.read(&mut frame) {
            Ok(len) => {
                if let Some(server) = offer_in_frame(&frame[..len], client_port, xid) {
                    if !found.contains(&server) {
                        found.push(server);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// [`probe_here`] inside network namespace `netns` when given.
pub fn probe(
    netns: Option<&str>,
    interface: &str,
    server_port: u16,
    client_port: u16,
    wait: Duration,
) -> io::Result<Vec<ForeignServer>> {
    let interface = interface.to_owned();
    match netns {
        Some(ns) => phonerig_core::netns::in_netns(ns, move || {
            probe_here(&interface, server_port, client_port, wait)
        }),
        None => probe_here(&interface, server_port, client_port, wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP frame around `payload`.
    fn frame(src_mac: [u8; 6], src_ip: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&src_ip);
        f.extend_from_slice(&[255, 255, 255, 255]);
        f.extend_from_slice(&67u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn offer(xid: u32, kind: MessageType, server_id: Option<Ipv4Addr>) -> Vec<u8> {
        let mut message = Message::default();
        message
            .set_opcode(Opcode::BootReply)
            .set_xid(xid)
            .set_yiaddr(Ipv4Addr::new(192, 168, 1, 50))
            .set_chaddr(&[2, 0, 0, 0, 0, 1]);
        message.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(id) = server_id {
            message.opts_mut().insert(DhcpOption::ServerIdentifier(id));
        }
        message.to_vec().unwrap()
    }

    const ROUTER: [u8; 6] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn an_offer_for_our_probe_names_server_and_mac() {
        let payload = offer(7, MessageType::Offer, Some(Ipv4Addr::new(192, 168, 1, 1)));
        let got = offer_in_frame(&frame(ROUTER, [192, 168, 1, 2], 68, &payload), 68, 7).unwrap();
        assert_eq!(got.server_ip, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(got.mac.colon(), "00:11:22:33:44:55");
        assert_eq!(got.offered, Ipv4Addr::new(192, 168, 1, 50));
        assert!(got.to_string().contains("00:11:22:33:44:55"));
    }

    #[test]
    fn without_option_54_the_ip_source_names_the_server() {
        let payload = offer(7, MessageType::Offer, None);
        let got = offer_in_frame(&frame(ROUTER, [192, 168, 1, 2], 68, &payload), 68, 7).unwrap();
        assert_eq!(got.server_ip, Ipv4Addr::new(192, 168, 1, 2));
    }

    #[test]
    fn other_frames_are_not_offers() {
        let ours = offer(7, MessageType::Offer, None);
        // another transaction, another port, an ACK, a request, garbage, a truncated frame
        assert!(offer_in_frame(&frame(ROUTER, [1, 1, 1, 1], 68, &ours), 68, 8).is_none());
        assert!(offer_in_frame(&frame(ROUTER, [1, 1, 1, 1], 69, &ours), 68, 7).is_none());
        let ack = offer(7, MessageType::Ack, None);
        assert!(offer_in_frame(&frame(ROUTER, [1, 1, 1, 1], 68, &ack), 68, 7).is_none());
        let request = discover(7, Mac(ROUTER));
        assert!(offer_in_frame(&frame(ROUTER, [1, 1, 1, 1], 68, &request), 68, 7).is_none());
        assert!(offer_in_frame(&frame(ROUTER, [1, 1, 1, 1], 68, b"junk"), 68, 7).is_none());
        let whole = frame(ROUTER, [1, 1, 1, 1], 68, &ours);
        for cut in [0, 13, 20, 40, 44] {
            assert!(offer_in_frame(&whole[..cut], 68, 7).is_none());
        }
    }
}

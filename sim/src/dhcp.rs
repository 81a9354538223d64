//! The phone's own DHCP client: DISCOVER → OFFER → REQUEST → ACK, renewal at T1.
//!
//! Requests are encoded with dhcproto. Replies are decoded by hand: servers put
//! vendor-typed data in options dhcproto types strictly (option 150 as a
//! string, say, where dhcproto expects exactly one IPv4 address and would
//! refuse the whole message), and a phone must still take the lease.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Encodable, Encoder};
use phonerig_core::Mac;
use tokio::net::UdpSocket;

/// Option 55: subnet, router, DNS, domain, NTP, TFTP server name, TFTP server
/// address (150), vendor 128, SIP servers (120), vendor specific (43).
pub const PARAMETER_REQUEST_LIST: [u8; 10] = [1, 3, 6, 15, 42, 66, 150, 128, 120, 43];

/// What the phone says about itself in every request.
#[derive(Debug, Clone)]
pub struct DhcpIdentity {
    pub mac: Mac,
    /// Option 60.
    pub vendor_class: String,
    /// Option 12.
    pub hostname: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Discover,
    /// REQUEST in SELECTING state: names the offered address and the server.
    Select {
        offered: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// REQUEST in RENEWING state: `ciaddr` set, no option 50/54 (RFC 2131 §4.3.2).
    Renew {
        address: Ipv4Addr,
    },
}

/// Encodes a DISCOVER or REQUEST. `broadcast` sets the BROADCAST flag so a
/// server answers to 255.255.255.255 (a client without an address cannot
/// receive unicast on a kernel socket).
pub fn encode(identity: &DhcpIdentity, xid: u32, request: Request, broadcast: bool) -> Vec<u8> {
    let mac = identity.mac.octets();
    let mut msg = v4::Message::default();
    msg.set_opcode(v4::Opcode::BootRequest)
        .set_htype(v4::HType::Eth)
        .set_xid(xid)
        .set_chaddr(&mac);
    if broadcast {
        msg.set_flags(v4::Flags::default().set_broadcast());
    }
    let opts = msg.opts_mut();
    match request {
        Request::Discover => {
            opts.insert(DhcpOption::MessageType(MessageType::Discover));
        }
        Request::Select { offered, server } => {
            opts.insert(DhcpOption::MessageType(MessageType::Request));
            opts.insert(DhcpOption::RequestedIpAddress(offered));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
        Request::Renew { .. } => {
            opts.insert(DhcpOption::MessageType(MessageType::Request));
        }
    }
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ClassIdentifier(
        identity.vendor_class.as_bytes().to_vec(),
    ));
    opts.insert(DhcpOption::Hostname(identity.hostname.clone()));
    opts.insert(DhcpOption::ParameterRequestList(
        PARAMETER_REQUEST_LIST
            .iter()
            .map(|c| OptionCode::from(*c))
            .collect(),
    ));
    if let Request::Renew { address } = request {
        msg.set_ciaddr(address);
    }
    let mut bytes = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut bytes))
        .expect("encoding a DHCP request into a Vec cannot fail");
    bytes
}

/// A server's answer, options as raw bytes by code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_type: u8,
    pub xid: u32,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub options: BTreeMap<u8, Vec<u8>>,
}

pub const OFFER: u8 = 2;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

pub fn decode_reply(bytes: &[u8]) -> Result<Reply, String> {
    if bytes.len() < 240 {
        return Err(format!(
            "{} bytes is shorter than a BOOTP header",
            bytes.len()
        ));
    }
    if bytes[0] != 2 {
        return Err("not a BOOTREPLY".into());
    }
    if bytes[236..240] != MAGIC_COOKIE {
        return Err("no DHCP magic cookie".into());
    }
    let xid = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let yiaddr = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&bytes[28..34]);
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut at = 240;
    while at < bytes.len() {
        let code = bytes[at];
        match code {
            0 => at += 1,
            255 => break,
            _ => {
                let len = *bytes.get(at + 1).ok_or("option length missing")? as usize;
                let data = bytes
                    .get(at + 2..at + 2 + len)
                    .ok_or_else(|| format!("option {code} runs past the end"))?;
                // RFC 3396: a repeated option continues the previous one.
                options.entry(code).or_default().extend_from_slice(data);
                at += 2 + len;
            }
        }
    }
    let message_type = options
        .get(&53)
        .and_then(|v| v.first().copied())
        .ok_or("no option 53")?;
    Ok(Reply {
        message_type,
        xid,
        yiaddr,
        chaddr,
        options,
    })
}

/// An address and the options that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub server: Ipv4Addr,
    pub subnet_mask: Ipv4Addr,
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub options: BTreeMap<u8, Vec<u8>>,
}

fn ipv4_at(data: &[u8]) -> Option<Ipv4Addr> {
    (data.len() >= 4).then(|| Ipv4Addr::new(data[0], data[1], data[2], data[3]))
}

impl Lease {
    fn from_ack(reply: &Reply, server_hint: Ipv4Addr) -> Lease {
        let u32_of = |code| {
            reply
                .options
                .get(&code)
                .filter(|v| v.len() == 4)
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        };
        let lease_secs = u32_of(51).unwrap_or(86_400);
        Lease {
            address: reply.yiaddr,
            server: reply
                .options
                .get(&54)
                .and_then(|v| ipv4_at(v))
                .unwrap_or(server_hint),
            subnet_mask: reply
                .options
                .get(&1)
                .and_then(|v| ipv4_at(v))
                .unwrap_or(Ipv4Addr::new(255, 255, 255, 0)),
            lease_secs,
            t1_secs: u32_of(58).unwrap_or(lease_secs / 2),
            options: reply.options.clone(),
        }
    }

    pub fn prefix_len(&self) -> u32 {
        u32::from(self.subnet_mask).count_ones()
    }

    /// An option as text (66, 128, 43 as a string …), when it is printable.
    pub fn text(&self, code: u8) -> Option<String> {
        let data = self.options.get(&code)?;
        option_text(data)
    }

    /// Option 150 arrives either as Cisco's list of IPv4 addresses or as a
    /// string (some servers put a URL there). Printable ASCII is taken as text,
    /// anything else of a length divisible by 4 as addresses.
    pub fn option_150(&self) -> Vec<String> {
        match self.options.get(&150) {
            None => Vec::new(),
            Some(data) => option_150_values(data),
        }
    }
}

fn option_text(data: &[u8]) -> Option<String> {
    let trimmed: &[u8] = match data.iter().position(|b| *b == 0) {
        Some(end) => &data[..end],
        None => data,
    };
    if trimmed.is_empty() || !trimmed.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    Some(String::from_utf8_lossy(trimmed).trim().to_owned())
}

pub fn option_150_values(data: &[u8]) -> Vec<String> {
    if let Some(text) = option_text(data) {
        return vec![text];
    }
    if !data.is_empty() && data.len().is_multiple_of(4) {
        return data
            .chunks(4)
            .filter_map(ipv4_at)
            .map(|ip| ip.to_string())
            .collect();
    }
    Vec::new()
}

/// Where requests go and where the phone listens.
pub struct DhcpPath<'a> {
    pub socket: &'a UdpSocket,
    /// Broadcast 255.255.255.255:67, or the rig's DHCP server on loopback.
    pub target: SocketAddr,
    pub broadcast_flag: bool,
}

fn next_wait(attempt: u32) -> Duration {
    // RFC 2131 §4.1 backs off 4, 8, 16 … s; a bench wants answers sooner, and
    // the server is on the same segment: 0.5, 1, 2, 4, 4 … s.
    Duration::from_millis(500u64 << attempt.min(3))
}

async fn exchange(
    path: &DhcpPath<'_>,
    bytes: &[u8],
    xid: u32,
    mac: &Mac,
    wanted: &[u8],
    max_attempts: Option<u32>,
    log: &(dyn Fn(String) + Send + Sync),
) -> Option<(Reply, SocketAddr)> {
    let mut attempt = 0;
    loop {
        if let Some(max) = max_attempts {
            if attempt >= max {
                return None;
            }
        }
        if let Err(error) = path.socket.send_to(bytes, path.target).await {
            log(format!("DHCP: send to {} failed: {error}", path.target));
        }
        let deadline = tokio::time::Instant::now() + next_wait(attempt);
        let mut buf = vec![0u8; 1500];
        loop {
            match tokio::time::timeout_at(deadline, path.socket.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(error)) => {
                    log(format!("DHCP: receive failed: {error}"));
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
                Ok(Ok((n, from))) => match decode_reply(&buf[..n]) {
                    Ok(reply)
                        if reply.xid == xid
                            && reply.chaddr == mac.octets()
                            && wanted.contains(&reply.message_type) =>
                    {
                        return Some((reply, from));
                    }
                    Ok(_) => {} // another client's exchange on the same segment
                    Err(error) => log(format!(
                        "DHCP: dropped malformed reply from {from}: {error}"
                    )),
                },
            }
        }
        attempt += 1;
    }
}

fn server_hint(from: SocketAddr) -> Ipv4Addr {
    match from {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// Runs DISCOVER → OFFER → REQUEST → ACK until a lease is bound (a NAK starts over).
pub async fn acquire(
    path: &DhcpPath<'_>,
    identity: &DhcpIdentity,
    log: &(dyn Fn(String) + Send + Sync),
) -> Lease {
    loop {
        let xid = fastrand::u32(..);
        log(format!(
            "DHCP: DISCOVER xid 0x{xid:08x} class \"{}\"",
            identity.vendor_class
        ));
        let discover = encode(identity, xid, Request::Discover, path.broadcast_flag);
        let Some((offer, from)) =
            exchange(path, &discover, xid, &identity.mac, &[OFFER], None, log).await
        else {
            continue;
        };
        let server = offer
            .options
            .get(&54)
            .and_then(|v| ipv4_at(v))
            .unwrap_or(server_hint(from));
        log(format!("DHCP: OFFER {} from {server}", offer.yiaddr));
        let request = encode(
            identity,
            xid,
            Request::Select {
                offered: offer.yiaddr,
                server,
            },
            path.broadcast_flag,
        );
        match exchange(
            path,
            &request,
            xid,
            &identity.mac,
            &[ACK, NAK],
            Some(4),
            log,
        )
        .await
        {
            Some((ack, from)) if ack.message_type == ACK => {
                let lease = Lease::from_ack(&ack, server_hint(from));
                log(format!(
                    "DHCP: ACK, bound to {}/{} lease {}s",
                    lease.address,
                    lease.prefix_len(),
                    lease.lease_secs
                ));
                return lease;
            }
            Some(_) => log("DHCP: NAK, starting over".to_owned()),
            None => log("DHCP: no ACK, starting over".to_owned()),
        }
    }
}

/// One renewal (RENEWING state). `None` when the server did not confirm.
pub async fn renew(
    path: &DhcpPath<'_>,
    identity: &DhcpIdentity,
    lease: &Lease,
    log: &(dyn Fn(String) + Send + Sync),
) -> Option<Lease> {
    let xid = fastrand::u32(..);
    log(format!(
        "DHCP: renewing {} with {}",
        lease.address, path.target
    ));
    let request = encode(
        identity,
        xid,
        Request::Renew {
            address: lease.address,
        },
        false,
    );
    match exchange(
        path,
        &request,
        xid,
        &identity.mac,
        &[ACK, NAK],
        Some(4),
        log,
    )
    .await
    {
        Some((ack, from)) if ack.message_type == ACK => {
            let renewed = Lease::from_ack(&ack, server_hint(from));
            log(format!(
                "DHCP: renewed {} lease {}s",
                renewed.address, renewed.lease_secs
            ));
            Some(renewed)
        }
        Some(_) => {
            log("DHCP: NAK on renewal".to_owned());
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Decodable;
    use rstest::rstest;

    fn identity() -> DhcpIdentity {
        DhcpIdentity {
            mac: "00:1f:c1:10:d3:a9".parse().unwrap(),
            vendor_class: "Htek UC924".into(),
            hostname: "UC924-10D3A9".into(),
        }
    }

    #[test]
    fn discover_carries_vendor_class_client_id_hostname_and_parameter_list() {
        let bytes = encode(&identity(), 0x1234, Request::Discover, true);
        let msg = v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(msg.xid(), 0x1234);
        assert!(msg.flags().broadcast());
        assert_eq!(msg.chaddr(), &[0x00, 0x1f, 0xc1, 0x10, 0xd3, 0xa9]);
        let opts = msg.opts();
        assert_eq!(opts.msg_type(), Some(MessageType::Discover));
        assert_eq!(
            opts.get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"Htek UC924".to_vec()))
        );
        assert_eq!(
            opts.get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x00, 0x1f, 0xc1, 0x10, 0xd3, 0xa9
            ]))
        );
        assert_eq!(
            opts.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("UC924-10D3A9".into()))
        );
        let Some(DhcpOption::ParameterRequestList(list)) =
            opts.get(OptionCode::ParameterRequestList)
        else {
            panic!("no option 55")
        };
        let codes: Vec<u8> = list.iter().map(|c| u8::from(*c)).collect();
        assert_eq!(codes, PARAMETER_REQUEST_LIST);
    }

    #[test]
    fn select_names_offer_and_server_and_renew_sets_ciaddr() {
        let offered = Ipv4Addr::new(127, 1, 0, 5);
        let server = Ipv4Addr::new(127, 0, 0, 1);
        let bytes = encode(&identity(), 1, Request::Select { offered, server }, false);
        let msg = v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(offered))
        );
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server))
        );
        let bytes = encode(&identity(), 2, Request::Renew { address: offered }, false);
        let msg = v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(msg.ciaddr(), offered);
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
    }

    fn reply_with(options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0u8; 240];
        bytes[0] = 2;
        bytes[4..8].copy_from_slice(&7u32.to_be_bytes());
        bytes[16..20].copy_from_slice(&[127, 1, 0, 9]);
        bytes[28..34].copy_from_slice(&[0x00, 0x1f, 0xc1, 0x10, 0xd3, 0xa9]);
        bytes[236..240].copy_from_slice(&MAGIC_COOKIE);
        for (code, data) in options {
            bytes.push(*code);
            bytes.push(data.len() as u8);
            bytes.extend_from_slice(data);
        }
        bytes.push(255);
        bytes
    }

    #[test]
    fn reply_with_option_150_as_a_string_still_decodes() {
        let bytes = reply_with(&[
            (53, &[5]),
            (54, &[127, 0, 0, 1]),
            (51, &3600u32.to_be_bytes()),
            (150, b"tftp://127.0.0.1/cfg"),
        ]);
        let reply = decode_reply(&bytes).unwrap();
        assert_eq!(reply.message_type, ACK);
        let lease = Lease::from_ack(&reply, Ipv4Addr::UNSPECIFIED);
        assert_eq!(lease.address, Ipv4Addr::new(127, 1, 0, 9));
        assert_eq!(lease.t1_secs, 1800);
        assert_eq!(lease.option_150(), vec!["tftp://127.0.0.1/cfg".to_owned()]);
    }

    #[rstest]
    #[case(&[198, 18, 0, 1], vec!["198.18.0.1"])]
    #[case(&[198, 18, 0, 1, 198, 18, 0, 2], vec!["198.18.0.1", "198.18.0.2"])]
    #[case(b"198.18.0.1", vec!["198.18.0.1"])]
    #[case(b"http://prov/cfg\0", vec!["http://prov/cfg"])]
    #[case(&[1, 2, 3], vec![])]
    fn option_150_as_list_or_string(#[case] data: &[u8], #[case] expected: Vec<&str>) {
        assert_eq!(option_150_values(data), expected);
    }

    #[rstest]
    #[case(vec![1u8; 100])]
    #[case({ let mut b = reply_with(&[(53, &[2])]); b[0] = 1; b })]
    #[case({ let mut b = reply_with(&[(53, &[2])]); b[236] = 0; b })]
    #[case({ let mut b = reply_with(&[]); b.pop(); b.extend_from_slice(&[66, 40, b'x']); b })]
    #[case(reply_with(&[(66, b"x")]))]
    fn malformed_replies_are_refused(#[case] bytes: Vec<u8>) {
        assert!(decode_reply(&bytes).is_err());
    }
}

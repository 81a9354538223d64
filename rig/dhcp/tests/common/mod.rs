//! A DHCP client built with dhcproto, and a bench context, for the tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use phonerig_core::placeholder::RigEndpoints;
use phonerig_core::{
    Event, Mac, PhoneDirectory, PhoneInfo, Placeholders, ProvisioningTree, ServiceContext, Timeline,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A 127.x.y.1 address no other test process or test in this file uses.
pub fn unique_loopback(test: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 150) as u8,
        ((pid / 150) % 200) as u8 + test,
        1,
    )
}

pub fn phone(name: &str, mac: &str) -> PhoneInfo {
    PhoneInfo {
        name: name.into(),
        model: "htek-uc924".into(),
        mac: mac.parse().unwrap(),
        ext: "4002".into(),
        password: "pw".into(),
        devcode: Some("0012".into()),
    }
}

pub fn context(bind_ip: Ipv4Addr, phones: Vec<PhoneInfo>) -> ServiceContext {
    let rig = RigEndpoints {
        ip: bind_ip.to_string(),
        http_port: 8080,
        https_port: 8443,
        tftp_port: 6969,
        ftp_port: 2121,
        sip_port: 5060,
    };
    let placeholders = Placeholders::new().with_rig(&rig);
    let directory = PhoneDirectory::new(phones);
    ServiceContext {
        timeline: Timeline::in_memory(),
        tree: ProvisioningTree::new(None, Vec::new(), placeholders.clone(), directory.clone()),
        directory,
        bind_ip: IpAddr::V4(bind_ip),
        placeholders,
        shutdown: CancellationToken::new(),
    }
}

pub struct Reply {
    pub message: Message,
    /// Every option as sent (dhcproto's typed decoding stops at option 150 as text).
    pub options: BTreeMap<u8, Vec<u8>>,
}

impl Reply {
    pub fn kind(&self) -> Option<MessageType> {
        self.options
            .get(&53)
            .and_then(|v| v.first())
            .map(|b| MessageType::from(*b))
    }

    pub fn text(&self, code: u8) -> String {
        String::from_utf8(self.options.get(&code).cloned().unwrap_or_default()).unwrap()
    }
}

pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub mac: Mac,
    pub vendor_class: Option<String>,
}

impl Client {
    pub async fn new(local: Ipv4Addr, server: SocketAddr, mac: &str) -> Client {
        let socket = UdpSocket::bind((local, 0)).await.unwrap();
        Client {
            socket,
            server,
            mac: mac.parse().unwrap(),
            vendor_class: None,
        }
    }

    pub fn message(&self, kind: MessageType, xid: u32, extra: Vec<DhcpOption>) -> Message {
        let mut message = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac.octets(),
        );
        let opts = message.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::TFTPServerName,
            OptionCode::TFTPServerAddress,
            OptionCode::Unknown(128),
        ]));
        opts.insert(DhcpOption::Hostname("test-client".into()));
        if let Some(class) = &self.vendor_class {
            opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        }
        for option in extra {
            opts.insert(option);
        }
        message
    }

    pub async fn send(&self, message: &Message) {
        self.socket
            .send_to(&message.to_vec().unwrap(), self.server)
            .await
            .unwrap();
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.unwrap();
    }

    /// The next reply, or None after `wait`.
    pub async fn recv_within(&self, wait: Duration) -> Option<Reply> {
        let mut buffer = vec![0u8; 2048];
        let (len, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .unwrap();
        let bytes = &buffer[..len];
        Some(Reply {
            message: Message::from_bytes(bytes).unwrap(),
            options: phonerig_dhcp::wire::raw_options(bytes).unwrap(),
        })
    }

    pub async fn recv(&self) -> Reply {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("no reply from the server within 5s")
    }

    /// DISCOVER → OFFER → REQUEST → ACK; returns (offer, ack).
    pub async fn dora(&self, xid: u32) -> (Reply, Reply) {
        self.send(&self.message(MessageType::Discover, xid, vec![]))
            .await;
        let offer = self.recv().await;
        assert_eq!(offer.kind(), Some(MessageType::Offer));
        let server_id = Ipv4Addr::from(<[u8; 4]>::try_from(offer.options[&54].as_slice()).unwrap());
        let request = self.message(
            MessageType::Request,
            xid,
            vec![
                DhcpOption::RequestedIpAddress(offer.message.yiaddr()),
                DhcpOption::ServerIdentifier(server_id),
            ],
        );
        self.send(&request).await;
        let ack = self.recv().await;
        (offer, ack)
    }
}

/// Waits until the timeline holds `count` events of `kind`.
pub async fn wait_for(timeline: &Timeline, kind: &str, count: usize) -> Vec<Arc<Event>> {
    for _ in 0..500 {
        let found: Vec<Arc<Event>> = timeline
            .snapshot()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect();
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no {count} `{kind}` events; timeline: {:#?}",
        timeline
            .snapshot()
            .iter()
            .map(|e| e.brief())
            .collect::<Vec<_>>()
    );
}

pub fn events(timeline: &Timeline, kind: &str) -> Vec<Arc<Event>> {
    timeline
        .snapshot()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

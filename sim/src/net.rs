//! Where a phone's network interface is: on loopback, or a macvlan with the
//! phone's MAC inside a network namespace. Every socket of a session is made
//! by the session itself, which in a namespace runs on a thread that entered
//! that namespace (see `phone.rs`), so the plain tokio constructors create
//! them on the phone's side of the segment.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use phonerig_core::netns::ip;
use phonerig_core::Mac;
use tokio::net::UdpSocket;

use crate::dhcp::Lease;

#[derive(Debug, Clone)]
pub(crate) enum Attachment {
    Loopback {
        dhcp_server: SocketAddr,
        services: crate::config::ServicePorts,
    },
    Netns {
        netns: String,
        interface: String,
    },
}

/// `vp` + the last four MAC octets: unique per phone, within the 15-character limit.
pub(crate) fn macvlan_name(mac: &Mac) -> String {
    format!("vp{}", &mac.lower()[4..])
}

impl Attachment {
    /// Creates the phone's macvlan (netns placement); nothing on loopback.
    pub(crate) fn create(&self, parent: Option<&str>, mac: &Mac) -> io::Result<()> {
        if let (Attachment::Netns { netns, interface }, Some(parent)) = (self, parent) {
            let _ = ip(&["-n", netns, "link", "del", interface]);
            ip(&[
                "-n",
                netns,
                "link",
                "add",
                interface,
                "link",
                parent,
                "address",
                &mac.colon(),
                "type",
                "macvlan",
                "mode",
                "bridge",
            ])?;
            ip(&["-n", netns, "link", "set", interface, "up"])?;
        }
        Ok(())
    }

    pub(crate) fn remove(&self) {
        if let Attachment::Netns { netns, interface } = self {
            let _ = ip(&["-n", netns, "link", "del", interface]);
        }
    }

    pub(crate) fn netns(&self) -> Option<&str> {
        match self {
            Attachment::Netns { netns, .. } => Some(netns),
            Attachment::Loopback { .. } => None,
        }
    }

    /// The socket DISCOVER/REQUEST leave from.
    pub(crate) fn dhcp_socket(&self) -> io::Result<UdpSocket> {
        let socket = match self {
            Attachment::Loopback { .. } => std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            Attachment::Netns { interface, .. } => {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                socket.set_reuse_address(true)?;
                socket.set_broadcast(true)?;
                socket.bind_device(Some(interface.as_bytes()))?;
                socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
                socket.into()
            }
        };
        socket.set_nonblocking(true)?;
        UdpSocket::from_std(socket)
    }

    pub(crate) fn dhcp_target(&self) -> SocketAddr {
        match self {
            Attachment::Loopback { dhcp_server, .. } => *dhcp_server,
            Attachment::Netns { .. } => SocketAddr::from((Ipv4Addr::BROADCAST, 67)),
        }
    }

    /// Renewals go unicast to the server (loopback: the configured server address).
    pub(crate) fn renew_target(&self, lease: &Lease) -> SocketAddr {
        match self {
            Attachment::Loopback { dhcp_server, .. } => *dhcp_server,
            Attachment::Netns { .. } => SocketAddr::from((lease.server, 67)),
        }
    }

    /// Ports of the file services when a URL names none.
    pub(crate) fn service_ports(&self) -> crate::config::ServicePorts {
        match self {
            Attachment::Loopback { services, .. } => *services,
            Attachment::Netns { .. } => crate::config::ServicePorts::default(),
        }
    }

    /// A client without an address asks for broadcast replies on a real segment.
    pub(crate) fn broadcast_flag(&self) -> bool {
        matches!(self, Attachment::Netns { .. })
    }

    /// Puts the leased address on the interface (netns); loopback needs nothing.
    pub(crate) fn configure(&self, lease: &Lease) -> io::Result<()> {
        if let Attachment::Netns { netns, interface } = self {
            let _ = ip(&["-n", netns, "addr", "flush", "dev", interface]);
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{}/{}", lease.address, lease.prefix_len()),
                "dev",
                interface,
            ])?;
        }
        Ok(())
    }

    pub(crate) fn deconfigure(&self) {
        if let Attachment::Netns { netns, interface } = self {
            let _ = ip(&["-n", netns, "addr", "flush", "dev", interface]);
        }
    }
}

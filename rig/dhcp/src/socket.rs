//! The server's UDP socket, opened where the lab says and nowhere else.
//!
//! DHCP is the one service that cannot bind its own address: DISCOVERs come
//! from 0.0.0.0 to 255.255.255.255, which only a socket bound to 0.0.0.0
//! receives. Such a socket must therefore be pinned to the lab interface with
//! SO_BINDTODEVICE, or it would answer on every interface of the machine.
//! Without an interface the socket binds the rig's own (loopback) address and
//! broadcast replies are refused.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{DhcpConfig, ReplyMode};

/// Where the socket binds: the wildcard on a named interface, else the rig's address.
pub fn bind_addr(config: &DhcpConfig, server_ip: Ipv4Addr) -> SocketAddrV4 {
    match config.interface {
        Some(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port),
        None => SocketAddrV4::new(server_ip, config.port),
    }
}

fn open_here(
    interface: Option<String>,
    broadcast: bool,
    addr: SocketAddrV4,
) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(interface) = &interface {
        socket
            .bind_device(Some(interface.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("SO_BINDTODEVICE {interface}: {e}")))?;
    }
    socket.set_broadcast(broadcast)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&SocketAddr::V4(addr).into())
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    Ok(socket.into())
}

/// On a NIC, a second socket on the client port (68) pinned to the same
/// interface: other servers' OFFERs and ACKs are broadcast to the phones
/// there, never to port 67, so this is where a rogue server shows itself.
/// `None` on loopback, where no other server can answer.
pub fn open_watcher(config: &DhcpConfig) -> Option<io::Result<UdpSocket>> {
    let interface = config
        .interface
        .clone()
        .filter(|_| config.reply_mode == ReplyMode::Broadcast)?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.client_port);
    Some(match &config.netns {
        Some(ns) => {
            phonerig_core::netns::in_netns(ns, move || open_here(Some(interface), false, addr))
        }
        None => open_here(Some(interface), false, addr),
    })
}

/// Opens the socket, inside `config.netns` when set.
pub fn open(config: &DhcpConfig, server_ip: Ipv4Addr) -> io::Result<UdpSocket> {
    if config.reply_mode == ReplyMode::Broadcast && config.interface.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "broadcast replies need an interface to pin the socket to (SO_BINDTODEVICE); refusing to broadcast on whatever interface routing picks",
        ));
    }
    let addr = bind_addr(config, server_ip);
    let interface = config.interface.clone();
    let broadcast = config.reply_mode == ReplyMode::Broadcast;
    match &config.netns {
        Some(ns) => {
            phonerig_core::netns::in_netns(ns, move || open_here(interface, broadcast, addr))
        }
        None => open_here(interface, broadcast, addr),
    }
}

//! One transfer's own socket, talking to one peer (its transfer ID, RFC 1350
//! section 4). Packets from anyone else get error 5 and leave the transfer
//! alone; garbage from the peer itself is reported and otherwise ignored.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use phonerig_core::event::NewEvent;
use phonerig_core::{Source, Timeline};
use tokio::net::UdpSocket;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::packet::{encode_error, error_code, Packet};

/// A receive buffer that holds any UDP datagram, so an oversize one is seen
/// as oversize instead of silently cut to fit.
pub const RECV_BUFFER: usize = 65_536;

pub enum Received {
    Packet(Packet),
    /// Nothing usable from the peer before the deadline.
    TimedOut,
    /// The rig is stopping.
    Shutdown,
}

pub struct Channel {
    socket: UdpSocket,
    peer: SocketAddr,
    timeline: Timeline,
    /// Kept for the whole transfer: a lock-step transfer waits once per
    /// block, and creating a timer and a cancellation waiter for every wait
    /// (then dropping both) cost more than the wait's own bookkeeping. A
    /// timer moved to a later deadline is updated in place by tokio.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    timer: Pin<Box<Sleep>>,
    token: CancellationToken,
    buffer: Vec<u8>,
}

impl Channel {
    pub fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        timeline: Timeline,
        shutdown: CancellationToken,
    ) -> Channel {
        Channel {
            socket,
            peer,
            timeline,
            shutdown: Box::pin(shutdown.clone().cancelled_owned()),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            token: shutdown,
            buffer: vec![0; RECV_BUFFER],
        }
    }

    /// The same channel (socket, peer, shutdown) registered with the runtime
    /// of the calling thread, for a transfer that moves to a thread of its own.
    pub fn into_current_runtime(self) -> io::Result<Channel> {
        let socket = UdpSocket::from_std(self.socket.into_std()?)?;
        Ok(Channel::new(socket, self.peer, self.timeline, self.token))
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, self.peer).await.map(|_| ())
    }

    /// Sends an error packet; failures are not interesting, the transfer ends anyway.
    pub async fn send_error(&self, code: u16, message: &str) {
        if let Err(error) = self.send(&encode_error(code, message)).await {
            tracing::debug!(peer = %self.peer, %error, "could not send TFTP error");
        }
    }

    /// Waits for the next well-formed packet from the peer until `deadline`.
    /// The deadline does not move for ignored packets, so a stream of junk
    /// cannot keep a transfer alive.
    pub async fn recv_until(&mut self, deadline: Instant) -> Received {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            let received = tokio::select! {
                // Shutdown first (it wins over a waiting packet, as before the
                // futures were kept); then the socket, so a packet that is
                // already there is taken without polling the timer.
                biased;
                _ = self.shutdown.as_mut() => return Received::Shutdown,
                received = self.socket.recv_from(&mut self.buffer) => received,
                _ = self.timer.as_mut() => return Received::TimedOut,
            };
            let (len, from) = match received {
                Ok(pair) => pair,
                // Linux reports an ICMP port-unreachable from an earlier send
                // here; the peer may still be there, so keep listening.
                Err(error) => {
                    tracing::debug!(peer = %self.peer, %error, "receive error on transfer socket");
                    continue;
                }
            };
            if from != self.peer {
                let reply = encode_error(error_code::UNKNOWN_TRANSFER_ID, "unknown transfer ID");
                if let Err(error) = self.socket.send_to(&reply, from).await {
                    tracing::debug!(%from, %error, "could not answer a foreign transfer ID");
                }
                continue;
            }
            match Packet::parse(&self.buffer[..len]) {
                Ok(packet) => return Received::Packet(packet),
                Err(error) => {
                    self.timeline.publish(
                        NewEvent::new(Source::Tftp, "tftp.malformed")
                            .field("peer", from.to_string())
                            .field("error", error.to_string()),
                    );
                }
            }
        }
    }
}

/// A UDP socket bound to `addr`, inside network namespace `netns` when given.
pub async fn bind_udp(addr: SocketAddr, netns: Option<&str>) -> io::Result<UdpSocket> {
    let socket = match netns {
        None => std::net::UdpSocket::bind(addr)?,
        Some(name) => {
            let name = name.to_owned();
            tokio::task::spawn_blocking(move || {
                phonerig_core::netns::in_netns(&name, move || std::net::UdpSocket::bind(addr))
            })
            .await
            .map_err(io::Error::other)??
        }
    };
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

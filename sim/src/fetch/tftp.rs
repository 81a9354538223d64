//! TFTP read client: RFC 1350 with the option extension (RFC 2347), block
//! size (RFC 2348) and transfer size (RFC 2349). Octet mode only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{FetchError, Fetcher, ServerUrl};

/// What the phone asks for; 1428 fits an Ethernet frame with IP/UDP/TFTP headers.
pub const REQUESTED_BLKSIZE: usize = 1428;
const RETRIES: u32 = 5;
const WAIT: Duration = Duration::from_secs(1);

pub fn read_request(file: &str) -> Vec<u8> {
    let mut packet = vec![0, 1];
    for part in [
        file,
        "octet",
        "blksize",
        &REQUESTED_BLKSIZE.to_string(),
        "tsize",
        "0",
    ] {
        packet.extend_from_slice(part.as_bytes());
        packet.push(0);
    }
    packet
}

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

fn error_packet(code: u16, text: &str) -> Vec<u8> {
    let mut packet = vec![0, 5];
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend_from_slice(text.as_bytes());
    packet.push(0);
    packet
}

/// A packet from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Data { block: u16, data: &'a [u8] },
    OptionAck(Vec<(String, String)>),
    Error { code: u16, message: String },
}

pub fn decode(bytes: &[u8]) -> Result<Packet<'_>, String> {
    if bytes.len() < 2 {
        return Err("packet shorter than an opcode".into());
    }
    let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
    match opcode {
        3 if bytes.len() >= 4 => Ok(Packet::Data {
            block: u16::from_be_bytes([bytes[2], bytes[3]]),
            data: &bytes[4..],
        }),
        5 if bytes.len() >= 4 => {
            let code = u16::from_be_bytes([bytes[2], bytes[3]]);
            let message =
                String::from_utf8_lossy(bytes[4..].split(|b| *b == 0).next().unwrap_or_default())
                    .into_owned();
            Ok(Packet::Error { code, message })
        }
        6 => {
            let body = bytes[2..]
                .strip_suffix(&[0])
                .ok_or("OACK not NUL-terminated")?;
            let parts: Vec<String> = body
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).to_ascii_lowercase())
                .collect();
            if !parts.len().is_multiple_of(2) {
                return Err("OACK with an option but no value".into());
            }
            Ok(Packet::OptionAck(
                parts
                    .chunks(2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect(),
            ))
        }
        other => Err(format!("unexpected opcode {other}")),
    }
}

pub async fn get(fetcher: &Fetcher, url: &ServerUrl) -> Result<Vec<u8>, FetchError> {
    let host = url.url().host_str().unwrap_or_default();
    let port = url.url().port().unwrap_or(fetcher.ports.tftp);
    let server: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| FetchError::Failed(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| FetchError::Failed(format!("{host} has no address")))?;
    let socket = UdpSocket::bind((fetcher.local_ip, 0))
        .await
        .map_err(|e| FetchError::Failed(format!("bind: {e}")))?;
    let request = read_request(&url.path());
    transfer(&socket, server, &request).await
}

async fn transfer(
    socket: &UdpSocket,
    server: SocketAddr,
    request: &[u8],
) -> Result<Vec<u8>, FetchError> {
    let mut blksize = 512usize;
    let mut tsize: Option<u64> = None;
    let mut peer: Option<SocketAddr> = None;
    let mut expected: u16 = 1;
    let mut data = Vec::new();
    let mut last_sent: Vec<u8> = request.to_vec();
    let mut last_target = server;
    let mut buf = vec![0u8; 65_536];
    let mut retries = 0;
    socket
        .send_to(&last_sent, last_target)
        .await
        .map_err(|e| FetchError::Failed(format!("send: {e}")))?;
    loop {
        let (n, from) = match tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await {
            Err(_) => {
                retries += 1;
                if retries > RETRIES {
                    return Err(FetchError::Failed(format!(
                        "no answer from {server} after {RETRIES} retries"
                    )));
                }
                socket
                    .send_to(&last_sent, last_target)
                    .await
                    .map_err(|e| FetchError::Failed(format!("send: {e}")))?;
                continue;
            }
            Ok(Err(e)) => return Err(FetchError::Failed(format!("receive: {e}"))),
            Ok(Ok(got)) => got,
        };
        // The server answers from a new port (its transfer ID); lock onto it.
        match peer {
            None if from.ip() == server.ip() => peer = Some(from),
            Some(p) if p == from => {}
            _ => {
                let _ = socket
                    .send_to(&error_packet(5, "Unknown transfer ID"), from)
                    .await;
                continue;
            }
        }
        retries = 0;
        match decode(&buf[..n]) {
            Err(error) => {
                let _ = socket.send_to(&error_packet(4, &error), from).await;
                return Err(FetchError::Failed(format!(
                    "malformed packet from server: {error}"
                )));
            }
            Ok(Packet::Error { code, message }) => {
                return Err(if code == 1 {
                    FetchError::NotFound(format!("TFTP error 1: {message}"))
                } else {
                    FetchError::Failed(format!("TFTP error {code}: {message}"))
                });
            }
            Ok(Packet::OptionAck(options)) if expected == 1 && data.is_empty() => {
                for (name, value) in options {
                    match name.as_str() {
                        "blksize" => match value.parse::<usize>() {
                            Ok(size) if (8..=REQUESTED_BLKSIZE).contains(&size) => blksize = size,
                            _ => {
                                let _ = socket.send_to(&error_packet(8, "bad blksize"), from).await;
                                return Err(FetchError::Failed(format!(
                                    "server agreed to blksize {value}"
                                )));
                            }
                        },
                        "tsize" => tsize = value.parse().ok(),
                        _ => {}
                    }
                }
                last_sent = ack(0).to_vec();
                last_target = from;
                socket
                    .send_to(&last_sent, from)
                    .await
                    .map_err(|e| FetchError::Failed(format!("send: {e}")))?;
            }
            Ok(Packet::OptionAck(_)) => {}
            Ok(Packet::Data { block, data: chunk }) => {
                if block == expected {
                    if chunk.len() > blksize {
                        return Err(FetchError::Failed(format!(
                            "block {block} has {} bytes, blksize {blksize}",
                            chunk.len()
                        )));
                    }
                    data.extend_from_slice(chunk);
                    last_sent = ack(block).to_vec();
                    last_target = from;
                    socket
                        .send_to(&last_sent, from)
                        .await
                        .map_err(|e| FetchError::Failed(format!("send: {e}")))?;
                    expected = expected.wrapping_add(1);
                    if chunk.len() < blksize {
                        break;
                    }
                } else if block == expected.wrapping_sub(1) {
                    // Our ACK was lost: acknowledge again.
                    socket
                        .send_to(&ack(block), from)
                        .await
                        .map_err(|e| FetchError::Failed(format!("send: {e}")))?;
                }
            }
        }
    }
    if let Some(size) = tsize {
        if size != data.len() as u64 {
            return Err(FetchError::Truncated {
                got: data.len() as u64,
                expected: size,
            });
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_asks_octet_blksize_and_tsize() {
        assert_eq!(
            read_request("cfg0012.xml"),
            b"\0\x01cfg0012.xml\0octet\0blksize\x001428\0tsize\x000\0".to_vec()
        );
    }

    #[test]
    fn oack_and_error_decode() {
        assert_eq!(
            decode(b"\0\x06blksize\x001428\0tsize\x0042\0").unwrap(),
            Packet::OptionAck(vec![
                ("blksize".into(), "1428".into()),
                ("tsize".into(), "42".into())
            ])
        );
        assert_eq!(
            decode(b"\0\x05\0\x01File not found\0").unwrap(),
            Packet::Error {
                code: 1,
                message: "File not found".into()
            }
        );
        assert!(decode(b"\0\x06blksize\0").is_err());
        assert!(decode(b"\0").is_err());
    }

    /// A server that ignores options (plain RFC 1350) sends 512-byte blocks; a
    /// file of exactly 1024 bytes ends with an empty block.
    #[tokio::test]
    async fn plain_rfc1350_server_with_exact_multiple_of_512() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let content: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let expected = content.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 600];
            let (_, client) = server.recv_from(&mut buf).await.unwrap();
            let transfer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for (i, chunk) in content
                .chunks(512)
                .chain(std::iter::once(&[][..]))
                .enumerate()
            {
                let mut packet = vec![0, 3];
                packet.extend_from_slice(&((i + 1) as u16).to_be_bytes());
                packet.extend_from_slice(chunk);
                transfer.send_to(&packet, client).await.unwrap();
                transfer.recv_from(&mut buf).await.unwrap();
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let got = transfer(&client, server_addr, &read_request("f"))
            .await
            .unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn tsize_mismatch_is_truncation() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 600];
            let (_, client) = server.recv_from(&mut buf).await.unwrap();
            let transfer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            transfer
                .send_to(b"\0\x06blksize\x00512\0tsize\x00900\0", client)
                .await
                .unwrap();
            transfer.recv_from(&mut buf).await.unwrap();
            transfer
                .send_to(b"\0\x03\0\x01short", client)
                .await
                .unwrap();
            transfer.recv_from(&mut buf).await.unwrap();
        });
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let error = transfer(&client, server_addr, &read_request("f"))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            FetchError::Truncated {
                got: 5,
                expected: 900
            }
        );
    }
}

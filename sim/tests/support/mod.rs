//! Small hand-written servers for the virtual phones' end-to-end tests: a
//! DHCP server that answers to the source (loopback), an HTTP file server, a
//! TFTP server, a SIP registrar that can also send NOTIFY, and a console reader.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, OptionCode};
use dhcproto::Decodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixStream};

pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut check: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- DHCP

#[derive(Debug, Clone)]
pub struct DhcpSeen {
    pub mac: [u8; 6],
    pub message_type: u8,
    pub vendor_class: Option<String>,
    pub params: Vec<u8>,
    pub hostname: Option<String>,
    pub client_id: Option<Vec<u8>>,
    pub peer: SocketAddr,
}

/// Options as (code, bytes), appended to every OFFER and ACK.
pub type RawOptions = Vec<(u8, Vec<u8>)>;

pub struct TestDhcp {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<DhcpSeen>>>,
    pub options: Arc<Mutex<RawOptions>>,
}

impl TestDhcp {
    /// Serves on `server_ip`, leasing `net.x.y` addresses (`net` = first two octets).
    pub async fn start(
        server_ip: Ipv4Addr,
        options: Vec<(u8, Vec<u8>)>,
        lease_secs: u32,
    ) -> TestDhcp {
        let socket = UdpSocket::bind((server_ip, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let options = Arc::new(Mutex::new(options));
        let (seen2, options2) = (seen.clone(), options.clone());
        tokio::spawn(async move {
            let mut leases: HashMap<[u8; 6], Ipv4Addr> = HashMap::new();
            let [a, b, _, _] = server_ip.octets();
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(msg) = v4::Message::decode(&mut dhcproto::Decoder::new(&buf[..n])) else {
                    continue;
                };
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&msg.chaddr()[..6]);
                let opts = msg.opts();
                let message_type = opts.msg_type().map(u8::from).unwrap_or(0);
                let text = |code| match opts.get(code) {
                    Some(DhcpOption::ClassIdentifier(v)) => {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    Some(DhcpOption::Hostname(h)) => Some(h.clone()),
                    _ => None,
                };
                let params = match opts.get(OptionCode::ParameterRequestList) {
                    Some(DhcpOption::ParameterRequestList(list)) => {
                        list.iter().map(|c| u8::from(*c)).collect()
                    }
                    _ => Vec::new(),
                };
                let client_id = match opts.get(OptionCode::ClientIdentifier) {
                    Some(DhcpOption::ClientIdentifier(v)) => Some(v.clone()),
                    _ => None,
                };
                seen2.lock().unwrap().push(DhcpSeen {
                    mac,
                    message_type,
                    vendor_class: text(OptionCode::ClassIdentifier),
                    params,
                    hostname: text(OptionCode::Hostname),
                    client_id,
                    peer,
                });
                let next = leases.len() as u32;
                let address = *leases.entry(mac).or_insert_with(|| {
                    Ipv4Addr::new(a, b, (next / 200 + 1) as u8, (next % 200 + 10) as u8)
                });
                let reply_type = match message_type {
                    1 => 2,
                    3 => 5,
                    _ => continue,
                };
                let mut reply = vec![0u8; 240];
                reply[0] = 2;
                reply[1] = 1;
                reply[2] = 6;
                reply[4..8].copy_from_slice(&msg.xid().to_be_bytes());
                reply[16..20].copy_from_slice(&address.octets());
                reply[28..34].copy_from_slice(&mac);
                reply[236..240].copy_from_slice(&[99, 130, 83, 99]);
                let mut push = |code: u8, data: &[u8]| {
                    reply.push(code);
                    reply.push(data.len() as u8);
                    reply.extend_from_slice(data);
                };
                push(53, &[reply_type]);
                push(54, &server_ip.octets());
                push(51, &lease_secs.to_be_bytes());
                push(1, &[255, 255, 0, 0]);
                for (code, data) in options2.lock().unwrap().iter() {
                    push(*code, data);
                }
                reply.push(255);
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        TestDhcp {
            addr,
            seen,
            options,
        }
    }

    pub fn count(&self, mac: [u8; 6], message_type: u8) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.mac == mac && s.message_type == message_type)
            .count()
    }
}

// ---------------------------------------------------------------- HTTP

#[derive(Debug, Clone)]
pub struct HttpSeen {
    pub peer: IpAddr,
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

#[derive(Clone)]
pub struct Served {
    pub body: Vec<u8>,
    /// Announce more bytes than sent, then close (a truncated download).
    pub announce: Option<usize>,
}

pub struct TestHttp {
    pub addr: SocketAddr,
    pub files: Arc<Mutex<HashMap<String, Served>>>,
    pub seen: Arc<Mutex<Vec<HttpSeen>>>,
}

impl TestHttp {
    pub async fn start(ip: Ipv4Addr) -> TestHttp {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (files2, seen2) = (files.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else {
                    return;
                };
                let (files, seen) = (files2.clone(), seen2.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let path = target
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .trim_start_matches('/')
                        .to_owned();
                    let user_agent = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("User-Agent: ")
                                .or_else(|| l.strip_prefix("user-agent: "))
                        })
                        .unwrap_or("")
                        .to_owned();
                    let served = files.lock().unwrap().get(&path).cloned();
                    let status = if served.is_some() { 200 } else { 404 };
                    seen.lock().unwrap().push(HttpSeen {
                        peer: peer.ip(),
                        path: target.trim_start_matches('/').to_owned(),
                        status,
                        user_agent,
                    });
                    let response = match served {
                        Some(s) => {
                            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", s.announce.unwrap_or(s.body.len())).into_bytes();
                            r.extend_from_slice(&s.body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        TestHttp { addr, files, seen }
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            Served {
                body: body.into(),
                announce: None,
            },
        );
    }

    pub fn put_truncated(&self, path: &str, body: impl Into<Vec<u8>>, announce: usize) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            Served {
                body: body.into(),
                announce: Some(announce),
            },
        );
    }

    pub fn paths_from(&self, peer: IpAddr) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.peer == peer)
            .map(|s| s.path.clone())
            .collect()
    }

    pub fn url(&self, dir: &str) -> String {
        format!("http://{}/{dir}", self.addr)
    }
}

// ---------------------------------------------------------------- TFTP

pub struct TestTftp {
    pub addr: SocketAddr,
    pub files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub seen: Arc<Mutex<Vec<(IpAddr, String)>>>,
}

impl TestTftp {
    /// Plain RFC 1350 (options ignored), 512-byte blocks, one transfer at a time.
    pub async fn start(ip: Ipv4Addr) -> TestTftp {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (files2, seen2) = (files.clone(), seen.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            loop {
                let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if n < 4 || buf[1] != 1 {
                    continue;
                }
                let name = String::from_utf8_lossy(
                    buf[2..n].split(|b| *b == 0).next().unwrap_or_default(),
                )
                .into_owned();
                seen2.lock().unwrap().push((client.ip(), name.clone()));
                let content = files2.lock().unwrap().get(&name).cloned();
                tokio::spawn(async move {
                    let transfer = UdpSocket::bind((ip, 0)).await.unwrap();
                    let Some(content) = content else {
                        let _ = transfer
                            .send_to(b"\0\x05\0\x01File not found\0", client)
                            .await;
                        return;
                    };
                    let mut ack = [0u8; 16];
                    let blocks: Vec<&[u8]> = content.chunks(512).collect();
                    let count = content.len() / 512 + 1;
                    for i in 0..count {
                        let mut packet = vec![0, 3];
                        packet.extend_from_slice(&((i + 1) as u16).to_be_bytes());
                        packet.extend_from_slice(blocks.get(i).copied().unwrap_or(&[]));
                        let _ = transfer.send_to(&packet, client).await;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            transfer.recv_from(&mut ack),
                        )
                        .await;
                    }
                });
            }
        });
        TestTftp { addr, files, seen }
    }

    pub fn put(&self, name: &str, body: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .unwrap()
            .insert(name.to_owned(), body.into());
    }
}

// ---------------------------------------------------------------- SIP

#[derive(Debug, Clone)]
pub struct SipSeen {
    pub peer: SocketAddr,
    pub method: String,
    pub user_agent: String,
    pub expires: Option<u32>,
    pub from: String,
}

pub struct TestSip {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SipSeen>>>,
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl TestSip {
    /// A registrar that accepts every REGISTER without a challenge.
    pub async fn start(ip: Ipv4Addr) -> TestSip {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let method = text.split_whitespace().next().unwrap_or("").to_owned();
                if method.starts_with("SIP/") {
                    continue;
                }
                let expires = header(&text, "Expires")
                    .and_then(|v| v.parse().ok())
                    .or_else(|| {
                        header(&text, "Contact")
                            .and_then(|c| c.split("expires=").nth(1))
                            .and_then(|v| v.split(';').next())
                            .and_then(|v| v.trim().parse().ok())
                    });
                seen2.lock().unwrap().push(SipSeen {
                    peer,
                    method: method.clone(),
                    user_agent: header(&text, "User-Agent").unwrap_or("").to_owned(),
                    expires,
                    from: header(&text, "From").unwrap_or("").to_owned(),
                });
                let mut response = String::from("SIP/2.0 200 OK\r\n");
                for name in ["Via", "From", "Call-ID", "CSeq"] {
                    for line in text.lines().filter(|l| {
                        l.split(':')
                            .next()
                            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
                    }) {
                        response.push_str(line.trim_end());
                        response.push_str("\r\n");
                    }
                }
                if let Some(to) = header(&text, "To") {
                    let tag = if to.contains("tag=") {
                        String::new()
                    } else {
                        ";tag=rig1".to_owned()
                    };
                    response.push_str(&format!("To: {to}{tag}\r\n"));
                }
                if method == "REGISTER" {
                    if let Some(contact) = header(&text, "Contact") {
                        response.push_str(&format!("Contact: {contact}\r\n"));
                    }
                    response.push_str(&format!("Expires: {}\r\n", expires.unwrap_or(3600)));
                }
                response.push_str("Content-Length: 0\r\n\r\n");
                let _ = socket.send_to(response.as_bytes(), peer).await;
            }
        });
        TestSip { addr, seen }
    }

    pub fn registers_from(&self, ip: IpAddr) -> Vec<SipSeen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.peer.ip() == ip && s.method == "REGISTER")
            .cloned()
            .collect()
    }

    /// Sends an out-of-dialog NOTIFY to `phone` and returns the final status code.
    pub async fn notify(&self, phone: SocketAddr, event: &str) -> Option<u16> {
        let socket = UdpSocket::bind((self.addr.ip(), 0)).await.unwrap();
        let local = socket.local_addr().unwrap();
        let call_id = format!("notify-{}", fastrand::u64(..));
        let message = format!(
            "NOTIFY sip:phone@{phone} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:prov@{local}>;tag=n1\r\nTo: <sip:phone@{phone}>\r\nCall-ID: {call_id}\r\nCSeq: 1 NOTIFY\r\nContact: <sip:prov@{local}>\r\nEvent: {event}\r\nSubscription-State: terminated\r\nContent-Length: 0\r\n\r\n",
            fastrand::u32(..)
        );
        let mut buf = vec![0u8; 4096];
        for _ in 0..6 {
            socket.send_to(message.as_bytes(), phone).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Ok((n, _))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            {
                let text = String::from_utf8_lossy(&buf[..n]);
                if header(&text, "Call-ID") == Some(call_id.as_str()) {
                    let code: u16 = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    if code >= 200 {
                        return Some(code);
                    }
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------- console and control

/// Reads a phone's console (the pty slave) on a thread into a shared text.
pub struct ConsoleReader {
    pub text: Arc<Mutex<String>>,
}

impl ConsoleReader {
    pub fn open(path: &str) -> ConsoleReader {
        let mut file = std::fs::File::open(path).unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ConsoleReader { text }
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.text.lock().unwrap().contains(needle)
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text.lock().unwrap().matches(needle).count()
    }

    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        let text = self.text.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        while !text.lock().unwrap().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "console never printed {needle:?}; it printed:\n{}",
                    text.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn control(sim_dir: &Path, phone: &str, command: &str) -> String {
    let mut stream = UnixStream::connect(sim_dir.join(format!("{phone}.sock")))
        .await
        .unwrap();
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

pub fn flash(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The phone's leased address from STATE?.
pub async fn address(sim_dir: &Path, phone: &str) -> Option<IpAddr> {
    let answer = control(sim_dir, phone, "STATE?").await;
    let json: serde_json::Value = serde_json::from_str(answer.strip_prefix("OK ")?).ok()?;
    json["address"].as_str()?.parse().ok()
}

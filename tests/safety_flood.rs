//! Resource bounds under a flood, loopback only (127.170.x, this file's
//! own), bounded loops: `rig serve` takes junk datagrams on its DHCP, TFTP
//! and SIP ports and more TCP connections than HTTP (512) and FTP (256)
//! serve at once. The surplus is turned away and reported
//! (`http.overloaded`, `ftp.overloaded`, `dhcp.flood`, `tftp.flood`,
//! `sip.flood`), other services keep serving while the connections are held,
//! a DISCOVER, an RRQ and a REGISTER are answered after the flood, everything
//! serves again once the connections close, and neither the rig's memory nor
//! its events grow with the flood.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_cli::{events, loopback_lab, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");
const OCTET: u8 = 170;
const GOOD: &str = "HELLO-FLOOD-153";

fn lab_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, OCTET, 0, 1)
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn wait_for_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tftp_get(name: &str) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 8), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    socket.send_to(&rrq, (lab_ip(), 6969)).unwrap();
    let mut buf = [0u8; 1024];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    (buf[1] == 3).then(|| buf[4..len].to_vec())
}

fn http_get(path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((lab_ip(), 8080)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: rig\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn ftp_greeting() -> String {
    let mut stream = TcpStream::connect((lab_ip(), 2121)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Sends `request` (a SIP request naming `call_id`) over UDP as a phone's
/// transaction layer would: retransmitted every 500 ms (RFC 3261 timer E/A)
/// for up to 10 s; whether any response came. A single datagram sent while
/// the service's queue is full of junk is lost like any UDP datagram.
fn sip_answered(method: &str, call_id: &str) -> bool {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 7), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let request = format!(
        "{method} sip:{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:4002@{ip}>;tag=f1\r\nTo: <sip:4002@{ip}>\r\nCall-ID: {call_id}@{ip}\r\nCSeq: 1 {method}\r\nContact: <sip:4002@{local}>\r\nContent-Length: 0\r\n\r\n",
        ip = lab_ip()
    );
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        socket
            .send_to(request.as_bytes(), (lab_ip(), 5060))
            .unwrap();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains(call_id) {
                return true;
            }
        }
    }
    false
}

/// A new transaction each time: a request repeating an earlier one's
/// branch is a retransmission, answered to where the first came from.
fn sip_options_answered() -> bool {
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sip_answered("OPTIONS", &format!("flood-options-{n}"))
}

/// A DHCPDISCOVER (RFC 2131 §2, option 53 = 1) from a MAC of no lab phone,
/// retransmitted every 500 ms for up to 10 s; whether an OFFER came back
/// (on loopback the rig answers the source address).
fn dhcp_discover_answered() -> bool {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 6), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut discover = vec![0u8; 240];
    discover[..3].copy_from_slice(&[1, 1, 6]);
    discover[4..8].copy_from_slice(&0x170f_100du32.to_be_bytes());
    discover[28..34].copy_from_slice(&[0x02, 0, 0, 0x17, 0, 0x01]);
    discover[236..240].copy_from_slice(&[99, 130, 83, 99]);
    discover.extend_from_slice(&[53, 1, 1, 255]);
    let mut buf = [0u8; 1500];
    for _ in 0..20 {
        socket.send_to(&discover, (lab_ip(), 6767)).unwrap();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            if n >= 240 && buf[0] == 2 && buf[4..8] == discover[4..8] {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_flood_is_bounded_reported_and_starves_no_other_service() {
    let ws = Workspace::new(&loopback_lab(OCTET));
    ws.write("root/cfg.xml", GOOD);
    let scenario = ws.write(
        "serve.toml",
        "name = \"flood\"\nsource = \"test fixture\"\nphones = \"all\"\n\n[serve.files]\nroot = \"root\"\n\n[[step]]\nwait = \"1s\"\n",
    );
    let child = Command::new(RIG)
        .args([
            "serve",
            "--scenario",
            scenario.to_str().unwrap(),
            "--lab",
            ws.lab().to_str().unwrap(),
            "--runs",
            ws.runs().to_str().unwrap(),
        ])
        .env("RIG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let serve = Serve(child);
    wait_for_tcp(SocketAddr::from((lab_ip(), 8080)));
    wait_for_tcp(SocketAddr::from((lab_ip(), 2121)));
    assert!(
        sip_options_answered(),
        "SIP does not answer before the flood"
    );
    let before = rss_kib(pid);

    // Junk datagrams on every UDP service port (a bounded loop): more than
    // any service's burst (8000), so the guards both drop and summarise.
    let flooder = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 9), 0)).unwrap();
    let junk = [0x5au8; 600];
    for round in 0..10_000u32 {
        for port in [6767, 6969, 5060] {
            let mut datagram = junk;
            datagram[..4].copy_from_slice(&round.to_be_bytes());
            let _ = flooder.send_to(&datagram, (lab_ip(), port));
        }
    }

    // More TCP connections than HTTP and FTP serve at once, held open.
    let held_http: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect((lab_ip(), 8080)).ok())
        .collect();
    let held_ftp: Vec<TcpStream> = (0..280)
        .filter_map(|_| TcpStream::connect((lab_ip(), 2121)).ok())
        .collect();
    assert!(held_http.len() > 512 && held_ftp.len() > 256);
    std::thread::sleep(Duration::from_millis(500));
    // FTP's surplus is turned away with 421.
    assert!(ftp_greeting().starts_with("421"), "FTP is not bounded");
    // The other services are not starved meanwhile.
    assert_eq!(tftp_get("cfg.xml").as_deref(), Some(GOOD.as_bytes()));
    assert!(sip_options_answered(), "SIP starved by the flood");

    // Right after the flood, each datagram service answers a client that
    // retransmits as phones do.
    assert!(dhcp_discover_answered(), "DHCP starved by the flood");
    assert!(
        sip_answered("REGISTER", "flood-register"),
        "SIP REGISTER starved by the flood"
    );

    drop(held_http);
    drop(held_ftp);
    std::thread::sleep(Duration::from_millis(500));
    // Everything serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = http_get("/cfg.xml").is_some_and(|a| a.contains(GOOD))
            && ftp_greeting().starts_with("220");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "HTTP/FTP did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rss_kib(pid);
    // 30 000 datagrams of 600 bytes and 880 connections: bounded queues keep
    // the growth far below what holding them (or an event each) would take.
    assert!(
        after < before + 128 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    drop(serve);

    let all = events(&ws.run_dir());
    for kind in [
        "http.overloaded",
        "ftp.overloaded",
        "dhcp.flood",
        "tftp.flood",
        "sip.flood",
    ] {
        assert!(
            all.iter().any(|e| e["kind"] == kind),
            "no {kind} event in the run"
        );
    }
    // A flood is reported in a bounded number of events per service: the
    // first few malformed datagrams of a source one by one (20 per 5 s at
    // most), the rest counted in `*.flood` (one per 5 s at most).
    for service in ["dhcp", "tftp", "sip"] {
        let malformed = format!("{service}.malformed");
        let count = all.iter().filter(|e| e["kind"] == *malformed).count();
        assert!(
            (1..200).contains(&count),
            "{count} {malformed} events for 10 000 datagrams"
        );
        let flood = format!("{service}.flood");
        let counted: u64 = all
            .iter()
            .filter(|e| e["kind"] == *flood)
            .map(|e| {
                e["fields"]["dropped"].as_u64().unwrap()
                    + e["fields"]["malformed"].as_u64().unwrap()
            })
            .sum();
        assert!(counted > 0, "{flood} counts nothing");
        assert!(all.iter().filter(|e| e["kind"] == *flood).count() < 50);
    }
    assert!(
        all.len() < 5_000,
        "{} events for the whole flood",
        all.len()
    );
}

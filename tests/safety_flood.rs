//! Resource bounds under a flood, loopback only (127.153.x, this file's
//! own), bounded loops: `rig serve` takes junk datagrams on its DHCP, TFTP
//! and SIP ports and more TCP connections than HTTP (512) and FTP (256)
//! serve at once. The surplus is turned away and reported
//! (`http.overloaded`, `ftp.overloaded`, `dhcp.flood`), other services keep
//! serving while the connections are held, everything serves again once
//! they close, and the rig's memory does not grow with the flood.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_cli::{events, loopback_lab, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");
const OCTET: u8 = 153;
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

fn sip_options_answered() -> bool {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 7), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{ip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKflood1\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{ip}>;tag=f1\r\nTo: <sip:{ip}>\r\nCall-ID: flood-after@{ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        ip = lab_ip()
    );
    socket
        .send_to(options.as_bytes(), (lab_ip(), 5060))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) if String::from_utf8_lossy(&buf[..n]).contains("flood-after") => {
                return true
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

// Fails today (measured 2026-11-23): SIP answers nothing for >30 s after
// 20 000 junk datagrams and records 5 019 `sip.malformed` events; TFTP records
// 4 586 `tftp.malformed`. Neither has a flood guard like DHCP's
// (rig/dhcp/src/flood.rs). Run with `--ignored` once they do.
#[test]
#[ignore = "SIP and TFTP have no flood guard yet: see docs/safety.md, Resource bounds"]
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

    // Junk datagrams on every UDP service port (a bounded loop).
    let flooder = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 9), 0)).unwrap();
    let junk = [0x5au8; 600];
    for round in 0..20_000u32 {
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
    // 60 000 datagrams of 600 bytes and 880 connections: bounded queues keep
    // the growth far below what holding them (or an event each) would take.
    assert!(
        after < before + 128 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    drop(serve);

    let all = events(&ws.run_dir());
    for kind in ["http.overloaded", "ftp.overloaded", "dhcp.flood"] {
        assert!(
            all.iter().any(|e| e["kind"] == kind),
            "no {kind} event in the run"
        );
    }
    // A flood is reported in a bounded number of events per service, as
    // DHCP's `dhcp.flood` does, not one event per datagram.
    for kind in ["dhcp.malformed", "tftp.malformed", "sip.malformed"] {
        let count = all.iter().filter(|e| e["kind"] == kind).count();
        assert!(count < 1_000, "{count} {kind} events for 20 000 datagrams");
    }
}

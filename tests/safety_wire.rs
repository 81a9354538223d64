//! Input from the wire, across protocols: `rig serve` on a loopback lab of
//! its own (127.150.0.1) serves a files root with a secret beside it and
//! symlinks leading out; one table of hostile names is sent over TFTP, HTTP
//! and FTP with raw clients (no client library normalises `..` away). No
//! answer may carry the secret or /etc/passwd, writes are refused, the
//! refusals are events, and every service still serves the real file after.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phonerig_cli::{events, loopback_lab, Workspace};

const RIG: &str = env!("CARGO_BIN_EXE_rig");
const OCTET: u8 = 150;
const SECRET: &str = "TOPSECRET-150";
const GOOD: &str = "HELLO-SAFE-150";

fn lab_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, OCTET, 0, 1)
}

/// `rig serve`, stopped with SIGTERM when dropped (so a failing test leaves no server).
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
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

fn wait_for_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The hostile names, written for each protocol's request syntax.
struct Case {
    what: &'static str,
    tftp: Option<String>,
    http: Option<String>,
    ftp: Option<String>,
}

fn table() -> Vec<Case> {
    let same = |what, name: &str| Case {
        what,
        tftp: Some(name.to_owned()),
        http: Some(format!("/{name}")),
        ftp: Some(name.to_owned()),
    };
    vec![
        same("dot-dot", "../secret.txt"),
        same("dot-dot after a folder", "sub/../../secret.txt"),
        same("rooted dot-dot", "/../secret.txt"),
        same("backslashes", "..\\secret.txt"),
        same("encoded dot-dot", "%2e%2e/secret.txt"),
        same("encoded slash", "..%2fsecret.txt"),
        same("encoded backslash", "..%5csecret.txt"),
        same("symlink to a file outside", "link"),
        same("symlink to a folder outside", "dirlink/passwd"),
        Case {
            what: "absolute path",
            tftp: Some("/etc/passwd".into()),
            http: Some("//etc/passwd".into()),
            ftp: Some("/etc/passwd".into()),
        },
        Case {
            what: "NUL",
            tftp: None, // a NUL ends the TFTP name field: see tftp's own tests
            http: Some("/cfg.xml%00/../../secret.txt".into()),
            ftp: Some("cfg.xml\0/../../secret.txt".into()),
        },
        Case {
            what: "absolute-form URL",
            tftp: None,
            http: Some(format!("http://{}:8080/../secret.txt", lab_ip())),
            ftp: None,
        },
        Case {
            what: "overlong",
            tftp: Some("a/".repeat(240)),
            http: Some(format!("/{}", "a/".repeat(4000))),
            ftp: Some("a/".repeat(2000)),
        },
    ]
}

fn leaked(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.contains(SECRET) || text.contains("root:x:0:0")
}

/// One RRQ; (opcode of the answer, its payload).
fn tftp_get(name: &str) -> (u16, Vec<u8>) {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 9), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    socket.send_to(&rrq, (lab_ip(), 6969)).unwrap();
    let mut buf = [0u8; 1024];
    let (len, _) = socket.recv_from(&mut buf).expect("a TFTP answer");
    (u16::from_be_bytes([buf[0], buf[1]]), buf[4..len].to_vec())
}

fn tftp_put(name: &str) -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::new(127, OCTET, 9, 9), 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut wrq = vec![0, 2];
    wrq.extend_from_slice(name.as_bytes());
    wrq.extend_from_slice(b"\0octet\0");
    socket.send_to(&wrq, (lab_ip(), 6969)).unwrap();
    let mut buf = [0u8; 1024];
    let (_, _) = socket.recv_from(&mut buf).expect("a TFTP answer");
    u16::from_be_bytes([buf[0], buf[1]])
}

/// A raw HTTP/1.1 request; (status, whole answer).
fn http(method: &str, target: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect((lab_ip(), 8080)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = if method == "PUT" { "x" } else { "" };
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        lab_ip(),
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// An anonymous FTP control connection.
struct Ftp {
    control: TcpStream,
    pending: Vec<u8>,
}

impl Ftp {
    fn login() -> Ftp {
        let control = TcpStream::connect((lab_ip(), 2121)).unwrap();
        control
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut ftp = Ftp {
            control,
            pending: Vec::new(),
        };
        assert!(ftp.reply().starts_with("220"));
        assert!(ftp.command("USER anonymous").starts_with("331"));
        assert!(ftp.command("PASS rig@").starts_with("230"));
        assert!(ftp.command("TYPE I").starts_with("200"));
        ftp
    }

    /// The next final reply line (multi-line replies end with `NNN `).
    fn reply(&mut self) -> String {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                    return line;
                }
                continue;
            }
            let mut buf = [0u8; 1024];
            let n = self.control.read(&mut buf).expect("an FTP reply");
            assert!(n > 0, "the FTP server closed the control connection");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.control
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn passive(&mut self) -> TcpStream {
        let reply = self.command("PASV");
        assert!(reply.starts_with("227"), "{reply}");
        let inside = &reply[reply.find('(').unwrap() + 1..reply.find(')').unwrap()];
        let n: Vec<u16> = inside.split(',').map(|v| v.parse().unwrap()).collect();
        let ip = Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
        let data = TcpStream::connect((ip, n[4] * 256 + n[5])).unwrap();
        data.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        data
    }

    /// RETR: (final reply, bytes that came over the data connection).
    fn retr(&mut self, path: &str) -> (String, Vec<u8>) {
        let mut data = self.passive();
        let first = self.command(&format!("RETR {path}"));
        let mut bytes = Vec::new();
        if first.starts_with("150") || first.starts_with("125") {
            let _ = data.read_to_end(&mut bytes);
            return (self.reply(), bytes);
        }
        (first, bytes)
    }

    /// STOR: the final reply. The server may open the transfer (150) before
    /// the storage refuses it; then the refusal is the reply after the data.
    fn stor(&mut self, path: &str) -> String {
        let mut data = self.passive();
        let first = self.command(&format!("STOR {path}"));
        if first.starts_with("150") || first.starts_with("125") {
            let _ = data.write_all(b"written over the wire");
            drop(data);
            return self.reply();
        }
        first
    }
}

#[test]
fn no_request_over_tftp_http_or_ftp_leaves_the_files_root_and_writes_are_refused() {
    let ws = Workspace::new(&loopback_lab(OCTET));
    ws.write("secret.txt", SECRET);
    ws.write("root/cfg.xml", GOOD);
    ws.write("root/sub/readme.txt", "sub");
    std::os::unix::fs::symlink(ws.path().join("secret.txt"), ws.path().join("root/link")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.path().join("root/dirlink")).unwrap();
    let scenario = ws.write(
        "serve.toml",
        "name = \"safety serve\"\nsource = \"test fixture\"\nphones = \"all\"\n\n[serve.files]\nroot = \"root\"\n\n[[step]]\nwait = \"1s\"\n",
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
    let serve = Serve(child);
    wait_for_tcp(SocketAddr::from((lab_ip(), 8080)));
    wait_for_tcp(SocketAddr::from((lab_ip(), 2121)));

    // The clients work: the real file comes back on every protocol.
    let (op, data) = tftp_get("cfg.xml");
    assert_eq!((op, data.as_slice()), (3, GOOD.as_bytes()));
    assert_eq!(http("GET", "/cfg.xml").0, 200);
    let mut ftp = Ftp::login();
    let (reply, bytes) = ftp.retr("cfg.xml");
    assert!(reply.starts_with("226"), "{reply}");
    assert_eq!(bytes, GOOD.as_bytes());

    for case in table() {
        if let Some(name) = &case.tftp {
            let (op, data) = tftp_get(name);
            assert_eq!(op, 5, "TFTP {}: not an ERROR for {name:?}", case.what);
            assert!(!leaked(&data), "TFTP {} leaked", case.what);
        }
        if let Some(target) = &case.http {
            let (status, answer) = http("GET", target);
            assert!(
                (400..500).contains(&status),
                "HTTP {}: status {status} for {target:?}",
                case.what
            );
            assert!(!leaked(&answer), "HTTP {} leaked", case.what);
        }
        if let Some(path) = &case.ftp {
            let (reply, bytes) = ftp.retr(path);
            assert!(
                reply.starts_with('5'),
                "FTP {}: {reply} for {path:?}",
                case.what
            );
            assert!(!leaked(&bytes), "FTP {} leaked", case.what);
        }
    }

    // Writes are refused unless enabled (the scenario enables none).
    assert_eq!(tftp_put("new.txt"), 5, "TFTP WRQ accepted");
    let (status, _) = http("PUT", "/new.txt");
    assert!((400..500).contains(&status), "HTTP PUT: {status}");
    let reply = ftp.stor("new.txt");
    assert!(reply.starts_with('5'), "FTP STOR: {reply}");
    assert!(!ws.path().join("root/new.txt").exists());

    // Still serving after all of it.
    assert_eq!(tftp_get("cfg.xml").0, 3);
    assert_eq!(http("GET", "/cfg.xml").0, 200);
    assert!(ftp.retr("cfg.xml").0.starts_with("226"));
    drop(ftp);
    drop(serve);

    let all = events(&ws.run_dir());
    for kind in ["tftp.refused", "ftp.refused"] {
        assert!(
            all.iter().any(|e| e["kind"] == kind),
            "no {kind} event in the run"
        );
    }
}

//! The FTP service against curl on loopback.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phonerig_core::event::Event;
use phonerig_core::netns::{program, require};
use phonerig_core::{
    FileRule, PhoneDirectory, PhoneInfo, Placeholders, ProvisioningTree, RigEndpoints,
    ServiceContext, Timeline,
};
use phonerig_ftp::{FtpConfig, Login, Settings};
use tokio_util::sync::CancellationToken;

fn unique_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    format!(
        "127.84.{}.{}",
        std::process::id() % 250,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
    .parse()
    .unwrap()
}

fn phone() -> PhoneInfo {
    PhoneInfo {
        name: "uc924-1".into(),
        model: "htek-uc924".into(),
        mac: "001fc110d3a9".parse().unwrap(),
        ext: "4002".into(),
        password: "pw4002".into(),
        devcode: Some("0012".into()),
    }
}

struct Rig {
    timeline: Timeline,
    shutdown: CancellationToken,
    base: String,
    service: Option<phonerig_core::RunningService>,
    _root: tempfile::TempDir,
}

impl Rig {
    async fn start(rules: Vec<FileRule>, settings: Settings, files: &[(&str, &[u8])]) -> Rig {
        Self::start_bounded(rules, settings, files, phonerig_ftp::MAX_SESSIONS).await
    }

    async fn start_bounded(
        rules: Vec<FileRule>,
        settings: Settings,
        files: &[(&str, &[u8])],
        max_sessions: usize,
    ) -> Rig {
        let root = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = root.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let ip = unique_ip();
        let timeline = Timeline::in_memory();
        let directory = PhoneDirectory::new([phone()]);
        let placeholders = Placeholders::new().with_rig(&RigEndpoints {
            ip: ip.to_string(),
            http_port: 8080,
            https_port: 8443,
            tftp_port: 6969,
            ftp_port: 2121,
            sip_port: 5060,
        });
        let tree = ProvisioningTree::new(
            Some(root.path().into()),
            rules,
            placeholders.clone(),
            directory.clone(),
        );
        let shutdown = CancellationToken::new();
        let ctx = ServiceContext {
            timeline: timeline.clone(),
            directory,
            bind_ip: ip,
            placeholders,
            tree,
            shutdown: shutdown.clone(),
        };
        let config = FtpConfig {
            port: 0,
            passive_ports: 42000..=42999,
        };
        let service = phonerig_ftp::start_bounded(ctx, config, settings, max_sessions)
            .await
            .unwrap();
        let base = format!("ftp://{}", service.addrs[0]);
        Rig {
            timeline,
            shutdown,
            base,
            service: Some(service),
            _root: root,
        }
    }

    async fn event(&self, kind: &str, index: usize) -> Arc<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self
                .timeline
                .snapshot()
                .into_iter()
                .filter(|e| e.kind == kind)
                .nth(index)
            {
                return event;
            }
            let dump: Vec<String> = self.timeline.snapshot().iter().map(|e| e.brief()).collect();
            assert!(
                Instant::now() < deadline,
                "no {kind} #{index}:\n{}",
                dump.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, kind: &str) -> usize {
        self.timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let service = self.service.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), service.join(&self.timeline))
            .await
            .expect("ftp stops");
    }
}

fn have_curl() -> bool {
    require(program("curl")).is_ok()
}

async fn curl(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--noproxy",
                "*",
                "--max-time",
                "60",
            ])
            .args(&args)
            .env_remove("ftp_proxy")
            .env_remove("ALL_PROXY")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn rule(path: &str) -> FileRule {
    FileRule {
        path: path.into(),
        ..FileRule::default()
    }
}

#[tokio::test]
async fn anonymous_download_is_byte_identical() {
    if !have_curl() {
        return;
    }
    let firmware = random_bytes(3 * 1024 * 1024 + 5);
    let rig = Rig::start(vec![], Settings::default(), &[("fw/fw924.rom", &firmware)]).await;
    let out = curl(&[&format!("{}/fw/fw924.rom", rig.base)]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == firmware,
        "bytes differ ({} vs {})",
        out.stdout.len(),
        firmware.len()
    );

    let login = rig.event("ftp.login", 0).await;
    assert_eq!(login.field_str("user"), Some("anonymous"));
    assert_eq!(login.field("ok"), Some(&serde_json::Value::Bool(true)));
    let fetch = rig.event("ftp.fetch", 0).await;
    assert_eq!(fetch.field_str("file"), Some("fw/fw924.rom"));
    assert_eq!(fetch.field_str("protocol"), Some("ftp"));
    assert_eq!(fetch.field_str("outcome"), Some("complete"));
    assert_eq!(fetch.field_u64("code"), Some(226));
    assert_eq!(fetch.field_u64("bytes"), Some(firmware.len() as u64));
    assert_eq!(fetch.field_u64("size"), Some(firmware.len() as u64));
    rig.stop().await;
}

#[tokio::test]
async fn login_with_user_and_password() {
    if !have_curl() {
        return;
    }
    let settings = Settings {
        login: Some(Login {
            user: "{phone.ext}".into(),
            password: "{phone.password}".into(),
        }),
        ..Settings::default()
    };
    let rules = vec![FileRule {
        content: Some("<ext>{phone.ext}</ext>".into()),
        ..rule("cfg0012.xml")
    }];
    let rig = Rig::start(rules, settings, &[]).await;
    let url = format!("{}/cfg0012.xml", rig.base);

    let ok = curl(&["-u", "4002:pw4002", &url]).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "<ext>4002</ext>");
    let fetch = rig.event("ftp.fetch", 0).await;
    assert_eq!(fetch.phone.as_deref(), Some("uc924-1"));
    assert_eq!(fetch.field_str("user"), Some("4002"));

    let wrong = curl(&["-u", "4002:nope", &url]).await;
    // 67: "The remote server denied curl to login".
    assert_eq!(
        wrong.status.code(),
        Some(67),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let anonymous = curl(&[&url]).await;
    assert_eq!(anonymous.status.code(), Some(67));

    let logins: Vec<(String, bool)> = {
        rig.event("ftp.login", 2).await;
        rig.timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == "ftp.login")
            .map(|e| {
                (
                    e.field_str("user").unwrap().to_owned(),
                    e.field("ok").unwrap().as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        logins,
        vec![
            ("4002".into(), true),
            ("4002".into(), false),
            ("anonymous".into(), false)
        ]
    );
    assert!(rig
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "ftp.login")
        .all(|e| e.field_str("peer").unwrap().starts_with("127.")));
    rig.stop().await;
}

#[tokio::test]
async fn absent_forced_and_missing_files_fail_with_events() {
    if !have_curl() {
        return;
    }
    let rules = vec![
        FileRule {
            absent: true,
            ..rule("cfg0012.xml")
        },
        FileRule {
            status: Some(500),
            ..rule("broken.xml")
        },
        FileRule {
            status: Some(503),
            delay: Some(Duration::from_millis(200)),
            ..rule("busy.xml")
        },
    ];
    let rig = Rig::start(rules, Settings::default(), &[("cfg0012.xml", b"hidden")]).await;
    for name in ["cfg0012.xml", "nothing.xml", "broken.xml", "busy.xml"] {
        let out = curl(&[&format!("{}/{name}", rig.base)]).await;
        // 78: "The resource referenced in the URL does not exist" (550 to RETR/SIZE).
        assert!(!out.status.success(), "{name}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("hidden"));
    }
    rig.event("ftp.fetch", 3).await;
    let outcomes: Vec<(String, String, u64)> = rig
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "ftp.fetch")
        .map(|e| {
            (
                e.field_str("file").unwrap().to_owned(),
                e.field_str("outcome").unwrap().to_owned(),
                e.field_u64("code").unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = [
        ("cfg0012.xml", "not_found", 550),
        ("nothing.xml", "not_found", 550),
        ("broken.xml", "forced", 550),
        ("busy.xml", "forced", 550),
    ]
    .iter()
    .map(|(f, o, c)| (f.to_string(), o.to_string(), *c))
    .collect();
    assert_eq!(outcomes, expected);
    rig.stop().await;
}

#[tokio::test]
async fn delayed_file_arrives() {
    if !have_curl() {
        return;
    }
    let rules = vec![FileRule {
        content: Some("patience".into()),
        delay: Some(Duration::from_millis(300)),
        ..rule("slow.cfg")
    }];
    let rig = Rig::start(rules, Settings::default(), &[]).await;
    let out = curl(&[&format!("{}/slow.cfg", rig.base)]).await;
    assert!(out.status.success());
    assert_eq!(out.stdout, b"patience");
    assert_eq!(
        rig.event("ftp.fetch", 0).await.field_str("outcome"),
        Some("complete")
    );
    rig.stop().await;
}

#[tokio::test]
async fn truncated_download_is_detected_by_curl() {
    if !have_curl() {
        return;
    }
    let firmware = random_bytes(1024 * 1024);
    let rules = vec![FileRule {
        truncate: Some(200_000),
        ..rule("fw*.rom")
    }];
    let rig = Rig::start(rules, Settings::default(), &[("fw924.rom", &firmware)]).await;
    let out = curl(&[&format!("{}/fw924.rom", rig.base)]).await;
    assert!(
        !out.status.success(),
        "a cut transfer must not look complete"
    );
    assert_eq!(out.stdout.len(), 200_000);
    assert!(out.stdout[..] == firmware[..200_000]);
    let fetch = rig.event("ftp.fetch", 0).await;
    assert_eq!(fetch.field_str("outcome"), Some("truncated"));
    assert_eq!(fetch.field_u64("bytes"), Some(200_000));
    assert_eq!(fetch.field_u64("size"), Some(firmware.len() as u64));
    rig.stop().await;
}

#[tokio::test]
async fn writes_and_escapes_are_refused() {
    if !have_curl() {
        return;
    }
    let rig = Rig::start(vec![], Settings::default(), &[("a.cfg", b"a")]).await;
    let upload_dir = tempfile::tempdir().unwrap();
    let upload = upload_dir.path().join("up.txt");
    std::fs::write(&upload, "x").unwrap();
    let put = curl(&[
        "-T",
        upload.to_str().unwrap(),
        &format!("{}/up.txt", rig.base),
    ])
    .await;
    assert!(!put.status.success());
    let delete = curl(&["-Q", "DELE a.cfg", &format!("{}/", rig.base)]).await;
    assert!(!delete.status.success());
    let mkdir = curl(&["-Q", "MKD newdir", &format!("{}/", rig.base)]).await;
    assert!(!mkdir.status.success());
    assert!(
        rig.count("ftp.refused") >= 3,
        "{:?}",
        rig.timeline
            .snapshot()
            .iter()
            .map(|e| e.brief())
            .collect::<Vec<_>>()
    );
    let commands: Vec<String> = rig
        .timeline
        .snapshot()
        .iter()
        .filter(|e| e.kind == "ftp.refused")
        .map(|e| e.field_str("command").unwrap().to_owned())
        .collect();
    assert!(
        commands.contains(&"STOR".to_owned())
            && commands.contains(&"DELE".to_owned())
            && commands.contains(&"MKD".to_owned()),
        "{commands:?}"
    );

    // `..` never leaves the root.
    let escape = curl(&["--path-as-is", &format!("{}/../../etc/passwd", rig.base)]).await;
    assert!(!escape.status.success());
    assert!(!String::from_utf8_lossy(&escape.stdout).contains("root:"));
    rig.stop().await;
}

#[tokio::test]
async fn stopping_releases_the_port() {
    let rig = Rig::start(vec![], Settings::default(), &[]).await;
    let addr: std::net::SocketAddr = rig.base.trim_start_matches("ftp://").parse().unwrap();
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let timeline = rig.timeline.clone();
    rig.stop().await;
    assert!(timeline
        .snapshot()
        .iter()
        .any(|e| e.kind == "service.stopped" && e.field_str("service") == Some("ftp")));
    std::net::TcpListener::bind(addr).expect("port is free again");
}

/// A minimal FTP client: one command, one (possibly multi-line) reply.
struct Control {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Control {
    async fn connect(addr: std::net::SocketAddr) -> (Control, String) {
        let (read, write) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let mut control = Control {
            reader: tokio::io::BufReader::new(read),
            writer: write,
        };
        let greeting = control.reply().await;
        (control, greeting)
    }

    async fn reply(&mut self) -> String {
        use tokio::io::AsyncBufReadExt;
        let mut all = String::new();
        loop {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(!line.is_empty(), "connection closed; so far: {all}");
            all.push_str(&line);
            let bytes = line.as_bytes();
            if bytes.len() >= 4 && bytes[..3].iter().all(u8::is_ascii_digit) && bytes[3] == b' ' {
                return all;
            }
        }
    }

    async fn command(&mut self, text: &str) -> String {
        use tokio::io::AsyncWriteExt;
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// PASV, then the data connection it names.
    async fn passive(&mut self) -> (String, tokio::net::TcpStream) {
        let reply = self.command("PASV").await;
        assert!(reply.starts_with("227"), "{reply}");
        let inside = &reply[reply.find('(').unwrap() + 1..reply.find(')').unwrap()];
        let n: Vec<u16> = inside
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect();
        let addr = std::net::SocketAddr::from((
            [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
            n[4] * 256 + n[5],
        ));
        (reply, tokio::net::TcpStream::connect(addr).await.unwrap())
    }
}

#[tokio::test]
async fn raw_session_passive_on_bind_address_retr_and_restart() {
    let rig = Rig::start(
        vec![],
        Settings::default(),
        &[("cfg0012.xml", b"0123456789")],
    )
    .await;
    let addr: std::net::SocketAddr = rig.base.trim_start_matches("ftp://").parse().unwrap();
    let (mut control, greeting) = Control::connect(addr).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(control.command("USER anonymous").await.starts_with("331"));
    assert!(control.command("PASS phone@").await.starts_with("230"));
    assert!(control.command("TYPE I").await.starts_with("200"));

    // The passive address is the bind address, the port within the range.
    let (pasv, mut data) = control.passive().await;
    let ip = addr.ip().to_string().replace('.', ",");
    assert!(pasv.contains(&format!("({ip},")), "{pasv}");
    assert!(control.command("REST 4").await.starts_with("350"));
    let reply = control.command("RETR cfg0012.xml").await;
    assert!(
        reply.starts_with("150") || reply.starts_with("125"),
        "{reply}"
    );
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut data, &mut got)
        .await
        .unwrap();
    assert_eq!(got, b"456789");
    assert!(control.reply().await.starts_with("226"));
    let fetch = rig.event("ftp.fetch", 0).await;
    assert_eq!(
        (
            fetch.field_u64("start"),
            fetch.field_u64("bytes"),
            fetch.field_str("during")
        ),
        (Some(4), Some(6), Some("RETR"))
    );

    // RETR of a missing file without SIZE first: reported at RETR.
    let (_, _data) = control.passive().await;
    let reply = control.command("RETR missing.xml").await;
    let reply = if reply.starts_with("150") {
        control.reply().await
    } else {
        reply
    };
    assert!(reply.starts_with("550"), "{reply}");
    let fetch = rig.event("ftp.fetch", 1).await;
    assert_eq!(
        (
            fetch.field_str("outcome"),
            fetch.field_u64("code"),
            fetch.field_str("during")
        ),
        (Some("not_found"), Some(550), Some("RETR"))
    );

    // SIZE fails, then RETR of the same file fails: one event, not two.
    assert!(control.command("SIZE gone.xml").await.starts_with("550"));
    let (_, _data) = control.passive().await;
    let reply = control.command("RETR gone.xml").await;
    let reply = if reply.starts_with("150") {
        control.reply().await
    } else {
        reply
    };
    assert!(reply.starts_with("550"), "{reply}");
    assert!(control.command("NOOP").await.starts_with("200"));
    assert_eq!(rig.count("ftp.fetch"), 3);
    assert_eq!(
        rig.event("ftp.fetch", 2).await.field_str("during"),
        Some("SIZE")
    );

    // Garbage on the control channel gets an error reply; the session goes on.
    assert!(control.command("FROBNICATE now").await.starts_with("5"));
    assert!(control.command("NOOP").await.starts_with("200"));
    assert!(control.command("QUIT").await.starts_with("221"));
    rig.stop().await;
}

#[tokio::test]
async fn resumed_download_with_curl() {
    if !have_curl() {
        return;
    }
    let firmware = random_bytes(500_000);
    let rig = Rig::start(vec![], Settings::default(), &[("fw.rom", &firmware)]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fw.rom");
    std::fs::write(&out, &firmware[..123_456]).unwrap();
    let result = curl(&[
        "-C",
        "-",
        "-o",
        out.to_str().unwrap(),
        &format!("{}/fw.rom", rig.base),
    ])
    .await;
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == firmware);
    assert_eq!(
        rig.event("ftp.fetch", 0).await.field_u64("start"),
        Some(123_456)
    );
    rig.stop().await;
}

#[tokio::test]
async fn sessions_beyond_the_bound_get_421() {
    let rig = Rig::start_bounded(vec![], Settings::default(), &[], 1).await;
    let addr: std::net::SocketAddr = rig.base.trim_start_matches("ftp://").parse().unwrap();
    let (_first, greeting) = Control::connect(addr).await;
    assert!(greeting.starts_with("220"));
    let (_second, refusal) = Control::connect(addr).await;
    assert!(refusal.starts_with("421"), "{refusal}");
    let event = rig.event("ftp.overloaded", 0).await;
    assert_eq!(event.field_u64("limit"), Some(1));
    rig.stop().await;
}

/// The server's end of the TCP connection whose client end is `client_local` → `client_peer`:
/// found among this process's own descriptors (the service runs in the
/// test process), duplicated so it can be inspected.
fn server_end_of(
    client_local: std::net::SocketAddr,
    client_peer: std::net::SocketAddr,
) -> std::net::TcpStream {
    use std::os::fd::{BorrowedFd, RawFd};
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        // SAFETY: the descriptor is only borrowed for the duplication below;
        // a descriptor closed meanwhile makes the duplication fail, nothing more.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let Ok(owned) = borrowed.try_clone_to_owned() else {
            continue;
        };
        let stream = std::net::TcpStream::from(owned);
        if stream.peer_addr().ok() == Some(client_local)
            && stream.local_addr().ok() == Some(client_peer)
        {
            return stream;
        }
    }
    panic!("no server-side socket for {client_local} → {client_peer}");
}

/// Replies must not wait for the client's delayed ACK: with Nagle on the
/// control connection, the `226` written right after `150` was held back
/// ≈40 ms per transfer (bench/ftp.sh). Also: the passive listener already
/// accepts when the 229 reply is read (a closed port would refuse the connect
/// at once on loopback).
#[tokio::test]
async fn control_connection_sends_replies_without_nagle_and_passive_port_is_ready() {
    let rig = Rig::start(vec![], Settings::default(), &[("cfg.xml", b"x")]).await;
    let addr: std::net::SocketAddr = rig.base.trim_start_matches("ftp://").parse().unwrap();
    let (mut control, greeting) = Control::connect(addr).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let client = control.reader.get_ref();
    let server_end = server_end_of(client.local_addr().unwrap(), client.peer_addr().unwrap());
    assert!(
        server_end.nodelay().unwrap(),
        "TCP_NODELAY is off on the server's control socket"
    );
    assert!(control.command("USER anonymous").await.starts_with("331"));
    assert!(control.command("PASS x").await.starts_with("230"));
    for _ in 0..3 {
        let reply = control.command("EPSV").await;
        assert!(reply.starts_with("229"), "{reply}");
        let port: u16 = reply.split('|').nth(3).unwrap().parse().unwrap();
        let data = std::net::TcpStream::connect((addr.ip(), port));
        assert!(data.is_ok(), "connect to announced port {port}: {data:?}");
        drop(data);
    }
    rig.stop().await;
}

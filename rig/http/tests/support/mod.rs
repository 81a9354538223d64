//! A started HTTP service on a loopback address of its own, plus curl.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
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
use phonerig_http::{HttpConfig, Settings, TlsSource};
use tokio_util::sync::CancellationToken;

/// Each test binary gets its own 127.83.<pid>.x range; each test a host in it.
pub fn unique_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let host = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("127.83.{}.{}", std::process::id() % 250, host)
        .parse()
        .unwrap()
}

pub fn phone() -> PhoneInfo {
    PhoneInfo {
        name: "uc924-1".into(),
        model: "htek-uc924".into(),
        mac: "001fc110d3a9".parse().unwrap(),
        ext: "4002".into(),
        password: "pw4002".into(),
        devcode: Some("0012".into()),
    }
}

pub struct Rig {
    pub ip: IpAddr,
    pub timeline: Timeline,
    pub directory: PhoneDirectory,
    pub shutdown: CancellationToken,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub service: Option<phonerig_core::RunningService>,
}

pub struct Setup {
    pub root: Option<std::path::PathBuf>,
    pub rules: Vec<FileRule>,
    pub settings: Settings,
    pub https: bool,
    pub tls: TlsSource,
    pub max_connections: usize,
    pub ip: Option<IpAddr>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            root: None,
            rules: Vec::new(),
            settings: Settings::default(),
            https: false,
            tls: TlsSource::Generate,
            max_connections: 512,
            ip: None,
        }
    }
}

impl Rig {
    pub async fn start(setup: Setup) -> Rig {
        let ip = setup.ip.unwrap_or_else(unique_ip);
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
            setup.root,
            setup.rules,
            placeholders.clone(),
            directory.clone(),
        );
        let shutdown = CancellationToken::new();
        let ctx = ServiceContext {
            timeline: timeline.clone(),
            directory: directory.clone(),
            bind_ip: ip,
            placeholders,
            tree,
            shutdown: shutdown.clone(),
        };
        let config = HttpConfig {
            http_port: Some(0),
            https_port: setup.https.then_some(0),
            tls: setup.tls,
            max_connections: setup.max_connections,
        };
        let service = phonerig_http::start(ctx, config, setup.settings)
            .await
            .expect("http service starts");
        let http = service.addrs.first().copied();
        let https = service.addrs.get(1).copied();
        Rig {
            ip,
            timeline,
            directory,
            shutdown,
            http,
            https,
            service: Some(service),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.unwrap())
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.https.unwrap())
    }

    /// Waits (bounded) for the n-th event (0-based) of `kind`.
    pub async fn event(&self, kind: &str, index: usize) -> Arc<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Arc<Event>> = self
                .timeline
                .snapshot()
                .into_iter()
                .filter(|e| e.kind == kind)
                .collect();
            if let Some(event) = found.get(index) {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event #{index}; timeline:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        self.timeline
            .snapshot()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    pub fn dump(&self) -> String {
        self.timeline
            .snapshot()
            .iter()
            .map(|e| e.brief())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(service) = self.service.take() {
            tokio::time::timeout(Duration::from_secs(10), service.join(&self.timeline))
                .await
                .expect("service stops");
        }
    }
}

/// `Ok` when curl is there; prints SKIPPED (or panics under CI) otherwise.
pub fn have_curl() -> bool {
    require(program("curl")).is_ok()
}

/// Runs curl (never through a proxy) off the async runtime.
pub async fn curl(args: &[&str]) -> Output {
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
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap()
}

/// curl's answer code printed with `-w %{http_code}` after the body is discarded.
pub async fn status_of(extra: &[&str], url: &str) -> (String, Option<i32>) {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args).await;
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code(),
    )
}

pub fn write_random(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    // xorshift: reproducible, incompressible enough, no extra crate.
    let mut state = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

//! `rig storm`: a boot storm. N virtual phones power on at once, take a
//! DHCP lease, fetch their configuration over HTTP (option 66), register,
//! then get a NOTIFY check-sync and fetch it again. Every phase is measured
//! from the timeline, the same events a scenario would assert on.
//!
//! The virtual phones run in a second process (this binary again, with the
//! hidden `--sim-host` flag) so the CPU and memory reported for the rig are
//! the rig's own and not those of ten thousand simulated phones. The rig
//! reaches them exactly as it reaches any virtual phone: the `sim` power
//! backend over each phone's control socket.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use phonerig_core::{Event, PhoneInfo};
use phonerig_sim::FILES_PER_PHONE;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::lab::Lab;
use crate::scenario::Scenario;

/// The largest storm: the /16 loopback pool, less the rig's own addresses.
pub const MAX_PHONES: usize = 60_000;

#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    /// How many virtual phones power on at once.
    #[arg(long, default_value_t = 100)]
    pub phones: usize,
    /// The model of every phone (an Htek UC9xx: the storm serves its provisioning files).
    #[arg(long, default_value = "htek-uc924")]
    pub model: String,
    /// The storm runs on 127.<octet>.0.0/16: the rig on .0.1, the phones from the top of the pool.
    #[arg(long, default_value_t = 140)]
    pub octet: u8,
    /// Limit for each of the two phases (boot to registered, check-sync to re-fetched).
    #[arg(long, default_value = "120s", value_parser = phonerig_core::duration::parse)]
    pub timeout: Duration,
    /// Where the run folder (events.jsonl, storm.json) is created.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Also write the summary (storm.json) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: host the virtual phones of this lab file (the storm's second process).
    #[arg(long, hide = true)]
    pub sim_host: Option<PathBuf>,
    /// Internal: where the hosted phones put their control sockets.
    #[arg(long, hide = true, requires = "sim_host")]
    pub sim_dir: Option<PathBuf>,
    /// Internal: host only the lab's phones `start..end` (one of several phone processes).
    #[arg(long, hide = true, requires = "sim_host", value_parser = parse_slice)]
    pub sim_slice: Option<(usize, usize)>,
}

fn parse_slice(text: &str) -> Result<(usize, usize), String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not start..end"))?;
    let number = |v: &str| v.parse::<usize>().map_err(|e| format!("`{v}`: {e}"));
    let (start, end) = (number(start)?, number(end)?);
    if start >= end {
        return Err(format!("empty slice {start}..{end}"));
    }
    Ok((start, end))
}

pub async fn run(args: StormArgs) -> anyhow::Result<ExitCode> {
    match (&args.sim_host, &args.sim_dir) {
        (Some(lab), Some(dir)) => host_phones(lab, dir, args.sim_slice).await,
        (Some(_), None) => bail!("--sim-host needs --sim-dir"),
        _ => storm(&args).await,
    }
}

// ---- the lab and scenario of a storm --------------------------------------

/// Phone `i` (0-based): a name, an Htek MAC, an extension and a password of its own.
fn phone_identity(i: usize) -> (String, String, String, String) {
    let n = i + 1;
    let mac = format!(
        "00:1f:c1:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    );
    (
        format!("p{n:05}"),
        mac,
        format!("{}", 100_000 + n),
        format!("pw{n:05}"),
    )
}

/// The lab file of a storm: the phones carry no `[phone.sim]` table (the
/// bench would host them in-process); their power is the `sim` backend
/// pointed at the second process's control sockets.
pub fn storm_lab(phones: usize, model: &str, octet: u8, sim_dir: &Path) -> String {
    let mut text = format!(
        "name = \"storm-{phones}\"\n\n[bench]\nnic = \"lo\"\nip = \"127.{octet}.0.1\"\nprefix = 16\n\
         pool = {{ start = \"127.{octet}.0.10\", end = \"127.{octet}.255.254\" }}\n\
         # Long leases: renewals (at T1, scaled by the phones' clock) stay out of the measurement.\n\
         lease_time = \"7d\"\n"
    );
    for i in 0..phones {
        let (name, mac, ext, password) = phone_identity(i);
        let socket = sim_dir.join(format!("{name}.sock"));
        let _ = write!(
            text,
            "\n[[phone]]\nname = \"{name}\"\nmodel = \"{model}\"\nmac = \"{mac}\"\next = \"{ext}\"\n\
             password = \"{password}\"\npower = {{ backend = \"sim\", socket = {socket:?} }}\n",
            socket = socket.display().to_string()
        );
    }
    text
}

/// The file each phone ends its fetch order on (004 §2.1: cfg<devcode>.xml,
/// cfg<mac>, cfg<mac>.xml; only the last exists, so every boot asks three times).
const CONFIG_FILE: &str = "cfg{phone.mac}.xml";

pub fn storm_scenario() -> anyhow::Result<Scenario> {
    let text = format!(
        r#"name = "boot storm"
source = "rig storm (benchmark)"
phones = "all"

[serve.dhcp.options]
66 = "http://{{rig.http}}"

[[serve.file]]
path = "{CONFIG_FILE}"
content = """<?xml version="1.0" encoding="UTF-8" ?>
<hl_provision version="1"><config version="1">
<P47 para="Account1_Sipserver">{{rig.sip}}</P47>
<P35 para="Account1_UserId">{{phone.ext}}</P35>
<P36 para="Account1_AuthId">{{phone.ext}}</P36>
<P34 para="Account1_Password">{{phone.password}}</P34>
<P271 para="Account1_Active">1</P271>
</config></hl_provision>
"""

[[step]]
notify = {{ event = "check-sync" }}
"#
    );
    Ok(Scenario::parse(Path::new("<storm>"), &text)?)
}

// ---- the second process: the virtual phones ------------------------------

async fn host_phones(
    lab_path: &Path,
    sim_dir: &Path,
    slice: Option<(usize, usize)>,
) -> anyhow::Result<ExitCode> {
    let lab = Lab::load(lab_path)?;
    let ports = lab.ports();
    let (start, end) = slice.unwrap_or((0, lab.phones.len()));
    let phones = lab
        .phones
        .get(start..end)
        .with_context(|| format!("{} has no phones {start}..{end}", lab_path.display()))?
        .iter()
        .map(|p| {
            let p = p.get_ref();
            phonerig_sim::VirtualPhoneSpec {
                name: p.name.clone(),
                model: p.model.clone(),
                mac: p.mac,
                firmware: "2.0.4.4.36".into(),
                flash: Default::default(),
                timing: phonerig_sim::Timing::default(),
                faults: Vec::new(),
            }
        })
        .collect();
    let host = phonerig_sim::SimHost::start(phonerig_sim::SimHostConfig {
        sim_dir: sim_dir.to_owned(),
        placement: phonerig_sim::Placement::Loopback {
            dhcp_server: SocketAddr::new(IpAddr::V4(lab.bench.ip), ports.dhcp),
            services: phonerig_sim::ServicePorts {
                tftp: ports.tftp,
                http: ports.http,
                https: ports.https,
                ftp: ports.ftp,
            },
        },
        phones,
    })
    .await?;
    println!("ready {}", host.phone_names().len());
    // The storm closes our stdin when it is done (or dies): then we stop.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    host.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// How many phones one process can host under this machine's hard limit on
/// open files (a container may not let even root raise it: 20,000 here, so
/// 10,000 phones need several processes).
fn phones_per_process() -> usize {
    let hard = hard_open_file_limit().unwrap_or(4096);
    (hard.saturating_sub(512) / FILES_PER_PHONE).max(100)
}

/// This process's hard RLIMIT_NOFILE (`None` when unlimited or unreadable).
fn hard_open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

/// The phones' processes; killed if the storm is dropped before it ends.
struct PhoneHost {
    children: Vec<tokio::process::Child>,
}

impl PhoneHost {
    async fn spawn(lab: &Path, sim_dir: &Path, phones: usize) -> anyhow::Result<PhoneHost> {
        let per_process = phones_per_process();
        let mut host = PhoneHost {
            children: Vec::new(),
        };
        let mut readiness = Vec::new();
        for start in (0..phones).step_by(per_process) {
            let end = (start + per_process).min(phones);
            let (child, ready) = Self::spawn_one(lab, sim_dir, start, end).await?;
            host.children.push(child);
            readiness.push(ready);
        }
        // They start side by side; then each must say it is ready.
        for ready in readiness {
            let line = tokio::time::timeout(
                Duration::from_secs(30) + Duration::from_millis(per_process as u64 * 5),
                ready,
            )
            .await;
            match line {
                Ok(Ok(Some(line))) if line.starts_with("ready") => {}
                Ok(Ok(other)) => {
                    bail!("a virtual phones' process did not start (said {other:?}; see its error above)")
                }
                Ok(Err(error)) => bail!("reading a virtual phones' process: {error}"),
                Err(_) => bail!("a virtual phones' process did not get ready in time"),
            }
        }
        Ok(host)
    }

    async fn spawn_one(
        lab: &Path,
        sim_dir: &Path,
        start: usize,
        end: usize,
    ) -> anyhow::Result<(
        tokio::process::Child,
        impl std::future::Future<Output = std::io::Result<Option<String>>>,
    )> {
        let exe = std::env::current_exe().context("locating the rig binary")?;
        // Raise the descriptor limit for that process (root may raise the hard limit too).
        let wanted = (end - start) * FILES_PER_PHONE + 1024;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {wanted} 2>/dev/null || ulimit -n \"$(ulimit -H -n)\"; exec \"$0\" \"$@\""
            ))
            .arg(&exe)
            .arg("storm")
            .arg("--sim-host")
            .arg(lab)
            .arg("--sim-dir")
            .arg(sim_dir)
            .arg("--sim-slice")
            .arg(format!("{start}..{end}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a virtual phones' process")?;
        let stdout = child.stdout.take().context("phones' stdout")?;
        let ready = async move { BufReader::new(stdout).lines().next_line().await };
        Ok((child, ready))
    }

    fn pids(&self) -> Vec<String> {
        self.children
            .iter()
            .filter_map(|c| c.id())
            .map(|p| p.to_string())
            .collect()
    }

    /// Closes their stdin (they power the phones off and exit); kills any that linger.
    async fn stop(mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

// ---- CPU and memory, from /proc --------------------------------------------

/// USER_HZ, the unit of utime/stime in /proc/<pid>/stat (100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at `state`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessUsage {
    /// How many processes these figures add up.
    pub processes: usize,
    /// CPU time (user + system) spent during the storm.
    pub cpu_seconds: f64,
    /// The highest CPU use over one sampling interval (100% = one core).
    pub peak_cpu_percent: f64,
    /// Peak resident memory (VmHWM), summed over the processes.
    pub peak_rss_mib: f64,
}

/// Samples the CPU of one or more processes (together) every 250 ms until cancelled.
async fn sample(pids: Vec<String>, stop: CancellationToken) -> ProcessUsage {
    const INTERVAL: Duration = Duration::from_millis(250);
    let ticks = |pids: &[String]| -> Option<u64> {
        pids.iter().map(|pid| cpu_ticks(pid)).sum::<Option<u64>>()
    };
    let start = ticks(&pids).unwrap_or(0);
    let mut last = (Instant::now(), start);
    let mut peak: f64 = 0.0;
    let mut ticker = tokio::time::interval(INTERVAL);
    // The first tick is immediate: an interval of ~0 s would make any tick look like a peak.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Some(now_ticks) = ticks(&pids) else {
            break;
        };
        let elapsed = last.0.elapsed().as_secs_f64();
        if elapsed >= INTERVAL.as_secs_f64() / 2.0 {
            let used = (now_ticks.saturating_sub(last.1)) as f64 / TICKS_PER_SECOND;
            peak = peak.max(100.0 * used / elapsed);
            last = (Instant::now(), now_ticks);
        }
    }
    let end = ticks(&pids).unwrap_or(last.1);
    ProcessUsage {
        processes: pids.len(),
        cpu_seconds: end.saturating_sub(start) as f64 / TICKS_PER_SECOND,
        peak_cpu_percent: peak,
        peak_rss_mib: pids
            .iter()
            .map(|pid| status_kib(pid, "VmHWM:").unwrap_or(0))
            .sum::<u64>() as f64
            / 1024.0,
    }
}

// ---- what the timeline says ---------------------------------------------

/// When each phase ended for one phone (µs on the timeline clock).
#[derive(Debug, Default, Clone)]
struct PhoneTimes {
    power_on: Option<u64>,
    ack: Option<u64>,
    config: Option<u64>,
    registered: Option<u64>,
    notify_sent: Option<u64>,
    notify_answered: Option<u64>,
    refetched: Option<u64>,
    discovers: u32,
    registers: u32,
}

impl PhoneTimes {
    /// The phase a phone that did not finish stopped in (`None`: it finished).
    fn stopped_in(&self) -> Option<&'static str> {
        Some(if self.power_on.is_none() {
            "power-on"
        } else if self.ack.is_none() {
            "dhcp"
        } else if self.config.is_none() {
            "config fetch"
        } else if self.registered.is_none() {
            "register"
        } else if self.notify_answered.is_none() {
            "notify answer"
        } else if self.refetched.is_none() {
            "re-fetch"
        } else {
            return None;
        })
    }
}

/// Problems counted from the timeline; every one of them must be 0.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Failures {
    /// Phones whose power-on command failed.
    pub power_failed: u64,
    /// DHCP NAKs, no-offers, malformed datagrams, datagrams dropped by the flood limit.
    pub dhcp_failed: u64,
    /// DISCOVERs beyond one per phone: the phone's DHCP client timed out waiting.
    pub dhcp_retransmits: u64,
    /// HTTP answers other than the file (complete) or the two 404s of the fetch order.
    pub http_failed: u64,
    /// Connections that waited for the HTTP server's connection limit (not failures: they are served).
    pub http_queued: u64,
    /// REGISTERs rejected, malformed SIP.
    pub sip_failed: u64,
    /// REGISTERs beyond the challenged one and the accepted one: retransmissions.
    pub register_retransmits: u64,
    /// NOTIFYs not answered with 200 (timeout, error, other code).
    pub notify_failed: u64,
    /// Phones that never got a lease / registered / re-fetched within the timeout.
    pub not_leased: u64,
    pub not_registered: u64,
    pub not_refetched: u64,
    /// Events about a phone the storm could not name (should not happen).
    pub unattributed: u64,
}

impl Failures {
    /// Lost or failed requests (retransmissions are reported but are not failures: the phone recovered).
    pub fn total(&self) -> u64 {
        self.power_failed
            + self.dhcp_failed
            + self.http_failed
            + self.sip_failed
            + self.notify_failed
            + self.not_leased
            + self.not_registered
            + self.not_refetched
    }
}

struct Tracker {
    config_files: HashMap<String, String>,
    phones: HashMap<String, PhoneTimes>,
    failures: Failures,
    expected_404s: u64,
    events: u64,
    registered: usize,
    refetched: usize,
}

impl Tracker {
    fn new(infos: &[PhoneInfo]) -> Tracker {
        Tracker {
            config_files: infos
                .iter()
                .map(|p| (p.name.clone(), format!("cfg{}.xml", p.mac.lower())))
                .collect(),
            phones: infos
                .iter()
                .map(|p| (p.name.clone(), PhoneTimes::default()))
                .collect(),
            failures: Failures::default(),
            expected_404s: 0,
            events: 0,
            registered: 0,
            refetched: 0,
        }
    }

    fn observe(&mut self, event: &Event) {
        self.events += 1;
        let kind = event.kind.as_str();
        let field = |name: &str| event.field_str(name).unwrap_or("");
        match kind {
            "dhcp.nak" | "dhcp.no_offer" | "dhcp.malformed" => self.failures.dhcp_failed += 1,
            "dhcp.flood" => self.failures.dhcp_failed += event.field_u64("dropped").unwrap_or(1),
            "http.overloaded" => {
                self.failures.http_queued += event.field_u64("queued").unwrap_or(1)
            }
            "http.malformed" | "http.refused" => self.failures.http_failed += 1,
            "sip.malformed" => self.failures.sip_failed += 1,
            _ => {}
        }
        let tracked = matches!(
            kind,
            "power.on"
                | "dhcp.discover"
                | "dhcp.ack"
                | "http.fetch"
                | "sip.register"
                | "sip.notify"
        );
        if !tracked {
            return;
        }
        let Some(name) = event.phone.as_deref() else {
            self.failures.unattributed += 1;
            return;
        };
        let config_file = self.config_files.get(name).cloned().unwrap_or_default();
        let Some(times) = self.phones.get_mut(name) else {
            self.failures.unattributed += 1;
            return;
        };
        let t = event.t_us;
        match kind {
            "power.on" => {
                if event.field("ok").and_then(|v| v.as_bool()) == Some(true) {
                    times.power_on.get_or_insert(t);
                } else {
                    self.failures.power_failed += 1;
                }
            }
            "dhcp.discover" => {
                times.discovers += 1;
                if times.discovers > 1 {
                    self.failures.dhcp_retransmits += 1;
                }
            }
            "dhcp.ack" => {
                times.ack.get_or_insert(t);
            }
            "http.fetch" => match field("outcome") {
                "complete" if field("file") == config_file => match times.notify_sent {
                    None => {
                        times.config.get_or_insert(t);
                    }
                    Some(sent) if t >= sent && times.refetched.is_none() => {
                        times.refetched = Some(t);
                        self.refetched += 1;
                    }
                    Some(_) => {}
                },
                "not_found" if field("file") != config_file => self.expected_404s += 1,
                _ => self.failures.http_failed += 1,
            },
            "sip.register" => {
                times.registers += 1;
                if times.registers > 2 {
                    self.failures.register_retransmits += 1;
                }
                match field("result") {
                    "ok" => {
                        if times.registered.is_none() {
                            times.registered = Some(t);
                            self.registered += 1;
                        }
                    }
                    "challenged" => {}
                    _ => self.failures.sip_failed += 1,
                }
            }
            "sip.notify" => {
                let ok = field("outcome") == "answered" && event.field_u64("code") == Some(200);
                if ok {
                    times.notify_answered.get_or_insert(t);
                } else {
                    self.failures.notify_failed += 1;
                }
            }
            _ => {}
        }
    }
}

/// Feeds the tracker until `done` says so or the deadline passes.
async fn follow(
    reader: &mut phonerig_core::timeline::TimelineReader,
    tracker: &mut Tracker,
    deadline: tokio::time::Instant,
    done: impl Fn(&Tracker) -> bool,
) -> bool {
    loop {
        while let Some(event) = reader.try_next() {
            tracker.observe(&event);
        }
        if done(tracker) {
            return true;
        }
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Ok(Some(event)) => tracker.observe(&event),
            Ok(None) | Err(_) => return done(tracker),
        }
    }
}

// ---- the report ------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    /// Phones that completed this phase.
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn phase(name: &'static str, mut samples: Vec<u64>) -> Phase {
    samples.sort_unstable();
    // Nearest rank: the smallest sample with at least p% of samples at or below it.
    let rank = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1] as f64 / 1000.0
    };
    Phase {
        name,
        count: samples.len(),
        p50_ms: rank(50.0),
        p99_ms: rank(99.0),
        max_ms: samples.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub phones: usize,
    pub model: String,
    pub machine: String,
    /// From the first power-on command to the last phone registered.
    pub all_registered_s: Option<f64>,
    /// From the first power-on command to the last power-on confirmed.
    pub power_on_spread_s: f64,
    /// From the first NOTIFY sent to the last phone's configuration fetched again.
    pub all_refetched_s: Option<f64>,
    pub phases: Vec<Phase>,
    pub failures: Failures,
    pub lost_or_failed: u64,
    /// Phones that did not finish, by the phase they stopped in.
    pub stopped_in: std::collections::BTreeMap<&'static str, u64>,
    pub events: u64,
    pub rig: ProcessUsage,
    pub phones_process: ProcessUsage,
    pub run_dir: PathBuf,
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    format!("{cpus} CPUs ({model}), {memory:.0} GiB")
}

impl StormReport {
    pub fn table(&self) -> String {
        let secs = |v: Option<f64>| v.map_or("not reached".to_owned(), |s| format!("{s:.3} s"));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "boot storm: {} × {} on {}",
            self.phones, self.model, self.machine
        );
        let _ = writeln!(
            out,
            "time to all registered   {}   (power-on commands spread over {:.3} s)",
            secs(self.all_registered_s),
            self.power_on_spread_s
        );
        let _ = writeln!(
            out,
            "time to all re-fetched   {}   (after NOTIFY check-sync)",
            secs(self.all_refetched_s)
        );
        let _ = writeln!(
            out,
            "\n{:<34} {:>7} {:>10} {:>10} {:>10}",
            "phase (per phone)", "phones", "p50 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            let _ = writeln!(
                out,
                "{:<34} {:>7} {:>10.1} {:>10.1} {:>10.1}",
                p.name, p.count, p.p50_ms, p.p99_ms, p.max_ms
            );
        }
        let f = &self.failures;
        let _ = writeln!(out, "\nlost or failed           {}", self.lost_or_failed);
        let _ = writeln!(
            out,
            "  power {} · dhcp {} · http {} · sip {} · notify {} · not leased {} · not registered {} · not re-fetched {}",
            f.power_failed, f.dhcp_failed, f.http_failed, f.sip_failed, f.notify_failed,
            f.not_leased, f.not_registered, f.not_refetched
        );
        if f.http_queued > 0 {
            let _ = writeln!(
                out,
                "  http connections that waited for the connection limit: {} (served, not failures)",
                f.http_queued
            );
        }
        if !self.stopped_in.is_empty() {
            let stages: Vec<String> = self
                .stopped_in
                .iter()
                .map(|(stage, n)| format!("{stage} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "  phones stopped in      {}   (post-mortem: lost-phones.txt)",
                stages.join(" · ")
            );
        }
        let _ = writeln!(
            out,
            "retransmissions          DHCP DISCOVER {} · REGISTER {}   (unattributed events {})",
            f.dhcp_retransmits, f.register_retransmits, f.unattributed
        );
        let _ = writeln!(
            out,
            "rig process              CPU {:.2} s (peak {:.0}%) · peak RSS {:.1} MiB · {} events",
            self.rig.cpu_seconds, self.rig.peak_cpu_percent, self.rig.peak_rss_mib, self.events
        );
        let _ = writeln!(
            out,
            "phones ({} process{})      CPU {:.2} s (peak {:.0}%) · peak RSS {:.1} MiB",
            self.phones_process.processes,
            if self.phones_process.processes == 1 {
                ""
            } else {
                "es"
            },
            self.phones_process.cpu_seconds,
            self.phones_process.peak_cpu_percent,
            self.phones_process.peak_rss_mib
        );
        let _ = write!(out, "run folder               {}", self.run_dir.display());
        out
    }
}

// ---- the storm -------------------------------------------------------------

fn check_host_limits(phones: usize) -> anyhow::Result<()> {
    // Every virtual phone has a pseudo-terminal console.
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
    };
    if let (Some(max), Some(used)) = (
        read("/proc/sys/kernel/pty/max"),
        read("/proc/sys/kernel/pty/nr"),
    ) {
        if used + phones > max {
            bail!(
                "{phones} virtual phones need {phones} pseudo-terminals; the kernel allows {max} ({used} in use). \
                 Raise it: sysctl -w kernel.pty.max={}",
                (used + phones + 1024).next_power_of_two()
            );
        }
    }
    Ok(())
}

async fn storm(args: &StormArgs) -> anyhow::Result<ExitCode> {
    if args.phones == 0 || args.phones > MAX_PHONES {
        bail!("--phones must be 1..={MAX_PHONES}");
    }
    match phonerig_sim::model::Model::find(&args.model) {
        Some(m) if m.vendor == phonerig_sim::model::Vendor::Htek => {}
        Some(_) => bail!(
            "the storm serves Htek provisioning files; `{}` is not an Htek UC9xx",
            args.model
        ),
        None => bail!("unknown model `{}`", args.model),
    }
    check_host_limits(args.phones)?;

    let work = tempfile::Builder::new()
        .prefix("phonerig-storm-")
        .tempdir()?;
    let sim_dir = work.path().join("sim");
    std::fs::create_dir_all(&sim_dir)?;
    let lab_path = work.path().join("lab.toml");
    std::fs::write(
        &lab_path,
        storm_lab(args.phones, &args.model, args.octet, &sim_dir),
    )?;
    let lab = Lab::load(&lab_path)?;
    let scenario = storm_scenario()?;
    let notify_step = scenario.steps[0].get_ref().clone();

    let run_dir = crate::run::create_run_dir(&args.runs, "storm")?;
    let timeline = crate::run::open_timeline(&run_dir)?;
    crate::run::publish_run_start(&timeline, "storm", &lab.name, None);

    eprintln!("starting {} virtual phones …", args.phones);
    let host = PhoneHost::spawn(&lab_path, &sim_dir, args.phones).await?;
    let phone_pids = host.pids();
    let bench = Arc::new(Bench::open(lab, timeline.clone(), Some(&run_dir)).await?);
    let infos: Vec<PhoneInfo> = bench
        .directory()
        .phones()
        .iter()
        .map(|p| (**p).clone())
        .collect();
    let services = bench.start_services(&scenario, &infos[0]).await?;

    let stop_sampling = CancellationToken::new();
    let rig_usage = tokio::spawn(sample(vec!["self".into()], stop_sampling.clone()));
    let phones_usage = tokio::spawn(sample(phone_pids, stop_sampling.clone()));

    let mut tracker = Tracker::new(&infos);
    let mut reader = timeline.reader();
    eprintln!("powering on {} phones at once …", args.phones);
    let t0 = timeline.now_us();
    let mut powering = tokio::task::JoinSet::new();
    for phone in &infos {
        let (bench, name) = (bench.clone(), phone.name.clone());
        powering.spawn(async move {
            // Failures are power.on events with ok = false; the tracker counts them.
            if let Ok(drivers) = bench.drivers(&name) {
                if let Ok(power) = drivers.power() {
                    let _ = power.on().await;
                }
            }
        });
    }
    let all = infos.len();
    let boot_deadline = tokio::time::Instant::now() + args.timeout;
    let booted = follow(&mut reader, &mut tracker, boot_deadline, |t| {
        t.registered == all
    })
    .await;
    while powering.join_next().await.is_some() {}

    eprintln!(
        "{} of {all} registered; NOTIFY check-sync to every phone …",
        tracker.registered
    );
    let t_notify = timeline.now_us();
    let placeholders = bench.placeholders();
    for phone in &infos {
        if let Some(times) = tracker.phones.get_mut(&phone.name) {
            times.notify_sent = Some(timeline.now_us());
        }
        // The answer (or timer F) is a sip.notify event.
        let _ = services
            .sip_action(&notify_step, phone, &placeholders)
            .await;
    }
    let sync_deadline = tokio::time::Instant::now() + args.timeout;
    let synced = follow(&mut reader, &mut tracker, sync_deadline, |t| {
        t.refetched == all
    })
    .await;
    // Late answers (a NOTIFY timing out, a slow 404) still count.
    let _ = follow(
        &mut reader,
        &mut tracker,
        tokio::time::Instant::now() + Duration::from_millis(500),
        |_| false,
    )
    .await;

    stop_sampling.cancel();
    write_post_mortem(&tracker, &infos, &sim_dir, &run_dir.join("lost-phones.txt")).await;
    let rig = rig_usage.await.unwrap_or_default();
    let phones_process = phones_usage.await.unwrap_or_default();
    services.stop(&timeline).await;
    host.stop().await;
    if let Ok(bench) = Arc::try_unwrap(bench) {
        bench.close().await;
    }
    let _ = (booted, synced);

    let report = build_report(args, &tracker, t0, t_notify, rig, phones_process, &run_dir);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(run_dir.join("storm.json"), &json)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", report.table());
    Ok(if report.lost_or_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// At most this many lost phones are asked for their state and console.
const POST_MORTEM_PHONES: usize = 50;

/// One line exchange on a virtual phone's control socket.
async fn control(sim_dir: &Path, phone: &str, command: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::UnixStream::connect(sim_dir.join(format!("{phone}.sock"))).await?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await??;
    Ok(line.trim_end().to_owned())
}

/// For each phone that did not finish (the first [`POST_MORTEM_PHONES`]):
/// the phase it stopped in, its `STATE?` and what its console printed — the
/// phone's side of the story; the rig's side is in events.jsonl.
async fn write_post_mortem(tracker: &Tracker, infos: &[PhoneInfo], sim_dir: &Path, path: &Path) {
    let lost: Vec<(&PhoneInfo, &'static str)> = infos
        .iter()
        .filter_map(|p| Some((p, tracker.phones.get(&p.name)?.stopped_in()?)))
        .collect();
    if lost.is_empty() {
        return;
    }
    let mut text = format!(
        "{} phones did not finish; the first {} follow.\n",
        lost.len(),
        lost.len().min(POST_MORTEM_PHONES)
    );
    for (phone, stage) in lost.into_iter().take(POST_MORTEM_PHONES) {
        let state = control(sim_dir, &phone.name, "STATE?").await;
        let console = match control(sim_dir, &phone.name, "CONSOLE?").await {
            Ok(answer) => match answer.strip_prefix("OK ") {
                Some(pty) => phonerig_sim::console::read_unread(Path::new(pty))
                    .map(|bytes| String::from_utf8_lossy(&bytes).replace('\r', ""))
                    .unwrap_or_else(|e| format!("(reading {pty}: {e})")),
                None => format!("({answer})"),
            },
            Err(error) => format!("({error})"),
        };
        let _ = write!(
            text,
            "\n== {} ({}) stopped in: {stage}\nstate: {}\nconsole:\n{console}",
            phone.name,
            phone.mac,
            state.unwrap_or_else(|e| format!("({e})"))
        );
    }
    if let Err(error) = std::fs::write(path, text) {
        eprintln!("writing {}: {error}", path.display());
    }
}

fn build_report(
    args: &StormArgs,
    tracker: &Tracker,
    t0: u64,
    t_notify: u64,
    rig: ProcessUsage,
    phones_process: ProcessUsage,
    run_dir: &Path,
) -> StormReport {
    let times: Vec<&PhoneTimes> = tracker.phones.values().collect();
    let span = |pick: fn(&PhoneTimes) -> Option<(u64, u64)>| -> Vec<u64> {
        times
            .iter()
            .filter_map(|t| pick(t))
            .map(|(a, b)| b.saturating_sub(a))
            .collect()
    };
    let phases = vec![
        phase("power-on → DHCP ACK", span(|t| Some((t.power_on?, t.ack?)))),
        phase(
            "DHCP ACK → config fetched (3 GETs)",
            span(|t| Some((t.ack?, t.config?))),
        ),
        phase(
            "config fetched → registered",
            span(|t| Some((t.config?, t.registered?))),
        ),
        phase(
            "power-on → registered",
            span(|t| Some((t.power_on?, t.registered?))),
        ),
        phase(
            "NOTIFY sent → 200 OK",
            span(|t| Some((t.notify_sent?, t.notify_answered?))),
        ),
        phase(
            "NOTIFY sent → config re-fetched",
            span(|t| Some((t.notify_sent?, t.refetched?))),
        ),
    ];
    let mut failures = tracker.failures.clone();
    failures.not_leased = times.iter().filter(|t| t.ack.is_none()).count() as u64;
    failures.not_registered = times.iter().filter(|t| t.registered.is_none()).count() as u64;
    failures.not_refetched = times.iter().filter(|t| t.refetched.is_none()).count() as u64;
    let last = |pick: fn(&PhoneTimes) -> Option<u64>| -> Option<u64> {
        let values: Vec<u64> = times.iter().filter_map(|t| pick(t)).collect();
        (values.len() == times.len())
            .then(|| values.into_iter().max())
            .flatten()
    };
    let power_last = times.iter().filter_map(|t| t.power_on).max().unwrap_or(t0);
    StormReport {
        phones: args.phones,
        model: args.model.clone(),
        machine: machine(),
        all_registered_s: last(|t| t.registered).map(|t| (t - t0) as f64 / 1e6),
        power_on_spread_s: power_last.saturating_sub(t0) as f64 / 1e6,
        all_refetched_s: last(|t| t.refetched).map(|t| t.saturating_sub(t_notify) as f64 / 1e6),
        phases,
        lost_or_failed: failures.total(),
        stopped_in: times.iter().filter_map(|t| t.stopped_in()).fold(
            Default::default(),
            |mut counts, stage| {
                *counts.entry(stage).or_default() += 1;
                counts
            },
        ),
        failures,
        events: tracker.events,
        rig,
        phones_process,
        run_dir: run_dir.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::net::Ipv4Addr;

    #[rstest]
    #[case("0..100", Ok((0, 100)))]
    #[case("1948..3896", Ok((1948, 3896)))]
    #[case("5..5", Err("empty slice 5..5"))]
    #[case("7", Err("`7` is not start..end"))]
    #[case("a..3", Err("`a`: invalid digit found in string"))]
    fn phone_process_slices_parse(
        #[case] text: &str,
        #[case] expected: Result<(usize, usize), &str>,
    ) {
        assert_eq!(parse_slice(text), expected.map_err(str::to_owned));
    }

    #[test]
    fn a_process_hosts_as_many_phones_as_its_file_limit_allows() {
        let per_process = phones_per_process();
        assert!(per_process >= 100);
        let hard = hard_open_file_limit().unwrap_or(usize::MAX);
        if hard != usize::MAX && hard > 1512 {
            assert!(
                per_process * FILES_PER_PHONE <= hard,
                "{per_process} phones × {FILES_PER_PHONE} > {hard}"
            );
        }
    }

    #[test]
    fn storm_lab_is_a_valid_lab_with_distinct_phones() {
        let text = storm_lab(300, "htek-uc924", 141, Path::new("/tmp/s"));
        let lab = Lab::parse(Path::new("storm.toml"), &text).unwrap();
        assert_eq!(lab.phones.len(), 300);
        assert_eq!(lab.bench.ip, Ipv4Addr::new(127, 141, 0, 1));
        let infos = lab.phone_infos();
        assert_eq!(infos[0].mac.lower(), "001fc1000001");
        assert_eq!(infos[299].mac.lower(), "001fc100012c");
        assert_eq!(infos[299].name, "p00300");
        // The pool leaves room for every phone's fixed address.
        let fixed = lab.fixed_addresses();
        assert_eq!(fixed[0].1, Ipv4Addr::new(127, 141, 255, 254));
        assert!(lab.phones.iter().all(|p| p.get_ref().sim.is_none()));
    }

    #[test]
    fn storm_scenario_serves_the_config_and_has_the_notify_step() {
        let scenario = storm_scenario().unwrap();
        assert!(scenario.steps[0].get_ref().notify.is_some());
        assert_eq!(scenario.file_rules().len(), 1);
    }

    #[rstest]
    #[case(vec![], f64::NAN, f64::NAN)]
    #[case(vec![5_000], 5.0, 5.0)]
    #[case((1..=100).map(|i| i * 1000).collect(), 50.0, 99.0)]
    #[case((1..=1000).map(|i| i * 1000).collect(), 500.0, 990.0)]
    fn percentiles_are_nearest_rank(#[case] samples: Vec<u64>, #[case] p50: f64, #[case] p99: f64) {
        let p = phase("x", samples);
        if p50.is_nan() {
            assert!(p.p50_ms.is_nan() && p.p99_ms.is_nan());
        } else {
            assert_eq!((p.p50_ms, p.p99_ms), (p50, p99));
        }
    }

    fn event(seq: u64, t_us: u64, phone: &str, kind: &str, fields: serde_json::Value) -> Event {
        Event {
            seq,
            t_us,
            wall: String::new(),
            source: phonerig_core::Source::Rig,
            phone: Some(phone.into()),
            kind: kind.into(),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn tracker_follows_one_phone_through_every_phase_and_counts_failures() {
        let lab = Lab::parse(
            Path::new("s.toml"),
            &storm_lab(2, "htek-uc924", 142, Path::new("/tmp/s")),
        )
        .unwrap();
        let infos = lab.phone_infos();
        let mut tracker = Tracker::new(&infos);
        let cfg = format!("cfg{}.xml", infos[0].mac.lower());
        use serde_json::json;
        let events = [
            event(0, 10, "p00001", "power.on", json!({"ok": true})),
            event(1, 20, "p00001", "dhcp.discover", json!({})),
            event(2, 30, "p00001", "dhcp.ack", json!({})),
            event(
                3,
                40,
                "p00001",
                "http.fetch",
                json!({"file": "cfg0012.xml", "outcome": "not_found"}),
            ),
            event(
                4,
                50,
                "p00001",
                "http.fetch",
                json!({"file": cfg, "outcome": "complete"}),
            ),
            event(
                5,
                60,
                "p00001",
                "sip.register",
                json!({"result": "challenged"}),
            ),
            event(6, 70, "p00001", "sip.register", json!({"result": "ok"})),
            event(7, 71, "p00002", "power.on", json!({"ok": false})),
            event(
                8,
                72,
                "p00002",
                "http.fetch",
                json!({"file": "x", "outcome": "timed_out"}),
            ),
        ];
        for e in &events {
            tracker.observe(e);
        }
        assert_eq!(tracker.registered, 1);
        tracker.phones.get_mut("p00001").unwrap().notify_sent = Some(80);
        tracker.observe(&event(
            9,
            90,
            "p00001",
            "sip.notify",
            json!({"outcome": "answered", "code": 200}),
        ));
        tracker.observe(&event(
            10,
            95,
            "p00001",
            "http.fetch",
            json!({"file": cfg, "outcome": "complete"}),
        ));
        assert_eq!(tracker.refetched, 1);
        let args = StormArgs {
            phones: 2,
            model: "htek-uc924".into(),
            octet: 142,
            timeout: Duration::from_secs(1),
            runs: "runs".into(),
            json: None,
            sim_host: None,
            sim_dir: None,
            sim_slice: None,
        };
        let report = build_report(
            &args,
            &tracker,
            0,
            80,
            ProcessUsage::default(),
            ProcessUsage::default(),
            Path::new("r"),
        );
        assert_eq!(report.phases[0].p50_ms, 0.02); // power-on 10 µs → ACK 30 µs
        assert_eq!(report.phases[5].p50_ms, 0.015); // NOTIFY 80 → re-fetch 95
        let f = &report.failures;
        assert_eq!((f.power_failed, f.http_failed), (1, 1));
        assert_eq!((f.not_leased, f.not_registered, f.not_refetched), (1, 1, 1));
        assert_eq!(report.lost_or_failed, 5);
        // p00001 finished every phase; p00002's power-on failed.
        assert_eq!(
            report.stopped_in.into_iter().collect::<Vec<_>>(),
            vec![("power-on", 1)]
        );
        assert_eq!(report.all_registered_s, None, "one phone never registered");
        assert_eq!(tracker.expected_404s, 1);
    }
}

//! The bench of a run: the lab's phones with their bound drivers, the
//! virtual phones when the lab has any, and per case the services.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use phonerig_core::{
    PhoneDirectory, PhoneInfo, Placeholders, ProvisioningTree, RigEndpoints, RunningService,
    ServiceContext, Timeline,
};
use phonerig_drivers::{BackendSpec, Driven, DriverEnv, Key};
use tokio_util::sync::CancellationToken;

use crate::lab::{Lab, SimPlacement};
use crate::netns_runtime::{run_on, NamespaceRuntime};
use crate::scenario::{Scenario, Step};

/// The drivers of one phone, each wrapped so every call is an event.
pub struct PhoneDrivers {
    driven: Driven,
}

impl PhoneDrivers {
    fn missing(&self, capability: &str) -> anyhow::Error {
        anyhow!("phone `{}` has no {capability} backend in the lab file (add `{capability} = {{ backend = \"…\" }}` to its [[phone]])", self.driven.phone)
    }

    pub fn power(&self) -> anyhow::Result<&phonerig_drivers::DrivenPower> {
        Some(&self.driven.power)
            .filter(|d| d.is_configured())
            .ok_or_else(|| self.missing("power"))
    }

    pub fn button(&self) -> anyhow::Result<&phonerig_drivers::DrivenButton> {
        Some(&self.driven.button)
            .filter(|d| d.is_configured())
            .ok_or_else(|| self.missing("button"))
    }

    pub fn keys(&self) -> anyhow::Result<&phonerig_drivers::DrivenKeys> {
        Some(&self.driven.keys)
            .filter(|d| d.is_configured())
            .ok_or_else(|| self.missing("keys"))
    }

    pub fn console(&self) -> anyhow::Result<&phonerig_drivers::DrivenConsole> {
        Some(&self.driven.console)
            .filter(|d| d.is_configured())
            .ok_or_else(|| self.missing("console"))
    }
}

pub fn key_from_name(name: &str, arg: Option<String>) -> anyhow::Result<Key> {
    Key::parse(name, arg.as_deref()).map_err(|e| anyhow!("{e}"))
}

pub struct Bench {
    lab: Lab,
    timeline: Timeline,
    directory: PhoneDirectory,
    placeholders: Placeholders,
    drivers: HashMap<String, PhoneDrivers>,
    sim: Option<phonerig_sim::SimHost>,
    _sim_dir: Option<tempfile::TempDir>,
    run_dir: Option<PathBuf>,
    /// Every frame on a real lab NIC, for the whole run (`<run_dir>/capture.pcap`).
    capture: Option<phonerig_drivers::capture::Capture>,
    /// Where the services run when the lab has `[bench] netns`.
    services_runtime: Option<NamespaceRuntime>,
}

impl Bench {
    /// Binds every phone's capabilities and powers up the virtual phones' host.
    pub async fn open(
        lab: Lab,
        timeline: Timeline,
        run_dir: Option<&Path>,
    ) -> anyhow::Result<Bench> {
        let ports = lab.ports();
        let rig_ip = lab.bench.ip.to_string();
        let placeholders = Placeholders::new().with_rig(&RigEndpoints {
            ip: rig_ip,
            http_port: ports.http,
            https_port: ports.https,
            tftp_port: ports.tftp,
            ftp_port: ports.ftp,
            sip_port: ports.sip,
        });
        let directory = PhoneDirectory::new(lab.phone_infos());
        let services_runtime = match &lab.bench.netns {
            Some(netns) => Some(NamespaceRuntime::start(netns)?),
            None => None,
        };
        let capture = if lab.is_loopback() {
            None
        } else {
            require_lab_nic(&lab)?;
            match run_dir {
                Some(dir) => start_capture(&lab, &timeline, dir),
                None => None,
            }
        };
        let virtual_phones: Vec<_> = lab
            .phones
            .iter()
            .map(|p| p.get_ref())
            .filter(|p| p.sim.is_some())
            .collect();
        let (sim, sim_dir_guard, sim_dir) = if virtual_phones.is_empty() {
            (None, None, std::env::temp_dir())
        } else {
            let (guard, dir) = match &lab.sim.dir {
                Some(dir) => (None, dir.clone()),
                None => {
                    let guard = tempfile::Builder::new().prefix("phonerig-sim-").tempdir()?;
                    let dir = guard.path().to_owned();
                    (Some(guard), dir)
                }
            };
            let placement = match &lab.sim.placement {
                SimPlacement::Netns { netns, interface } => phonerig_sim::Placement::Netns {
                    netns: netns.clone(),
                    parent_interface: interface.clone(),
                },
                _ => phonerig_sim::Placement::Loopback {
                    dhcp_server: SocketAddr::new(IpAddr::V4(lab.bench.ip), ports.dhcp),
                    services: phonerig_sim::ServicePorts {
                        tftp: ports.tftp,
                        http: ports.http,
                        https: ports.https,
                        ftp: ports.ftp,
                    },
                },
            };
            let phones = virtual_phones
                .iter()
                .map(|p| {
                    let sim = p.sim.clone().unwrap_or_default();
                    let mut timing = phonerig_sim::Timing::default();
                    if let Some(d) = sim.boot_delay {
                        timing.boot_delay = d.0;
                    }
                    if let Some(d) = sim.reboot_delay {
                        timing.reboot_delay = d.0;
                    }
                    phonerig_sim::VirtualPhoneSpec {
                        name: p.name.clone(),
                        model: p.model.clone(),
                        mac: p.mac,
                        firmware: sim.firmware.clone().unwrap_or_else(|| "1.0.0".into()),
                        flash: sim.flash.clone(),
                        timing,
                        faults: sim.faults.clone(),
                    }
                })
                .collect();
            let host = phonerig_sim::SimHost::start(phonerig_sim::SimHostConfig {
                sim_dir: dir.clone(),
                placement,
                phones,
            })
            .await
            .context("starting the virtual phones")?;
            (Some(host), guard, dir)
        };
        let mut drivers = HashMap::new();
        for entry in lab.phones.iter().map(|p| p.get_ref()) {
            let env = DriverEnv {
                sim_dir: sim_dir.clone(),
                run_dir: run_dir.map(Path::to_owned),
                phone: entry.name.clone(),
            };
            let [button, power, console, keys] = entry.capabilities().map(|(_, c)| {
                c.map(|c| BackendSpec {
                    backend: c.backend,
                    params: c.params,
                })
            });
            let specs = phonerig_drivers::driven::PhoneDrivers {
                button,
                power,
                console,
                keys,
            };
            let driven = Driven::from_specs(timeline.clone(), &env, &specs)
                .with_context(|| format!("phone `{}`", entry.name))?;
            if driven.console.is_configured() {
                driven
                    .console
                    .start()
                    .await
                    .with_context(|| format!("phone `{}`: console", entry.name))?;
            }
            drivers.insert(entry.name.clone(), PhoneDrivers { driven });
        }
        Ok(Bench {
            lab,
            timeline,
            directory,
            placeholders,
            drivers,
            sim,
            _sim_dir: sim_dir_guard,
            run_dir: run_dir.map(Path::to_owned),
            capture,
            services_runtime,
        })
    }

    /// Runs `work` where the services live: inside `[bench] netns` when set.
    async fn in_bench_netns<F>(&self, work: F) -> anyhow::Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.services_runtime {
            Some(runtime) => runtime.run(work).await,
            None => Ok(work.await),
        }
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub fn placeholders(&self) -> Placeholders {
        self.placeholders.clone()
    }

    pub fn directory(&self) -> &PhoneDirectory {
        &self.directory
    }

    pub fn drivers(&self, phone: &str) -> anyhow::Result<&PhoneDrivers> {
        self.drivers
            .get(phone)
            .ok_or_else(|| anyhow!("no phone `{phone}` in the lab"))
    }

    /// How long a power cycle keeps the phone off: long enough for a real
    /// PSU to drain, short for a virtual phone.
    pub fn power_off_time(&self, phone: &str) -> Duration {
        let entry = self.lab.phone(phone);
        let configured = entry
            .and_then(|p| p.power.as_ref())
            .and_then(|c| c.params.get("off_time"))
            .and_then(|v| v.as_str())
            .and_then(|s| phonerig_core::duration::parse(s).ok());
        configured.unwrap_or(if entry.is_some_and(|p| p.sim.is_some()) {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(5)
        })
    }

    /// Starts every service for one case, configured by the scenario.
    pub async fn start_services(
        &self,
        scenario: &Scenario,
        _phone: &PhoneInfo,
    ) -> anyhow::Result<CaseServices> {
        let shutdown = CancellationToken::new();
        let root = scenario
            .serve
            .files
            .as_ref()
            .map(|f| scenario.resolve_path(&f.root));
        let tree = ProvisioningTree::new(
            root,
            scenario.file_rules(),
            self.placeholders.clone(),
            self.directory.clone(),
        );
        let ctx = ServiceContext {
            timeline: self.timeline.clone(),
            directory: self.directory.clone(),
            bind_ip: IpAddr::V4(self.lab.bench.ip),
            placeholders: self.placeholders.clone(),
            tree,
            shutdown: shutdown.clone(),
        };
        let mut services = CaseServices {
            shutdown,
            running: Vec::new(),
            sip: None,
            runtime: self.services_runtime.as_ref().map(NamespaceRuntime::handle),
        };
        match self.start_each(ctx, scenario, &mut services).await {
            Ok(()) => Ok(services),
            Err(error) => {
                services.stop(&self.timeline).await;
                Err(error)
            }
        }
    }

    async fn start_each(
        &self,
        ctx: ServiceContext,
        scenario: &Scenario,
        services: &mut CaseServices,
    ) -> anyhow::Result<()> {
        let ports = self.lab.ports();
        let serve = &scenario.serve;
        let lab = &self.lab;
        let loopback = lab.is_loopback();
        let interface = (!loopback).then(|| lab.bench.nic.clone());

        let dhcp = phonerig_dhcp::DhcpConfig {
            port: ports.dhcp,
            client_port: ports.dhcp_client,
            interface: interface.clone(),
            reply_mode: if loopback {
                phonerig_dhcp::ReplyMode::ToSource
            } else {
                phonerig_dhcp::ReplyMode::Broadcast
            },
            subnet_prefix: lab.bench.prefix,
            pool_start: lab.bench.pool.start,
            pool_end: lab.bench.pool.end,
            fixed: lab.fixed_addresses(),
            default_lease: lab
                .bench
                .lease_time
                .map_or(Duration::from_secs(3600), Into::into),
            netns: lab.bench.netns.clone(),
        };
        let dhcp_settings = serve.dhcp.clone().unwrap_or_default();
        let checks = phonerig_dhcp::StartupChecks {
            dedicated: lab.bench.dedicated,
            ..phonerig_dhcp::StartupChecks::default()
        };
        services.running.push(
            self.start_service("DHCP", || {
                phonerig_dhcp::start_with(
                    ctx.clone(),
                    dhcp.clone(),
                    dhcp_settings.clone(),
                    checks.clone(),
                )
            })
            .await?,
        );

        let tftp = phonerig_tftp::TftpConfig {
            port: ports.tftp,
            netns: lab.bench.netns.clone(),
            ..phonerig_tftp::TftpConfig::default()
        };
        let tftp_settings = serve.tftp.clone().unwrap_or_default();
        services.running.push(
            self.start_service("TFTP", || {
                phonerig_tftp::start(ctx.clone(), tftp.clone(), tftp_settings.clone())
            })
            .await?,
        );

        let http = phonerig_http::HttpConfig {
            http_port: Some(ports.http),
            https_port: Some(ports.https),
            ..phonerig_http::HttpConfig::default()
        };
        let http_settings = serve.http.clone().unwrap_or_default();
        services.running.push(
            self.start_service("HTTP", || {
                phonerig_http::start(ctx.clone(), http.clone(), http_settings.clone())
            })
            .await?,
        );

        let ftp = phonerig_ftp::FtpConfig {
            port: ports.ftp,
            passive_ports: ports.ftp_passive.0..=ports.ftp_passive.1,
        };
        let ftp_settings = serve.ftp.clone().unwrap_or_default();
        services.running.push(
            self.start_service("FTP", || {
                phonerig_ftp::start(ctx.clone(), ftp.clone(), ftp_settings.clone())
            })
            .await?,
        );

        let sip = phonerig_sip::SipConfig {
            port: ports.sip,
            rtp_ports: ports.rtp.0..=ports.rtp.1,
            ..phonerig_sip::SipConfig::default()
        };
        let sip_settings = serve.sip.clone().unwrap_or_default();
        let (running, handle) = self
            .start_service("SIP", || {
                phonerig_sip::start(ctx.clone(), sip.clone(), sip_settings.clone())
            })
            .await?;
        services.running.push(running);
        services.sip = Some(handle);
        Ok(())
    }

    /// Starts one service, retrying for a moment while its port is still held:
    /// the previous case's service has stopped, but a task of it may own the
    /// socket for a few more milliseconds.
    async fn start_service<T, Fut>(&self, name: &str, start: impl Fn() -> Fut) -> anyhow::Result<T>
    where
        Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let deadline = std::time::Instant::now() + PORT_RELEASE_GRACE;
        loop {
            match self
                .in_bench_netns(start())
                .await
                .and_then(|started| started)
            {
                Err(error) if port_still_held(&error) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcome => return outcome.context(name.to_owned()),
            }
        }
    }

    pub async fn close(mut self) {
        for drivers in self.drivers.values() {
            if drivers.driven.console.is_configured() {
                drivers.driven.console.stop().await;
            }
        }
        if let Some(sim) = self.sim.take() {
            sim.stop().await;
        }
        if let Some(capture) = self.capture.take() {
            // Joining the capture thread waits out its read timeout (~200 ms).
            let _ = tokio::task::spawn_blocking(move || capture.stop()).await;
        }
        let _ = &self.run_dir;
    }
}

/// How long a service waits for its port to be released by the previous case.
const PORT_RELEASE_GRACE: Duration = Duration::from_secs(3);

/// Whether starting failed because the address is still in use. Services
/// wrap the io::Error in text, so the text is checked too.
fn port_still_held(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
            || cause.to_string().contains("Address already in use")
    })
}

/// Runs `work` on a thread inside the lab's namespace when it has one; the
/// NIC checks and the capture see the network of the calling thread.
fn in_lab_netns<T: Send + 'static>(
    lab: &Lab,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    match &lab.bench.netns {
        Some(netns) => phonerig_core::netns::in_netns(netns, work),
        None => work(),
    }
}

/// A missing, down or unaddressed lab NIC stops the run before any service
/// binds, with the fix in the message.
fn require_lab_nic(lab: &Lab) -> anyhow::Result<()> {
    let (nic, ip) = (lab.bench.nic.clone(), IpAddr::V4(lab.bench.ip));
    if lab.bench.dedicated {
        // Declared dedicated (`dedicated = true`, --i-know-this-interface-is-dedicated):
        // the default route does not stop the bench; the DHCP server's start-up
        // checks record the override as a warning (docs/safety.md).
        let findings = in_lab_netns(lab, move || {
            Ok(phonerig_drivers::doctor::check_nic(&nic, Some(ip)))
        })?;
        let problems: Vec<String> = findings
            .into_iter()
            .filter(|f| !f.ok && f.check != "nic.link" && f.check != "nic.not_default_route")
            .map(|f| format!("{}: {} (fix: {})", f.check, f.detail, f.fix))
            .collect();
        anyhow::ensure!(
            problems.is_empty(),
            "the lab NIC is not ready: {}",
            problems.join("; ")
        );
        return Ok(());
    }
    in_lab_netns(lab, move || {
        phonerig_drivers::doctor::require_lab_nic(&nic, Some(ip)).map_err(std::io::Error::other)
    })
    .map_err(|e| {
        let text = e.to_string();
        if text.contains("nic.not_default_route") {
            anyhow!(
                "{text}. If this interface really carries nothing but phones, override deliberately with {} or {}",
                phonerig_dhcp::safety::OVERRIDE_FLAG,
                phonerig_dhcp::safety::OVERRIDE_SETTING
            )
        } else {
            anyhow!("{text}")
        }
    })
}

/// A capture that cannot start (no CAP_NET_RAW) does not stop the run: the
/// services still see everything they serve; the failure is a `capture.error`
/// event and a warning.
fn start_capture(
    lab: &Lab,
    timeline: &Timeline,
    run_dir: &Path,
) -> Option<phonerig_drivers::capture::Capture> {
    let phones = lab
        .phones
        .iter()
        .map(|p| (p.get_ref().name.clone(), p.get_ref().mac))
        .collect();
    let settings = phonerig_drivers::capture::CaptureSettings::new(
        &lab.bench.nic,
        run_dir.join("capture.pcap"),
        phones,
    );
    let events = timeline.clone();
    let started = in_lab_netns(lab, move || {
        phonerig_drivers::capture::Capture::start(settings, events).map_err(std::io::Error::other)
    });
    match started {
        Ok(capture) => Some(capture),
        Err(error) => {
            eprintln!("rig: warning: no capture.pcap for this run: {error}");
            timeline.publish(
                phonerig_core::event::NewEvent::new(
                    phonerig_core::Source::Capture,
                    "capture.error",
                )
                .field("interface", &lab.bench.nic)
                .field("error", error.to_string()),
            );
            None
        }
    }
}

/// The services of one case; stopped (ports released) before the next case.
pub struct CaseServices {
    shutdown: CancellationToken,
    running: Vec<RunningService>,
    sip: Option<phonerig_sip::SipHandle>,
    /// The namespace runtime the services run on, when the lab has one: SIP
    /// actions may make sockets (RTP, TCP), which must be made there too.
    runtime: Option<tokio::runtime::Handle>,
}

/// The SIP service of a case, usable outside the runner (`rig serve`'s control socket).
#[derive(Clone)]
pub struct SipControl {
    sip: phonerig_sip::SipHandle,
    runtime: Option<tokio::runtime::Handle>,
}

impl SipControl {
    pub fn handle(&self) -> &phonerig_sip::SipHandle {
        &self.sip
    }

    /// Sends NOTIFY `event` to the phone and waits for its final answer (or timer F).
    pub async fn notify(
        &self,
        phone: &PhoneInfo,
        event: &str,
    ) -> anyhow::Result<phonerig_sip::NotifyOutcome> {
        let (sip, phone, event) = (self.sip.clone(), phone.clone(), event.to_owned());
        let work = async move { sip.notify(&phone, &event, None).await };
        match &self.runtime {
            Some(runtime) => run_on(runtime, work).await?,
            None => work.await,
        }
    }
}

impl CaseServices {
    pub async fn stop(self, timeline: &Timeline) {
        self.shutdown.cancel();
        for service in self.running {
            service.join(timeline).await;
        }
    }

    fn sip(&self) -> anyhow::Result<&phonerig_sip::SipHandle> {
        self.sip
            .as_ref()
            .ok_or_else(|| anyhow!("the SIP service is not running"))
    }

    /// The SIP service, for callers outside the runner.
    pub fn sip_control(&self) -> anyhow::Result<SipControl> {
        Ok(SipControl {
            sip: self.sip()?.clone(),
            runtime: self.runtime.clone(),
        })
    }

    /// NOTIFY, calls and call control by the extensions the rig plays; on
    /// the namespace runtime when the services run in one.
    pub async fn sip_action(
        &self,
        step: &Step,
        phone: &PhoneInfo,
        placeholders: &Placeholders,
    ) -> anyhow::Result<()> {
        let sip = self.sip()?.clone();
        match &self.runtime {
            None => Self::sip_step(&sip, step, phone, placeholders).await,
            Some(runtime) => {
                let (step, phone, placeholders) =
                    (step.clone(), phone.clone(), placeholders.clone());
                run_on(runtime, async move {
                    Self::sip_step(&sip, &step, &phone, &placeholders).await
                })
                .await?
            }
        }
    }

    async fn sip_step(
        sip: &phonerig_sip::SipHandle,
        step: &Step,
        phone: &PhoneInfo,
        placeholders: &Placeholders,
    ) -> anyhow::Result<()> {
        if let Some(notify) = &step.notify {
            let event = if notify.reboot {
                format!("{};reboot=true", notify.event)
            } else {
                notify.event.clone()
            };
            // The phone's answer (or the timer F timeout) is an event; expectations wait for it.
            let (sip, phone) = (sip.clone(), phone.clone());
            tokio::spawn(async move {
                let _ = sip.notify(&phone, &event, None).await;
            });
            return Ok(());
        }
        if let Some(call) = &step.call {
            let to = placeholders.expand(&call.to)?;
            if to != phone.ext {
                return Err(anyhow!("`call.to` must be the phone under test ({}); calls between rig extensions are not placed on the wire", phone.ext));
            }
            let options = phonerig_sip::CallOptions {
                dialog: call.dialog.clone(),
                auto_answer: call.auto_answer,
                ..phonerig_sip::CallOptions::default()
            };
            sip.call(&placeholders.expand(&call.from)?, phone, options)
                .await?;
            return Ok(());
        }
        if let Some(ext) = &step.answer {
            return sip.answer(&ext.extension).await;
        }
        if let Some(reject) = &step.reject {
            return sip.reject(&reject.extension, reject.code).await;
        }
        if let Some(ext) = &step.hold {
            return sip.hold(&ext.extension).await;
        }
        if let Some(ext) = &step.resume {
            return sip.resume(&ext.extension).await;
        }
        if let Some(ext) = &step.hangup {
            return sip.hangup(&ext.extension).await;
        }
        if let Some(ext) = &step.cancel {
            return sip.cancel(&ext.extension).await;
        }
        if let Some(policy) = &step.answer_policy {
            sip.set_answer_policy(
                &placeholders.expand(&policy.extension)?,
                policy.policy.clone(),
            );
            return Ok(());
        }
        Err(anyhow!("step has no action"))
    }
}

#[cfg(test)]
mod port_release_tests {
    use super::port_still_held;
    use rstest::rstest;

    #[rstest]
    #[case(
        anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::AddrInUse)),
        true
    )]
    #[case(anyhow::anyhow!("SIP UDP bind 127.0.0.1:5060: Address already in use (os error 98)"), true)]
    #[case(anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::AddrInUse)).context("TFTP"), true)]
    #[case(
        anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        false
    )]
    #[case(anyhow::anyhow!("unknown placeholder"), false)]
    fn only_a_held_port_is_retried(#[case] error: anyhow::Error, #[case] retried: bool) {
        assert_eq!(port_still_held(&error), retried);
    }
}

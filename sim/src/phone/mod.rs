//! One virtual phone: persistent state (flash, firmware, button), the power
//! loop (boot → DHCP → provisioning → SIP → serve until power-off or reboot),
//! and what the control socket asks of it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phonerig_sim_ua::{
    Fault, FaultSet, Key, NotifyDecision, PanicButton, PanicMode, Telephony, UaConfig, UaEvent,
};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::VirtualPhoneSpec;
use crate::console::Console;
use crate::dhcp::{self, DhcpIdentity, DhcpPath, Lease};
use crate::fetch::{FetchError, Fetcher, Scheme, ServerUrl};
use crate::model::{Model, Vendor};
use crate::net::Attachment;
use crate::vendor::{h680, htek, panasonic};

mod h680_flow;
mod htek_flow;
mod panasonic_flow;

/// What survives a reboot or power cut (flash), and what the control socket sees.
#[derive(Debug, Clone, Default)]
pub(crate) struct Persistent {
    /// Htek P-codes or H680 keys. Panasonic keeps its settings in `layers`.
    pub flash: BTreeMap<String, String>,
    pub layers: panasonic::Layers,
    /// Panasonic: no configuration applied yet (pre-provisioning allowed).
    pub factory_default: bool,
    pub firmware: String,
    /// Htek §15: the raw bytes of the last applied config file.
    pub last_htek_config: Option<Vec<u8>>,
}

#[derive(Default)]
struct Live {
    powered: bool,
    button_attached: bool,
    address: Option<Ipv4Addr>,
    phase: &'static str,
    power: Option<PowerHandle>,
}

struct PowerHandle {
    cancel: CancellationToken,
    commands: mpsc::UnboundedSender<SessionCommand>,
    finished: oneshot::Receiver<()>,
}

/// Requests from the control socket (and the NOTIFY callback) into a running session.
pub(crate) enum SessionCommand {
    Key(Key, oneshot::Sender<Result<(), String>>),
    PanicPress(oneshot::Sender<Result<(), String>>),
    State(oneshot::Sender<serde_json::Value>),
    FactoryReset,
    /// Decided by the NOTIFY callback: re-provision, or reboot and provision.
    Resync,
    Reboot(&'static str),
    LeaseLost,
}

pub(crate) struct Phone {
    pub spec: VirtualPhoneSpec,
    pub model: Model,
    /// The fault switch: documented rules this phone breaks on purpose (empty by default).
    pub faults: FaultSet,
    pub console: Console,
    pub attachment: Attachment,
    persistent: Mutex<Persistent>,
    live: Mutex<Live>,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    PowerOff,
    Reboot,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Phone {
    pub(crate) fn new(
        spec: VirtualPhoneSpec,
        model: Model,
        faults: FaultSet,
        console: Console,
        attachment: Attachment,
    ) -> Phone {
        let persistent = Self::initial_flash(&spec, model);
        Phone {
            spec,
            model,
            faults,
            console,
            attachment,
            persistent: Mutex::new(persistent),
            live: Mutex::new(Live {
                phase: "off",
                // A virtual Htek comes with its USB panic button plugged in, as on
                // a bench whose button capability is wired (000 "Connecting to the
                // IP Phone"); `DETACH` unplugs it.
                button_attached: model.vendor == Vendor::Htek,
                ..Live::default()
            }),
        }
    }

    fn initial_flash(spec: &VirtualPhoneSpec, model: Model) -> Persistent {
        let mut flash = spec.flash.clone();
        let mut persistent = Persistent {
            firmware: spec.firmware.clone(),
            ..Persistent::default()
        };
        if model.vendor == Vendor::Panasonic {
            persistent.factory_default = flash
                .remove("factory_default")
                .is_none_or(|v| v.trim() != "false");
            persistent.layers.pre_provisioning = flash.clone();
        }
        persistent.flash = flash;
        persistent
    }

    fn say(&self, text: impl AsRef<str>) {
        self.console.line(text.as_ref());
    }

    fn set_phase(&self, phase: &'static str) {
        lock(&self.live).phase = phase;
    }

    pub(crate) fn powered(&self) -> bool {
        lock(&self.live).powered
    }

    fn devcode(&self) -> String {
        lock(&self.persistent)
            .flash
            .get("devcode")
            .cloned()
            .or(self.model.devcode.map(str::to_owned))
            .unwrap_or_default()
    }

    fn user_agent(&self) -> String {
        self.model
            .user_agent(&lock(&self.persistent).firmware, &self.spec.mac)
    }

    // ---- control socket -------------------------------------------------

    pub(crate) fn power_on(self: &Arc<Self>) -> bool {
        let mut live = lock(&self.live);
        if live.powered {
            return false;
        }
        let cancel = CancellationToken::new();
        let (commands, receiver) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel();
        live.powered = true;
        live.power = Some(PowerHandle {
            cancel: cancel.clone(),
            commands: commands.clone(),
            finished,
        });
        drop(live);
        let phone = self.clone();
        let power_loop = async move {
            phone.power_loop(cancel, commands, receiver).await;
            let _ = done.send(());
        };
        match self.attachment.netns().map(str::to_owned) {
            None => {
                tokio::spawn(power_loop);
            }
            Some(netns) => {
                // Every socket of the session must be created inside the
                // namespace: the session runs on its own thread that entered it.
                let phone = self.clone();
                std::thread::spawn(move || {
                    let entered = std::fs::File::open(format!("/var/run/netns/{netns}"))
                        .map_err(|e| e.to_string())
                        .and_then(|ns| {
                            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(error) = entered {
                        phone.say(format!("network namespace {netns} unavailable: {error}"));
                        return;
                    }
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(power_loop),
                        Err(error) => phone.say(format!("cannot start: {error}")),
                    }
                });
            }
        }
        true
    }

    pub(crate) async fn power_off(&self) -> bool {
        let handle = {
            let mut live = lock(&self.live);
            if !live.powered {
                return false;
            }
            live.powered = false;
            live.address = None;
            live.phase = "off";
            live.power.take()
        };
        if let Some(handle) = handle {
            handle.cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), handle.finished).await;
        }
        self.attachment.deconfigure();
        true
    }

    fn send(&self, command: SessionCommand) -> Result<(), String> {
        let live = lock(&self.live);
        match &live.power {
            Some(handle) => handle
                .commands
                .send(command)
                .map_err(|_| "phone is restarting".to_owned()),
            None => Err("powered off".into()),
        }
    }

    pub(crate) async fn key(&self, key: Key) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(SessionCommand::Key(key, tx))?;
        rx.await
            .unwrap_or_else(|_| Err("phone is restarting".into()))
    }

    pub(crate) fn factory_reset(&self) -> Result<(), String> {
        self.send(SessionCommand::FactoryReset)
    }

    pub(crate) async fn press(&self) -> Result<(), String> {
        if self.model.vendor != Vendor::Htek {
            return Err(format!("{} has no USB panic button", self.model.name));
        }
        if !lock(&self.live).button_attached {
            return Err("no USB button attached".into());
        }
        let (tx, rx) = oneshot::channel();
        self.send(SessionCommand::PanicPress(tx))?;
        rx.await
            .unwrap_or_else(|_| Err("phone is restarting".into()))
    }

    pub(crate) fn attach(&self, attached: bool) {
        let powered = {
            let mut live = lock(&self.live);
            live.button_attached = attached;
            live.powered
        };
        if powered && self.model.vendor == Vendor::Htek {
            if attached && self.faults.has(Fault::HtekNoUsbConnectedMessage) {
                return;
            }
            self.say(if attached {
                "USB Button is connected!"
            } else {
                "USB Button is disconnected!"
            });
        }
    }

    pub(crate) async fn state(&self) -> serde_json::Value {
        let (tx, rx) = oneshot::channel();
        let telephony = match self.send(SessionCommand::State(tx)) {
            Ok(()) => tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        };
        let live = lock(&self.live);
        let persistent = lock(&self.persistent);
        json!({
            "name": self.spec.name,
            "model": self.model.id,
            "mac": self.spec.mac.colon(),
            "powered": live.powered,
            "phase": live.phase,
            "address": live.address.map(|a| a.to_string()),
            "firmware": persistent.firmware,
            "button_attached": live.button_attached,
            "factory_default": persistent.factory_default,
            "telephony": telephony,
        })
    }

    // ---- the power loop ---------------------------------------------------

    async fn power_loop(
        self: Arc<Self>,
        cancel: CancellationToken,
        commands: mpsc::UnboundedSender<SessionCommand>,
        mut receiver: mpsc::UnboundedReceiver<SessionCommand>,
    ) {
        loop {
            let mut session = Session::new(self.clone(), commands.clone());
            let outcome = tokio::select! {
                outcome = session.run(&mut receiver) => outcome,
                _ = cancel.cancelled() => Outcome::PowerOff,
            };
            // An orderly (unregistering) teardown may wait for a registrar that
            // is gone; a power cut meanwhile ends it the hard way.
            let orderly = outcome == Outcome::Reboot && !cancel.is_cancelled();
            tokio::select! {
                _ = session.teardown(orderly) => {}
                _ = cancel.cancelled() => session.teardown(false).await,
            }
            if outcome == Outcome::PowerOff || cancel.is_cancelled() {
                return;
            }
            self.say("Rebooting ...");
            self.set_phase("rebooting");
            tokio::select! {
                _ = tokio::time::sleep(self.spec.timing.reboot_delay) => {}
                _ = cancel.cancelled() => return,
            }
            // Commands sent to the old session are void after a reboot.
            while receiver.try_recv().is_ok() {}
        }
    }
}

/// SIP settings a provisioning round produced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SipAccount {
    host: String,
    port: u16,
    user: String,
    auth_user: String,
    password: String,
    expires: u32,
    t1: Duration,
    t2: Duration,
    auto_answer: Option<Duration>,
}

/// One power-on (until power-off or reboot).
struct Session {
    phone: Arc<Phone>,
    commands: mpsc::UnboundedSender<SessionCommand>,
    lease: Option<Lease>,
    fetcher: Option<Fetcher>,
    telephony: Option<Telephony>,
    events: Option<broadcast::Receiver<UaEvent>>,
    account: Option<SipAccount>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Periodic provisioning: when the next round is due.
    next_round: Option<tokio::time::Instant>,
    last_remote: String,
}

impl Session {
    fn new(phone: Arc<Phone>, commands: mpsc::UnboundedSender<SessionCommand>) -> Session {
        Session {
            phone,
            commands,
            lease: None,
            fetcher: None,
            telephony: None,
            events: None,
            account: None,
            tasks: Vec::new(),
            next_round: None,
            last_remote: String::new(),
        }
    }

    fn say(&self, text: impl AsRef<str>) {
        self.phone.say(text);
    }

    fn flash(&self) -> BTreeMap<String, String> {
        lock(&self.phone.persistent).flash.clone()
    }

    async fn teardown(&mut self, orderly: bool) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        // Taken only once shut down: an interrupted orderly shutdown leaves it
        // here for the hard one, so its SIP port is always freed.
        if let Some(telephony) = self.telephony.clone() {
            telephony.shutdown(orderly).await;
        }
        self.telephony = None;
        self.events = None;
    }

    fn banner(&self) {
        let model = self.phone.model;
        let firmware = lock(&self.phone.persistent).firmware.clone();
        let mac = self.phone.spec.mac;
        match model.vendor {
            Vendor::Htek => {
                self.say(format!("U-Boot (Htek {}) loading kernel", model.name));
                self.say(format!(
                    "Htek {} firmware {firmware} MAC {} starting",
                    model.name,
                    mac.lower()
                ));
            }
            Vendor::Panasonic => {
                self.say(format!("Panasonic {} Ver.{firmware} booting", model.name));
                self.say(format!("MAC address {}", mac.upper()));
            }
            Vendor::Lvswitch => {
                self.say(format!("Lvswitch {} {firmware} system start", model.name));
                self.say(format!("mac={}", mac.lower()));
            }
        }
    }

    async fn run(&mut self, receiver: &mut mpsc::UnboundedReceiver<SessionCommand>) -> Outcome {
        let phone = self.phone.clone();
        phone.console.power_on();
        phone.set_phase("booting");
        self.banner();
        // The button plugged in at power-on is announced like a plug-in (000).
        if phone.model.vendor == Vendor::Htek
            && lock(&phone.live).button_attached
            && !phone.faults.has(Fault::HtekNoUsbConnectedMessage)
        {
            self.say("USB Button is connected!");
        }
        tokio::time::sleep(phone.spec.timing.boot_delay).await;

        // DHCP
        phone.set_phase("dhcp");
        let identity = DhcpIdentity {
            mac: phone.spec.mac,
            vendor_class: phone.model.vendor_class(),
            hostname: phone.model.hostname(&phone.spec.mac),
        };
        let socket = loop {
            match phone.attachment.dhcp_socket() {
                Ok(socket) => break socket,
                Err(error) => {
                    self.say(format!("DHCP: cannot open socket: {error}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let log_phone = phone.clone();
        let log = move |line: String| log_phone.say(line);
        let path = DhcpPath {
            socket: &socket,
            target: phone.attachment.dhcp_target(),
            broadcast_flag: phone.attachment.broadcast_flag(),
        };
        let lease = dhcp::acquire(&path, &identity, &log).await;
        if let Err(error) = phone.attachment.configure(&lease) {
            self.say(format!(
                "network: cannot configure {}: {error}",
                lease.address
            ));
        }
        lock(&phone.live).address = Some(lease.address);
        let mut fetcher = Fetcher::new(IpAddr::V4(lease.address), phone.user_agent());
        fetcher.ports = phone.attachment.service_ports();
        self.fetcher = Some(fetcher);
        self.lease = Some(lease.clone());
        self.tasks.push(tokio::spawn(renewal(
            phone.clone(),
            socket,
            identity,
            lease,
            self.commands.clone(),
        )));

        // Provisioning
        phone.set_phase("provisioning");
        if let Some(outcome) = self.provision(true).await {
            return outcome;
        }
        phone.set_phase("running");
        self.action(h680::ActionEvent::BootCompleted, None);
        self.say("boot completed");

        loop {
            let due = self.next_round;
            tokio::select! {
                command = receiver.recv() => {
                    let Some(command) = command else { return Outcome::PowerOff };
                    if let Some(outcome) = self.command(command).await {
                        return outcome;
                    }
                }
                event = next_event(&mut self.events) => {
                    if let Some(event) = event {
                        self.ua_event(event);
                    } else {
                        self.events = None;
                    }
                }
                _ = sleep_until(due) => {
                    self.next_round = None;
                    self.say("periodic provisioning check");
                    if let Some(outcome) = self.provision(false).await {
                        return outcome;
                    }
                }
            }
        }
    }

    async fn command(&mut self, command: SessionCommand) -> Option<Outcome> {
        match command {
            SessionCommand::Key(key, reply) => {
                let result = match self.telephony.clone() {
                    Some(telephony) => {
                        if key.is_off_hook() {
                            self.action(h680::ActionEvent::OffHook, None);
                        } else if key == Key::OnHook {
                            self.action(h680::ActionEvent::OnHook, None);
                        }
                        telephony.key(key).await.map_err(|e| e.to_string())
                    }
                    None => Err("no SIP account configured".into()),
                };
                let _ = reply.send(result);
            }
            SessionCommand::PanicPress(reply) => {
                let result = match &self.telephony {
                    Some(telephony) => {
                        self.say("USB Button pressed");
                        telephony.panic_press().await.map_err(|e| e.to_string())
                    }
                    None => Err("no SIP account configured".into()),
                };
                let _ = reply.send(result);
            }
            SessionCommand::State(reply) => {
                let _ = reply.send(
                    self.telephony
                        .as_ref()
                        .map(|t| serde_json::to_value(t.state()).unwrap_or_default())
                        .unwrap_or_default(),
                );
            }
            SessionCommand::FactoryReset => {
                self.say("factory reset: erasing settings");
                let mut persistent = lock(&self.phone.persistent);
                let firmware = persistent.firmware.clone();
                *persistent = Persistent {
                    firmware,
                    factory_default: true,
                    ..Persistent::default()
                };
                return Some(Outcome::Reboot);
            }
            SessionCommand::Resync => {
                if self.phone.model.vendor == Vendor::Panasonic
                    && !self.phone.faults.has(Fault::PanasonicResyncWithoutRestart)
                {
                    // 003 §5.4.5: the unit restarts, then downloads.
                    return Some(Outcome::Reboot);
                }
                return self.provision(false).await;
            }
            SessionCommand::Reboot(why) => {
                self.say(format!("reboot requested: {why}"));
                return Some(Outcome::Reboot);
            }
            SessionCommand::LeaseLost => {
                self.say("DHCP: lease expired, restarting network");
                return Some(Outcome::Reboot);
            }
        }
        None
    }

    // ---- provisioning --------------------------------------------------------

    /// Runs the vendor's provisioning; `Some(Reboot)` when it ends in a reboot.
    async fn provision(&mut self, at_boot: bool) -> Option<Outcome> {
        let outcome = match self.phone.model.vendor {
            Vendor::Htek => self.provision_htek().await,
            Vendor::Panasonic => self.provision_panasonic(at_boot).await,
            Vendor::Lvswitch => self.provision_h680(at_boot).await,
        };
        if outcome.is_some() {
            return outcome;
        }
        self.apply_sip().await;
        self.schedule_next_round();
        None
    }

    async fn fetch(&self, url: &ServerUrl) -> Result<Vec<u8>, FetchError> {
        let fetcher = self.fetcher.as_ref().expect("fetching only after DHCP");
        self.say(format!(
            "[AUTOP] {} {}",
            url.scheme().name().to_ascii_uppercase(),
            url
        ));
        let result = fetcher.fetch(url).await;
        match &result {
            Ok(data) => self.say(format!(
                "[AUTOP] {} downloaded ({} bytes)",
                url.file_name(),
                data.len()
            )),
            Err(error) => self.say(format!("[AUTOP] {} failed: {error}", url.file_name())),
        }
        result
    }

    fn schedule_next_round(&mut self) {
        if self.next_round.is_some() {
            return;
        }
        let timing = self.phone.spec.timing;
        let persistent = lock(&self.phone.persistent);
        let minutes: Option<f64> = match self.phone.model.vendor {
            Vendor::Htek => persistent
                .flash
                .get(htek::p::AUTO_UPGRADE)
                .filter(|v| v.trim() == "1")
                .map(|_| {
                    persistent
                        .flash
                        .get(htek::p::AUTO_CHECK_INTERVAL)
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(10080.0)
                }),
            Vendor::Panasonic => {
                let resync_time = persistent.layers.get("CFG_RESYNC_TIME").unwrap_or_default();
                if !resync_time.trim().is_empty() {
                    // 003 §5.4.5: a resync time disables the cyclic settings.
                    None
                } else if persistent.layers.enabled("CFG_CYCLIC")
                    && persistent.layers.enabled("PROVISION_ENABLE")
                {
                    Some(
                        persistent
                            .layers
                            .get("CFG_CYCLIC_INTVL")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(10080.0f64)
                            .clamp(1.0, 40320.0),
                    )
                } else {
                    None
                }
            }
            Vendor::Lvswitch => persistent
                .flash
                .get("auto_provision.repeat.enable")
                .filter(|v| v.trim() == "1")
                .map(|_| {
                    persistent
                        .flash
                        .get("auto_provision.repeat.minutes")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(1440.0)
                }),
        };
        if let Some(minutes) = minutes {
            self.next_round = Some(tokio::time::Instant::now() + timing.minutes(minutes));
        }
    }

    // ---- SIP ---------------------------------------------------------------

    fn sip_account(&self) -> Option<SipAccount> {
        let persistent = lock(&self.phone.persistent);
        let default_timers = (Duration::from_millis(500), Duration::from_secs(4));
        match self.phone.model.vendor {
            Vendor::Htek => htek::account(&persistent.flash).map(|a| SipAccount {
                host: a.server_host,
                port: a.server_port,
                user: a.user,
                auth_user: a.auth_user,
                password: a.password,
                expires: a.expires_secs,
                t1: default_timers.0,
                t2: default_timers.1,
                auto_answer: None,
            }),
            Vendor::Panasonic => {
                let layers = &persistent.layers;
                let host = layers
                    .get("SIP_RGSTR_ADDR_1")
                    .or_else(|| layers.get("SIP_PRXY_ADDR_1"))
                    .filter(|h| !h.trim().is_empty())?;
                let user = layers
                    .get("PHONE_NUMBER_1")
                    .or_else(|| layers.get("SIP_URI_1"))
                    .filter(|u| !u.trim().is_empty())?;
                Some(SipAccount {
                    host,
                    port: layers
                        .get("SIP_RGSTR_PORT_1")
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(5060),
                    auth_user: layers
                        .get("SIP_AUTHID_1")
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| user.clone()),
                    user,
                    password: layers.get("SIP_PASS_1").unwrap_or_default(),
                    expires: layers
                        .get("REG_EXPIRE_TIME_1")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(3600),
                    t1: default_timers.0,
                    t2: default_timers.1,
                    auto_answer: None,
                })
            }
            Vendor::Lvswitch => {
                let flash = &persistent.flash;
                let timer = |key: &str, default: Duration| {
                    flash
                        .get(key)
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(Duration::from_secs_f64)
                        .unwrap_or(default)
                };
                h680::account(flash).map(|a| SipAccount {
                    host: a.server_host,
                    port: a.server_port,
                    user: a.user,
                    auth_user: a.auth_user,
                    password: a.password,
                    expires: a.expires_secs,
                    t1: timer("sip.timer_t1", default_timers.0),
                    t2: timer("sip.timer_t2", default_timers.1),
                    auto_answer: a
                        .auto_answer_delay_secs
                        .map(|s| Duration::from_secs(u64::from(s))),
                })
            }
        }
    }

    fn panic_button(&self) -> Option<PanicButton> {
        if self.phone.model.vendor != Vendor::Htek {
            return None;
        }
        let (mode, function, value, account) =
            htek::panic_button(&lock(&self.phone.persistent).flash)?;
        Some(PanicButton {
            mode: PanicMode::from_p_value(mode).unwrap_or_default(),
            function,
            value,
            account,
        })
    }

    /// Starts or restarts the UA when the account changed; a config that left
    /// the account as it was does not re-register.
    async fn apply_sip(&mut self) {
        let account = self.sip_account();
        if account == self.account && self.telephony.is_some() {
            if let Some(telephony) = &self.telephony {
                telephony.set_panic_button(self.panic_button());
            }
            return;
        }
        if let Some(old) = self.telephony.clone() {
            // Kept until shut down, so a power cut meanwhile still frees its port.
            old.shutdown(true).await;
            self.telephony = None;
            self.events = None;
        }
        self.account = account.clone();
        let Some(account) = account else {
            self.say("[SIP] no account configured");
            return;
        };
        let Some(lease) = &self.lease else { return };
        let registrar = match tokio::net::lookup_host((account.host.as_str(), account.port))
            .await
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        {
            Some(addr) => addr,
            None => {
                self.say(format!("[SIP] cannot resolve {}", account.host));
                return;
            }
        };
        let config = UaConfig {
            local_ip: IpAddr::V4(lease.address),
            sip_port: 5060,
            user_agent: self.phone.user_agent(),
            registrar,
            domain: account.host.clone(),
            user: account.user.clone(),
            auth_user: account.auth_user.clone(),
            password: account.password.clone(),
            expires: account.expires,
            t1: account.t1,
            t2: account.t2,
            rtp_port_base: 11780,
            auto_answer: account.auto_answer,
            faults: self.phone.faults.clone(),
            register_retry: self
                .phone
                .spec
                .timing
                .seconds(30.0)
                .max(Duration::from_secs(1)),
            ..UaConfig::default()
        };
        let console_phone = self.phone.clone();
        let console: phonerig_sim_ua::Console =
            Arc::new(move |line: String| console_phone.say(line));
        let notify_phone = self.phone.clone();
        let commands = self.commands.clone();
        let on_notify: phonerig_sim_ua::NotifyHandler =
            Arc::new(move |event: &str| notify_decision(&notify_phone, event, &commands));
        match Telephony::start(config, console, on_notify).await {
            Ok(telephony) => {
                self.events = Some(telephony.events());
                telephony.set_panic_button(self.panic_button());
                // Kept before registering: a power cut while the REGISTER is
                // still retransmitted drops this future, and only a telephony
                // the session holds is shut down (its SIP port freed) in teardown.
                self.telephony = Some(telephony.clone());
                if let Err(error) = telephony.register().await {
                    self.say(format!("[SIP] register: {error}"));
                }
            }
            Err(error) => self.say(format!("[SIP] cannot start: {error}")),
        }
    }

    fn ua_event(&mut self, event: UaEvent) {
        use h680::ActionEvent as A;
        match event {
            UaEvent::Registered { .. } if !self.phone.faults.has(Fault::H680NoRegisteredAction) => {
                self.action(A::Registered, None)
            }
            UaEvent::RegisterFailed { .. } => self.action(A::RegisterFailed, None),
            UaEvent::Unregistered => self.action(A::Unregistered, None),
            UaEvent::IncomingCall { call_id, from } => {
                self.last_remote = from.clone();
                self.action(A::IncomingCall, Some((call_id, from)));
            }
            UaEvent::OutgoingCall { call_id, to, .. } => {
                self.last_remote = to.clone();
                self.action(A::OutgoingCall, Some((call_id, to)));
            }
            UaEvent::CallEstablished { call_id, remote } => {
                self.action(A::CallEstablished, Some((call_id, remote)))
            }
            UaEvent::CallEnded { call_id, .. } => {
                let remote = self.last_remote.clone();
                self.action(A::CallEnded, Some((call_id, remote)));
            }
            UaEvent::Rejected {
                call_id,
                by_remote: false,
                ..
            } => {
                let remote = self.last_remote.clone();
                self.action(A::RejectIncomingCall, Some((call_id, remote)));
            }
            UaEvent::DndChanged { on } => self.action(if on { A::DndOn } else { A::DndOff }, None),
            UaEvent::ForwardChanged { target } => self.action(
                if target.is_some() {
                    A::ForwardOn
                } else {
                    A::ForwardOff
                },
                None,
            ),
            UaEvent::CallHeld {
                call_id,
                by_remote: false,
            } => self.action(A::Hold, Some((call_id, String::new()))),
            UaEvent::CallResumed {
                call_id,
                by_remote: false,
            } => self.action(A::Unhold, Some((call_id, String::new()))),
            _ => {}
        }
    }
}

/// The NOTIFY callback: answers at once and hands the work to the session.
fn notify_decision(
    phone: &Phone,
    event: &str,
    commands: &mpsc::UnboundedSender<SessionCommand>,
) -> NotifyDecision {
    let token = event.split(';').next().unwrap_or_default().trim();
    match phone.model.vendor {
        Vendor::Htek | Vendor::Lvswitch => {
            if !token.eq_ignore_ascii_case("check-sync") {
                return NotifyDecision::Reject(489);
            }
            if phone.faults.has(Fault::HtekIgnoresCheckSync) {
                return NotifyDecision::Accept;
            }
            // 004 §8: `reboot=true` in the Event header → reboot at once, then provision.
            let reboot = event
                .split(';')
                .skip(1)
                .any(|p| p.trim().eq_ignore_ascii_case("reboot=true"));
            let reboot = if phone.faults.has(Fault::HtekIgnoresRebootTrue) {
                false
            } else {
                reboot || phone.faults.has(Fault::HtekRebootsWithoutRebootTrue)
            };
            let _ = commands.send(if reboot {
                SessionCommand::Reboot("NOTIFY check-sync;reboot=true")
            } else {
                SessionCommand::Resync
            });
            NotifyDecision::Accept
        }
        Vendor::Panasonic => {
            let (configured, enabled) = {
                let persistent = lock(&phone.persistent);
                (
                    if phone.faults.has(Fault::PanasonicIgnoresCustomEvent) {
                        "check-sync".to_owned()
                    } else {
                        persistent
                            .layers
                            .get("CFG_RESYNC_FROM_SIP")
                            .unwrap_or_default()
                    },
                    persistent.layers.enabled("PROVISION_ENABLE"),
                )
            };
            if !panasonic::is_resync_event(event, &configured) {
                phone.say(format!(
                    "NOTIFY event \"{event}\" is not CFG_RESYNC_FROM_SIP \"{configured}\": ignored"
                ));
                return NotifyDecision::Reject(489);
            }
            if !enabled {
                phone.say("NOTIFY resync ignored: PROVISION_ENABLE=\"N\"");
                return NotifyDecision::Accept;
            }
            let _ = commands.send(SessionCommand::Resync);
            NotifyDecision::Accept
        }
    }
}

async fn next_event(events: &mut Option<broadcast::Receiver<UaEvent>>) -> Option<UaEvent> {
    match events {
        Some(receiver) => loop {
            match receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Renews at T1 (scaled phone time) for as long as the session lives.
async fn renewal(
    phone: Arc<Phone>,
    dhcp_socket: tokio::net::UdpSocket,
    identity: DhcpIdentity,
    mut lease: Lease,
    commands: mpsc::UnboundedSender<SessionCommand>,
) {
    let timing = phone.spec.timing;
    // On loopback, renewals leave from the leased address like everything else.
    let renew_socket = match &phone.attachment {
        Attachment::Loopback { .. } => {
            match tokio::net::UdpSocket::bind((lease.address, 0)).await {
                Ok(socket) => socket,
                Err(error) => {
                    phone.say(format!("DHCP: cannot bind {}: {error}", lease.address));
                    return;
                }
            }
        }
        Attachment::Netns { .. } => dhcp_socket,
    };
    let log_phone = phone.clone();
    let log = move |line: String| log_phone.say(line);
    loop {
        let bound_at = tokio::time::Instant::now();
        let expires_at = bound_at + timing.seconds(f64::from(lease.lease_secs));
        tokio::time::sleep(timing.seconds(f64::from(lease.t1_secs))).await;
        loop {
            let path = DhcpPath {
                socket: &renew_socket,
                target: phone.attachment.renew_target(&lease),
                broadcast_flag: false,
            };
            if let Some(renewed) = dhcp::renew(&path, &identity, &lease, &log).await {
                if renewed.address != lease.address {
                    let _ = commands.send(SessionCommand::LeaseLost);
                    return;
                }
                lease = renewed;
                break;
            }
            if tokio::time::Instant::now() >= expires_at {
                let _ = commands.send(SessionCommand::LeaseLost);
                return;
            }
            let remaining = expires_at.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep((remaining / 2).max(Duration::from_millis(50))).await;
        }
    }
}

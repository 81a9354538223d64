//! The simulation host: many virtual phones in one process, each with its own
//! control socket and console, all powered off at start.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use phonerig_sim_ua::{FaultSet, Key};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Placement, SimHostConfig};
use crate::console::Console;
use crate::control::{self, Command};
use crate::model::Model;
use crate::net::{macvlan_name, Attachment};
use crate::phone::Phone;

/// Running virtual phones. Drop without [`SimHost::stop`] leaves sessions to the runtime's end.
pub struct SimHost {
    phones: Vec<Arc<Phone>>,
    sockets: Vec<PathBuf>,
    shutdown: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
}

impl SimHost {
    /// Creates every phone (powered off), its console and its control socket.
    pub async fn start(cfg: SimHostConfig) -> anyhow::Result<SimHost> {
        let mut names = HashSet::new();
        let mut macs = HashSet::new();
        let mut fault_sets = Vec::new();
        for spec in &cfg.phones {
            if Model::find(&spec.model).is_none() {
                bail!(
                    "phone {}: unknown model `{}` (known: {})",
                    spec.name,
                    spec.model,
                    crate::model::MODELS
                        .iter()
                        .map(|m| m.id)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            match FaultSet::parse(&spec.faults, &spec.model) {
                Ok(faults) => fault_sets.push(faults),
                Err(error) => bail!("phone {}: {error}", spec.name),
            }
            if spec.name.is_empty() || spec.name.contains('/') {
                bail!("phone name `{}` cannot name a socket file", spec.name);
            }
            if !names.insert(spec.name.clone()) {
                bail!("two phones are named {}", spec.name);
            }
            if !macs.insert(spec.mac) {
                bail!("phone {}: MAC {} is used twice", spec.name, spec.mac);
            }
        }
        raise_file_limit((cfg.phones.len() * FILES_PER_PHONE) as u64 + 256);
        std::fs::create_dir_all(&cfg.sim_dir)
            .with_context(|| format!("creating {}", cfg.sim_dir.display()))?;
        let shutdown = CancellationToken::new();
        let mut host = SimHost {
            phones: Vec::new(),
            sockets: Vec::new(),
            shutdown: shutdown.clone(),
            listeners: Vec::new(),
        };
        for (spec, faults) in cfg.phones.into_iter().zip(fault_sets) {
            let model = Model::find(&spec.model).expect("checked above");
            let (attachment, parent) = match &cfg.placement {
                Placement::Loopback {
                    dhcp_server,
                    services,
                } => (
                    Attachment::Loopback {
                        dhcp_server: *dhcp_server,
                        services: *services,
                    },
                    None,
                ),
                Placement::Netns {
                    netns,
                    parent_interface,
                } => (
                    Attachment::Netns {
                        netns: netns.clone(),
                        interface: macvlan_name(&spec.mac),
                    },
                    Some(parent_interface.as_str()),
                ),
            };
            let setup = (|| -> anyhow::Result<(Console, UnixListener, PathBuf)> {
                attachment
                    .create(parent, &spec.mac)
                    .with_context(|| format!("phone {}: creating its interface", spec.name))?;
                let console = Console::open()
                    .with_context(|| format!("phone {}: opening a pseudo-terminal", spec.name))?;
                let path = cfg.sim_dir.join(format!("{}.sock", spec.name));
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path)
                    .with_context(|| format!("binding {}", path.display()))?;
                Ok((console, listener, path))
            })();
            let (console, listener, path) = match setup {
                Ok(parts) => parts,
                Err(error) => {
                    attachment.remove();
                    host.stop().await;
                    return Err(error);
                }
            };
            let phone = Arc::new(Phone::new(spec, model, faults, console, attachment));
            host.listeners.push(tokio::spawn(serve(
                listener,
                phone.clone(),
                shutdown.clone(),
            )));
            host.sockets.push(path);
            host.phones.push(phone);
        }
        Ok(host)
    }

    pub fn phone_names(&self) -> Vec<String> {
        self.phones.iter().map(|p| p.spec.name.clone()).collect()
    }

    /// Powers every phone off (a power cut: no un-REGISTER), closes the control
    /// sockets and removes the interfaces it created.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        let phones = std::mem::take(&mut self.phones);
        // All at once: a phone may take a moment to power off, and a
        // thousand in turn add up.
        let mut offs = tokio::task::JoinSet::new();
        for phone in &phones {
            let phone = phone.clone();
            offs.spawn(async move { phone.power_off().await });
        }
        while offs.join_next().await.is_some() {}
        for phone in &phones {
            phone.attachment.remove();
        }
        for path in self.sockets.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Pty master and slave, control socket, DHCP and renewal sockets, SIP, RTP
/// and a transfer or two in flight.
pub const FILES_PER_PHONE: usize = 10;

/// A thousand phones need more descriptors than a default soft limit of 1024:
/// raise the soft limit towards the hard one (never above it).
fn raise_file_limit(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < wanted {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
        }
    }
}

async fn serve(listener: UnixListener, phone: Arc<Phone>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, phone.clone(), shutdown.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

async fn connection(stream: UnixStream, phone: Arc<Phone>, shutdown: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => return,
            line = lines.next_line() => match line {
                Ok(Some(line)) => line,
                _ => return,
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match control::parse(&line) {
            Ok(command) => execute(&phone, command).await,
            Err(error) => Err(error),
        };
        let text = match answer {
            Ok(None) => "OK\n".to_owned(),
            Ok(Some(text)) => format!("OK {text}\n"),
            Err(error) => format!("ERR {}\n", error.replace('\n', " ")),
        };
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn key_of(name: &str, arg: Option<String>) -> Option<Key> {
    Some(match name {
        "answer" => Key::Answer,
        "reject" => Key::Reject,
        "hangup" => Key::Hangup,
        "speaker" => Key::Speaker,
        "headset" => Key::Headset,
        "handset" => Key::Handset,
        "onhook" => Key::OnHook,
        "hold" => Key::Hold,
        "resume" => Key::Resume,
        "dial" => Key::Dial(arg.unwrap_or_default()),
        _ => return None,
    })
}

async fn execute(phone: &Arc<Phone>, command: Command) -> Result<Option<String>, String> {
    match command {
        Command::PowerOn => {
            phone.power_on();
            Ok(None)
        }
        Command::PowerOff => {
            phone.power_off().await;
            Ok(None)
        }
        Command::PowerCycle(off_for) => {
            phone.power_off().await;
            tokio::time::sleep(off_for).await;
            phone.power_on();
            Ok(None)
        }
        Command::PowerQuery => Ok(Some(if phone.powered() { "on" } else { "off" }.to_owned())),
        Command::Attach => {
            phone.attach(true);
            Ok(None)
        }
        Command::Detach => {
            phone.attach(false);
            Ok(None)
        }
        Command::Press => phone.press().await.map(|()| None),
        // The button acts on press; the release of its contact changes nothing.
        Command::Release => Ok(None),
        Command::Hold(duration) => {
            phone.press().await?;
            tokio::time::sleep(duration).await;
            Ok(None)
        }
        Command::Key { name, arg } => {
            if name == "factory-reset" {
                return phone.factory_reset().map(|()| None);
            }
            let key = key_of(&name, arg).ok_or_else(|| format!("unknown key {name}"))?;
            phone.key(key).await.map(|()| None)
        }
        Command::ConsoleQuery => Ok(Some(phone.console.path().display().to_string())),
        Command::StateQuery => Ok(Some(phone.state().await.to_string())),
    }
}

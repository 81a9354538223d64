//! The control socket of `rig serve`: a Unix stream socket taking one
//! command per line, so `rig notify` (or `socat`) can act on the phones the
//! running services talk to.
//!
//! ```text
//! NOTIFY <phone> <event text>   →  200 | <code> | TIMEOUT … | ERROR …
//! ```
//!
//! `<phone>` is a lab name or an extension; the event text is the rest of
//! the line (`check-sync;reboot=true`). The answer is one line.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use phonerig_core::PhoneDirectory;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::bench::SipControl;

/// The socket's file name inside a serve run folder.
pub const SOCKET_NAME: &str = "serve.sock";

/// Commands are short; a longer line is refused rather than buffered.
const MAX_LINE: usize = 4096;

/// Listens on `path` until `shutdown`; the socket file is removed at the end.
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlServer {
    pub fn start(
        path: &Path,
        sip: SipControl,
        directory: PhoneDirectory,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ControlServer> {
        // A socket file left by a serve that was killed would make bind fail.
        if path.exists() && is_stale(path) {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            tracing::warn!("control socket: {error}");
                            continue;
                        }
                    },
                };
                let (sip, directory) = (sip.clone(), directory.clone());
                tokio::spawn(async move {
                    if let Err(error) = serve_connection(stream, &sip, &directory).await {
                        tracing::warn!("control connection: {error:#}");
                    }
                });
            }
        });
        Ok(ControlServer {
            path: path.to_owned(),
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the accept loop (ended by the shutdown token) and removes the socket file.
    pub async fn finish(self) {
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Nobody accepts on it: a leftover file, safe to replace.
fn is_stale(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_err()
}

async fn serve_connection(
    stream: UnixStream,
    sip: &SipControl,
    directory: &PhoneDirectory,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 64)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = if line.len() > MAX_LINE {
            format!("ERROR line longer than {MAX_LINE} bytes")
        } else {
            answer(line.trim(), sip, directory).await
        };
        write.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(())
}

/// The one-line answer to one command line.
async fn answer(line: &str, sip: &SipControl, directory: &PhoneDirectory) -> String {
    let command = match parse_command(line) {
        Ok(command) => command,
        Err(error) => return format!("ERROR {error}"),
    };
    match command {
        Command::Notify { phone, event } => {
            let Some(info) = directory.by_name(phone).or_else(|| directory.by_ext(phone)) else {
                return format!("ERROR no phone `{phone}` in the lab");
            };
            match sip.notify(&info, event).await {
                Ok(phonerig_sip::NotifyOutcome::Answered { code }) => code.to_string(),
                Ok(phonerig_sip::NotifyOutcome::Timeout) => {
                    "TIMEOUT no final response from the phone (timer F)".to_owned()
                }
                Err(error) => format!("ERROR {error:#}"),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Notify { phone: &'a str, event: &'a str },
}

fn parse_command(line: &str) -> Result<Command<'_>, String> {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb.to_ascii_uppercase().as_str() {
        "NOTIFY" => {
            let (phone, event) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let event = event.trim();
            if phone.is_empty() || event.is_empty() {
                return Err("usage: NOTIFY <phone> <event text>".into());
            }
            Ok(Command::Notify { phone, event })
        }
        "" => Err("empty command; known: NOTIFY".into()),
        other => Err(format!("unknown command `{other}`; known: NOTIFY")),
    }
}

/// The control socket of the newest `rig serve` under `runs`: the most
/// recently created `*-serve*/serve.sock`.
pub fn newest_socket(runs: &Path) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(runs).with_context(|| {
        format!(
            "reading {} (is `rig serve` running? give --control PATH)",
            runs.display()
        )
    })?;
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries.flatten() {
        let is_serve = entry.file_name().to_string_lossy().contains("-serve");
        let socket = entry.path().join(SOCKET_NAME);
        let Ok(modified) = socket.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if is_serve && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, socket));
        }
    }
    newest.map(|(_, path)| path).ok_or_else(|| {
        anyhow!(
            "no running `rig serve` found: no {}/*-serve/{SOCKET_NAME} (start `rig serve`, or give --control PATH)",
            runs.display()
        )
    })
}

/// Sends one command line and returns the one-line answer.
pub async fn request(socket: &Path, line: &str) -> anyhow::Result<String> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "connecting to {} (is that `rig serve` still running?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await?;
    write.shutdown().await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Err(anyhow!("{} closed without an answer", socket.display()));
    }
    Ok(answer.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("NOTIFY uc924 check-sync", Ok(Command::Notify { phone: "uc924", event: "check-sync" }))]
    #[case("notify 4002 check-sync;reboot=true", Ok(Command::Notify { phone: "4002", event: "check-sync;reboot=true" }))]
    #[case("NOTIFY  uc924   resync now ", Ok(Command::Notify { phone: "uc924", event: "resync now" }))]
    #[case("NOTIFY uc924", Err("usage: NOTIFY <phone> <event text>".to_owned()))]
    #[case("NOTIFY", Err("usage: NOTIFY <phone> <event text>".to_owned()))]
    #[case("", Err("empty command; known: NOTIFY".to_owned()))]
    #[case("REBOOT uc924", Err("unknown command `REBOOT`; known: NOTIFY".to_owned()))]
    fn commands_parse(#[case] line: &str, #[case] expected: Result<Command<'static>, String>) {
        assert_eq!(parse_command(line), expected);
    }

    #[test]
    fn the_newest_serve_socket_is_found_and_others_are_ignored() {
        let runs = tempfile::tempdir().unwrap();
        let make = |dir: &str| {
            let dir = runs.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(SOCKET_NAME), "").unwrap();
            // mtime resolution: make the order unambiguous.
            std::thread::sleep(std::time::Duration::from_millis(20));
            dir.join(SOCKET_NAME)
        };
        make("20260101-000000-serve");
        let newest = make("20260101-000001-serve");
        make("20260101-000002-suite-scenarios");
        assert_eq!(newest_socket(runs.path()).unwrap(), newest);
    }

    #[test]
    fn no_serve_socket_is_a_clear_error() {
        let runs = tempfile::tempdir().unwrap();
        let error = newest_socket(runs.path()).unwrap_err().to_string();
        assert!(error.contains("no running `rig serve`"), "{error}");
    }
}

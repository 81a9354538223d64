//! The serial console engine shared by the `serial` and `sim` console
//! backends: one dedicated thread per console reads the device, keeps the raw
//! bytes, cuts lines, and reopens the device when it disappears.
//!
//! A thread (not a tokio task) because serialport is blocking; it reads with
//! a short timeout so it notices `stop` and the quiet period that flushes a
//! partial line (a login prompt has no newline).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use phonerig_core::event::NewEvent;
use phonerig_core::Source;
use serialport::SerialPort;

use crate::backends::serial_console::SerialParams;
use crate::backends::sim::ControlSocket;
use crate::capability::ConsoleSink;
use crate::error::DriverError;

/// Longest line held before it is published anyway, so a device that never
/// sends a newline cannot grow memory without bound.
pub const MAX_LINE: usize = 4096;

/// Cuts a byte stream into lines. `\n` ends a line; a `\r` before it (or a
/// lone `\r` at the end of a line) is dropped; bytes are decoded as UTF-8
/// with invalid sequences replaced, as consoles print whatever they like.
#[derive(Debug, Default)]
pub struct LineAssembler {
    held: Vec<u8>,
}

impl LineAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Complete lines found after adding `bytes`; the rest is held.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(Self::decode(std::mem::take(&mut self.held)));
            } else {
                self.held.push(byte);
                if self.held.len() >= MAX_LINE {
                    lines.push(Self::decode(std::mem::take(&mut self.held)));
                }
            }
        }
        lines
    }

    pub fn has_partial(&self) -> bool {
        !self.held.is_empty()
    }

    /// The held partial line, if any (after a quiet period, or at the end).
    pub fn take_partial(&mut self) -> Option<String> {
        if self.held.is_empty() {
            None
        } else {
            Some(Self::decode(std::mem::take(&mut self.held)))
        }
    }

    fn decode(mut bytes: Vec<u8>) -> String {
        while bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Where the console device is found each time it is (re)opened.
#[derive(Debug, Clone)]
pub enum DeviceLocator {
    /// A fixed path (`/dev/ttyUSB0`, or better a `/dev/serial/by-id/…` link).
    Path(PathBuf),
    /// A virtual phone: its control socket is asked `CONSOLE?` for the
    /// pseudo-terminal, which changes when the virtual phone restarts.
    Sim(ControlSocket),
}

impl DeviceLocator {
    pub fn locate(&self) -> Result<PathBuf, DriverError> {
        match self {
            DeviceLocator::Path(path) => Ok(path.clone()),
            DeviceLocator::Sim(socket) => {
                let answer = socket.exchange_blocking("CONSOLE?", Duration::ZERO)?;
                if answer.is_empty() {
                    return Err(DriverError::Refused(format!(
                        "{}: `CONSOLE?` answered no path",
                        socket.path().display()
                    )));
                }
                Ok(PathBuf::from(answer))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            DeviceLocator::Path(path) => path.display().to_string(),
            DeviceLocator::Sim(socket) => format!("sim console via {}", socket.path().display()),
        }
    }
}

/// Settings of one console, from the lab file.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub line: SerialParams,
    pub locator: DeviceLocator,
    /// Where the raw bytes go (`<run dir>/console-<phone>.log`), if anywhere.
    pub raw_log: Option<PathBuf>,
    /// A partial line is published after this much silence.
    pub flush_after: Duration,
    /// How often a lost device is looked for again.
    pub reconnect_every: Duration,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A console read by a dedicated thread; `send` writes through a clone of the port.
pub struct SerialConsole {
    backend: &'static str,
    settings: ConsoleSettings,
    writer: Arc<Mutex<Option<Box<dyn SerialPort>>>>,
    running: Mutex<Option<Running>>,
}

const READ_SLICE: Duration = Duration::from_millis(50);

impl SerialConsole {
    pub fn new(backend: &'static str, settings: ConsoleSettings) -> SerialConsole {
        SerialConsole {
            backend,
            settings,
            writer: Arc::default(),
            running: Mutex::new(None),
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn describe(&self) -> String {
        self.settings.locator.describe()
    }

    fn open(settings: &ConsoleSettings) -> Result<(PathBuf, Box<dyn SerialPort>), DriverError> {
        let path = settings.locator.locate()?;
        let mut port = settings.line.open(&path)?;
        port.set_timeout(READ_SLICE)
            .map_err(|e| DriverError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok((path, port))
    }

    pub async fn start(&self, sink: ConsoleSink) -> Result<(), DriverError> {
        if self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let settings = self.settings.clone();
        let (path, port) = tokio::task::spawn_blocking(move || Self::open(&settings))
            .await
            .map_err(|e| DriverError::Unavailable(format!("console open task failed: {e}")))??;
        let raw = match &self.settings.raw_log {
            Some(raw_path) => Some(open_raw_log(raw_path)?),
            None => None,
        };
        let write_half = port
            .try_clone()
            .map_err(|e| DriverError::Unavailable(format!("{}: {e}", path.display())))?;
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(write_half);
        sink.timeline.publish(
            NewEvent::new(Source::Console, "console.opened")
                .phone(Some(&sink.phone))
                .field("device", path.display().to_string())
                .field("baud", self.settings.line.baud),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            settings: self.settings.clone(),
            sink,
            device: path.display().to_string(),
            port: Some(port),
            writer: self.writer.clone(),
            raw,
            assembler: LineAssembler::new(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("console-reader".into())
            .spawn(move || reader.run())
            .map_err(|e| DriverError::io("starting the console reader thread", e))?;
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running { stop, thread });
        Ok(())
    }

    pub async fn send(&self, text: &str) -> Result<(), DriverError> {
        let writer = self.writer.clone();
        let bytes = text.as_bytes().to_vec();
        let described = self.describe();
        tokio::task::spawn_blocking(move || {
            let mut guard = writer.lock().unwrap_or_else(|p| p.into_inner());
            let port = guard.as_mut().ok_or_else(|| {
                DriverError::Unavailable(format!(
                    "console {described} is not connected (not started, or lost)"
                ))
            })?;
            port.write_all(&bytes)
                .and_then(|()| port.flush())
                .map_err(|e| DriverError::io(format!("writing to console {described}"), e))
        })
        .await
        .map_err(|e| DriverError::Unavailable(format!("console send task failed: {e}")))?
    }

    pub async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(running) = running {
            running.stop.store(true, Ordering::SeqCst);
            let _ = tokio::task::spawn_blocking(move || running.thread.join()).await;
        }
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

impl Drop for SerialConsole {
    fn drop(&mut self) {
        if let Some(running) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            running.stop.store(true, Ordering::SeqCst);
        }
    }
}

fn open_raw_log(path: &Path) -> Result<File, DriverError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DriverError::io(format!("creating {}", parent.display()), e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DriverError::io(format!("opening console log {}", path.display()), e))
}

struct Reader {
    settings: ConsoleSettings,
    sink: ConsoleSink,
    device: String,
    port: Option<Box<dyn SerialPort>>,
    writer: Arc<Mutex<Option<Box<dyn SerialPort>>>>,
    raw: Option<File>,
    assembler: LineAssembler,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn publish_line(&self, line: String, partial: bool) {
        let mut event = NewEvent::new(Source::Console, "console.line")
            .phone(Some(&self.sink.phone))
            .field("line", line)
            .field("device", &self.device);
        if partial {
            event = event.field("partial", true);
        }
        self.sink.timeline.publish(event);
    }

    fn flush_partial(&mut self) {
        if let Some(partial) = self.assembler.take_partial() {
            self.publish_line(partial, true);
        }
    }

    fn lose(&mut self, error: String) {
        self.flush_partial();
        self.port = None;
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        tracing::warn!(device = %self.device, %error, "console lost");
        self.sink.timeline.publish(
            NewEvent::new(Source::Console, "console.lost")
                .phone(Some(&self.sink.phone))
                .field("device", &self.device)
                .field("error", error),
        );
    }

    fn run(mut self) {
        let mut buffer = [0u8; 4096];
        let mut last_byte = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let Some(port) = self.port.as_mut() else {
                self.reconnect();
                continue;
            };
            match port.read(&mut buffer) {
                Ok(0) => self.lose("end of file".into()),
                Ok(n) => {
                    last_byte = Instant::now();
                    if let Some(raw) = self.raw.as_mut() {
                        if let Err(error) = raw.write_all(&buffer[..n]) {
                            tracing::error!(%error, "cannot write the console log");
                        }
                    }
                    for line in self.assembler.push(&buffer[..n]) {
                        self.publish_line(line, false);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if self.assembler.has_partial()
                        && last_byte.elapsed() >= self.settings.flush_after
                    {
                        self.flush_partial();
                    }
                }
                Err(e) => self.lose(e.to_string()),
            }
        }
        self.flush_partial();
    }

    /// Waits `reconnect_every` (in slices, so `stop` is noticed) and tries once.
    fn reconnect(&mut self) {
        let until = Instant::now() + self.settings.reconnect_every;
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(READ_SLICE);
        }
        let Ok((path, port)) = SerialConsole::open(&self.settings) else {
            return;
        };
        let Ok(write_half) = port.try_clone() else {
            return;
        };
        self.device = path.display().to_string();
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(write_half);
        self.port = Some(port);
        self.sink.timeline.publish(
            NewEvent::new(Source::Console, "console.back")
                .phone(Some(&self.sink.phone))
                .field("device", &self.device),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&[&b"boot\r\n"[..]], &["boot"], None)]
    #[case(&[&b"a\nb\n"[..]], &["a", "b"], None)]
    #[case(&[&b"U-Boot 20"[..], &b"24.01\r"[..], &b"\nlogin: "[..]], &["U-Boot 2024.01"], Some("login: "))]
    #[case(&[&b"\n\n"[..]], &["", ""], None)]
    #[case(&[&b"caf\xc3"[..], &b"\xa9\n"[..]], &["caf\u{e9}"], None)]
    #[case(&[&b"bad \xff byte\n"[..]], &["bad \u{fffd} byte"], None)]
    fn cuts_lines(#[case] chunks: &[&[u8]], #[case] lines: &[&str], #[case] partial: Option<&str>) {
        let mut assembler = LineAssembler::new();
        let got: Vec<String> = chunks
            .iter()
            .flat_map(|chunk| assembler.push(chunk))
            .collect();
        assert_eq!(got, lines);
        assert_eq!(assembler.take_partial().as_deref(), partial);
        assert!(!assembler.has_partial());
    }

    #[test]
    fn an_endless_line_is_cut_at_the_limit() {
        let mut assembler = LineAssembler::new();
        let lines = assembler.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(assembler.take_partial().unwrap().len(), 10);
    }
}

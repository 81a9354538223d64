//! The phone's serial console: a pseudo-terminal whose slave path the console
//! driver opens like a USB serial adapter. Lines are written to the master
//! with CRLF, as a UART console prints them.
//!
//! Nobody may be reading: the master is non-blocking, and when the tty buffer
//! is full the oldest unread output is discarded (read back from our own slave
//! descriptor), like a UART overrun — the phone never stalls on its console.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

pub struct Console {
    master: OwnedFd,
    slave: OwnedFd,
    path: PathBuf,
    /// Uptime stamps restart at each power-on, as on the real boot log.
    powered_at: Mutex<Instant>,
    write_lock: Mutex<()>,
}

fn nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// openpty does not set close-on-exec: without it every program the process
/// starts keeps the pty open, and closing the console (the cable pulled)
/// would go unnoticed by whoever reads the other end.
fn close_on_exec(fd: &OwnedFd) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

impl Console {
    pub fn open() -> io::Result<Console> {
        let pty = nix::pty::openpty(None, None)?;
        // Raw mode: what we write arrives byte for byte (no CR/NL mapping) and nothing is echoed back.
        let mut termios = tcgetattr(&pty.slave)?;
        cfmakeraw(&mut termios);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &termios)?;
        nonblocking(&pty.master)?;
        nonblocking(&pty.slave)?;
        close_on_exec(&pty.master)?;
        close_on_exec(&pty.slave)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
        Ok(Console {
            master: pty.master,
            slave: pty.slave,
            path,
            powered_at: Mutex::new(Instant::now()),
            write_lock: Mutex::new(()),
        })
    }

    /// `/dev/pts/N`, what `CONSOLE?` answers.
    pub fn path(&self) -> &PathBuf {
        &self.path
    }

    pub fn power_on(&self) {
        *self.powered_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Prints one line with an uptime stamp, e.g. `[    1.234] DHCP: bound to 127.1.0.5`.
    pub fn line(&self, text: &str) {
        let uptime = self
            .powered_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let line = format!(
            "[{:5}.{:03}] {}\r\n",
            uptime.as_secs(),
            uptime.subsec_millis(),
            text.trim_end()
        );
        self.write_raw(line.as_bytes());
    }

    fn write_raw(&self, bytes: &[u8]) {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.drain_input();
        let mut rest = bytes;
        let mut overruns = 0;
        while !rest.is_empty() {
            match nix::unistd::write(&self.master, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EAGAIN) if overruns < 4 => {
                    overruns += 1;
                    self.discard_unread_output();
                }
                Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Bytes the console driver typed: the phone has no shell on it, so they are dropped.
    fn drain_input(&self) {
        let mut buf = [0u8; 1024];
        while let Ok(n) = nix::unistd::read(&self.master, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    fn discard_unread_output(&self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = nix::unistd::read(&self.slave, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}

/// What a console printed that nobody has read yet, taken from its
/// pseudo-terminal `path` (what `CONSOLE?` answers) without waiting: a
/// post-mortem for a phone that stalled (the storm's lost-phone report).
/// Opened without becoming our controlling terminal.
pub fn read_unread(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(&fd, &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lines_arrive_on_the_slave_with_crlf() {
        let console = Console::open().unwrap();
        assert!(console.path().to_string_lossy().starts_with("/dev/pts/"));
        let mut reader = std::fs::File::open(console.path()).unwrap();
        console.line("USB Button is connected!");
        let mut buf = vec![0u8; 256];
        let n = reader.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.ends_with("] USB Button is connected!\r\n"), "{text:?}");
    }

    #[test]
    fn a_console_nobody_reads_never_blocks_and_keeps_the_newest_lines() {
        let console = Console::open().unwrap();
        for i in 0..20_000 {
            console.line(&format!("line {i}"));
        }
        let mut reader = std::fs::File::open(console.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                all.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&all).contains("line 19999\r\n") {
                    let _ = tx.send(String::from_utf8_lossy(&all).to_string());
                    return;
                }
            }
        });
        let text = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the newest line is readable");
        assert!(
            !text.contains("] line 0\r\n"),
            "the oldest output should have been discarded"
        );
    }

    #[test]
    fn unread_output_is_read_back_without_blocking() {
        let console = Console::open().unwrap();
        console.line("DHCP: DISCOVER");
        console.line("[AUTOP] HTTP http://x/cfg0012.xml");
        let text = String::from_utf8(read_unread(console.path()).unwrap()).unwrap();
        assert!(text.contains("] DHCP: DISCOVER\r\n"), "{text:?}");
        assert!(text.ends_with("cfg0012.xml\r\n"), "{text:?}");
        // Read once: nothing is left, and the second read does not block.
        assert!(read_unread(console.path()).unwrap().is_empty());
    }
}

//! Network namespaces: for sockets that must live on a veth inside a
//! namespace (virtual phones, tests), and for tests that build their own
//! two-host segment. Only namespaces the caller names are touched.

use std::fs::File;
use std::io;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

/// Runs `make` on a fresh thread that has entered network namespace `name`
/// (`/var/run/netns/<name>`). Sockets created there stay in that namespace
/// after the thread ends, so they can be handed to tokio.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let name = name.to_owned();
    let handle = std::thread::spawn(move || -> io::Result<T> {
        enter(&name)?;
        make()
    });
    handle
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Moves the calling thread into network namespace `name` for good; for
/// threads made to live there (a runtime's workers), where [`in_netns`]'s
/// one-shot thread does not fit.
pub fn enter(name: &str) -> io::Result<()> {
    let path = format!("/var/run/netns/{name}");
    let ns = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| io::Error::other(format!("setns {path}: {e}")))
}

/// Runs `ip <args>` (iproute2); its stderr becomes the error.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Two namespaces joined by a veth pair, removed on drop: `a` (the rig's side)
/// with `a_ip`, `b` (the phones' side) with `b_ip` (or none, for DHCP clients).
/// Addresses are from 198.18.0.0/15, never a real network.
pub struct VethPair {
    pub a: String,
    pub b: String,
    pub a_if: String,
    pub b_if: String,
}

impl VethPair {
    /// `tag` must be unique per test (≤ 6 chars; names are limited to 15).
    pub fn create(tag: &str, a_cidr: &str, b_cidr: Option<&str>) -> io::Result<VethPair> {
        let pid = std::process::id() % 100_000;
        let pair = VethPair {
            a: format!("pr{tag}a{pid}"),
            b: format!("pr{tag}b{pid}"),
            a_if: format!("v{tag}a{pid}"),
            b_if: format!("v{tag}b{pid}"),
        };
        // Leftovers from a crashed earlier run with the same pid are removed first.
        let _ = ip(&["netns", "del", &pair.a]);
        let _ = ip(&["netns", "del", &pair.b]);
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&[
            "link", "add", &pair.a_if, "netns", &pair.a, "type", "veth", "peer", "name",
            &pair.b_if, "netns", &pair.b,
        ])?;
        ip(&["-n", &pair.a, "addr", "add", a_cidr, "dev", &pair.a_if])?;
        if let Some(b_cidr) = b_cidr {
            ip(&["-n", &pair.b, "addr", "add", b_cidr, "dev", &pair.b_if])?;
        }
        for (ns, dev) in [(&pair.a, &pair.a_if), (&pair.b, &pair.b_if)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Whether this process may create namespaces (root with CAP_SYS_ADMIN, `ip` present).
    pub fn available() -> Result<(), String> {
        // Unique per call: tests in one process probe in parallel.
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!("prprobe{}-{n}", std::process::id() % 100_000);
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                Ok(())
            }
            Err(e) => Err(format!("network namespaces not available: {e}")),
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// A test's prerequisite is missing and the test was skipped (its reason printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped;

/// For tests: `Ok(())` to go on, or prints `SKIPPED: …` and returns `Err` to
/// return early — except under CI (`CI` set), where a missing prerequisite panics.
pub fn require(what: Result<(), String>) -> Result<(), Skipped> {
    match what {
        Ok(()) => Ok(()),
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("prerequisite missing under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            Err(Skipped)
        }
    }
}

/// `Ok(())` when `program` is on PATH.
pub fn program(program: &str) -> Result<(), String> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(format!("`{program}` not installed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_pair_pings_across_and_is_removed() {
        if require(VethPair::available()).is_err() {
            return;
        }
        let names;
        {
            let pair = VethPair::create("tn", "198.18.200.1/24", Some("198.18.200.2/24")).unwrap();
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pair.b,
                    "ping",
                    "-c1",
                    "-W2",
                    "198.18.200.1",
                ])
                .output()
                .unwrap();
            if require(program("ping")).is_ok() {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let socket = in_netns(&pair.a, || std::net::UdpSocket::bind("198.18.200.1:0")).unwrap();
            assert!(socket.local_addr().unwrap().ip().to_string() == "198.18.200.1");
            names = (pair.a.clone(), pair.b.clone());
        }
        let list = String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(!list.contains(&names.0) && !list.contains(&names.1));
    }
}

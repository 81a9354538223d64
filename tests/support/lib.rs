//! Helpers shared by the end-to-end tests: a lab of virtual phones on a
//! loopback address of the test's own, so tests can run in parallel, and a
//! way to run the real `rig` binary against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built-in virtual lab moved to `127.<octet>.0.1` with its own pool.
pub fn loopback_lab(octet: u8) -> String {
    let builtin = include_str!("../../scenarios/labs/virtual.toml");
    builtin
        .replace("ip = \"127.0.0.1\"", &format!("ip = \"127.{octet}.0.1\""))
        .replace(
            "start = \"127.77.0.10\"",
            &format!("start = \"127.{octet}.1.10\""),
        )
        .replace(
            "end = \"127.77.3.250\"",
            &format!("end = \"127.{octet}.1.250\""),
        )
        .replace(
            "name = \"virtual-loopback\"",
            &format!("name = \"virtual-loopback-{octet}\""),
        )
}

/// [`loopback_lab`] on a slice of the octet, so several tests of one file run
/// in parallel: the bench on `127.<octet>.<2·slice>.1`, the pool on
/// `127.<octet>.<2·slice+1>.10`–`.250`.
pub fn loopback_lab_slice(octet: u8, slice: u8) -> String {
    assert!(slice < 128, "slice {slice} leaves the octet");
    let (bench, pool) = (2 * slice, 2 * slice + 1);
    loopback_lab(octet)
        .replace(
            &format!("ip = \"127.{octet}.0.1\""),
            &format!("ip = \"127.{octet}.{bench}.1\""),
        )
        .replace(
            &format!("\"127.{octet}.1.10\""),
            &format!("\"127.{octet}.{pool}.10\""),
        )
        .replace(
            &format!("\"127.{octet}.1.250\""),
            &format!("\"127.{octet}.{pool}.250\""),
        )
        .replace(
            &format!("name = \"virtual-loopback-{octet}\""),
            &format!("name = \"virtual-loopback-{octet}-{slice}\""),
        )
}

/// Waits until the newest run folder under `runs` has an `events.jsonl` line
/// containing `needle`; panics after `within`.
pub fn wait_for_event_text(runs: &Path, needle: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let newest = std::fs::read_dir(runs).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .max()
                .map(|dir| dir.join("events.jsonl"))
        });
        if newest
            .and_then(|path| std::fs::read_to_string(path).ok())
            .is_some_and(|text| text.contains(needle))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{needle}` in events.jsonl within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A temporary folder with `lab.toml` written in it.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(lab: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("lab.toml"), lab).expect("write lab");
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn lab(&self) -> PathBuf {
        self.dir.path().join("lab.toml")
    }

    pub fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// The single run folder `rig` created under `runs/`.
    pub fn run_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.runs())
            .expect("runs folder")
            .map(|e| e.expect("entry").path())
            .collect();
        dirs.sort();
        dirs.pop().expect("a run folder")
    }
}

/// The repository root (where `scenarios/` is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `rig` with `args`; returns its output.
pub fn rig(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .env("RIG_LOG", "warn")
        .output()
        .expect("run rig")
}

/// Every line of an events.jsonl as JSON.
pub fn events(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("events.jsonl"))
        .expect("events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a whole event: {e}: {l}")))
        .collect()
}

/// The built-in virtual lab moved onto a namespace bench: the rig's services
/// in namespace `rig_netns` on `rig_if` at `<net>.1/24`, the virtual phones on
/// macvlans of `phones_if` in `phones_netns`, standard ports, broadcast DHCP.
/// `net` is the first three octets of a 198.18.0.0/15 /24, e.g. `198.18.162`.
pub fn netns_lab(
    net: &str,
    rig_netns: &str,
    rig_if: &str,
    phones_netns: &str,
    phones_if: &str,
) -> String {
    let builtin = include_str!("../../scenarios/labs/virtual.toml");
    let bench = format!(
        "nic = \"{rig_if}\"\nip = \"{net}.1\"\nprefix = 24\nnetns = \"{rig_netns}\"\npool = {{ start = \"{net}.10\", end = \"{net}.250\" }}"
    );
    let replaced = builtin
        .replace(
            "nic = \"lo\"\nip = \"127.0.0.1\"\nprefix = 8\npool = { start = \"127.77.0.10\", end = \"127.77.3.250\" }",
            &bench,
        )
        .replace(
            "name = \"virtual-loopback\"",
            &format!("name = \"virtual-netns-{net}\""),
        )
        .replacen(
            "[[phone]]",
            &format!(
                "[sim]\nplacement = {{ netns = \"{phones_netns}\", interface = \"{phones_if}\" }}\n\n[[phone]]"
            ),
            1,
        );
    assert!(
        replaced.contains(&bench),
        "the built-in lab's [bench] changed; update netns_lab"
    );
    replaced
}

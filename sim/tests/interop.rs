//! The phones' file clients against real third-party servers from Debian:
//! tftpd-hpa (TFTP with blksize/tsize), pyftpdlib (passive FTP) and
//! `openssl s_server -WWW` (HTTPS with a self-signed certificate).

mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phonerig_core::netns::{program, require};
use phonerig_sim::ServicePorts;
use phonerig_sim::{Placement, SimHost, SimHostConfig, Timing, VirtualPhoneSpec};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Kills the server when the test ends, even on failure.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_tcp_port(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port(ip: Ipv4Addr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spec(
    name: &str,
    model: &str,
    mac: &str,
    firmware: &str,
    flash_pairs: &[(&str, &str)],
) -> VirtualPhoneSpec {
    VirtualPhoneSpec {
        name: name.into(),
        model: model.into(),
        mac: mac.parse().unwrap(),
        firmware: firmware.into(),
        flash: flash(flash_pairs),
        timing: Timing::default(),
        faults: Vec::new(),
    }
}

async fn console(dir: &Path, name: &str) -> ConsoleReader {
    ConsoleReader::open(
        control(dir, name, "CONSOLE?")
            .await
            .strip_prefix("OK ")
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htek_over_tftp_from_tftpd_hpa() {
    // /usr/sbin is not on every PATH.
    let tftpd = if Path::new("/usr/sbin/in.tftpd").exists() {
        "/usr/sbin/in.tftpd"
    } else {
        "in.tftpd"
    };
    if require(program(tftpd).or_else(|e| {
        if Path::new(tftpd).exists() {
            Ok(())
        } else {
            Err(e)
        }
    }))
    .is_err()
    {
        return;
    }
    let ip = Ipv4Addr::new(127, 59, 0, 1);
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("htek")).unwrap();
    // Larger than one 1428-byte block, so the transfer takes several.
    let padding = format!("<!-- {} -->", "x".repeat(5000));
    let xml = format!("<?xml version=\"1.0\"?>\n<hl_provision version=\"1\"><config version=\"1\">{padding}<P3 para=\"Name\">tftp</P3></config></hl_provision>\n");
    std::fs::write(root.path().join("htek/cfg001fc1590001.xml"), &xml).unwrap();
    let port = free_udp_port(ip);
    let _tftpd = Server(
        Command::new(tftpd)
            .args(["-L", "-u", "root", "-a", &format!("{ip}:{port}"), "-s"])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dhcp = TestDhcp::start(
        ip,
        vec![(66, format!("tftp://{ip}:{port}/htek").into_bytes())],
        3600,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![spec(
            "t",
            "htek-uc924",
            "00:1f:c1:59:00:01",
            "2.0.4.4.36",
            &[],
        )],
    })
    .await
    .unwrap();
    let console = console(dir.path(), "t").await;
    control(dir.path(), "t", "POWER ON").await;
    console
        .wait_for(
            &format!("cfg001fc1590001.xml downloaded ({} bytes)", xml.len()),
            WAIT,
        )
        .await;
    console
        .wait_for("cfg001fc1590001.xml: applied 1 parameters", WAIT)
        .await;
    // The two names before it were asked for and not found.
    assert!(console.contains("cfg0012.xml failed: not found"));
    assert!(console.contains("cfg001fc1590001 failed: not found"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panasonic_over_passive_ftp_from_pyftpdlib() {
    let python = "/usr/bin/python3";
    let available = Command::new(python)
        .args(["-c", "import pyftpdlib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if require(if available {
        Ok(())
    } else {
        Err("python3-pyftpdlib not installed".into())
    })
    .is_err()
    {
        return;
    }
    let ip = Ipv4Addr::new(127, 59, 0, 2);
    let root = tempfile::tempdir().unwrap();
    let body = "# Panasonic SIP Phone Standard Format File # DO NOT CHANGE THIS LINE!\r\nDISPLAY_NAME_1=\"Reception\"\r\n\r\n";
    std::fs::write(root.path().join("Config0080F0590002.cfg"), body).unwrap();
    let port = free_tcp_port(ip);
    let _ftpd = Server(
        Command::new(python)
            .args([
                "-m",
                "pyftpdlib",
                "-i",
                &ip.to_string(),
                "-p",
                &port.to_string(),
                "-d",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("pyftpdlib listening", WAIT, || {
        std::net::TcpStream::connect((ip, port)).is_ok()
    })
    .await;
    let dhcp = TestDhcp::start(ip, vec![], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = format!("ftp://{ip}:{port}/Config{{MAC}}.cfg");
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![spec(
            "f",
            "panasonic-kx-ut670",
            "00:80:f0:59:00:02",
            "01.133",
            &[
                ("factory_default", "false"),
                ("CFG_STANDARD_FILE_PATH", &path),
            ],
        )],
    })
    .await
    .unwrap();
    let console = console(dir.path(), "f").await;
    control(dir.path(), "f", "POWER ON").await;
    console
        .wait_for(
            "standard file Config0080F0590002.cfg applied (1 parameters)",
            WAIT,
        )
        .await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h680_over_https_with_a_self_signed_certificate_from_openssl_s_server() {
    if require(program("openssl")).is_err() {
        return;
    }
    let ip = Ipv4Addr::new(127, 59, 0, 3);
    let root = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rig", "-days", "1",
            "-keyout", "key.pem", "-out", "cert.pem",
        ])
        .current_dir(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(
        root.path().join("common.boot"),
        "#!version:1.0.0.1\ninclude:config \"common.cfg\"\n",
    )
    .unwrap();
    std::fs::write(
        root.path().join("common.cfg"),
        "account.1.user_name = 4012\n",
    )
    .unwrap();
    let port = free_tcp_port(ip);
    let _https = Server(
        Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-WWW",
                "-cert",
                "cert.pem",
                "-key",
                "key.pem",
                "-accept",
                &format!("{ip}:{port}"),
            ])
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("s_server listening", WAIT, || {
        std::net::TcpStream::connect((ip, port)).is_ok()
    })
    .await;
    let dhcp = TestDhcp::start(ip, vec![], 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://{ip}:{port}/");
    let sim = SimHost::start(SimHostConfig {
        sim_dir: dir.path().into(),
        placement: Placement::Loopback {
            dhcp_server: dhcp.addr,
            services: ServicePorts::default(),
        },
        phones: vec![spec(
            "s",
            "lvswitch-sip-h680",
            "00:1a:4d:59:00:03",
            "2.0.0.3",
            &[("auto_provision.server.url", &url)],
        )],
    })
    .await
    .unwrap();
    let console = console(dir.path(), "s").await;
    control(dir.path(), "s", "POWER ON").await;
    console.wait_for("common.boot downloaded", WAIT).await;
    console.wait_for("common.cfg downloaded", WAIT).await;
    console
        .wait_for("auto provision completed (1 settings)", WAIT)
        .await;
    sim.stop().await;
}

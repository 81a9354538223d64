//! Real DHCP clients (busybox udhcpc, ISC dhclient) against the server across
//! a veth pair between two network namespaces the test creates: the server's
//! socket lives in namespace `a`, pinned to its veth with SO_BINDTODEVICE and
//! replying by broadcast as on a lab NIC; the client runs in namespace `b`.
//! Needs root (namespaces) and the Debian packages `udhcpc` and
//! `isc-dhcp-client`; without them the tests print SKIPPED (and fail under CI).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use phonerig_core::netns::{program, require, VethPair};
use phonerig_dhcp::{start, DhcpConfig, OptionSet, OptionValue, ReplyMode, Settings};
use tokio::process::Command;

const PHONE_MAC: &str = "00:1f:c1:10:d3:a9";

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Bench {
    pair: VethPair,
    ctx: phonerig_core::ServiceContext,
    service: Option<phonerig_core::RunningService>,
    server_ip: Ipv4Addr,
}

/// The segment, with the client's veth carrying the phone's MAC, and the
/// server started inside namespace `a` as the lab would start it on a NIC.
async fn bench(tag: &str, third_octet: u8, settings: Settings) -> Bench {
    let server_ip = Ipv4Addr::new(198, 18, third_octet, 1);
    let pair = VethPair::create(tag, &format!("{server_ip}/24"), None).unwrap();
    ip(&["-n", &pair.b, "link", "set", &pair.b_if, "down"]);
    ip(&[
        "-n", &pair.b, "link", "set", &pair.b_if, "address", PHONE_MAC,
    ]);
    ip(&["-n", &pair.b, "link", "set", &pair.b_if, "up"]);
    let ctx = context(server_ip, vec![phone("uc924-1", PHONE_MAC)]);
    let config = DhcpConfig {
        port: 67,
        client_port: 68,
        interface: Some(pair.a_if.clone()),
        reply_mode: ReplyMode::Broadcast,
        subnet_prefix: 24,
        pool_start: Ipv4Addr::new(198, 18, third_octet, 100),
        pool_end: Ipv4Addr::new(198, 18, third_octet, 150),
        fixed: Vec::new(),
        default_lease: Duration::from_secs(600),
        netns: Some(pair.a.clone()),
    };
    let service = start(ctx.clone(), config, settings).await.unwrap();
    assert_eq!(service.addrs[0].to_string(), "0.0.0.0:67");
    Bench {
        pair,
        ctx,
        service: Some(service),
        server_ip,
    }
}

impl Bench {
    async fn stop(mut self) {
        self.ctx.shutdown.cancel();
        if let Some(service) = self.service.take() {
            service.join(&self.ctx.timeline).await;
        }
    }
}

/// A hook script for both clients: dumps its environment to `env.<reason>`
/// (dhclient passes the reason in `$reason`, udhcpc as `$1`).
fn dump_script(dir: &Path) -> String {
    let script = dir.join("dump.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > '{}/env.'\"${{reason:-$1}}\"\nexit 0\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    script.display().to_string()
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

async fn wait_for_file(path: &Path, child: &mut tokio::process::Child) -> bool {
    for _ in 0..300 {
        if path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        {
            // the script may still be writing; one more breath
            tokio::time::sleep(Duration::from_millis(100)).await;
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return path.exists();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn provisioning(opt66: &str, opt150: OptionValue) -> Settings {
    Settings {
        options: [
            ("66".to_string(), OptionValue::Text(opt66.into())),
            ("150".to_string(), opt150),
        ]
        .into(),
        phone: [(
            "uc924-1".to_string(),
            OptionSet {
                lease_time: None,
                options: [(
                    "128".to_string(),
                    OptionValue::Text("http://{rig.ip}/cfg{phone.mac}.xml".into()),
                )]
                .into(),
            },
        )]
        .into(),
        ..Settings::default()
    }
}

fn prerequisites(client: &str) -> bool {
    require(VethPair::available()).is_ok() && require(program(client)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_udhcpc_gets_a_lease_and_the_cisco_150_list() {
    if !prerequisites("udhcpc") {
        return;
    }
    let bench = bench(
        "du",
        71,
        provisioning(
            "{rig.ip}",
            OptionValue::Ipv4(vec!["{rig.ip}".into(), "198.18.71.2".into()]),
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = dump_script(dir.path());
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bench.pair.b,
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "2",
            "-i",
            &bench.pair.b_if,
        ])
        .args([
            "-V",
            "Htek UC924",
            "-O",
            "66",
            "-O",
            "150",
            "-O",
            "128",
            "-s",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bound = dir.path().join("env.bound");
    let got_lease = wait_for_file(&bound, &mut child).await;
    let _ = child.start_kill();
    let output = child.wait_with_output().await.unwrap();
    assert!(
        got_lease,
        "udhcpc got no lease: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let env = read_env(&bound);
    let leased: Ipv4Addr = env["ip"].parse().unwrap();
    assert!((100..=150).contains(&leased.octets()[3]), "{env:?}");
    assert_eq!(env["subnet"], "255.255.255.0");
    assert_eq!(env["serverid"], bench.server_ip.to_string());
    // option 66 as a bare address (udhcpc checks it is a host name and shows a URL as "bad")
    assert_eq!(
        env["tftp"],
        bench.server_ip.to_string(),
        "option 66: {env:?}"
    );
    // udhcpc knows neither 128 nor 150 and shows them as hex
    assert_eq!(
        env["opt128"],
        hex(format!("http://{}/cfg001fc110d3a9.xml", bench.server_ip).as_bytes()),
        "option 128: {env:?}"
    );
    assert_eq!(
        env["opt150"],
        hex(&[198, 18, 71, 1, 198, 18, 71, 2]),
        "option 150 as Cisco's list: {env:?}"
    );

    let ack = &wait_for(&bench.ctx.timeline, "dhcp.ack", 1).await[0];
    assert_eq!(ack.phone.as_deref(), Some("uc924-1"));
    assert_eq!(ack.field_str("to"), Some("255.255.255.255:68"));
    let discover = &events(&bench.ctx.timeline, "dhcp.discover")[0];
    assert_eq!(discover.field_str("vendor_class"), Some("Htek UC924"));
    let asked: Vec<u64> = discover
        .field("param_request_list")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(
        [66, 128, 150].iter().all(|c| asked.contains(c)),
        "{asked:?}"
    );
    assert_eq!(
        bench.ctx.directory.by_ip(IpAddr::V4(leased)).unwrap().name,
        "uc924-1"
    );
    // our own broadcasts reach the client-port watcher too, and are not "foreign"
    assert!(events(&bench.ctx.timeline, "dhcp.foreign_offer").is_empty());
    bench.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isc_dhclient_gets_a_lease_and_the_htek_150_url() {
    if !prerequisites("dhclient") {
        return;
    }
    let bench = bench(
        "di",
        72,
        provisioning(
            "http://{rig.ip}/cfg",
            OptionValue::Text("tftp://{rig.ip}/".into()),
        ),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let script = dump_script(dir.path());
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(
        &conf,
        "option htek-server code 150 = text;\n\
         option provisioning-url code 128 = text;\n\
         send vendor-class-identifier \"Htek UC924\";\n\
         request subnet-mask, routers, tftp-server-name, htek-server, provisioning-url;\n",
    )
    .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bench.pair.b,
            "dhclient",
            "-4",
            "-d",
            "-1",
            "-v",
        ])
        .args([
            "-cf",
            &path("dhclient.conf"),
            "-sf",
            &script,
            "-pf",
            &path("dhclient.pid"),
            "-lf",
            &path("dhclient.leases"),
        ])
        .arg(&bench.pair.b_if)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bound = dir.path().join("env.BOUND");
    let got_lease = wait_for_file(&bound, &mut child).await;
    // dhclient -d stays in the foreground after binding: end it.
    let _ = child.start_kill();
    let output = child.wait_with_output().await.unwrap();
    assert!(
        got_lease,
        "dhclient got no lease: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let env = read_env(&bound);
    let leased: Ipv4Addr = env["new_ip_address"].parse().unwrap();
    assert!((100..=150).contains(&leased.octets()[3]), "{env:?}");
    assert_eq!(env["new_subnet_mask"], "255.255.255.0");
    assert_eq!(
        env["new_dhcp_server_identifier"],
        bench.server_ip.to_string()
    );
    assert_eq!(
        env["new_tftp_server_name"],
        format!("http://{}/cfg", bench.server_ip),
        "option 66: {env:?}"
    );
    assert_eq!(
        env["new_htek_server"],
        format!("tftp://{}/", bench.server_ip),
        "option 150: {env:?}"
    );
    assert_eq!(
        env["new_provisioning_url"],
        format!("http://{}/cfg001fc110d3a9.xml", bench.server_ip),
        "option 128: {env:?}"
    );
    let ack = &wait_for(&bench.ctx.timeline, "dhcp.ack", 1).await[0];
    assert_eq!(ack.phone.as_deref(), Some("uc924-1"));
    assert_eq!(
        ack.field("options").unwrap()["150"],
        serde_json::json!(format!("tftp://{}/", bench.server_ip))
    );
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_on_the_segment_is_reported() {
    if require(VethPair::available()).is_err() {
        return;
    }
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::Encodable;

    let bench = bench("df", 73, Settings::default()).await;
    assert_eq!(
        bench.service.as_ref().unwrap().addrs[1].to_string(),
        "0.0.0.0:68",
        "the client port is watched"
    );
    ip(&[
        "-n",
        &bench.pair.b,
        "addr",
        "add",
        "198.18.73.2/24",
        "dev",
        &bench.pair.b_if,
    ]);
    // A rogue server in namespace b broadcasts an OFFER to the phones, as a
    // home router plugged into the bench would.
    let rogue = Ipv4Addr::new(198, 18, 73, 2);
    let mut offer = Message::new_with_id(
        77,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(198, 18, 73, 66),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &[2, 0, 0, 0, 0, 1],
    );
    offer.set_opcode(Opcode::BootReply);
    offer
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Offer));
    offer.opts_mut().insert(DhcpOption::ServerIdentifier(rogue));
    let bytes = offer.to_vec().unwrap();
    let b_if = bench.pair.b_if.clone();
    phonerig_core::netns::in_netns(&bench.pair.b, move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        socket.bind_device(Some(b_if.as_bytes()))?;
        socket.set_broadcast(true)?;
        socket.bind(&std::net::SocketAddr::from((rogue, 67)).into())?;
        socket.send_to(
            &bytes,
            &std::net::SocketAddr::from((Ipv4Addr::BROADCAST, 68)).into(),
        )?;
        Ok(())
    })
    .unwrap();
    let foreign = &wait_for(&bench.ctx.timeline, "dhcp.foreign_offer", 1).await[0];
    assert_eq!(foreign.field_str("server_ip"), Some("198.18.73.2"));
    assert_eq!(foreign.field_str("offered"), Some("198.18.73.66"));
    bench.stop().await;
}

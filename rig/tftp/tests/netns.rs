//! The service inside a network namespace (`TftpConfig.netns`), as on a bench
//! where the rig owns one side of a veth pair: listener and transfer sockets
//! must both live in that namespace. Skipped (failing under CI) when this
//! process cannot create namespaces.

mod common;

use std::time::Duration;

use common::{get, pattern, start, Get};
use phonerig_core::netns::{in_netns, require, VethPair};
use phonerig_tftp::{Settings, TftpConfig};

#[tokio::test]
async fn serves_from_inside_a_namespace_across_a_veth_pair() {
    if require(VethPair::available()).is_err() {
        return;
    }
    let pair = VethPair::create("tf", "198.18.69.1/24", Some("198.18.69.2/24")).expect("veth pair");
    let content = pattern(50_000, 31);
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("fw.bin"), &content).unwrap();
    let config = TftpConfig {
        port: 0,
        netns: Some(pair.a.clone()),
        ..TftpConfig::default()
    };
    let settings = Settings {
        timeout: Some(phonerig_core::duration::HumanDuration(
            Duration::from_millis(500),
        )),
        ..Settings::default()
    };
    let server = start("198.18.69.1", root.path(), vec![], config, settings).await;

    let phone_side = in_netns(&pair.b, || std::net::UdpSocket::bind("198.18.69.2:0")).unwrap();
    phone_side.set_nonblocking(true).unwrap();
    let socket = tokio::net::UdpSocket::from_std(phone_side).unwrap();
    let got = get(
        &socket,
        server.addr,
        &Get::new("fw.bin")
            .option("blksize", "1400")
            .option("windowsize", "4"),
    )
    .await;
    assert!(got.complete && got.data == content, "{:?}", got.error);
    let tid = got.server_tid.unwrap();
    assert_eq!(tid.ip(), server.addr.ip());
    let event = server.fetch_event("fw.bin").await;
    assert_eq!(event.field_str("outcome"), Some("complete"));
    server.stop().await;
    drop(pair);
}

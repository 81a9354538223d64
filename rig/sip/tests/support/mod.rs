//! Shared by the SIP integration tests: a rig SIP service on a unique
//! loopback address, a phone directory, and waiting on the timeline.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use phonerig_core::{
    Event, PhoneDirectory, PhoneInfo, Placeholders, ProvisioningTree, RunningService,
    ServiceContext, Timeline,
};
use phonerig_sip::{Settings, SipConfig, SipHandle, Timers};
use tokio_util::sync::CancellationToken;

pub fn phone(name: &str, ext: &str, mac: &str) -> PhoneInfo {
    PhoneInfo {
        name: name.into(),
        model: "htek-uc924".into(),
        mac: mac.parse().unwrap(),
        ext: ext.into(),
        password: "secret".into(),
        devcode: Some("0012".into()),
    }
}

pub struct Rig {
    pub timeline: Timeline,
    pub handle: SipHandle,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub service: Option<RunningService>,
    pub directory: PhoneDirectory,
}

/// Short timers so timeouts take a fraction of a second (64·T1 = 1.28 s).
pub fn fast_timers() -> Timers {
    Timers {
        t1: Duration::from_millis(20),
        t2: Duration::from_millis(160),
    }
}

pub fn config(timers: Timers) -> SipConfig {
    SipConfig {
        port: 5060,
        tcp: true,
        domain: None,
        rtp_ports: 42000..=42099,
        max_calls: 4,
        timers,
        tls: None,
        ..SipConfig::default()
    }
}

pub async fn rig(ip: &str, phones: Vec<PhoneInfo>, settings: Settings, timers: Timers) -> Rig {
    rig_with_config(ip, phones, settings, config(timers)).await
}

pub async fn rig_with_config(
    ip: &str,
    phones: Vec<PhoneInfo>,
    settings: Settings,
    config: SipConfig,
) -> Rig {
    let ip: IpAddr = ip.parse().unwrap();
    let timeline = Timeline::in_memory();
    let directory = PhoneDirectory::new(phones);
    let shutdown = CancellationToken::new();
    let ctx = ServiceContext {
        timeline: timeline.clone(),
        directory: directory.clone(),
        bind_ip: ip,
        placeholders: Placeholders::new(),
        tree: ProvisioningTree::new(None, Vec::new(), Placeholders::new(), directory.clone()),
        shutdown: shutdown.clone(),
    };

    let (service, handle) = phonerig_sip::start(ctx, config, settings)
        .await
        .expect("sip service starts");
    Rig {
        timeline,
        handle,
        addr: SocketAddr::new(ip, 5060),
        shutdown,
        service: Some(service),
        directory,
    }
}

impl Rig {
    /// Waits until an event matching `pred` is on the timeline (searching from the start).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Arc<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.timeline.snapshot().into_iter().find(|e| pred(e)) {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> =
                    self.timeline.snapshot().iter().map(|e| e.brief()).collect();
                panic!(
                    "no {what} within {timeout:?}; timeline:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn events(&self, kind: &str) -> Vec<Arc<Event>> {
        self.timeline
            .snapshot()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(service) = self.service.take() {
            service.join(&self.timeline).await;
        }
        // A stopped service has released its ports.
        assert!(
            self.events("service.stopped").len() == 1,
            "service.stopped published once"
        );
        std::net::UdpSocket::bind(self.addr).expect("SIP UDP port released");
        std::net::TcpListener::bind(self.addr).expect("SIP TCP port released");
    }
}

pub fn is(e: &Event, kind: &str, field: &str, value: &str) -> bool {
    e.kind == kind && e.field_str(field) == Some(value)
}

//! The rig's HTTP and HTTPS service: serves the provisioning tree (with the
//! scenario's absent files, forced statuses, delays, truncations and
//! templates), optionally behind Basic or Digest authentication, and receives
//! Action URL reports from phones (`/action/<event>?…`).
//!
//! Events: `http.fetch` (one per tree request, when its body ended),
//! `http.refused`, `http.malformed`, `http.overloaded`, `action.<event>`, and
//! `service.started` / `service.stopped` (source `rig`).

pub mod action;
pub mod auth;
pub mod body;
pub mod digest;
mod handler;
pub mod range;
pub mod request_path;
mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::{RunningService, ServiceContext};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use auth::{Auth, AuthScheme};
pub use handler::Protocol;
pub use tls::{generate_certificate, GeneratedCertificate, TlsSource};

/// Connections served at once when the lab file does not say.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Lab-level facts for the HTTP service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Plain HTTP port (80 on a bench, 8080 on loopback; 0 = any free port); `None` = no HTTP.
    pub http_port: Option<u16>,
    /// HTTPS port (443 or 8443; 0 = any free port); `None` = no HTTPS.
    pub https_port: Option<u16>,
    pub tls: TlsSource,
    /// Further connections are closed at once (and reported) beyond this many.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            http_port: Some(80),
            https_port: Some(443),
            tls: TlsSource::Generate,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// `[serve.http]` of a scenario.
#[derive(Deserialize, Serialize, JsonSchema, Default, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Require credentials for tree requests (not for Action URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// `false` starts no listener at all. Default: on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `false` leaves the HTTPS port closed. Default: on when the lab has an HTTPS port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<bool>,
}

/// Binds the listeners and serves until `ctx.shutdown` is cancelled.
/// `RunningService::addrs` lists the HTTP listener first, then HTTPS.
pub async fn start(
    ctx: ServiceContext,
    config: HttpConfig,
    settings: Settings,
) -> anyhow::Result<RunningService> {
    if settings.enabled == Some(false) {
        return Ok(RunningService {
            name: "http",
            addrs: Vec::new(),
            task: tokio::spawn(async {}),
        });
    }
    let authenticator = match settings.auth {
        Some(auth) => {
            let authenticator =
                auth::Authenticator::new(auth, ctx.placeholders.clone(), ctx.directory.clone());
            authenticator.validate()?;
            Some(authenticator)
        }
        None => None,
    };
    let mut listeners = Vec::new();
    if let Some(port) = config.http_port {
        let listener = TcpListener::bind((ctx.bind_ip, port))
            .await
            .with_context(|| format!("binding HTTP to {}:{port}", ctx.bind_ip))?;
        listeners.push((listener, None));
    }
    anyhow::ensure!(
        !(settings.https == Some(true) && config.https_port.is_none()),
        "the scenario asks for HTTPS (serve.http.https = true) but the lab gives no HTTPS port"
    );
    if let Some(port) = config.https_port.filter(|_| settings.https != Some(false)) {
        let acceptor = tls::acceptor(&config.tls, ctx.bind_ip).context("preparing HTTPS")?;
        let listener = TcpListener::bind((ctx.bind_ip, port))
            .await
            .with_context(|| format!("binding HTTPS to {}:{port}", ctx.bind_ip))?;
        listeners.push((listener, Some(acceptor)));
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<Result<_, _>>()?;
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    ctx.timeline.publish(
        NewEvent::new(Source::Rig, "service.started")
            .field("service", "http")
            .field("addrs", &shown),
    );

    let handler = Arc::new(handler::Handler {
        ctx: ctx.clone(),
        auth: authenticator,
    });
    let limit = Arc::new(serve::ConnectionLimit::new(config.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut loops = Vec::new();
    for (listener, tls) in listeners {
        loops.push(tokio::spawn(serve::accept_loop(
            listener,
            tls,
            handler.clone(),
            limit.clone(),
            tracker.clone(),
            ctx.shutdown.clone(),
        )));
    }
    let timeline = ctx.timeline.clone();
    let task = tokio::spawn(async move {
        for accept in loops {
            let _ = accept.await;
        }
        tracker.close();
        tracker.wait().await;
        timeline.publish(
            NewEvent::new(Source::Rig, "service.stopped")
                .field("service", "http")
                .field("addrs", &shown),
        );
    });
    Ok(RunningService {
        name: "http",
        addrs,
        task,
    })
}

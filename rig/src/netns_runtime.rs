//! A tokio runtime whose every thread lives in the bench's network namespace
//! (`[bench] netns`), so every socket the services make lands there: the
//! listeners at start, and also those made later (FTP passive data
//! listeners, SIP RTP sockets and outbound TCP connections, TFTP transfer
//! sockets). The `rig` process itself stays in the root namespace.

use std::future::Future;

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};

/// Threads of the runtime: the services are I/O-bound, two suffice.
const WORKER_THREADS: usize = 2;

pub struct NamespaceRuntime {
    netns: String,
    runtime: Option<Runtime>,
}

impl NamespaceRuntime {
    /// Fails at once, with the namespace named, when it cannot be entered.
    pub fn start(netns: &str) -> anyhow::Result<NamespaceRuntime> {
        // Checked here, where the error can be reported; the thread hook below cannot return one.
        phonerig_core::netns::in_netns(netns, || Ok(()))
            .with_context(|| format!("entering network namespace `{netns}` ([bench] netns)"))?;
        let name = netns.to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name(format!("ns-{netns}"))
            .on_thread_start(move || {
                if let Err(error) = phonerig_core::netns::enter(&name) {
                    // A thread in the wrong namespace would bind to the wrong
                    // network: better to stop than to serve the office LAN.
                    eprintln!("rig: a service thread could not enter namespace `{name}`: {error}");
                    std::process::abort();
                }
            })
            .enable_all()
            .build()
            .with_context(|| format!("starting the service runtime of namespace `{netns}`"))?;
        Ok(NamespaceRuntime {
            netns: netns.to_owned(),
            runtime: Some(runtime),
        })
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
            .clone()
    }

    /// Runs `work` on a thread inside the namespace and waits for it.
    pub async fn run<F>(&self, work: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.handle(), work).await
    }
}

/// Runs `work` on `handle`'s runtime and waits for it from any runtime.
pub async fn run_on<F>(handle: &Handle, work: F) -> anyhow::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle
        .spawn(work)
        .await
        .context("a task in the namespace runtime failed")
}

impl Drop for NamespaceRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside async code
        // (the bench is dropped there); the services were stopped already.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonerig_core::netns::{require, VethPair};

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let error = NamespaceRuntime::start("prnet-no-such-ns")
            .err()
            .expect("no such namespace");
        assert!(
            format!("{error:#}").contains("prnet-no-such-ns"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn sockets_made_on_the_runtime_are_in_the_namespace() {
        if require(VethPair::available()).is_err() {
            return;
        }
        let pair = VethPair::create("net0", "198.18.160.1/24", None).unwrap();
        let runtime = NamespaceRuntime::start(&pair.a).unwrap();
        // 198.18.160.1 exists only inside namespace `a`: binding it works there and nowhere else.
        let bound = runtime
            .run(async {
                let socket = tokio::net::UdpSocket::bind("198.18.160.1:0").await?;
                // Sockets made later, by tasks the first task spawned, land there too.
                let later = tokio::spawn(async {
                    tokio::net::TcpListener::bind("198.18.160.1:0")
                        .await
                        .map(|_| ())
                })
                .await
                .expect("join");
                later.map(|()| socket.local_addr().unwrap())
            })
            .await
            .unwrap();
        assert!(bound.is_ok(), "{bound:?}");
        assert!(tokio::net::UdpSocket::bind("198.18.160.1:0").await.is_err());
        drop(runtime);
    }
}

//! What every service gets from the bench and gives back to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::directory::PhoneDirectory;
use crate::event::{NewEvent, Source};
use crate::placeholder::Placeholders;
use crate::timeline::Timeline;
use crate::tree::ProvisioningTree;

/// Handed to each service at start.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    pub timeline: Timeline,
    pub directory: PhoneDirectory,
    /// The address to bind (the lab NIC's address, or a loopback address).
    pub bind_ip: IpAddr,
    /// `{rig.*}` values; add `.with_phone(..)` to expand per requesting phone.
    pub placeholders: Placeholders,
    /// The tree TFTP, HTTP and FTP serve.
    pub tree: ProvisioningTree,
    /// Cancelled when the bench stops; services end their tasks and release ports.
    pub shutdown: CancellationToken,
}

/// A started service: its name, where it listens, and the task to await on stop.
pub struct RunningService {
    pub name: &'static str,
    pub addrs: Vec<SocketAddr>,
    pub task: JoinHandle<()>,
}

impl RunningService {
    /// Waits for the service's task after the shutdown token was cancelled.
    /// A panic inside the service is reported as an event, not propagated.
    pub async fn join(self, timeline: &Timeline) {
        if let Err(error) = self.task.await {
            if error.is_panic() {
                timeline.publish(
                    NewEvent::new(Source::Rig, "service.panicked")
                        .field("service", self.name)
                        .field("error", error.to_string()),
                );
            }
        }
    }
}

/// Where a panic happened and what it said, as the panic hook saw it.
#[derive(Debug, Clone)]
struct PanicReport {
    message: String,
    location: Option<String>,
    thread: Option<String>,
}

/// The runs that want to hear of panics: each gets a copy of every report.
static PANIC_SINKS: Mutex<Vec<(u64, mpsc::Sender<PanicReport>)>> = Mutex::new(Vec::new());
static PANIC_HOOK: Once = Once::new();
static NEXT_WATCH: AtomicU64 = AtomicU64::new(0);

/// Publishes every panic of this process as a `task.panicked` event while it
/// is alive (docs/CONTRACTS.md). A panic in a detached task — a service's
/// accept loop, a TFTP transfer, a SIP transaction — otherwise only ends that
/// task: tokio keeps the panic in a `JoinHandle` nobody reads until the case
/// stops, or drops it. With the event on the timeline the runner ends the
/// case at once, with the panic as the reason.
///
/// The process-wide panic hook is installed once and chained to the previous
/// one (which still prints the message). The hook only hands the report to a
/// channel; a thread of the watch publishes it, so a panic raised while the
/// timeline's own lock is held cannot deadlock the hook.
pub struct PanicWatch {
    id: u64,
}

impl PanicWatch {
    pub fn start(timeline: &Timeline) -> PanicWatch {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let payload = info.payload();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(a panic without a message)".to_owned());
                let report = PanicReport {
                    message,
                    location: info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                    thread: std::thread::current().name().map(str::to_owned),
                };
                // Retried try_lock, not lock: the lock is also held while a
                // watch is added or removed and while another thread's panic
                // is handed out (two panics at once must both be reported),
                // but a panic on the thread holding it must not deadlock.
                for _ in 0..10_000 {
                    if let Ok(sinks) = PANIC_SINKS.try_lock() {
                        for (_, sink) in sinks.iter() {
                            let _ = sink.send(report.clone());
                        }
                        break;
                    }
                    std::thread::yield_now();
                }
                // After the report: printing may resolve a backtrace, which
                // takes seconds on a loaded machine.
                previous(info);
            }));
        });
        let id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel::<PanicReport>();
        PANIC_SINKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, sender));
        let timeline = timeline.clone();
        // Ends when the watch is dropped (its sender goes with it).
        std::thread::Builder::new()
            .name("panic-watch".into())
            .spawn(move || {
                while let Ok(report) = receiver.recv() {
                    timeline.publish(
                        NewEvent::new(Source::Rig, "task.panicked")
                            .field("message", report.message)
                            .field("location", report.location)
                            .field("thread", report.thread),
                    );
                }
            })
            .expect("spawning the panic-watch thread");
        PanicWatch { id }
    }
}

impl Drop for PanicWatch {
    fn drop(&mut self) {
        PANIC_SINKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The next `kind` event whose `field` is `value` (other tests of this
    /// binary panic too, and every watch hears every panic).
    async fn next_event(
        reader: &mut crate::TimelineReader,
        kind: &str,
        field: &str,
        value: &str,
    ) -> std::sync::Arc<crate::Event> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = reader.next().await.expect("timeline open");
                if event.kind == kind && event.field_str(field) == Some(value) {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no `{kind}` with {field} = {value} within 10 s"))
    }

    /// A service whose task dies mid-case: with the watch the panic is on
    /// the timeline while the service is still "running" (nobody joined it);
    /// joining at stop then names the service.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_task_panic_is_published_at_once_and_again_at_join() {
        let timeline = Timeline::in_memory();
        let watch = PanicWatch::start(&timeline);
        let mut reader = timeline.reader();
        let service = RunningService {
            name: "probe",
            addrs: vec![],
            task: tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                panic!("probe service lost its socket");
            }),
        };
        let panicked = next_event(
            &mut reader,
            "task.panicked",
            "message",
            "probe service lost its socket",
        )
        .await;
        assert!(
            panicked
                .field_str("location")
                .is_some_and(|l| l.contains("service.rs")),
            "{panicked:?}"
        );
        assert!(!timeline
            .snapshot()
            .iter()
            .any(|e| e.kind == "service.panicked"));
        service.join(&timeline).await;
        next_event(&mut reader, "service.panicked", "service", "probe").await;
        drop(watch);
    }

    /// A dropped watch hears nothing more: a later run's timeline does not
    /// collect the panics of the process after it ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_watch_publishes_nothing() {
        let timeline = Timeline::in_memory();
        drop(PanicWatch::start(&timeline));
        let other = Timeline::in_memory();
        let watch = PanicWatch::start(&other);
        let mut reader = other.reader();
        let _ = tokio::spawn(async { panic!("after the first watch ended") }).await;
        next_event(
            &mut reader,
            "task.panicked",
            "message",
            "after the first watch ended",
        )
        .await;
        assert!(!timeline
            .snapshot()
            .iter()
            .any(|e| e.kind == "task.panicked"));
        drop(watch);
    }

    /// Panics on many threads at the same moment, while other watches come
    /// and go: each one is on the timeline (a busy sink lock once dropped them).
    #[test]
    fn simultaneous_panics_are_all_reported() {
        const THREADS: usize = 8;
        let timeline = Timeline::in_memory();
        let watch = PanicWatch::start(&timeline);
        let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let (start, done) = (start.clone(), done.clone());
            std::thread::spawn(move || {
                let other = Timeline::in_memory();
                start.wait();
                while !done.load(Ordering::Relaxed) {
                    drop(PanicWatch::start(&other));
                }
            })
        };
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    panic!("simultaneous panic {i}");
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_err());
        }
        done.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        // The watch's thread publishes them in arrival order.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let reported = loop {
            let reported: Vec<String> = timeline
                .snapshot()
                .iter()
                .filter(|e| e.kind == "task.panicked")
                .filter_map(|e| e.field_str("message").map(str::to_owned))
                .filter(|m| m.starts_with("simultaneous panic"))
                .collect();
            if reported.len() == THREADS || std::time::Instant::now() > deadline {
                break reported;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(reported.len(), THREADS, "{reported:?}");
        drop(watch);
    }
}

//! A read request (RRQ) from start to end: resolve the file through the
//! provisioning tree, negotiate options, send the blocks, publish `tftp.fetch`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use phonerig_core::{ResolveError, ServedFile};
use tokio::time::Instant;

use crate::channel::{bind_udp, Channel, Received};
use crate::options::{negotiate, Agreed, Direction};
use crate::packet::{error_code, Mode, Packet, Request};
use crate::record::{display_path, option_map, publish_refused, Outcome, TransferRecord};
use crate::source::BlockSource;
use crate::window::{wire_block, AckOutcome, SendWindow};
use crate::Shared;

/// How the block exchange ended, when it did not complete.
enum Stop {
    TimedOut,
    Aborted { code: u16, message: String },
    Shutdown,
    Failed(String),
}

/// Waits out a scenario's `delay`; false when the rig stops meanwhile.
pub async fn wait(shared: &Shared, delay: Option<Duration>) -> bool {
    match delay {
        Some(delay) => tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shared.shutdown.cancelled() => false,
        },
        None => true,
    }
}

pub async fn serve(shared: Arc<Shared>, peer: SocketAddr, request: Request) {
    let mut record = TransferRecord::begin(
        display_path(&request.filename),
        peer,
        request.mode.as_str(),
        &request.options,
    );
    let requester = shared.directory.identify(peer.ip(), &[&request.filename]);
    record.phone = requester.as_ref().map(|p| p.name.clone());

    let socket = match bind_udp(SocketAddr::new(shared.bind_ip, 0), shared.netns.as_deref()).await {
        Ok(socket) => socket,
        Err(error) => {
            record.end(Outcome::Error).message =
                Some(format!("cannot open a transfer socket: {error}"));
            record.publish(&shared.timeline, "tftp.fetch");
            return;
        }
    };
    let mut channel = Channel::new(
        socket,
        peer,
        shared.timeline.clone(),
        shared.shutdown.clone(),
    );

    // Resolving touches the disk (canonicalize, templates): keep it off the reactor.
    let tree = shared.tree.clone();
    let filename = request.filename.clone();
    let resolved = tokio::task::spawn_blocking(move || tree.resolve(&filename, requester)).await;
    let served = match resolved {
        Ok(Ok(served)) => served,
        Ok(Err(refusal)) => {
            answer_refusal(&shared, &channel, &mut record, refusal).await;
            record.publish(&shared.timeline, "tftp.fetch");
            return;
        }
        Err(join_error) => {
            let message = format!("resolving the path failed: {join_error}");
            channel
                .send_error(error_code::NOT_DEFINED, "internal error")
                .await;
            record
                .end(Outcome::Error)
                .with_error(error_code::NOT_DEFINED, message);
            record.publish(&shared.timeline, "tftp.fetch");
            return;
        }
    };
    record.file = served.path.clone();
    record.size = Some(served.size);
    if served.phone.is_some() {
        record.phone = served.phone.clone();
    }

    if !wait(&shared, served.delay).await {
        record.end(Outcome::Error).message = Some("rig stopped".into());
        record.publish(&shared.timeline, "tftp.fetch");
        return;
    }
    let record = match OwnThread::claim(served.size) {
        Some(slot) => {
            let job = Job {
                shared: shared.clone(),
                channel,
                request,
                served,
                record,
            };
            match slot.run(job).await {
                Ok(record) => record,
                // No thread to be had: the transfer runs here after all.
                Err(job) => job.run().await,
            }
        }
        None => {
            send_file(&shared, &mut channel, &request, &served, &mut record).await;
            record
        }
    };
    record.publish(&shared.timeline, "tftp.fetch");
}

/// Files at least this large (firmware images, thousands of blocks) are sent
/// from a thread of their own running a single-threaded runtime. On the
/// shared multi-threaded runtime every block of a lock-step transfer is a
/// wake-up through the I/O driver and the scheduler, often on another
/// worker thread; on its own thread the ACK wakes the very thread that sends
/// the next block — what tftpd-hpa gets from one process per transfer.
/// Config files stay on the shared runtime: they are a few blocks long.
const OWN_THREAD_MIN_SIZE: u64 = 1024 * 1024;
/// At most this many transfers have a thread at once (a boot storm of
/// firmware updates must not start a thousand threads); the others run on
/// the shared runtime as before. Process-wide, since threads are.
const OWN_THREAD_MAX: usize = 8;
static OWN_THREADS: AtomicUsize = AtomicUsize::new(0);

/// A claimed place among the [`OWN_THREAD_MAX`] transfer threads; given back on drop.
struct OwnThread;

impl OwnThread {
    fn claim(size: u64) -> Option<OwnThread> {
        if size < OWN_THREAD_MIN_SIZE {
            return None;
        }
        OWN_THREADS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < OWN_THREAD_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| OwnThread)
    }

    /// Sends the file on a new thread and waits for it without blocking the
    /// runtime; gives the job back when no thread or runtime can be had.
    async fn run(self, job: Job) -> Result<TransferRecord, Job> {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::debug!(%error, "no runtime for a TFTP transfer thread");
                return Err(job);
            }
        };
        // The job goes over only once the thread exists, so a failed spawn leaves it here.
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("tftp-transfer".into())
            .spawn(move || {
                let _slot = self;
                if let Ok(job) = job_rx.recv() {
                    let _ = done_tx.send(runtime.block_on(job.run()));
                }
            });
        if let Err(error) = spawned {
            tracing::debug!(%error, "no thread for a TFTP transfer");
            return Err(job);
        }
        let (peer, size) = (job.channel.peer(), job.served.size);
        let mut fallback = job.record.clone();
        if job_tx.send(job).is_err() {
            // The thread ended before taking the job (it cannot, short of a panic).
            fallback.end(Outcome::Error).message = Some("transfer thread ended".into());
            return Ok(fallback);
        }
        match done_rx.await {
            Ok(record) => Ok(record),
            Err(_) => {
                tracing::error!(%peer, size, "TFTP transfer thread panicked");
                fallback.end(Outcome::Error).message = Some("transfer thread failed".into());
                Ok(fallback)
            }
        }
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        OWN_THREADS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything the block exchange of one transfer needs, movable to another thread.
struct Job {
    shared: Arc<Shared>,
    channel: Channel,
    request: Request,
    served: ServedFile,
    record: TransferRecord,
}

impl Job {
    /// Runs the exchange on the calling thread's runtime.
    async fn run(self) -> TransferRecord {
        let Job {
            shared,
            channel,
            request,
            served,
            mut record,
        } = self;
        match channel.into_current_runtime() {
            Ok(mut channel) => {
                send_file(&shared, &mut channel, &request, &served, &mut record).await;
            }
            Err(error) => {
                record.end(Outcome::Error).message =
                    Some(format!("cannot move the transfer socket: {error}"));
            }
        }
        record
    }
}

async fn answer_refusal(
    shared: &Shared,
    channel: &Channel,
    record: &mut TransferRecord,
    refusal: ResolveError,
) {
    let (outcome, code, message) = match refusal {
        ResolveError::NotFound => (
            Outcome::NotFound,
            error_code::FILE_NOT_FOUND,
            "file not found".to_owned(),
        ),
        ResolveError::Refused(reason) => {
            publish_refused(
                &shared.timeline,
                channel.peer(),
                &record.file,
                &reason,
                record.phone.clone(),
            );
            (
                Outcome::Refused,
                error_code::ACCESS_VIOLATION,
                "access violation".to_owned(),
            )
        }
        ResolveError::Forced { status, delay } => {
            if !wait(shared, delay).await {
                record.end(Outcome::Error).message = Some("rig stopped".into());
                return;
            }
            if status == 404 {
                (
                    Outcome::Forced,
                    error_code::FILE_NOT_FOUND,
                    "file not found".to_owned(),
                )
            } else {
                (
                    Outcome::Forced,
                    error_code::NOT_DEFINED,
                    format!("forced {status}"),
                )
            }
        }
    };
    channel.send_error(code, &message).await;
    record.end(outcome).with_error(code, message);
}

async fn send_file(
    shared: &Shared,
    channel: &mut Channel,
    request: &Request,
    served: &ServedFile,
    record: &mut TransferRecord,
) {
    let mut source = match BlockSource::open(served, request.mode).await {
        Ok(source) => source,
        Err(error) => {
            channel
                .send_error(error_code::NOT_DEFINED, "cannot read file")
                .await;
            record.end(Outcome::Error).with_error(
                error_code::NOT_DEFINED,
                format!("cannot read file: {error}"),
            );
            return;
        }
    };
    let agreed = if shared.disable_options {
        Agreed::plain(&shared.limits)
    } else {
        // On the wire a netascii file is longer than on disk; like tftpd-hpa,
        // leave tsize out rather than announce a wrong size.
        let size = (request.mode == Mode::Octet).then_some(served.size);
        negotiate(&request.options, &shared.limits, Direction::Read { size })
    };
    record.agreed = option_map(&agreed.oack);
    // `truncate` shorter than the file: a broken download, never reported as complete.
    let truncated = served.truncate.is_some_and(|limit| limit <= served.size);

    let result = match oack_exchange(shared, channel, &agreed).await {
        Ok(()) => send_blocks(shared, channel, &mut source, &agreed, truncated, record).await,
        Err(stop) => Err(stop),
    };
    match result {
        Ok(()) => {
            record.end(if truncated {
                Outcome::Truncated
            } else {
                Outcome::Complete
            });
        }
        Err(Stop::TimedOut) => {
            // A truncated transfer is expected to leave the client waiting.
            record.end(if truncated {
                Outcome::Truncated
            } else {
                Outcome::TimedOut
            });
        }
        Err(Stop::Aborted { code, message }) => {
            record.end(Outcome::Aborted).with_error(code, message);
        }
        Err(Stop::Shutdown) => {
            channel
                .send_error(error_code::NOT_DEFINED, "server shutting down")
                .await;
            record.end(Outcome::Error).message = Some("rig stopped".into());
        }
        Err(Stop::Failed(message)) => {
            channel
                .send_error(error_code::NOT_DEFINED, "read error")
                .await;
            record
                .end(Outcome::Error)
                .with_error(error_code::NOT_DEFINED, message);
        }
    }
}

/// Sends the OACK (if any option was accepted) until the client acknowledges it with ACK 0.
async fn oack_exchange(
    shared: &Shared,
    channel: &mut Channel,
    agreed: &Agreed,
) -> Result<(), Stop> {
    if agreed.oack.is_empty() {
        return Ok(());
    }
    let oack = Packet::Oack {
        options: agreed.oack.clone(),
    }
    .encode();
    let mut retries = 0;
    loop {
        channel
            .send(&oack)
            .await
            .map_err(|e| Stop::Failed(format!("send: {e}")))?;
        let deadline = Instant::now() + agreed.timeout;
        loop {
            match channel.recv_until(deadline).await {
                Received::Packet(Packet::Ack { block: 0 }) => return Ok(()),
                Received::Packet(Packet::Error { code, message }) => {
                    return Err(Stop::Aborted { code, message })
                }
                Received::Packet(_) => continue,
                Received::Shutdown => return Err(Stop::Shutdown),
                Received::TimedOut => break,
            }
        }
        retries += 1;
        if retries > shared.retries {
            return Err(Stop::TimedOut);
        }
    }
}

/// Opcode and block number in front of a DATA packet's bytes (RFC 1350 section 5).
const DATA_HEADER_LEN: usize = 4;

/// The header of DATA packet `block`: opcode 3, then the block number, both big-endian.
fn data_header(block: u16) -> [u8; DATA_HEADER_LEN] {
    let [high, low] = block.to_be_bytes();
    [0, 3, high, low]
}

async fn send_blocks(
    shared: &Shared,
    channel: &mut Channel,
    source: &mut BlockSource,
    agreed: &Agreed,
    truncated: bool,
    record: &mut TransferRecord,
) -> Result<(), Stop> {
    let blksize = usize::from(agreed.blksize);
    let mut window = SendWindow::new(agreed.windowsize);
    // DATA packets (header and data) after the last acknowledged block, kept
    // for resending; acknowledged ones go to `spare` and carry the next
    // blocks, so a transfer allocates a window's worth of buffers, not one per block.
    let mut unacked: VecDeque<Vec<u8>> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut fetched = 0u64;
    let mut retries = 0;
    loop {
        while let Some(block) = window.next_to_send() {
            if block > fetched {
                let mut packet = spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(DATA_HEADER_LEN + blksize));
                packet.clear();
                packet.extend_from_slice(&data_header(wire_block(block)));
                let len = source
                    .append_block(&mut packet, blksize)
                    .await
                    .map_err(|e| Stop::Failed(format!("read: {e}")))?;
                if len < blksize {
                    if truncated && len == 0 {
                        // The cut falls on a block boundary: send no final
                        // short block, so the client sees a stalled download.
                        spare.push(packet);
                        window.set_last(block - 1);
                        continue;
                    }
                    window.set_last(block);
                }
                unacked.push_back(packet);
                fetched = block;
            }
            let packet = &unacked[(block - window.acked() - 1) as usize];
            channel
                .send(packet)
                .await
                .map_err(|e| Stop::Failed(format!("send: {e}")))?;
            if window.sent(block) {
                record.bytes += (packet.len() - DATA_HEADER_LEN) as u64;
            }
        }
        if window.is_finished() {
            return Ok(());
        }
        let deadline = Instant::now() + agreed.timeout;
        loop {
            match channel.recv_until(deadline).await {
                Received::Packet(Packet::Ack { block }) => {
                    let before = window.acked();
                    let outcome = window.on_ack(block);
                    spare.extend(unacked.drain(..(window.acked() - before) as usize));
                    match outcome {
                        AckOutcome::Ignored => continue,
                        AckOutcome::Progress => {
                            retries = 0;
                            break;
                        }
                        AckOutcome::Finished => return Ok(()),
                    }
                }
                Received::Packet(Packet::Error { code, message }) => {
                    return Err(Stop::Aborted { code, message })
                }
                Received::Packet(_) => continue,
                Received::Shutdown => return Err(Stop::Shutdown),
                Received::TimedOut => {
                    retries += 1;
                    if retries > shared.retries {
                        return Err(Stop::TimedOut);
                    }
                    window.on_timeout();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::encode_data;
    use rstest::rstest;

    #[rstest]
    #[case(1)]
    #[case(0x1234)]
    #[case(u16::MAX)]
    fn data_header_is_what_the_packet_encoder_writes(#[case] block: u16) {
        let mut packet = data_header(block).to_vec();
        packet.extend_from_slice(b"payload");
        assert_eq!(packet, encode_data(block, b"payload"));
    }
}

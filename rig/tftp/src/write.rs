//! A write request (WRQ), accepted only when the scenario names an
//! `upload_dir`: the file lands inside that folder and nowhere else, under
//! the same path rules as downloads, and appears only once complete.

use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use phonerig_core::tree::normalise_request_path;
use phonerig_core::{PhoneInfo, ResolveError};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::channel::{bind_udp, Channel, Received};
use crate::netascii::Decoder;
use crate::options::{negotiate, Agreed, Direction};
use crate::packet::{error_code, Mode, Packet, Request};
use crate::record::{display_path, option_map, publish_refused, Outcome, TransferRecord};
use crate::window::wire_block;
use crate::Shared;

/// Largest upload accepted: phones upload logs and configs, not disk images.
/// Beyond it the transfer ends with error 3 (disk full or allocation exceeded).
pub const MAX_UPLOAD_BYTES: u64 = 256 * 1024 * 1024;

enum Stop {
    TimedOut,
    Aborted {
        code: u16,
        message: String,
    },
    Shutdown,
    /// Ended by us with this error code and message.
    Failed {
        code: u16,
        message: String,
    },
}

fn failed(code: u16, message: impl Into<String>) -> Stop {
    Stop::Failed {
        code,
        message: message.into(),
    }
}

/// Where an upload of `raw_path` goes, creating sub-folders inside the upload
/// folder as needed. Symlinks anywhere below the upload folder are refused, so
/// no name can lead out of it.
pub fn upload_target(upload_dir: &Path, raw_path: &str) -> Result<PathBuf, String> {
    let relative = match normalise_request_path(raw_path) {
        Ok(path) => path,
        Err(ResolveError::Refused(reason)) => return Err(reason),
        Err(_) => return Err("empty path".into()),
    };
    std::fs::create_dir_all(upload_dir).map_err(|e| format!("cannot create upload folder: {e}"))?;
    let mut dir = upload_dir
        .canonicalize()
        .map_err(|e| format!("upload folder: {e}"))?;
    let components: Vec<Component> = Path::new(&relative).components().collect();
    let (name, parents) = components.split_last().ok_or("empty path")?;
    for part in parents {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("`{}` is not a plain folder", dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(|e| format!("cannot create folder: {e}"))?
            }
            Err(e) => return Err(format!("cannot inspect folder: {e}")),
        }
    }
    let target = dir.join(name);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) if !meta.is_file() => Err("target exists and is not a plain file".into()),
        _ => Ok(target),
    }
}

/// The upload folder for this requester, with placeholders (`uploads/{phone.name}`) expanded.
fn upload_dir_for(shared: &Shared, phone: Option<&PhoneInfo>) -> Result<PathBuf, String> {
    let template = shared
        .upload_dir
        .as_ref()
        .ok_or("uploads are disabled (no upload_dir)")?;
    let placeholders = match phone {
        Some(phone) => shared.placeholders.clone().with_phone(phone),
        None => shared.placeholders.clone(),
    };
    placeholders
        .expand(&template.to_string_lossy())
        .map(PathBuf::from)
        .map_err(|e| format!("upload_dir for an unidentified peer: {e}"))
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
            record.publish(&shared.timeline, "tftp.upload");
            return;
        }
    };
    let mut channel = Channel::new(
        socket,
        peer,
        shared.timeline.clone(),
        shared.shutdown.clone(),
    );

    let target = match upload_dir_for(&shared, requester.as_deref()) {
        Ok(dir) => {
            let filename = request.filename.clone();
            tokio::task::spawn_blocking(move || upload_target(&dir, &filename))
                .await
                .unwrap_or_else(|e| Err(format!("internal error: {e}")))
        }
        Err(reason) => Err(reason),
    };
    let target = match target {
        Ok(target) => target,
        Err(reason) => {
            publish_refused(
                &shared.timeline,
                peer,
                &record.file,
                &reason,
                record.phone.clone(),
            );
            channel
                .send_error(error_code::ACCESS_VIOLATION, "access violation")
                .await;
            record
                .end(Outcome::Refused)
                .with_error(error_code::ACCESS_VIOLATION, "access violation");
            record.publish(&shared.timeline, "tftp.upload");
            return;
        }
    };

    let agreed = if shared.disable_options {
        Agreed::plain(&shared.limits)
    } else {
        negotiate(&request.options, &shared.limits, Direction::Write)
    };
    record.agreed = option_map(&agreed.oack);
    // RFC 2349: a server that cannot take the announced size says so before any data.
    let announced = agreed
        .oack
        .iter()
        .find(|(name, _)| name == "tsize")
        .and_then(|(_, value)| value.parse::<u64>().ok());
    if let Some(size) = announced.filter(|&size| size > MAX_UPLOAD_BYTES) {
        let message = format!("upload of {size} bytes is larger than {MAX_UPLOAD_BYTES}");
        channel.send_error(error_code::DISK_FULL, &message).await;
        record
            .end(Outcome::Error)
            .with_error(error_code::DISK_FULL, message);
        record.publish(&shared.timeline, "tftp.upload");
        return;
    }

    let partial = partial_path(&target, peer.port());
    let result = receive_into(
        &shared,
        &mut channel,
        &request,
        &agreed,
        &partial,
        &mut record,
    )
    .await;
    let result = match result {
        Ok(()) => tokio::fs::rename(&partial, &target)
            .await
            .map_err(|e| failed(error_code::DISK_FULL, format!("rename: {e}"))),
        Err(stop) => Err(stop),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    match result {
        Ok(()) => {
            record.size = Some(record.bytes);
            record.end(Outcome::Complete);
        }
        Err(Stop::TimedOut) => {
            record.end(Outcome::TimedOut);
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
        Err(Stop::Failed { code, message }) => {
            channel.send_error(code, &message).await;
            record.end(Outcome::Error).with_error(code, message);
        }
    }
    let completed = record.outcome == Outcome::Complete;
    record.publish(&shared.timeline, "tftp.upload");
    if completed {
        dally(&mut channel, &agreed).await;
    }
}

/// `.<name>.<port>.part` beside the target: invisible until renamed.
fn partial_path(target: &Path, port: u16) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{port}.part"))
}

async fn receive_into(
    shared: &Shared,
    channel: &mut Channel,
    request: &Request,
    agreed: &Agreed,
    partial: &Path,
    record: &mut TransferRecord,
) -> Result<(), Stop> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .await
        .map_err(|e| {
            failed(
                error_code::ACCESS_VIOLATION,
                format!("cannot create file: {e}"),
            )
        })?;
    let mut file = tokio::io::BufWriter::new(file);
    let mut decoder = (request.mode == Mode::Netascii).then(Decoder::default);
    let mut decoded = Vec::new();
    let blksize = usize::from(agreed.blksize);

    // The first answer: OACK when options were accepted, else ACK 0.
    let mut last_answer = if agreed.oack.is_empty() {
        Packet::Ack { block: 0 }.encode()
    } else {
        Packet::Oack {
            options: agreed.oack.clone(),
        }
        .encode()
    };
    channel
        .send(&last_answer)
        .await
        .map_err(|e| failed(error_code::NOT_DEFINED, format!("send: {e}")))?;

    let mut expected: u64 = 1;
    let mut in_window: u16 = 0;
    // Position already re-acknowledged for a duplicate or gap, to answer a
    // burst of out-of-order blocks with one ACK instead of one each.
    let mut reacked_at: Option<u64> = None;
    let mut retries = 0;
    let mut deadline = Instant::now() + agreed.timeout;
    loop {
        match channel.recv_until(deadline).await {
            Received::Packet(Packet::Data { block, data }) if block == wire_block(expected) => {
                if data.len() > blksize {
                    return Err(failed(
                        error_code::ILLEGAL_OPERATION,
                        "block larger than the agreed blksize",
                    ));
                }
                record.bytes += data.len() as u64;
                if record.bytes > MAX_UPLOAD_BYTES {
                    return Err(failed(
                        error_code::DISK_FULL,
                        format!("upload larger than {MAX_UPLOAD_BYTES} bytes"),
                    ));
                }
                let bytes = match decoder.as_mut() {
                    Some(decoder) => {
                        decoded.clear();
                        decoder.decode_into(&data, &mut decoded);
                        &decoded[..]
                    }
                    None => &data[..],
                };
                file.write_all(bytes)
                    .await
                    .map_err(|e| failed(error_code::DISK_FULL, format!("write: {e}")))?;
                let last = data.len() < blksize;
                in_window += 1;
                if last || in_window == agreed.windowsize {
                    last_answer = Packet::Ack { block }.encode();
                    channel
                        .send(&last_answer)
                        .await
                        .map_err(|e| failed(error_code::NOT_DEFINED, format!("send: {e}")))?;
                    in_window = 0;
                }
                expected += 1;
                retries = 0;
                deadline = Instant::now() + agreed.timeout;
                if last {
                    if let Some(decoder) = decoder.as_mut() {
                        decoded.clear();
                        decoder.finish(&mut decoded);
                        file.write_all(&decoded)
                            .await
                            .map_err(|e| failed(error_code::DISK_FULL, format!("write: {e}")))?;
                    }
                    file.flush()
                        .await
                        .map_err(|e| failed(error_code::DISK_FULL, format!("write: {e}")))?;
                    return Ok(());
                }
            }
            Received::Packet(Packet::Data { .. }) => {
                // A duplicate (our ACK was lost) or a gap in a window: say
                // which block we have, once per position.
                if reacked_at != Some(expected) {
                    reacked_at = Some(expected);
                    in_window = 0;
                    last_answer = Packet::Ack {
                        block: wire_block(expected - 1),
                    }
                    .encode();
                    channel
                        .send(&last_answer)
                        .await
                        .map_err(|e| failed(error_code::NOT_DEFINED, format!("send: {e}")))?;
                }
            }
            Received::Packet(Packet::Error { code, message }) => {
                return Err(Stop::Aborted { code, message })
            }
            Received::Packet(_) => {}
            Received::Shutdown => return Err(Stop::Shutdown),
            Received::TimedOut => {
                retries += 1;
                if retries > shared.retries {
                    return Err(Stop::TimedOut);
                }
                channel
                    .send(&last_answer)
                    .await
                    .map_err(|e| failed(error_code::NOT_DEFINED, format!("send: {e}")))?;
                deadline = Instant::now() + agreed.timeout;
            }
        }
    }
}

/// After the final ACK, stay a little to acknowledge the last block again if
/// that ACK was lost (RFC 1350 section 6), so the client does not report a failure.
async fn dally(channel: &mut Channel, agreed: &Agreed) {
    let deadline = Instant::now() + agreed.timeout;
    while let Received::Packet(packet) = channel.recv_until(deadline).await {
        if let Packet::Data { block, .. } = packet {
            let _ = channel.send(&Packet::Ack { block }.encode()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_target_stays_inside_and_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let target = upload_target(dir.path(), "/logs/today/boot.log").unwrap();
        assert_eq!(
            target,
            dir.path()
                .canonicalize()
                .unwrap()
                .join("logs/today/boot.log")
        );
        assert!(target.parent().unwrap().is_dir());
        assert!(upload_target(dir.path(), "../x").is_err());
        assert!(upload_target(dir.path(), "a\\..\\x").is_err());
        assert!(upload_target(dir.path(), "/").is_err());
    }

    #[test]
    fn upload_target_refuses_symlinked_folders_and_targets() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        assert!(upload_target(dir.path(), "out/x").is_err());
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(
            upload_target(dir.path(), "sub").is_err(),
            "a folder is not a file to overwrite"
        );
    }
}

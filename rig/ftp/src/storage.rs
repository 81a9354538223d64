//! The provisioning tree as a read-only libunftp storage back-end. Every
//! RETR goes through `ProvisioningTree::resolve`, so absent files, forced
//! answers, delays, truncation, templates and path confinement behave exactly
//! as over TFTP and HTTP. Writes of any kind are refused and reported.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use phonerig_core::event::{NewEvent, Source};
use phonerig_core::tree::{normalise_request_path, Body};
use phonerig_core::{PhoneInfo, ResolveError, ServedFile, ServiceContext};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use unftp_core::auth::DefaultUser;
use unftp_core::storage::{
    Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART,
};

use crate::login::Session;

const CHUNK: usize = 64 * 1024;

/// FTP reply codes libunftp sends for the storage errors used here.
mod reply {
    pub const TRANSFER_COMPLETE: u16 = 226;
    pub const CONNECTION_CLOSED: u16 = 426;
    pub const TRANSIENT_FILE_ERROR: u16 = 450;
    pub const LOCAL_ERROR: u16 = 451;
    pub const FILE_ERROR: u16 = 550;
}

/// What FTP answers for a tree decision that is not a file.
pub fn error_for(decision: &ResolveError) -> (ErrorKind, u16) {
    match decision {
        ResolveError::NotFound => (ErrorKind::PermanentFileNotAvailable, reply::FILE_ERROR),
        ResolveError::Refused(_) => (ErrorKind::PermissionDenied, reply::FILE_ERROR),
        // A forced HTTP status maps to FTP's two kinds of failure: 4xx is
        // worth retrying (450), anything else is permanent (550).
        ResolveError::Forced { status, .. }
            if (400..500).contains(status) && *status != 403 && *status != 404 =>
        {
            (
                ErrorKind::TransientFileNotAvailable,
                reply::TRANSIENT_FILE_ERROR,
            )
        }
        ResolveError::Forced { status: 403, .. } => {
            (ErrorKind::PermissionDenied, reply::FILE_ERROR)
        }
        ResolveError::Forced { .. } => (ErrorKind::PermanentFileNotAvailable, reply::FILE_ERROR),
    }
}

/// Fields of an `ftp.fetch` event (docs/CONTRACTS.md).
#[derive(Debug, Serialize)]
struct FetchFields<'a> {
    file: &'a str,
    protocol: &'static str,
    peer: String,
    user: &'a str,
    outcome: &'static str,
    code: u16,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<u64>,
    /// `RETR`, or `SIZE` for a lookup (SIZE, MDTM, MLST) that failed: clients
    /// such as curl give up there without sending RETR.
    during: &'static str,
    duration_us: u64,
}

/// File facts for SIZE, MDTM, LIST.
#[derive(Debug, Clone)]
pub struct TreeMetadata {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl Metadata for TreeMetadata {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(self.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

/// One control connection's view of the tree.
#[derive(Debug)]
pub(crate) struct TreeStorage {
    pub ctx: ServiceContext,
    pub peer: SocketAddr,
    pub session: Session,
}

/// A served file opened for reading from `start`, with the bytes before the cut.
struct Opened {
    reader: Box<dyn AsyncRead + Send + Sync + Unpin>,
    /// Bytes to send from `start` before cutting, when the scenario cuts.
    cut_after: Option<u64>,
    full_size: u64,
    phone: Option<String>,
    path: String,
    delay: Option<Duration>,
}

fn ftp_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl TreeStorage {
    fn requester(&self, path: &str) -> Option<Arc<PhoneInfo>> {
        let logged_in = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .phone
            .clone();
        logged_in.or_else(|| self.ctx.directory.identify(self.peer.ip(), &[path]))
    }

    async fn wait(&self, delay: Option<Duration>) -> Result<()> {
        let Some(delay) = delay else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.ctx.shutdown.cancelled() => Err(Error::from(ErrorKind::LocalError)),
        }
    }

    fn refused(&self, path: &str, command: &str, reason: &str) {
        let phone = self.requester(path).map(|p| p.name.clone());
        self.ctx.timeline.publish(
            NewEvent::new(Source::Ftp, "ftp.refused")
                .phone(phone)
                .field("path", path.trim_start_matches('/'))
                .field("reason", reason)
                .field("command", command)
                .field("peer", self.peer.to_string()),
        );
    }

    /// Every write command gets the same answer: an event and "permission denied".
    fn read_only<T>(&self, path: &Path, command: &str) -> Result<T> {
        self.refused(
            &ftp_path(path),
            command,
            "the provisioning tree is read-only",
        );
        Err(Error::from(ErrorKind::PermissionDenied))
    }

    fn resolve(&self, path: &str) -> std::result::Result<ServedFile, ResolveError> {
        self.ctx.tree.resolve(path, self.requester(path))
    }

    /// Opens what the tree serves for `path`, or says why not.
    async fn open(
        &self,
        path: &str,
        start: u64,
    ) -> std::result::Result<Opened, (ResolveError, Option<String>)> {
        let served = self
            .resolve(path)
            .map_err(|e| (e, self.requester(path).map(|p| p.name.clone())))?;
        let (reader, full_size): (Box<dyn AsyncRead + Send + Sync + Unpin>, u64) =
            match &served.body {
                Body::Bytes(bytes) => {
                    let skip = (start as usize).min(bytes.len());
                    (
                        Box::new(std::io::Cursor::new(bytes[skip..].to_vec())),
                        bytes.len() as u64,
                    )
                }
                Body::File(on_disk) => {
                    let mut file = tokio::fs::File::open(on_disk)
                        .await
                        .map_err(|_| (ResolveError::NotFound, served.phone.clone()))?;
                    let len = file
                        .metadata()
                        .await
                        .map(|m| m.len())
                        .map_err(|_| (ResolveError::NotFound, served.phone.clone()))?;
                    if start > 0 {
                        file.seek(std::io::SeekFrom::Start(start))
                            .await
                            .map_err(|_| (ResolveError::NotFound, served.phone.clone()))?;
                    }
                    (Box::new(file), len)
                }
            };
        Ok(Opened {
            reader,
            cut_after: served.truncate.map(|t| t.saturating_sub(start)),
            full_size,
            phone: served.phone.clone(),
            path: served.path.clone(),
            delay: served.delay,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        during: &'static str,
        phone: Option<String>,
        file: &str,
        user: &str,
        outcome: &'static str,
        code: u16,
        bytes: u64,
        size: Option<u64>,
        start: u64,
        started: Instant,
    ) {
        let fields = FetchFields {
            file,
            protocol: "ftp",
            peer: self.peer.to_string(),
            user,
            outcome,
            code,
            bytes,
            size,
            start: (start > 0).then_some(start),
            during,
            duration_us: started.elapsed().as_micros() as u64,
        };
        self.ctx.timeline.publish(
            NewEvent::new(Source::Ftp, "ftp.fetch")
                .phone(phone)
                .fields_from(&fields),
        );
    }

    /// File facts without side effects (SIZE, MDTM, LIST). The size is the
    /// full one even when the scenario cuts the transfer: a client comparing
    /// SIZE with what arrived sees a broken download.
    async fn lookup(&self, path: &str) -> std::result::Result<TreeMetadata, ResolveError> {
        if path.trim_matches('/').is_empty() || self.directory_on_disk(path).is_some() {
            return Ok(TreeMetadata {
                len: 0,
                dir: true,
                modified: now(),
            });
        }
        let served = self.resolve(path)?;
        let (len, modified) = match &served.body {
            Body::Bytes(bytes) => (bytes.len() as u64, now()),
            Body::File(on_disk) => {
                let meta = tokio::fs::metadata(on_disk)
                    .await
                    .map_err(|_| ResolveError::NotFound)?;
                (meta.len(), meta.modified().unwrap_or_else(|_| now()))
            }
        };
        Ok(TreeMetadata {
            len,
            dir: false,
            modified,
        })
    }

    /// The directory under the tree root for `path`, confined to the root.
    fn directory_on_disk(&self, path: &str) -> Option<PathBuf> {
        let root = self.ctx.tree.root()?.canonicalize().ok()?;
        let relative = match normalise_request_path(path) {
            Ok(relative) => relative,
            Err(ResolveError::NotFound) => String::new(), // the root itself
            Err(_) => return None,
        };
        let real = root.join(relative).canonicalize().ok()?;
        (real.starts_with(&root) && real.is_dir()).then_some(real)
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[async_trait]
impl StorageBackend<DefaultUser> for TreeStorage {
    type Metadata = TreeMetadata;

    fn name(&self) -> &str {
        "phonerig provisioning tree"
    }

    fn supported_features(&self) -> u32 {
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> Result<TreeMetadata> {
        let path = ftp_path(path.as_ref());
        match self.lookup(&path).await {
            Ok(meta) => Ok(meta),
            Err(decision) => {
                let (kind, code) = error_for(&decision);
                let shown = normalise_request_path(&path)
                    .unwrap_or_else(|_| path.trim_start_matches('/').to_owned());
                let (user, phone) = {
                    let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
                    session.failed_lookup = Some(shown.clone());
                    (session.user.clone(), session.phone.clone())
                };
                if let ResolveError::Refused(reason) = &decision {
                    self.refused(&path, "SIZE", reason);
                }
                if let ResolveError::Forced { delay, .. } = &decision {
                    let _ = self.wait(*delay).await;
                }
                let phone = phone
                    .or_else(|| self.ctx.directory.identify(self.peer.ip(), &[&path]))
                    .map(|p| p.name.clone());
                self.report(
                    "SIZE",
                    phone,
                    &shown,
                    &user,
                    decision.outcome(),
                    code,
                    0,
                    None,
                    0,
                    Instant::now(),
                );
                Err(Error::from(kind))
            }
        }
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, TreeMetadata>>> {
        let path = ftp_path(path.as_ref());
        let Some(dir) = self.directory_on_disk(&path) else {
            return if path.trim_matches('/').is_empty() {
                Ok(Vec::new())
            } else {
                Err(Error::from(ErrorKind::PermanentDirectoryNotAvailable))
            };
        };
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|_| Error::from(ErrorKind::PermanentDirectoryNotAvailable))?;
        let mut listing = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = format!("{}/{name}", path.trim_end_matches('/'));
            let Ok(meta) = self.lookup(&child).await else {
                // Absent, refused (symlink out) or forced files are not listed.
                continue;
            };
            listing.push(Fileinfo {
                path: PathBuf::from(name),
                metadata: meta,
            });
        }
        Ok(listing)
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let path = ftp_path(path.as_ref());
        match self.open(&path, start_pos).await {
            Ok(opened) => match opened.cut_after {
                Some(limit) => Ok(Box::new(opened.reader.take(limit))),
                None => Ok(opened.reader),
            },
            Err((decision, _)) => Err(Error::from(error_for(&decision).0)),
        }
    }

    /// RETR: streams the file, cuts it where the scenario says, and
    /// publishes one `ftp.fetch` whatever happens.
    async fn get_into<'a, P, W: ?Sized>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> Result<u64>
    where
        W: AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        let started = Instant::now();
        let raw = ftp_path(path.as_ref());
        let user_name = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .user
            .clone();
        let user_name = user_name.as_str();
        let shown =
            normalise_request_path(&raw).unwrap_or_else(|_| raw.trim_start_matches('/').to_owned());
        let mut opened = match self.open(&raw, start_pos).await {
            Ok(opened) => opened,
            Err((decision, phone)) => {
                if let ResolveError::Forced { delay, .. } = &decision {
                    let _ = self.wait(*delay).await;
                }
                if let ResolveError::Refused(reason) = &decision {
                    self.refused(&raw, "RETR", reason);
                }
                let (kind, code) = error_for(&decision);
                let reported_at_lookup = self
                    .session
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed_lookup
                    .take()
                    .is_some_and(|p| p == shown);
                if !reported_at_lookup {
                    self.report(
                        "RETR",
                        phone,
                        &shown,
                        user_name,
                        decision.outcome(),
                        code,
                        0,
                        None,
                        start_pos,
                        started,
                    );
                }
                return Err(Error::from(kind));
            }
        };
        if self.wait(opened.delay).await.is_err() {
            self.report(
                "RETR",
                opened.phone,
                &opened.path,
                user_name,
                "aborted",
                reply::LOCAL_ERROR,
                0,
                Some(opened.full_size),
                start_pos,
                started,
            );
            return Err(Error::from(ErrorKind::LocalError));
        }
        let mut sent = 0u64;
        let mut buffer = vec![0u8; CHUNK];
        let outcome: std::result::Result<(), (&'static str, u16, ErrorKind)> = loop {
            let room = opened
                .cut_after
                .map_or(CHUNK as u64, |cut| (cut - sent).min(CHUNK as u64))
                as usize;
            if room == 0 {
                // Push out what is buffered before the cut, so exactly the
                // bytes before it arrive.
                let _ = output.flush().await;
                break Err(("truncated", reply::LOCAL_ERROR, ErrorKind::LocalError));
            }
            let read = tokio::select! {
                read = opened.reader.read(&mut buffer[..room]) => read,
                _ = self.ctx.shutdown.cancelled() => break Err(("aborted", reply::LOCAL_ERROR, ErrorKind::LocalError)),
            };
            match read {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if output.write_all(&buffer[..n]).await.is_err() {
                        break Err((
                            "aborted",
                            reply::CONNECTION_CLOSED,
                            ErrorKind::ConnectionClosed,
                        ));
                    }
                    sent += n as u64;
                }
                Err(_) => break Err(("error", reply::LOCAL_ERROR, ErrorKind::LocalError)),
            }
        };
        match outcome {
            Ok(()) => {
                if output.flush().await.is_err() {
                    self.report(
                        "RETR",
                        opened.phone,
                        &opened.path,
                        user_name,
                        "aborted",
                        reply::CONNECTION_CLOSED,
                        sent,
                        Some(opened.full_size),
                        start_pos,
                        started,
                    );
                    return Err(Error::from(ErrorKind::ConnectionClosed));
                }
                self.report(
                    "RETR",
                    opened.phone,
                    &opened.path,
                    user_name,
                    "complete",
                    reply::TRANSFER_COMPLETE,
                    sent,
                    Some(opened.full_size),
                    start_pos,
                    started,
                );
                Ok(sent)
            }
            Err((word, code, kind)) => {
                self.report(
                    "RETR",
                    opened.phone,
                    &opened.path,
                    user_name,
                    word,
                    code,
                    sent,
                    Some(opened.full_size),
                    start_pos,
                    started,
                );
                Err(Error::from(kind))
            }
        }
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        _user: &DefaultUser,
        _input: R,
        path: P,
        _start_pos: u64,
    ) -> Result<u64> {
        self.read_only(path.as_ref(), "STOR")
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<()> {
        self.read_only(path.as_ref(), "DELE")
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<()> {
        self.read_only(path.as_ref(), "MKD")
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        from: P,
        _to: P,
    ) -> Result<()> {
        self.read_only(from.as_ref(), "RNTO")
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<()> {
        self.read_only(path.as_ref(), "RMD")
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, _user: &DefaultUser, path: P) -> Result<()> {
        let path = ftp_path(path.as_ref());
        if path.trim_matches('/').is_empty() || self.directory_on_disk(&path).is_some() {
            Ok(())
        } else {
            Err(Error::from(ErrorKind::PermanentDirectoryNotAvailable))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(ResolveError::NotFound, ErrorKind::PermanentFileNotAvailable, 550)]
    #[case(ResolveError::Refused("x".into()), ErrorKind::PermissionDenied, 550)]
    #[case(ResolveError::Forced { status: 500, delay: None }, ErrorKind::PermanentFileNotAvailable, 550)]
    #[case(ResolveError::Forced { status: 503, delay: None }, ErrorKind::PermanentFileNotAvailable, 550)]
    #[case(ResolveError::Forced { status: 429, delay: None }, ErrorKind::TransientFileNotAvailable, 450)]
    #[case(ResolveError::Forced { status: 408, delay: None }, ErrorKind::TransientFileNotAvailable, 450)]
    #[case(ResolveError::Forced { status: 403, delay: None }, ErrorKind::PermissionDenied, 550)]
    #[case(ResolveError::Forced { status: 404, delay: None }, ErrorKind::PermanentFileNotAvailable, 550)]
    fn tree_decisions_map_to_ftp_replies(
        #[case] decision: ResolveError,
        #[case] kind: ErrorKind,
        #[case] code: u16,
    ) {
        assert_eq!(error_for(&decision), (kind, code));
    }
}

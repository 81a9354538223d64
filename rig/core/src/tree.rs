//! The provisioning tree a scenario offers, shared by TFTP, HTTP and FTP so
//! that path confinement, absent files, forced answers and templates are
//! decided in one place for every protocol.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::directory::{PhoneDirectory, PhoneInfo};
use crate::placeholder::Placeholders;

/// Longest request path accepted; phones ask for short names, attackers for long ones.
pub const MAX_PATH_LEN: usize = 1024;
const MAX_COMPONENT_LEN: usize = 255;

/// How one file (or glob of files) of the tree behaves. The path may use
/// placeholders (`cfg{phone.mac}.xml`) and `*`/`?` wildcards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileRule {
    pub path: String,
    /// Inline content (placeholders expanded for the requesting phone).
    pub content: Option<String>,
    /// Pretend the file is not there, even when it is on disk.
    pub absent: bool,
    /// Answer with this HTTP status instead (TFTP and FTP map it to their errors).
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Send only the first N bytes, then cut the transfer (a broken download).
    pub truncate: Option<u64>,
    /// Expand placeholders in the file's content from disk.
    pub template: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

/// A file the tree agreed to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedFile {
    /// Normalised request path, relative to the root, `/`-separated.
    pub path: String,
    pub body: Body,
    pub size: u64,
    pub delay: Option<Duration>,
    /// Bytes to send before cutting the transfer short.
    pub truncate: Option<u64>,
    /// The phone whose placeholders were used, when one was identified.
    pub phone: Option<String>,
}

impl ServedFile {
    pub async fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = match &self.body {
            Body::Bytes(b) => b.as_ref().clone(),
            Body::File(p) => tokio::fs::read(p).await?,
        };
        if let Some(limit) = self.truncate {
            bytes.truncate(limit as usize);
        }
        Ok(bytes)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The path tries to leave the root or is not a sane name; never served.
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found")]
    NotFound,
    /// A scenario forced this answer.
    #[error("forced status {status}")]
    Forced {
        status: u16,
        delay: Option<Duration>,
    },
}

impl ResolveError {
    /// Short word for events: `refused`, `not_found`, `forced`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ResolveError::Refused(_) => "refused",
            ResolveError::NotFound => "not_found",
            ResolveError::Forced { .. } => "forced",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProvisioningTree {
    root: Option<PathBuf>,
    /// `root` with its symlinks resolved, found on the first request that
    /// needed it (the root may not exist yet when the tree is built). Every
    /// request used to resolve it again: one `realpath` (~4 syscalls) per
    /// request for an answer that does not change. Each request still
    /// resolves its own file, so a symlink added to the tree later is judged
    /// when it is requested; and a root swapped for a symlink afterwards is
    /// refused rather than followed, since files are looked up under this path.
    canonical_root: Arc<OnceLock<PathBuf>>,
    rules: Vec<FileRule>,
    base: Placeholders,
    directory: PhoneDirectory,
}

/// Turns a request path into a safe relative path or refuses it.
pub fn normalise_request_path(raw: &str) -> Result<String, ResolveError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(ResolveError::Refused(format!(
            "path longer than {MAX_PATH_LEN} bytes"
        )));
    }
    if raw.contains('\0') {
        return Err(ResolveError::Refused("NUL in path".into()));
    }
    if raw.contains('\\') {
        return Err(ResolveError::Refused("backslash in path".into()));
    }
    // A leading `/` means the root of the tree (TFTP clients and URLs send it),
    // never the root of the host file system.
    let trimmed = raw.trim_start_matches('/');
    let mut parts = Vec::new();
    for component in Path::new(trimmed).components() {
        match component {
            Component::Normal(part) => {
                let part = part
                    .to_str()
                    .ok_or_else(|| ResolveError::Refused("path is not UTF-8".into()))?;
                if part.len() > MAX_COMPONENT_LEN {
                    return Err(ResolveError::Refused("path component too long".into()));
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(ResolveError::Refused("`..` in path".into())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ResolveError::Refused("absolute path".into()))
            }
        }
    }
    if parts.is_empty() {
        return Err(ResolveError::NotFound);
    }
    Ok(parts.join("/"))
}

/// `*` matches any run of characters except `/`, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn inner(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                inner(&p[1..], t) || (!t.is_empty() && t[0] != b'/' && inner(p, &t[1..]))
            }
            (Some(b'?'), Some(c)) if *c != b'/' => inner(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => inner(&p[1..], &t[1..]),
            _ => false,
        }
    }
    inner(pattern.trim_start_matches('/').as_bytes(), text.as_bytes())
}

impl ProvisioningTree {
    pub fn new(
        root: Option<PathBuf>,
        rules: Vec<FileRule>,
        base: Placeholders,
        directory: PhoneDirectory,
    ) -> Self {
        ProvisioningTree {
            root,
            canonical_root: Arc::new(OnceLock::new()),
            rules,
            base,
            directory,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    pub fn directory(&self) -> &PhoneDirectory {
        &self.directory
    }

    fn placeholders_for(&self, phone: Option<&PhoneInfo>) -> Placeholders {
        match phone {
            Some(p) => self.base.clone().with_phone(p),
            None => self.base.clone(),
        }
    }

    /// The rule matching `path`, with the phone whose placeholders made it match.
    /// A rule naming `{phone.*}` can identify the requester by itself (MAC in the file name).
    fn matching_rule(
        &self,
        path: &str,
        requester: Option<&Arc<PhoneInfo>>,
    ) -> Option<(&FileRule, Option<Arc<PhoneInfo>>)> {
        for rule in &self.rules {
            if Placeholders::mentions_phone(&rule.path) {
                let candidates: Vec<Arc<PhoneInfo>> = match requester {
                    Some(p) => vec![p.clone()],
                    None => self.directory.phones(),
                };
                for phone in candidates {
                    if let Ok(pattern) = self.placeholders_for(Some(&phone)).expand(&rule.path) {
                        if glob_match(&pattern, path) {
                            return Some((rule, Some(phone)));
                        }
                    }
                }
            } else if let Ok(pattern) = self.base.expand(&rule.path) {
                if glob_match(&pattern, path) {
                    return Some((rule, requester.cloned()));
                }
            }
        }
        None
    }

    /// Decides what to answer for `raw_path` requested by `requester`.
    pub fn resolve(
        &self,
        raw_path: &str,
        requester: Option<Arc<PhoneInfo>>,
    ) -> Result<ServedFile, ResolveError> {
        let path = normalise_request_path(raw_path)?;
        let (rule, phone) = match self.matching_rule(&path, requester.as_ref()) {
            Some((rule, phone)) => (Some(rule), phone),
            None => (None, requester.or_else(|| self.directory.by_mac_in(&path))),
        };
        // Placeholders are built only for the answers that expand them (inline
        // content, templates): a plain file needs none, and building them
        // clones the whole map per request.
        let placeholders = || self.placeholders_for(phone.as_deref());
        if let Some(rule) = rule {
            if rule.absent {
                return Err(ResolveError::NotFound);
            }
            if let Some(status) = rule.status.filter(|s| !(200..300).contains(s)) {
                return Err(ResolveError::Forced {
                    status,
                    delay: rule.delay,
                });
            }
            if let Some(content) = &rule.content {
                let expanded = placeholders()
                    .expand(content)
                    .unwrap_or_else(|_| content.clone());
                return Ok(ServedFile {
                    path,
                    size: rule
                        .truncate
                        .map_or(expanded.len() as u64, |t| t.min(expanded.len() as u64)),
                    body: Body::Bytes(Arc::new(expanded.into_bytes())),
                    delay: rule.delay,
                    truncate: rule.truncate,
                    phone: phone.map(|p| p.name.clone()),
                });
            }
        }
        let on_disk = self.confined(&path)?;
        let metadata = std::fs::metadata(&on_disk).map_err(|_| ResolveError::NotFound)?;
        if !metadata.is_file() {
            return Err(ResolveError::NotFound);
        }
        let (body, size) = if rule.is_some_and(|r| r.template) {
            let text = std::fs::read_to_string(&on_disk).map_err(|_| ResolveError::NotFound)?;
            let expanded = placeholders().expand(&text).unwrap_or(text);
            let len = expanded.len() as u64;
            (Body::Bytes(Arc::new(expanded.into_bytes())), len)
        } else {
            (Body::File(on_disk), metadata.len())
        };
        let truncate = rule.and_then(|r| r.truncate);
        Ok(ServedFile {
            path,
            size: truncate.map_or(size, |t| t.min(size)),
            body,
            delay: rule.and_then(|r| r.delay),
            truncate,
            phone: phone.map(|p| p.name.clone()),
        })
    }

    /// The file under the root for `path`, refusing symlinks that lead outside it.
    fn confined(&self, path: &str) -> Result<PathBuf, ResolveError> {
        let root = self.canonical_root()?;
        let candidate = root.join(path);
        let real = candidate
            .canonicalize()
            .map_err(|_| ResolveError::NotFound)?;
        if !real.starts_with(root) {
            return Err(ResolveError::Refused(
                "path leaves the root through a symlink".into(),
            ));
        }
        Ok(real)
    }

    /// The root with its symlinks resolved, computed once; a root that does
    /// not exist (yet) is looked for again on the next request.
    fn canonical_root(&self) -> Result<&Path, ResolveError> {
        if let Some(root) = self.canonical_root.get() {
            return Ok(root);
        }
        let root = self.root.as_ref().ok_or(ResolveError::NotFound)?;
        let real = root.canonicalize().map_err(|_| ResolveError::NotFound)?;
        // Two first requests may race here; both computed the same path.
        Ok(self.canonical_root.get_or_init(|| real))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placeholder::RigEndpoints;
    use rstest::rstest;

    fn phone() -> PhoneInfo {
        PhoneInfo {
            name: "uc924-1".into(),
            model: "htek-uc924".into(),
            mac: "001fc110d3a9".parse().unwrap(),
            ext: "4002".into(),
            password: "pw".into(),
            devcode: Some("0012".into()),
        }
    }

    fn base() -> Placeholders {
        Placeholders::new().with_rig(&RigEndpoints {
            ip: "127.0.0.1".into(),
            http_port: 8080,
            https_port: 8443,
            tftp_port: 6969,
            ftp_port: 2121,
            sip_port: 5060,
        })
    }

    #[rstest]
    #[case("/cfg0012.xml", Ok("cfg0012.xml"))]
    #[case("cfg/./x.xml", Ok("cfg/x.xml"))]
    #[case("//cfg//x.xml", Ok("cfg/x.xml"))]
    #[case("../etc/shadow", Err("`..` in path"))]
    #[case("cfg/../../etc/shadow", Err("`..` in path"))]
    #[case("..\\etc\\shadow", Err("backslash in path"))]
    #[case("cfg\0.xml", Err("NUL in path"))]
    fn request_paths(#[case] raw: &str, #[case] expected: Result<&str, &str>) {
        let got = normalise_request_path(raw);
        match expected {
            Ok(path) => assert_eq!(got.unwrap(), path),
            Err(reason) => assert_eq!(got.unwrap_err(), ResolveError::Refused(reason.into())),
        }
    }

    #[test]
    fn overlong_paths_are_refused() {
        assert!(matches!(
            normalise_request_path(&"a/".repeat(600)),
            Err(ResolveError::Refused(_))
        ));
        assert!(matches!(
            normalise_request_path(&"a".repeat(300)),
            Err(ResolveError::Refused(_))
        ));
    }

    #[rstest]
    #[case("cfg*.xml", "cfg0012.xml", true)]
    #[case("cfg*.xml", "cfg001fc110d3a9", false)]
    #[case("*", "sub/file", false)]
    #[case("fw9??.rom", "fw924.rom", true)]
    #[case("/exact", "exact", true)]
    fn globs(#[case] pattern: &str, #[case] text: &str, #[case] matches: bool) {
        assert_eq!(glob_match(pattern, text), matches);
    }

    #[test]
    fn inline_template_found_by_mac_in_name_without_knowing_the_requester() {
        let directory = PhoneDirectory::new([phone()]);
        let rules = vec![FileRule {
            path: "cfg{phone.mac}.xml".into(),
            content: Some("<P47>{rig.ip}:{rig.sip_port}</P47><ext>{phone.ext}</ext>".into()),
            ..FileRule::default()
        }];
        let tree = ProvisioningTree::new(None, rules, base(), directory);
        let served = tree.resolve("/cfg001fc110d3a9.xml", None).unwrap();
        assert_eq!(served.phone.as_deref(), Some("uc924-1"));
        assert_eq!(
            served.body,
            Body::Bytes(Arc::new(
                b"<P47>127.0.0.1:5060</P47><ext>4002</ext>".to_vec()
            ))
        );
        assert_eq!(
            tree.resolve("/cfg001fc110d3aa.xml", None),
            Err(ResolveError::NotFound)
        );
    }

    #[test]
    fn absent_hides_a_file_on_disk_and_forced_status_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cfg0012.xml"), "x").unwrap();
        std::fs::write(dir.path().join("fw924.rom"), vec![7u8; 100]).unwrap();
        let directory = PhoneDirectory::new([phone()]);
        let rules = vec![
            FileRule {
                path: "cfg{phone.devcode}.xml".into(),
                absent: true,
                ..FileRule::default()
            },
            FileRule {
                path: "busy.xml".into(),
                status: Some(503),
                ..FileRule::default()
            },
            FileRule {
                path: "fw*.rom".into(),
                truncate: Some(10),
                ..FileRule::default()
            },
        ];
        let tree = ProvisioningTree::new(Some(dir.path().into()), rules, base(), directory.clone());
        let requester = directory.by_name("uc924-1");
        assert_eq!(
            tree.resolve("cfg0012.xml", requester.clone()),
            Err(ResolveError::NotFound)
        );
        assert_eq!(
            tree.resolve("busy.xml", None),
            Err(ResolveError::Forced {
                status: 503,
                delay: None
            })
        );
        let firmware = tree.resolve("fw924.rom", requester).unwrap();
        assert_eq!(firmware.size, 10);
    }

    #[test]
    fn symlink_out_of_root_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let tree = ProvisioningTree::new(
            Some(root.path().into()),
            vec![],
            base(),
            PhoneDirectory::default(),
        );
        assert!(matches!(
            tree.resolve("link", None),
            Err(ResolveError::Refused(_))
        ));
    }

    fn disk_tree(root: &Path) -> ProvisioningTree {
        ProvisioningTree::new(Some(root.into()), vec![], base(), PhoneDirectory::default())
    }

    /// The canonical root is cached by the first request; links made inside
    /// the tree afterwards must still be judged on every request.
    #[rstest]
    #[case::file_outside("link", "outside/secret")]
    #[case::folder_outside("dirlink/secret", "outside")]
    #[case::relative_climb("up/outside/secret", "..")]
    #[case::file_inside_replaced("cfg.xml", "outside/secret")]
    fn symlink_made_after_the_root_was_cached_is_refused(
        #[case] request: &str,
        #[case] target: &str,
    ) {
        let workspace = tempfile::tempdir().unwrap();
        let (root, outside) = (
            workspace.path().join("root"),
            workspace.path().join("outside"),
        );
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::write(root.join("cfg.xml"), "c").unwrap();
        let tree = disk_tree(&root);
        assert!(tree.resolve("cfg.xml", None).is_ok(), "caches the root");

        let link = root.join(request.split('/').next().unwrap());
        let _ = std::fs::remove_file(&link);
        let target = if target == ".." {
            PathBuf::from("..")
        } else {
            workspace.path().join(target)
        };
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(
            matches!(tree.resolve(request, None), Err(ResolveError::Refused(_))),
            "{request} -> {} served",
            target.display()
        );
    }

    #[test]
    fn root_made_after_the_first_request_is_served_then() {
        let workspace = tempfile::tempdir().unwrap();
        let root = workspace.path().join("later");
        let tree = disk_tree(&root);
        assert_eq!(tree.resolve("cfg.xml", None), Err(ResolveError::NotFound));
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("cfg.xml"), "c").unwrap();
        assert_eq!(tree.resolve("cfg.xml", None).unwrap().size, 1);
    }

    #[test]
    fn root_named_through_a_symlink_serves_its_files_and_keeps_them_confined() {
        let workspace = tempfile::tempdir().unwrap();
        let real = workspace.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("cfg.xml"), "c").unwrap();
        std::fs::write(workspace.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&real, workspace.path().join("alias")).unwrap();
        std::os::unix::fs::symlink(workspace.path().join("secret"), real.join("link")).unwrap();
        let tree = disk_tree(&workspace.path().join("alias"));
        for _ in 0..2 {
            let served = tree.resolve("cfg.xml", None).unwrap();
            assert_eq!(
                served.body,
                Body::File(real.canonicalize().unwrap().join("cfg.xml"))
            );
            assert!(matches!(
                tree.resolve("link", None),
                Err(ResolveError::Refused(_))
            ));
        }
    }
}

//! The phone's file clients: TFTP (RFC 1350 + 2347/2348/2349), HTTP(S), FTP
//! (passive). Every connection is bound to the phone's own address, so the
//! rig tells phones apart by source address even on loopback.

pub mod ftp;
pub mod http;
pub mod tftp;

use std::net::IpAddr;
use std::time::Duration;

use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tftp,
    Http,
    Https,
    Ftp,
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Tftp => "tftp",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Ftp => "ftp",
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        match name.to_ascii_lowercase().as_str() {
            "tftp" => Some(Scheme::Tftp),
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "ftp" => Some(Scheme::Ftp),
            _ => None,
        }
    }
}

/// A server address as phones are given it: a URL whose scheme picks the
/// protocol (`tftp://198.18.0.1/cfg`), or a bare `host[:port][/path]` that gets
/// the vendor's default protocol (HTTP for Htek, 004 §6.1/§7; TFTP for the
/// Panasonic option 66 pre-provisioning server, 003 §2.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    url: Url,
}

impl ServerUrl {
    pub fn parse(text: &str, default: Scheme) -> Result<ServerUrl, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty server address".into());
        }
        let full = match text.find("://") {
            Some(at) => {
                let scheme = &text[..at];
                if Scheme::from_name(scheme).is_none() {
                    return Err(format!(
                        "unsupported protocol `{scheme}` in `{text}` (tftp, http, https, ftp)"
                    ));
                }
                text.to_owned()
            }
            None => format!("{}://{text}", default.name()),
        };
        let url =
            Url::parse(&full).map_err(|e| format!("`{text}` is not a server address: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{text}` names no host"));
        }
        Ok(ServerUrl { url })
    }

    pub fn scheme(&self) -> Scheme {
        Scheme::from_name(self.url.scheme()).expect("checked at parse")
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of `file` inside this server directory: `http://h/cfg` + `cfg0012.xml`
    /// → `http://h/cfg/cfg0012.xml`.
    pub fn file(&self, file: &str) -> ServerUrl {
        let mut url = self.url.clone();
        let dir = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{dir}/{file}"));
        ServerUrl { url }
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// Path without the leading `/`, percent-decoded.
    pub fn path(&self) -> String {
        let path = self.url.path().trim_start_matches('/');
        percent_decode(path)
    }

    pub fn file_name(&self) -> String {
        self.path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("not found ({0})")]
    NotFound(String),
    #[error("truncated: got {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("{0}")]
    Failed(String),
}

/// What a phone needs to fetch files: its own address and its User-Agent.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub local_ip: IpAddr,
    pub user_agent: String,
    /// Whole-transfer limit; a stalled server counts as a failed download.
    pub timeout: Duration,
    /// Ports used when a URL names none.
    pub ports: crate::config::ServicePorts,
}

impl Fetcher {
    pub fn new(local_ip: IpAddr, user_agent: String) -> Fetcher {
        Fetcher {
            local_ip,
            user_agent,
            timeout: Duration::from_secs(30),
            ports: crate::config::ServicePorts::default(),
        }
    }

    pub async fn fetch(&self, url: &ServerUrl) -> Result<Vec<u8>, FetchError> {
        let work = async {
            match url.scheme() {
                Scheme::Tftp => tftp::get(self, url).await,
                Scheme::Http | Scheme::Https => http::get(self, url).await,
                Scheme::Ftp => ftp::get(self, url).await,
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Failed(format!(
                "timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(
        "tftp://192.168.1.240/cfg",
        Scheme::Http,
        Scheme::Tftp,
        "tftp://192.168.1.240/cfg/cfg0012.xml"
    )]
    #[case(
        "http://192.168.1.240/cfg",
        Scheme::Http,
        Scheme::Http,
        "http://192.168.1.240/cfg/cfg0012.xml"
    )]
    #[case(
        "https://prov.example.com:8443/p/",
        Scheme::Http,
        Scheme::Https,
        "https://prov.example.com:8443/p/cfg0012.xml"
    )]
    #[case(
        "ftp://user:pw@198.18.0.1/htek",
        Scheme::Http,
        Scheme::Ftp,
        "ftp://user:pw@198.18.0.1/htek/cfg0012.xml"
    )]
    #[case(
        "192.168.0.254/cfg",
        Scheme::Http,
        Scheme::Http,
        "http://192.168.0.254/cfg/cfg0012.xml"
    )]
    #[case(
        "218.2.83.110",
        Scheme::Http,
        Scheme::Http,
        "http://218.2.83.110/cfg0012.xml"
    )]
    #[case(
        "firmware.mycompany.com:5688/Htek",
        Scheme::Http,
        Scheme::Http,
        "http://firmware.mycompany.com:5688/Htek/cfg0012.xml"
    )]
    #[case(
        "192.168.0.130",
        Scheme::Tftp,
        Scheme::Tftp,
        "tftp://192.168.0.130/cfg0012.xml"
    )]
    #[case(
        "TFTP://127.0.0.1:6969",
        Scheme::Http,
        Scheme::Tftp,
        "tftp://127.0.0.1:6969/cfg0012.xml"
    )]
    fn scheme_selection_and_joining(
        #[case] text: &str,
        #[case] default: Scheme,
        #[case] scheme: Scheme,
        #[case] joined: &str,
    ) {
        let server = ServerUrl::parse(text, default).unwrap();
        assert_eq!(server.scheme(), scheme);
        assert_eq!(server.file("cfg0012.xml").as_str(), joined);
    }

    #[rstest]
    #[case("")]
    #[case("gopher://h/x")]
    #[case("http://")]
    fn bad_server_addresses_are_refused(#[case] text: &str) {
        assert!(ServerUrl::parse(text, Scheme::Http).is_err());
    }

    #[test]
    fn path_is_decoded_without_leading_slash() {
        let url = ServerUrl::parse("http://h/a%20b/c.cfg", Scheme::Http).unwrap();
        assert_eq!(url.path(), "a b/c.cfg");
        assert_eq!(url.file_name(), "c.cfg");
    }
}

//! HTTP/1.1 and HTTPS GET over hyper, on a TCP socket bound to the phone's
//! address. Like most desk phones, the virtual phone accepts any server
//! certificate (the rig serves a self-signed one); handshake signatures are
//! still checked, so a broken TLS server is still caught.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use super::{FetchError, Fetcher, Scheme, ServerUrl};

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

pub(crate) async fn connect(
    fetcher: &Fetcher,
    host: &str,
    port: u16,
) -> Result<TcpStream, FetchError> {
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| FetchError::Failed(format!("cannot resolve {host}: {e}")))?
        .find(|a| a.is_ipv4() == fetcher.local_ip.is_ipv4())
        .ok_or_else(|| FetchError::Failed(format!("{host} has no address")))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| FetchError::Failed(e.to_string()))?;
    socket
        .bind((fetcher.local_ip, 0).into())
        .map_err(|e| FetchError::Failed(format!("bind {}: {e}", fetcher.local_ip)))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| FetchError::Failed(format!("connect {addr}: {e}")))
}

fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

pub async fn get(fetcher: &Fetcher, url: &ServerUrl) -> Result<Vec<u8>, FetchError> {
    let u = url.url();
    let host = u.host_str().unwrap_or_default().to_owned();
    let tls = url.scheme() == Scheme::Https;
    let port = u.port().unwrap_or(if tls {
        fetcher.ports.https
    } else {
        fetcher.ports.http
    });
    let stream = connect(fetcher, &host, port).await?;
    if tls {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| FetchError::Failed(format!("bad TLS server name {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, stream)
            .await
            .map_err(|e| FetchError::Failed(format!("TLS handshake with {host}:{port}: {e}")))?;
        request(fetcher, url, stream).await
    } else {
        request(fetcher, url, stream).await
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    fetcher: &Fetcher,
    url: &ServerUrl,
    stream: S,
) -> Result<Vec<u8>, FetchError> {
    let u = url.url();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Failed(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let host_header = match u.port() {
        Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    };
    let path_and_query = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    };
    let mut builder = hyper::Request::get(path_and_query)
        .header(HOST, host_header)
        .header(USER_AGENT, &fetcher.user_agent);
    if !u.username().is_empty() {
        builder = builder.header(
            AUTHORIZATION,
            basic_auth(u.username(), u.password().unwrap_or_default()),
        );
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Failed(format!("HTTP request: {e}")))?;
        let status = response.status();
        let announced: Option<u64> = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if status == hyper::StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound(format!("HTTP {status}")));
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("HTTP {status}")));
        }
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(chunk) = frame.data_ref() {
                        data.extend_from_slice(chunk);
                    }
                }
                Err(error) => {
                    return Err(match announced {
                        Some(expected) => FetchError::Truncated {
                            got: data.len() as u64,
                            expected,
                        },
                        None => FetchError::Failed(format!("HTTP body: {error}")),
                    })
                }
            }
        }
        if let Some(expected) = announced {
            if expected != data.len() as u64 {
                return Err(FetchError::Truncated {
                    got: data.len() as u64,
                    expected,
                });
            }
        }
        Ok(data)
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("Aladdin", "open sesame", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")]
    #[case("a", "", "Basic YTo=")]
    #[case("ab", "c", "Basic YWI6Yw==")]
    fn basic_auth_is_base64(#[case] user: &str, #[case] password: &str, #[case] expected: &str) {
        assert_eq!(basic_auth(user, password), expected);
    }
}

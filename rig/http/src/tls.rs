//! The certificate HTTPS presents: generated for the run (a throw-away CA
//! that signs a server certificate whose SAN is the bind address, so a phone
//! or curl given the CA can verify it), or PEM files from the lab file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsSource {
    /// A CA and server certificate made at start, valid for the bind address.
    #[default]
    Generate,
    /// PEM files: the certificate chain (server first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// PEM text, e.g. from [`generate_certificate`] when the rig also hands
    /// the CA to phones: `chain` is the server certificate (then any CAs).
    Pem { chain: String, key: String },
}

/// A run's generated certificates, PEM-encoded.
#[derive(Debug, Clone)]
pub struct GeneratedCertificate {
    /// The CA to trust (give it to phones or `curl --cacert`).
    pub ca_pem: String,
    /// The server certificate, signed by the CA, SAN = the address.
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a fresh CA and a server certificate for `ip`.
pub fn generate_certificate(ip: IpAddr) -> anyhow::Result<GeneratedCertificate> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "phonerig run CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![ip.to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, ip.to_string());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&server_key, &ca)?;
    Ok(GeneratedCertificate {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: server_key.serialize_pem(),
    })
}

fn parse_chain(pem: &[u8], origin: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {origin}"))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {origin}");
    Ok(chain)
}

fn parse_key(pem: &[u8], origin: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem)
        .with_context(|| format!("reading the private key from {origin}"))
}

/// The TLS side of the HTTPS listener. Uses the `ring` provider explicitly so
/// no process-wide default provider has to be installed.
pub(crate) fn acceptor(source: &TlsSource, ip: IpAddr) -> anyhow::Result<TlsAcceptor> {
    let (chain, key) = match source {
        TlsSource::Generate => {
            let generated = generate_certificate(ip)?;
            let chain_pem = format!("{}{}", generated.cert_pem, generated.ca_pem);
            (
                parse_chain(chain_pem.as_bytes(), "the generated certificate")?,
                parse_key(generated.key_pem.as_bytes(), "the generated key")?,
            )
        }
        TlsSource::Pem { chain, key } => (
            parse_chain(chain.as_bytes(), "the given PEM chain")?,
            parse_key(key.as_bytes(), "the given PEM key")?,
        ),
        TlsSource::Files { cert, key } => {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            (
                parse_chain(&cert_pem, &cert.display().to_string())?,
                parse_key(&key_pem, &key.display().to_string())?,
            )
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_builds_an_acceptor() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let generated = generate_certificate(ip).unwrap();
        assert!(generated.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(generated.ca_pem, generated.cert_pem);
        assert!(acceptor(&TlsSource::Generate, ip).is_ok());
    }

    #[test]
    fn files_that_do_not_match_are_rejected() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let one = generate_certificate(ip).unwrap();
        let other = generate_certificate(ip).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), &one.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &other.key_pem).unwrap();
        std::fs::write(dir.path().join("own.pem"), &one.key_pem).unwrap();
        let files = |key: &str| TlsSource::Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join(key),
        };
        assert!(acceptor(&files("key.pem"), ip).is_err());
        assert!(acceptor(&files("own.pem"), ip).is_ok());
        assert!(acceptor(&files("missing.pem"), ip).is_err());
    }
}

//! The TLS server side of SIP over TLS (RFC 3261 §26.2): rustls with the
//! `ring` provider chosen explicitly, so no process-wide default is needed.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::SipTls;

pub(crate) fn acceptor(tls: &SipTls) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(tls.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the SIP TLS certificate chain")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the SIP TLS chain");
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .context("reading the SIP TLS private key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("SIP TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

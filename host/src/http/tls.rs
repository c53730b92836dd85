//! Inbound TLS: a rustls server config from PEM files, offering HTTP/2 and
//! HTTP/1.1 through ALPN.

use crate::manifest::TlsFiles;
use anyhow::{Context, Result, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor for `files`.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("tls: cannot read certificate file {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls: {} is not a PEM certificate chain", files.cert.display()))?;
    if certs.is_empty() {
        bail!("tls: {} holds no certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("tls: cannot read a PEM private key from {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: no usable protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls: the private key does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

//! MQTT over TLS (port 8883 by default): rustls with the `ring` provider (pure Rust
//! and C that cross-compiles for ARM boards; no aws-lc), TLS 1.2 and 1.3, PEM files,
//! optional client certificates checked against a CA. The configuration is swapped
//! whole on SIGHUP: connected clients keep the session they have, new ones get the
//! new certificate.

use std::io;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::server::WebPkiClientVerifier;
use futures_rustls::rustls::{self, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smol::Async;

use super::Stream;

/// A TLS listener's files and client-certificate policy, paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are checked against.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a certificate the CA signed (needs `ca`).
    pub require_client_cert: bool,
}

/// One listener's TLS configuration, reloadable.
pub struct Tls {
    pub settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    pub fn load(settings: TlsSettings) -> Result<Tls, String> {
        let config = server_config(&settings)?;
        Ok(Tls {
            settings,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on an error the previous configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn server_config(s: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&s.cert)?;
    let key = PrivateKeyDer::from_pem_file(&s.key)
        .map_err(|e| format!("{}: cannot read a PEM private key: {e}", s.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &s.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?,
            )
        }
        None if s.require_client_cert => {
            return Err("require_client_cert = true needs ca, the CA to check them against".into());
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {}: the key does not fit the certificate: {e}",
            s.cert.display(),
            s.key.display()
        )
    })
}

impl Stream for futures_rustls::server::TlsStream<Async<TcpStream>> {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Decrypted bytes may already be buffered: let the read itself tell.
        Poll::Ready(Ok(()))
    }
}

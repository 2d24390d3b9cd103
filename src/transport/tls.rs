//! MQTT over TLS (port 8883 by default): rustls with the `ring` provider (pure Rust
//! and C that cross-compiles for ARM boards; no aws-lc), TLS 1.2 and 1.3, PEM files,
//! optional client certificates checked against a CA. The configuration is swapped
//! whole on SIGHUP: connected clients keep the session they have, new ones get the
//! new certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::server::WebPkiClientVerifier;
use futures_rustls::rustls::{self, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use smol::io::{AsyncRead, AsyncWrite};

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

pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
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

/// The subject common name of a DER certificate, for `use_identity_as_username`. A
/// small walk over the DER rather than an X.509 library: only the subject's CN is read,
/// and rustls has already verified the certificate.
pub fn common_name(certificate: &[u8]) -> Option<String> {
    let (_, certificate, _) = der(certificate)?;
    let (_, tbs, _) = der(certificate)?;
    // An explicit version ([0]) comes first in v2/v3 certificates.
    let (tag, _, after_version) = der(tbs)?;
    let mut rest = if tag == 0xA0 { after_version } else { tbs };
    // serialNumber, signature, issuer, validity: then the subject.
    for _ in 0..4 {
        rest = der(rest)?.2;
    }
    let (_, mut names, _) = der(rest)?;
    while !names.is_empty() {
        let (_, mut set, next) = der(names)?;
        names = next;
        while !set.is_empty() {
            let (_, attribute, next) = der(set)?;
            set = next;
            let (_, oid, value) = der(attribute)?;
            // 2.5.4.3, commonName.
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
            2 + n,
        )
    };
    let contents = input.get(header..header.checked_add(len)?)?;
    Some((tag, contents, &input[header + len..]))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream
    for futures_rustls::server::TlsStream<S>
{
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Decrypted bytes may already be buffered: let the read itself tell.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_common_name_or_nothing() {
        // A certificate-shaped DER: version, serial, algorithm, issuer, validity, subject.
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if body.len() < 0x80 {
                out.push(body.len() as u8);
            } else {
                out.extend_from_slice(&[0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            out.extend_from_slice(body);
            out
        }
        let attribute = |oid: &[u8], value: &str| {
            let mut a = tlv(0x06, oid);
            a.extend(tlv(0x0C, value.as_bytes()));
            tlv(0x31, &tlv(0x30, &a))
        };
        let mut subject = attribute(&[0x55, 0x04, 0x0A], "Org");
        subject.extend(attribute(&[0x55, 0x04, 0x03], "device-a"));
        let mut tbs = tlv(0xA0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1]));
        tbs.extend(tlv(0x30, &[0x06, 0x01, 0x00]));
        tbs.extend(tlv(0x30, &attribute(&[0x55, 0x04, 0x03], "issuer")));
        tbs.extend(tlv(0x30, &[0x17, 0x00]));
        tbs.extend(tlv(0x30, &subject));
        tbs.extend(tlv(0x30, &[0u8; 200]));
        let cert = tlv(0x30, &tlv(0x30, &tbs));
        assert_eq!(common_name(&cert).as_deref(), Some("device-a"));
        assert_eq!(common_name(&cert[..cert.len() - 10]), None, "truncated");
        assert_eq!(common_name(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(common_name(&[]), None);
    }
}

//! Outgoing connections: the bridge's uplink (and the benchmark's clients). Plain TCP
//! or TLS through rustls with the ring provider, the same crypto as the listeners.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use smol::Async;
use smol::io::{AsyncRead, AsyncWrite};

use super::tls::certificates;

/// Where Debian keeps the system's trusted CA certificates.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client TLS configuration: servers are checked against `ca` (the system's CA
/// bundle when `None`); `cert_and_key` is a client certificate for mutual TLS.
/// `resume` keeps TLS sessions for quicker reconnects.
pub fn tls_config(
    ca: Option<&Path>,
    cert_and_key: Option<(&Path, &Path)>,
    resume: bool,
) -> Result<Arc<ClientConfig>, String> {
    let ca = ca.unwrap_or(Path::new(SYSTEM_ROOTS));
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots);
    let mut config = match cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{}: cannot read a PEM private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Connects to `addr`; with `tls`, runs the handshake checking the server's name.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, ServerName<'static>)>,
) -> io::Result<OutgoingStream> {
    let tcp = connect_tcp(addr).await?;
    match tls {
        None => Ok(OutgoingStream::Tcp(tcp)),
        Some((config, name)) => start_tls(tcp, config, name).await,
    }
}

pub async fn connect_tcp(addr: SocketAddr) -> io::Result<Async<TcpStream>> {
    let tcp = Async::<TcpStream>::connect(addr).await?;
    tcp.get_ref().set_nodelay(true)?;
    Ok(tcp)
}

/// The TLS handshake on a connected socket, checking the server's certificate and name.
pub async fn start_tls(
    tcp: Async<TcpStream>,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<OutgoingStream> {
    let stream = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    Ok(OutgoingStream::Tls(Box::new(stream)))
}

/// Plain TCP or TLS.
pub enum OutgoingStream {
    Tcp(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
}

impl AsyncRead for OutgoingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OutgoingStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            OutgoingStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OutgoingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OutgoingStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            OutgoingStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OutgoingStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            OutgoingStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OutgoingStream::Tcp(s) => Pin::new(s).poll_close(cx),
            OutgoingStream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

//! The PROXY protocol header a balancer (HAProxy, Nginx) sends before anything else
//! on a `proxy_protocol` listener: read within the connect timeout, believed only from
//! trusted ranges, and a health check (connect and close, v2 LOCAL) ends quietly.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use smol::Timer;
use smol::future::FutureExt;

use super::Stream;
use super::connection::{ConnectionConfig, poll_read_some};
use super::proxy;
use crate::throttle::Throttle;

/// PROXY headers from untrusted or broken balancers come in floods: logged throttled.
static PROXY_REFUSALS: Throttle = Throttle::new();

/// What a PROXY header told about the client behind a balancer.
pub struct Proxied {
    pub peer: SocketAddr,
    /// The client certificate's common name, when the balancer verified one.
    pub identity: Option<String>,
    /// What arrived after the header.
    pub rbuf: BytesMut,
}

/// Reads the PROXY header on a `proxy_protocol` listener (from a trusted balancer,
/// within the connect timeout). `None` when the connection is to end here: refused
/// (logged, throttled), or a balancer's health check (a bare connect-and-close, a v2
/// LOCAL header), which ends quietly.
pub async fn read_proxy_preamble<S: Stream>(
    stream: &mut S,
    balancer: SocketAddr,
    config: &ConnectionConfig,
    probes: &AtomicU64,
) -> Option<Proxied> {
    let trusted = config.proxy_trusted.as_deref().unwrap_or_default();
    let refuse =
        |why: String| PROXY_REFUSALS.refused(balancer, &config.listener, format_args!("{why}"));
    if !trusted.iter().any(|range| range.contains(balancer.ip())) {
        refuse(format!(
            "{} is not in proxy_protocol_trusted, so its PROXY header would not be believed",
            balancer.ip()
        ));
        return None;
    }
    let mut rbuf = BytesMut::new();
    let header = read_proxy_header(stream, &mut rbuf).or(async {
        Timer::after(config.connect_timeout).await;
        Err(format!(
            "no complete PROXY header within {:?}",
            config.connect_timeout
        ))
    });
    let mut identity = None;
    let peer = match header.await {
        Ok(Some(proxy::Header::Proxied { source, tls, .. })) => {
            if let Some(tls) = tls {
                log::debug!(
                    "connection from {source} via {balancer}: TLS client certificate verified={} cn={:?}",
                    tls.client_cert_verified,
                    tls.common_name
                );
                if tls.client_cert_verified {
                    identity = tls.common_name;
                }
            }
            source
        }
        Ok(Some(proxy::Header::Unknown)) => balancer,
        Ok(Some(proxy::Header::Local)) => {
            log::debug!("health check from {balancer} (PROXY LOCAL)");
            return None;
        }
        Ok(None) => {
            probes.fetch_add(1, Ordering::Relaxed);
            log::debug!("health check from {balancer} (connect and close)");
            return None;
        }
        Err(why) => {
            refuse(why);
            return None;
        }
    };
    Some(Proxied {
        peer,
        identity,
        rbuf,
    })
}

/// Reads the PROXY header; `None` when the connection closed (or was reset: HAProxy's
/// TCP check) before sending a byte. What follows the header stays in `rbuf`.
async fn read_proxy_header<S: Stream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<Option<proxy::Header>, String> {
    loop {
        match proxy::parse(rbuf) {
            Ok(Some((header, len))) => {
                let _ = rbuf.split_to(len);
                return Ok(Some(header));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match poll_fn(|cx| poll_read_some(stream, cx, rbuf)).await {
            Ok(0) if rbuf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed in the middle of its PROXY header".into()),
            Ok(_) => {}
            Err(_) if rbuf.is_empty() => return Ok(None),
            Err(e) => return Err(format!("connection failed before its PROXY header: {e}")),
        }
    }
}

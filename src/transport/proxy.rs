//! The PROXY protocol (v1 text and v2 binary, haproxy.org/download/2.9/doc/proxy-protocol.txt):
//! a load balancer that terminates TLS tells Tern, in a header before the first MQTT
//! byte, who the client really is. A pure parser: bytes in, the header (or "need more")
//! out, so every malformed case is a unit test.
//!
//! Only balancers in `proxy_protocol_trusted` may send a header; anyone else could
//! forge an address, or a TLS identity carried in a v2 TLV.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes including its CRLF.
const V1_MAX: usize = 107;
/// TLV types (section 2.2).
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// The balancer speaking for itself (a v2 LOCAL health check): serve or close the
    /// connection as it is, with its own address.
    Local,
    /// A v1 `UNKNOWN` or a v2 header for an address family Tern does not route: the
    /// connection's own address stands.
    Unknown,
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
        tls: Option<TlsFacts>,
    },
}

/// What the balancer says about the client's TLS session (v2 `PP2_TYPE_SSL`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFacts {
    /// The client presented a certificate and the balancer verified it.
    pub client_cert_verified: bool,
    /// The certificate's subject common name.
    pub common_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError(pub String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn error<T>(what: impl Into<String>) -> Result<T, ProxyError> {
    Err(ProxyError(what.into()))
}

/// Whether `buf` starts like a PROXY header (to name it when one arrives where none
/// is expected).
pub fn looks_like_header(buf: &[u8]) -> bool {
    buf.starts_with(b"PROXY ") || buf.starts_with(&V2_SIGNATURE)
}

/// Parses the header at the start of `buf`: the header and its length, `None` when
/// more bytes are needed, or what is wrong with it.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let v2 = &V2_SIGNATURE[..buf.len().min(12)];
    if buf.starts_with(v2) {
        return parse_v2(buf);
    }
    let v1 = &b"PROXY "[..buf.len().min(6)];
    if buf.starts_with(v1) {
        return parse_v1(buf);
    }
    error(format!(
        "no PROXY protocol header: the connection starts with byte {:#04x}",
        buf[0]
    ))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return error("PROXY v1 header longer than 107 bytes");
        }
        return Ok(None);
    };
    let len = end + 2;
    if len > V1_MAX {
        return error("PROXY v1 header longer than 107 bytes");
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyError("PROXY v1 header is not ASCII".into()))?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Some((Header::Unknown, len))),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |text: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = text
                    .parse()
                    .map_err(|_| ProxyError(format!("PROXY v1 address {text:?} is not an IP")))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return error(format!("PROXY v1 address {text} is not {family}"));
                }
                Ok(ip)
            };
            let port = |text: &str| -> Result<u16, ProxyError> {
                // No sign, no leading zeros, 0..=65535 (section 2.1).
                if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
                    return error(format!("PROXY v1 port {text:?} is malformed"));
                }
                text.parse()
                    .map_err(|_| ProxyError(format!("PROXY v1 port {text:?} is malformed")))
            };
            Ok(Some((
                Header::Proxied {
                    source: SocketAddr::new(ip(src)?, port(sport)?),
                    destination: SocketAddr::new(ip(dst)?, port(dport)?),
                    tls: None,
                },
                len,
            )))
        }
        _ => error(format!("malformed PROXY v1 header {line:?}")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return error(format!(
            "PROXY v2 header with version {}",
            version_command >> 4
        ));
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        other => return error(format!("PROXY v2 header with command {other}")),
    };
    let family = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    if local {
        // The addresses and TLVs of a LOCAL header are to be ignored.
        return Ok(Some((Header::Local, len)));
    }
    let (source, destination, rest) = match family {
        // TCP over IPv4, TCP over IPv6.
        0x11 => {
            if body.len() < 12 {
                return error("PROXY v2 IPv4 addresses truncated");
            }
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
                &body[12..],
            )
        }
        0x21 => {
            if body.len() < 36 {
                return error("PROXY v2 IPv6 addresses truncated");
            }
            let ip = |b: &[u8]| {
                let octets: [u8; 16] = b.try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
                &body[36..],
            )
        }
        // UNSPEC, UDP, UNIX: the connection's own address stands.
        _ => return Ok(Some((Header::Unknown, len))),
    };
    let tls = tls_facts(rest)?;
    Ok(Some((
        Header::Proxied {
            source,
            destination,
            tls,
        },
        len,
    )))
}

/// Walks the TLVs after the addresses; only `PP2_TYPE_SSL` is read.
fn tls_facts(mut tlvs: &[u8]) -> Result<Option<TlsFacts>, ProxyError> {
    let mut facts = None;
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return error("PROXY v2 TLV truncated");
        }
        let kind = tlvs[0];
        let len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs.len() < 3 + len {
            return error("PROXY v2 TLV longer than the header");
        }
        let value = &tlvs[3..3 + len];
        if kind == PP2_TYPE_SSL {
            if value.len() < 5 {
                return error("PROXY v2 SSL TLV truncated");
            }
            let client = value[0];
            let verify = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            let mut tls = TlsFacts {
                client_cert_verified: client & PP2_CLIENT_SSL != 0
                    && client & PP2_CLIENT_CERT_CONN != 0
                    && verify == 0,
                common_name: None,
            };
            let mut sub = &value[5..];
            while sub.len() >= 3 {
                let sub_kind = sub[0];
                let sub_len = usize::from(u16::from_be_bytes([sub[1], sub[2]]));
                if sub.len() < 3 + sub_len {
                    return error("PROXY v2 SSL sub-TLV truncated");
                }
                if sub_kind == PP2_SUBTYPE_SSL_CN {
                    tls.common_name = Some(
                        String::from_utf8(sub[3..3 + sub_len].to_vec())
                            .map_err(|_| ProxyError("PROXY v2 SSL CN is not UTF-8".into()))?,
                    );
                }
                sub = &sub[3 + sub_len..];
            }
            facts = Some(tls);
        }
        tlvs = &tlvs[3 + len..];
    }
    Ok(facts)
}

/// An address range, `10.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Loopback and the private ranges: where a load balancer normally is.
pub const DEFAULT_TRUSTED: [&str; 7] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v4_body() -> Vec<u8> {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        body
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let text = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 1883\r\n\x10rest";
        let (header, len) = parse(text).unwrap().unwrap();
        assert_eq!(len, text.len() - 5);
        assert_eq!(
            header,
            Header::Proxied {
                source: "203.0.113.7:40000".parse().unwrap(),
                destination: "10.0.0.1:1883".parse().unwrap(),
                tls: None
            }
        );
        let text = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 1883\r\n";
        assert!(matches!(
            parse(text).unwrap().unwrap().0,
            Header::Proxied { .. }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0,
            Header::Unknown
        );
    }

    #[test]
    fn v1_incomplete_and_malformed() {
        assert_eq!(parse(b"PROX").unwrap(), None);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY SCTP 1.2.3.4 5.6.7.8 1 2\r\n",
            b"\x10\x0c\x00\x04MQTT",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_proxy_local_and_tls_facts() {
        let (header, len) = parse(&v2(1, 0x11, &v4_body())).unwrap().unwrap();
        assert_eq!(len, 16 + 12);
        assert!(
            matches!(header, Header::Proxied { source, .. } if source == "203.0.113.7:40000".parse().unwrap())
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])).unwrap().unwrap(),
            (Header::Local, 16)
        );
        let mut body = v4_body();
        let mut ssl = vec![PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, 0, 0, 0];
        ssl.extend_from_slice(&[PP2_SUBTYPE_SSL_CN, 0, 6]);
        ssl.extend_from_slice(b"device");
        body.push(PP2_TYPE_SSL);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
        let Header::Proxied { tls, .. } = parse(&v2(1, 0x11, &body)).unwrap().unwrap().0 else {
            panic!()
        };
        assert_eq!(
            tls,
            Some(TlsFacts {
                client_cert_verified: true,
                common_name: Some("device".into())
            })
        );
    }

    #[test]
    fn v2_incomplete_and_malformed() {
        let full = v2(1, 0x11, &v4_body());
        for cut in 1..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err(), "short addresses");
        assert!(parse(&v2(2, 0x11, &v4_body())).is_err(), "unknown command");
        let mut bad_version = full.clone();
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
        let mut tlv = v4_body();
        tlv.extend_from_slice(&[PP2_TYPE_SSL, 0, 50, 1]);
        assert!(parse(&v2(1, 0x11, &tlv)).is_err(), "TLV past the end");
    }

    #[test]
    fn cidr_ranges() {
        let private = Cidr::parse("172.16.0.0/12").unwrap();
        assert!(private.contains("172.31.255.1".parse().unwrap()));
        assert!(!private.contains("172.32.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("127.0.0.0/8")
                .unwrap()
                .contains("::ffff:127.0.0.2".parse().unwrap())
        );
        assert!(
            Cidr::parse("fc00::/7")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert!(
            Cidr::parse("192.0.2.1")
                .unwrap()
                .contains("192.0.2.1".parse().unwrap())
        );
    }
}

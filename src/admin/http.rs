//! A small HTTP/1.1 server for the management API and the dashboard. Heads are parsed
//! by httparse; bodies come by Content-Length only. Both are bounded, and a client that
//! is slow to send either is cut off, so a stuck script or a scanner costs one task.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{Async, Executor, Timer};

use crate::transport::tls::Tls;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// How long a request may take to arrive, and an idle keep-alive connection may wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Request {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// A body that goes on (a tap), sent chunked after `body` until it ends or the
    /// client goes away; the connection closes after it.
    pub stream: Option<Chunks>,
    /// Wait this long before answering (a failed login).
    pub delay: Option<Duration>,
}

/// The pieces of a streamed body, as they come.
pub type Chunks = std::pin::Pin<Box<dyn smol::stream::Stream<Item = Vec<u8>> + Send + Sync>>;

/// A stream whose client has read nothing for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A streamed body with nothing to say sends an empty line this often, so that a
/// closed page is noticed and no proxy between times it out.
const HEARTBEAT: Duration = Duration::from_secs(10);

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            stream: None,
            delay: None,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status, "application/json", value.to_string())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Decodes `%XX` escapes (and `+` in queries); invalid escapes stay as they are.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect();
    (percent_decode(path, false), query)
}

/// Accepts until dropped; each connection is served by `handler`, over TLS when `tls`
/// is given (HTTPS).
pub async fn serve<H>(
    listener: Async<TcpListener>,
    executor: Arc<Executor<'static>>,
    handler: Arc<H>,
    tls: Option<Arc<Tls>>,
) where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                let acceptor = tls.as_ref().map(|t| t.acceptor());
                executor
                    .spawn(async move {
                        let served = match acceptor {
                            None => connection(stream, peer, &*handler).await,
                            Some(acceptor) => {
                                let handshake = async { acceptor.accept(stream).await }.or(async {
                                    Timer::after(REQUEST_TIMEOUT).await;
                                    Err(io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake"))
                                });
                                match handshake.await {
                                    Ok(stream) => connection(stream, peer, &*handler).await,
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        if let Err(e) = served {
                            log::debug!("HTTP connection from {peer}: {e}");
                        }
                    })
                    .detach();
            }
            Err(e) => {
                log::warn!("HTTP accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Read {
    Request(Request, bool),
    Refuse(u16, &'static str),
    Closed,
}

async fn connection<S, H>(mut stream: S, peer: SocketAddr, handler: &H) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request) -> Response,
{
    let mut buf = Vec::new();
    loop {
        let read = read_request(&mut stream, &mut buf, peer).or(async {
            Timer::after(REQUEST_TIMEOUT).await;
            Ok(Read::Refuse(408, "the request did not arrive in time"))
        });
        let (response, keep_alive) = match read.await? {
            Read::Closed => return Ok(()),
            Read::Refuse(status, why) => {
                if status != 408 || !buf.is_empty() {
                    log::warn!("HTTP request from {peer} refused: {why} ({status})");
                }
                (
                    Response::new(status, "text/plain", format!("{why}\n")),
                    false,
                )
            }
            Read::Request(request, keep_alive) => (handler(request), keep_alive),
        };
        if let Some(delay) = response.delay {
            Timer::after(delay).await;
        }
        if let Some(chunks) = response.stream {
            let head = Response {
                stream: None,
                ..response
            };
            return write_stream(&mut stream, head, chunks).await;
        }
        write_response(&mut stream, &response, keep_alive).await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Writes `head` and then `chunks` as they come, chunked, until they end, the client
/// goes away or stops reading for [`WRITE_TIMEOUT`].
async fn write_stream<S: AsyncWrite + Unpin>(
    stream: &mut S,
    head: Response,
    mut chunks: Chunks,
) -> io::Result<()> {
    use smol::stream::StreamExt;
    let mut out = head_of(&head, None, false).into_bytes();
    out.extend_from_slice(&chunk(&head.body));
    loop {
        let write = async { stream.write_all(&out).await.and(stream.flush().await) };
        write
            .or(async {
                Timer::after(WRITE_TIMEOUT).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                ))
            })
            .await?;
        let next = async { Some(chunks.next().await) }.or(async {
            Timer::after(HEARTBEAT).await;
            None
        });
        out = match next.await {
            Some(Some(piece)) => chunk(&piece),
            Some(None) => {
                let end = async {
                    stream
                        .write_all(b"0\r\n\r\n")
                        .await
                        .and(stream.flush().await)
                };
                return end
                    .or(async {
                        Timer::after(WRITE_TIMEOUT).await;
                        Ok(())
                    })
                    .await;
            }
            None => chunk(b"\n"),
        };
    }
}

/// One piece of a chunked body (none for an empty one, which would end it).
fn chunk(piece: &[u8]) -> Vec<u8> {
    if piece.is_empty() {
        return Vec::new();
    }
    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
    out
}

async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
) -> io::Result<Read> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse_request(buf, peer) {
            Parsed::Request(request, keep_alive, consumed) => {
                buf.drain(..consumed);
                return Ok(Read::Request(request, keep_alive));
            }
            Parsed::Refuse(status, why) => return Ok(Read::Refuse(status, why)),
            Parsed::Incomplete => {}
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Read::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What the bytes received so far on a connection hold.
pub enum Parsed {
    /// More bytes are needed: the head, or the body its Content-Length announces.
    Incomplete,
    /// A request refused with this status and why.
    Refuse(u16, &'static str),
    /// A whole request, whether the connection stays open after it, and the bytes it
    /// took from the front of the buffer.
    Request(Request, bool, usize),
}

/// Parses the request at the front of `buf`, within the limits on its head (16 KiB)
/// and body (1 MiB, Content-Length only). Pure, so that it is fuzzed on its own.
pub fn parse_request(buf: &[u8], peer: SocketAddr) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Refuse(431, "request head larger than 16 KiB");
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(_) => return Parsed::Refuse(400, "malformed HTTP request"),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_owned(), value)
        })
        .collect();
    let close = req.version == Some(0)
        || headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
    let method = req.method.unwrap_or("GET").to_owned();
    let target = req.path.unwrap_or("/").to_owned();
    let length = match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        Some((_, v)) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            Err(_) => return Parsed::Refuse(400, "bad Content-Length"),
        },
        None if headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")) =>
        {
            return Parsed::Refuse(400, "chunked bodies are not accepted; send Content-Length");
        }
        None => 0,
    };
    if length > MAX_BODY {
        return Parsed::Refuse(413, "request body larger than 1 MiB");
    }
    if buf.len() < head_len + length {
        return Parsed::Incomplete;
    }
    let body = buf[head_len..head_len + length].to_vec();
    let (path, query) = parse_target(&target);
    let request = Request {
        method,
        path,
        query,
        headers,
        body,
        peer,
    };
    Parsed::Request(request, !close, head_len + length)
}

async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = head_of(response, Some(response.body.len()), keep_alive).into_bytes();
    out.extend_from_slice(&response.body);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// The status line and headers: with a `Content-Length`, or chunked without one.
fn head_of(response: &Response, length: Option<usize>, keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nCache-Control: no-store\r\n",
        response.status,
        reason(response.status),
        response.content_type,
    );
    match length {
        Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    for (k, v) in &response.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_split_and_decoded() {
        let (path, query) = parse_target("/api/v4/clients/a%2Fb?_like_clientid=de%20v&_page=2");
        assert_eq!(path, "/api/v4/clients/a/b");
        assert_eq!(
            query,
            [
                ("_like_clientid".to_owned(), "de v".to_owned()),
                ("_page".to_owned(), "2".to_owned())
            ]
        );
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}

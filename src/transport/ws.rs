//! MQTT over WebSocket (the ws and wss listeners): the HTTP upgrade on one path with the
//! `mqtt` subprotocol, then a byte stream made of binary frames.
//!
//! The framing is async-tungstenite's; this file decides what is accepted and adapts the
//! message stream to the `Stream` the connection loop reads bytes from. MQTT packets may
//! be split across frames or packed several to a frame [MQTT-6.0.0-2], so the adapter
//! hands out a frame's bytes as they come and the codec finds the packet boundaries.
//! Each batch the connection writes becomes one binary frame.

// tungstenite's handshake callback returns its HTTP response types by value.
#![allow(clippy::result_large_err)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use async_tungstenite::{WebSocketStream, accept_hdr_async_with_config};
use futures_sink::Sink;
use smol::io::{AsyncRead, AsyncWrite};
use smol::stream::Stream as _;

use super::Stream;

/// The subprotocols MQTT clients ask for: `mqtt` (3.1.1 and 5.0) and `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Completes the HTTP upgrade on `path`. Frames (and messages) larger than
/// `max_frame` are refused, so a client cannot make us buffer more than its largest
/// allowed packet.
pub async fn accept<S>(stream: S, path: &str, max_frame: usize) -> Result<WsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_frame_size(Some(max_frame))
        .max_message_size(Some(max_frame));
    let check = |request: &Request, response: Response| check_upgrade(request, response, path);
    let ws = accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| match e {
            // Our own refusal: its reason is in the body we answered with.
            WsError::Http(response) => format!(
                "WebSocket upgrade failed: {} {}",
                response.status(),
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
            ),
            e => format!("WebSocket upgrade failed: {e}"),
        })?;
    Ok(WsStream {
        ws,
        frame: Bytes::new(),
    })
}

/// Accepts an upgrade on the configured path that offers an MQTT subprotocol (or none:
/// some clients omit the header), and answers with the one chosen.
fn check_upgrade(
    request: &Request,
    mut response: Response,
    path: &str,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: String| {
        let mut refusal = ErrorResponse::new(Some(why));
        *refusal.status_mut() = status;
        Err(refusal)
    };
    if request.uri().path() != path {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no MQTT endpoint at {}; it is {path}", request.uri().path()),
        );
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    match offered.iter().find(|p| SUBPROTOCOLS.contains(p)) {
        Some(chosen) => {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(chosen).expect("a known token"),
            );
            Ok(response)
        }
        None => refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "subprotocol {:?} is not MQTT (mqtt or mqttv3.1)",
                offered.join(", ")
            ),
        ),
    }
}

/// A WebSocket connection as a byte stream of MQTT packets.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// What is left of the binary frame being read.
    frame: Bytes,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::Capacity(e) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket frame too large: {e}"),
        ),
        e => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.frame.is_empty() {
                let n = buf.len().min(self.frame.len());
                buf[..n].copy_from_slice(&self.frame.split_to(n));
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(frame))) => self.frame = frame,
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    // [MQTT-6.0.0-1]: MQTT travels in binary frames only.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket text frame (MQTT must be sent in binary frames)",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        ready!(Sink::<Message>::poll_ready(ws, cx)).map_err(to_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.ws), cx).map_err(to_io)
    }

    /// Sends a close frame and waits for the client's (the close handshake).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_close(Pin::new(&mut self.ws), cx).map_err(to_io)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for WsStream<S> {
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A frame may be half read, or the next read may only be a ping: let it tell.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(path);
        if let Some(p) = protocols {
            builder = builder.header("Sec-WebSocket-Protocol", p);
        }
        builder.body(()).unwrap()
    }

    fn chosen(r: &Result<Response, ErrorResponse>) -> Option<&str> {
        r.as_ref()
            .ok()?
            .headers()
            .get("sec-websocket-protocol")?
            .to_str()
            .ok()
    }

    #[test]
    fn upgrade_needs_the_path_and_an_mqtt_subprotocol() {
        let ok = check_upgrade(&request("/mqtt", Some("mqtt")), Response::new(()), "/mqtt");
        assert_eq!(chosen(&ok), Some("mqtt"));
        let v31 = check_upgrade(
            &request("/mqtt", Some("chat, mqttv3.1")),
            Response::new(()),
            "/mqtt",
        );
        assert_eq!(chosen(&v31), Some("mqttv3.1"));
        let none = check_upgrade(&request("/mqtt", None), Response::new(()), "/mqtt");
        assert!(none.is_ok() && chosen(&none).is_none());
        let wrong = check_upgrade(&request("/mqtt", Some("chat")), Response::new(()), "/mqtt");
        let refusal = wrong.unwrap_err();
        assert_eq!(refusal.status(), StatusCode::BAD_REQUEST);
        assert!(refusal.body().as_deref().unwrap().contains("\"chat\""));
        let elsewhere = check_upgrade(&request("/ws", Some("mqtt")), Response::new(()), "/mqtt");
        assert_eq!(elsewhere.unwrap_err().status(), StatusCode::NOT_FOUND);
    }
}

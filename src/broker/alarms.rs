//! Alarms: what an operator must look at (a corrupt store moved aside, say), logged,
//! listed for the management API and published retained under `$SYS/tern/alarms/`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Broker;
use crate::message::Message;
use crate::protocol::QoS;

/// Something an operator must look at (a corrupt store moved aside, say): logged,
/// published as a retained `$SYS/tern/alarms/NAME` message, and kept in
/// [`Broker::alarms`] for the management API to list.
#[derive(Debug, Clone)]
pub struct Alarm {
    pub name: String,
    pub message: String,
    pub raised_at: SystemTime,
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Broker {
    /// Logs an alarm raised at `at`, lists it, and publishes it retained under
    /// `$SYS/tern/alarms/`.
    pub fn raise_alarm(&self, at: SystemTime, name: &str, message: String) {
        log::error!("alarm {name}: {message}");
        let payload = format!(
            "{{\"alarm\":{},\"message\":{},\"raised_at\":{}}}",
            json_string(name),
            json_string(&message),
            at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        );
        let alarm = Message::new(
            format!("$SYS/tern/alarms/{name}"),
            Bytes::from(payload),
            QoS::AtMostOnce,
            true,
        );
        self.retained
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_unbounded(&Arc::new(alarm));
        self.alarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Alarm {
                name: name.into(),
                message,
                raised_at: at,
            });
    }
}

//! The topic tree and the tap, as the API serves them. The tree is one level at a
//! time (`under` a topic prefix): each child with the messages and topics below it
//! and, where a topic ends there, its last message (or its retained one); the page
//! asks again each second and takes the differences for rates. A tap is a stream of
//! JSON lines, one per message, that ends with a line saying why.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use smol::stream::Stream;

use crate::broker::Broker;
use crate::broker::tap::{Tap, TapEnd};
use crate::broker::topics::{PREVIEW_BYTES, Recent};
use crate::message::Message;

/// A payload as JSON: text when it is printable UTF-8 (cut at the preview), hex
/// otherwise.
pub fn payload_json(preview: &[u8], size: usize) -> Value {
    let truncated = size > preview.len();
    let text = match std::str::from_utf8(preview) {
        Ok(text) => Some(text),
        // A preview may cut a character in two: the text before it stands.
        Err(e) if truncated && e.error_len().is_none() => {
            Some(std::str::from_utf8(&preview[..e.valid_up_to()]).expect("valid up to there"))
        }
        Err(_) => None,
    };
    // UTF-8 with control characters (bar tab and line ends) is binary that happens to
    // decode: shown as hex.
    let binary = |t: &str| {
        t.chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    };
    let (payload, encoding) = match text.filter(|t| !binary(t)) {
        Some(text) => (text.to_owned(), "utf8"),
        None => (preview.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    };
    json!({"payload": payload, "encoding": encoding, "size": size, "truncated": truncated})
}

fn recent_json(recent: &Recent, now: Instant) -> Value {
    let mut value = payload_json(&recent.preview, recent.size);
    value["qos"] = json!(recent.qos as u8);
    value["retain"] = json!(recent.retain);
    value["age_ms"] = json!(now.saturating_duration_since(recent.at).as_millis() as u64);
    value
}

fn retained_json(message: &Message) -> Value {
    let cut = message.payload.len().min(PREVIEW_BYTES);
    let mut value = payload_json(&message.payload[..cut], message.payload.len());
    value["qos"] = json!(message.qos as u8);
    value["retain"] = json!(true);
    value["age_ms"] = Value::Null;
    value
}

#[derive(Default)]
struct Child {
    messages: u64,
    topics: u64,
    has_children: bool,
    value: Option<Value>,
}

/// What lies under `under` ("" for the top): its own last message when it is a topic
/// too, and its children. Topics under `$` show only with `sys` (or under a `$`
/// prefix).
pub fn tree(broker: &Broker, under: &str, sys: bool, now: Instant) -> Value {
    let sys = sys || under.starts_with('$');
    let mut children: BTreeMap<String, Child> = BTreeMap::new();
    let mut own: Option<Value> = None;
    let mut totals = (0u64, 0u64);
    let mut place = |topic: &str, count: u64, value: &dyn Fn() -> Value| {
        if !sys && topic.starts_with('$') {
            return;
        }
        let rest = if under.is_empty() {
            topic
        } else if topic == under {
            own.get_or_insert_with(value);
            return;
        } else {
            match topic.strip_prefix(under).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => rest,
                None => return,
            }
        };
        let (name, deeper) = match rest.split_once('/') {
            Some((name, _)) => (name, true),
            None => (rest, false),
        };
        let child = children.entry(name.to_owned()).or_default();
        child.messages += count;
        child.topics += 1;
        child.has_children |= deeper;
        if !deeper {
            child.value.get_or_insert_with(value);
        }
        totals.0 += count;
        totals.1 += 1;
    };
    let filter = match (under, sys) {
        ("", false) => "#".to_owned(),
        ("", true) => String::new(),
        (prefix, _) => format!("{prefix}/#"),
    };
    let mut retained = broker.retained_matching(if filter.is_empty() { "#" } else { &filter }, now);
    if filter.is_empty() {
        retained.extend(broker.retained_matching("$SYS/#", now));
    }
    if !under.is_empty() {
        retained.extend(broker.retained_matching(under, now));
    }
    broker.recent_topics(|recent| {
        for (topic, r) in recent.iter() {
            place(topic, r.count, &|| recent_json(r, now));
        }
        // A retained message stands for a topic nothing was published to since start.
        for message in &retained {
            let topic = message.topic.as_str();
            if recent.get(topic).is_none() {
                place(topic, 0, &|| retained_json(message));
            }
        }
    });
    let children: Vec<Value> = children
        .into_iter()
        .map(|(name, c)| {
            let topic = if under.is_empty() {
                name.clone()
            } else {
                format!("{under}/{name}")
            };
            json!({"name": name, "topic": topic, "messages": c.messages, "topics": c.topics,
                   "has_children": c.has_children, "value": c.value})
        })
        .collect();
    json!({"under": under, "messages": totals.0, "topics": totals.1, "value": own,
           "children": children})
}

/// A tap's messages as JSON lines; the tap closes when this is dropped.
pub struct TapLines {
    tap: Arc<Tap>,
    ended: bool,
}

impl TapLines {
    pub fn new(tap: Arc<Tap>) -> TapLines {
        TapLines { tap, ended: false }
    }
}

impl Drop for TapLines {
    fn drop(&mut self) {
        self.tap.close();
    }
}

fn tap_line(message: &Message, wall: SystemTime) -> String {
    let cut = message.payload.len().min(PREVIEW_BYTES);
    let mut line = payload_json(&message.payload[..cut], message.payload.len());
    line["topic"] = json!(message.topic.as_str());
    line["qos"] = json!(message.qos as u8);
    line["retain"] = json!(message.retain);
    line["time"] = json!(
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    );
    let mut text = line.to_string();
    text.push('\n');
    text
}

impl Stream for TapLines {
    type Item = Vec<u8>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.tap.poll_take(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(messages)) => {
                let wall = SystemTime::now();
                let lines: String = messages.iter().map(|m| tap_line(m, wall)).collect();
                Poll::Ready(Some(lines.into_bytes()))
            }
            Poll::Ready(Err(end)) => {
                self.ended = true;
                let why = match end {
                    TapEnd::FellBehind => format!(
                        "this page read too slowly: more than {} messages or {} KiB waited for it",
                        crate::broker::tap::TAP_MESSAGES,
                        crate::broker::tap::TAP_BYTES / 1024
                    ),
                    TapEnd::Closed => "the broker is stopping".to_owned(),
                };
                let line = json!({"end": why}).to_string() + "\n";
                Poll::Ready(Some(line.into_bytes()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;
    use bytes::Bytes;

    #[test]
    fn payloads_show_as_text_or_hex() {
        assert_eq!(payload_json(b"21.5", 4)["encoding"], "utf8");
        let binary = payload_json(&[0xff, 0x00, 0x10], 3);
        assert_eq!(
            (binary["encoding"].as_str(), binary["payload"].as_str()),
            (Some("hex"), Some("ff0010"))
        );
        assert_eq!(
            payload_json(&[0, 1, 2], 3)["encoding"],
            "hex",
            "valid UTF-8, not text"
        );
        assert_eq!(payload_json(b"a\tb\r\n", 5)["encoding"], "utf8");
        // "é" is two bytes; a preview that cuts it keeps the text before it.
        let cut = payload_json("aé".as_bytes().get(..2).unwrap(), 3);
        assert_eq!(
            (cut["payload"].as_str(), cut["truncated"].as_bool()),
            (Some("a"), Some(true))
        );
    }

    #[test]
    fn the_tree_goes_one_level_at_a_time_with_counts_below() {
        let settings = crate::broker::Settings {
            recent_topics: 100,
            ..Default::default()
        };
        let now = Instant::now();
        let broker = Broker::new(settings, now);
        for (topic, payload) in [
            ("site/a/temp", "1"),
            ("site/a/temp", "2"),
            ("site/b", "x"),
            ("other", "y"),
        ] {
            broker.publish(
                Message::new(topic, Bytes::from(payload), QoS::AtMostOnce, false),
                now,
            );
        }
        let top = tree(&broker, "", false, now);
        let names: Vec<&str> = top["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["other", "site"]);
        assert_eq!(
            (top["messages"].as_u64(), top["topics"].as_u64()),
            (Some(4), Some(3))
        );
        let site = tree(&broker, "site", false, now);
        let a = &site["children"][0];
        assert_eq!(
            (
                a["name"].as_str(),
                a["messages"].as_u64(),
                a["has_children"].as_bool()
            ),
            (Some("a"), Some(2), Some(true))
        );
        let leaf = tree(&broker, "site/a/temp", false, now);
        assert_eq!(leaf["value"]["payload"], "2");
    }
}

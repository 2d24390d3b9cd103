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
use crate::broker::tap::{Tap, TapEnd, Tapped};
use crate::broker::topics::Preview;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

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
        None => (hex(preview), "hex"),
    };
    json!({"payload": payload, "encoding": encoding, "size": size, "truncated": truncated})
}

/// A message's preview as JSON: its payload (see [`payload_json`]), QoS and retain flag.
fn preview_json(preview: &Preview) -> Value {
    let mut value = payload_json(&preview.bytes, preview.size);
    value["qos"] = json!(preview.qos as u8);
    value["retain"] = json!(preview.retain);
    value
}

/// A topic's last message as the tree shows it, copied out of the recent topics (with
/// its age) or from a retained message (age unknown), so that the JSON is built after
/// the broker's lock is released.
struct Shown {
    last: Preview,
    age_ms: Option<u64>,
}

impl Shown {
    fn json(&self) -> Value {
        let mut value = preview_json(&self.last);
        value["age_ms"] = json!(self.age_ms);
        value
    }
}

#[derive(Default)]
struct Child {
    messages: u64,
    topics: u64,
    has_children: bool,
    value: Option<Shown>,
}

/// What lies under the topic prefix `under` (`None` for the top; `Some("")` is the
/// empty first level of topics like `/a`): its own last message when it is a topic
/// too, and its children. Topics under `$` show only with `sys` (or under a `$`
/// prefix). The recent topics stay locked (publishers wait for them) only while they
/// are counted and the shown values copied.
pub fn tree(broker: &Broker, under: Option<&str>, sys: bool, now: Instant) -> Value {
    let sys = sys || under.is_some_and(|u| u.starts_with('$'));
    let mut children: BTreeMap<String, Child> = BTreeMap::new();
    let mut own: Option<Shown> = None;
    let mut totals = (0u64, 0u64);
    let mut retained = Vec::new();
    match under {
        None => {
            retained = broker.retained_matching("#", now);
            if sys {
                retained.extend(broker.retained_matching("$SYS/#", now));
            }
        }
        Some(prefix) => {
            retained.extend(broker.retained_matching(&format!("{prefix}/#"), now));
            if !prefix.is_empty() {
                retained.extend(broker.retained_matching(prefix, now));
            }
        }
    }
    let mut place = |topic: &str, count: u64, shown: &dyn Fn() -> Shown| {
        if !sys && topic.starts_with('$') {
            return;
        }
        let rest = match under {
            None => topic,
            Some(prefix) if topic == prefix => {
                own.get_or_insert_with(shown);
                return;
            }
            Some(prefix) => match topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                Some(rest) => rest,
                None => return,
            },
        };
        let (name, deeper) = match rest.split_once('/') {
            Some((name, _)) => (name, true),
            None => (rest, false),
        };
        if !children.contains_key(name) {
            children.insert(name.to_owned(), Child::default());
        }
        let child = children.get_mut(name).expect("inserted above when missing");
        child.messages += count;
        child.topics += 1;
        child.has_children |= deeper;
        if !deeper {
            child.value.get_or_insert_with(shown);
        }
        totals.0 += count;
        totals.1 += 1;
    };
    broker.recent_topics(|recent| {
        for (topic, r) in recent.iter() {
            place(topic, r.count, &|| Shown {
                last: r.last.clone(),
                age_ms: Some(now.saturating_duration_since(r.at).as_millis() as u64),
            });
        }
        // A retained message stands for a topic nothing was published to since start.
        for message in &retained {
            let topic = message.topic.as_str();
            if recent.get(topic).is_none() {
                place(topic, 0, &|| Shown {
                    last: Preview::of(message),
                    age_ms: None,
                });
            }
        }
    });
    let children: Vec<Value> = children
        .into_iter()
        .map(|(name, c)| {
            let topic = match under {
                None => name.clone(),
                Some(prefix) => format!("{prefix}/{name}"),
            };
            json!({"name": name, "topic": topic, "messages": c.messages, "topics": c.topics,
                   "has_children": c.has_children, "value": c.value.map(|v| v.json())})
        })
        .collect();
    json!({"under": under, "messages": totals.0, "topics": totals.1,
           "value": own.map(|v| v.json()), "children": children})
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

fn tap_line(tapped: &Tapped, wall: SystemTime) -> String {
    let mut line = preview_json(&tapped.message);
    line["topic"] = json!(tapped.topic);
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
    use crate::message::Message;
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
        let top = tree(&broker, None, false, now);
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
        let site = tree(&broker, Some("site"), false, now);
        let a = &site["children"][0];
        assert_eq!(
            (
                a["name"].as_str(),
                a["messages"].as_u64(),
                a["has_children"].as_bool()
            ),
            (Some("a"), Some(2), Some(true))
        );
        let leaf = tree(&broker, Some("site/a/temp"), false, now);
        assert_eq!(leaf["value"]["payload"], "2");
    }
}

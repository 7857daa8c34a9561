//! The bytes of Server-Sent Events: how a request's events and a channel's
//! records are encoded as frames. Pure: no streams, no I/O.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use osmosis_protocol::EventKind;
use serde::Serialize;

use crate::replies::ReplyEvent;
use crate::subscriptions::ChannelEvent;

/// One encoded event: `event:`, `id:`, a `data:` line per line of `data`.
/// `data` never holds a carriage return here (bodies with one go base64).
pub fn frame(event: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(event.len() + data.len() + 32);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

pub(super) fn retry_frame(retry: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", retry.as_millis()))
}

/// `data` of `progress` and `reply` events.
#[derive(Serialize)]
struct ReplyData<'a> {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// Set instead of `body` when the body is not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

/// The body as SSE-safe text, or `None` when it must be base64.
pub(super) fn as_text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body)
        .ok()
        .filter(|text| !text.contains('\r'))
}

pub(super) fn reply_frame(event: &ReplyEvent) -> Bytes {
    let envelope = &event.envelope;
    let id = event.offset.to_string();
    if envelope.kind == EventKind::Accepted {
        // The marker's body is the JSON the accepting instance sent as its
        // own `accepted` event.
        return frame("accepted", Some(&id), &String::from_utf8_lossy(&event.body));
    }
    let text = as_text(&event.body);
    let data = ReplyData {
        status: envelope.status,
        content_type: envelope.content_type.as_deref(),
        body: text,
        body_base64: text.is_none().then(|| BASE64.encode(&event.body)),
    };
    let name = if envelope.kind == EventKind::Final {
        "reply"
    } else {
        "progress"
    };
    frame(
        name,
        Some(&id),
        &serde_json::to_string(&data).expect("serializable"),
    )
}

pub(super) fn shutdown_frame(id: Option<&str>) -> Bytes {
    frame(
        "shutdown",
        id,
        r#"{"reason":"the gateway is shutting down; reconnect with Last-Event-ID to resume"}"#,
    )
}

/// How channel records are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFormat {
    /// `data` is the record value (text), event `record`; binary values as
    /// base64 with event `record.base64`.
    Value,
    /// `data` is JSON with partition, offset, key, timestamp and the value.
    Json,
}

#[derive(Serialize)]
struct RecordData<'a> {
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

pub(super) fn record_frame(event: &ChannelEvent, id: &str, format: RecordFormat) -> Bytes {
    let text = as_text(&event.value);
    match format {
        RecordFormat::Value => match text {
            Some(text) => frame("record", Some(id), text),
            None => frame("record.base64", Some(id), &BASE64.encode(&event.value)),
        },
        RecordFormat::Json => {
            let key_text = event.key.as_deref().and_then(as_text);
            let data = RecordData {
                partition: event.partition,
                offset: event.offset,
                key: key_text,
                key_base64: match (&event.key, key_text) {
                    (Some(key), None) => Some(BASE64.encode(key)),
                    _ => None,
                },
                timestamp: event.timestamp,
                value: text,
                value_base64: text.is_none().then(|| BASE64.encode(&event.value)),
            };
            frame(
                "record",
                Some(id),
                &serde_json::to_string(&data).expect("serializable"),
            )
        }
    }
}

/// The frame every subscriber in step with the live feed sends for this
/// event: rendered once, shared by all of them.
pub(super) fn shared_record_frame(event: &ChannelEvent, format: RecordFormat) -> Bytes {
    let cell = match format {
        RecordFormat::Value => &event.value_frame,
        RecordFormat::Json => &event.json_frame,
    };
    cell.get_or_init(|| record_frame(event, &event.positions, format))
        .clone()
}

/// The `accepted` event of a request stream started by a POST; its id is
/// the accepted marker's offset, from which a resume continues.
pub fn accepted_frame(marker_offset: Option<i64>, data: &str) -> Bytes {
    frame(
        "accepted",
        marker_offset.map(|o| o.to_string()).as_deref(),
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_carries_each_data_line_and_ends_with_a_blank_line() {
        let encoded = frame("record", Some("0:1"), "first\nsecond");
        assert_eq!(
            &encoded[..],
            b"event: record\nid: 0:1\ndata: first\ndata: second\n\n"
        );
        assert_eq!(
            &frame("accepted", None, "{}")[..],
            b"event: accepted\ndata: {}\n\n"
        );
    }

    #[test]
    fn bodies_with_carriage_returns_are_not_text() {
        assert_eq!(as_text(b"plain\nlines"), Some("plain\nlines"));
        assert_eq!(as_text(b"windows\r\nline"), None);
        assert_eq!(as_text(&[0xff, 0xfe]), None);
    }
}

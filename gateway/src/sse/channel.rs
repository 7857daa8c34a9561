//! A channel subscription as Server-Sent Events: the catch-up from a resume
//! position (if any), then the live feed, filtered by key; cut off with an
//! `overflow` event when the subscriber falls more than its buffer behind.

use axum::response::Response;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::context::{OpenStream, StreamContext, StreamKind};
use super::frames::{RecordFormat, frame, record_frame, shared_record_frame, shutdown_frame};
use crate::subscriptions::{CatchUp, CatchUpReceiver, ChannelEvent, LiveSubscription, Positions};

/// Everything one subscription's stream needs.
pub struct ChannelStream {
    pub open: OpenStream,
    pub live: LiveSubscription,
    /// Records from `start` up to the live feed's snapshot, when resuming.
    pub catch_up: Option<CatchUpReceiver>,
    pub start: Option<Positions>,
    /// Only records with exactly this key.
    pub key: Option<Bytes>,
    pub format: RecordFormat,
}

/// The subscription's frames. One generator of ~90 lines on purpose: the
/// catch-up and the live phase share the cursor (the subscriber's position
/// vector), and a frame can only be yielded from inside the generator.
pub fn channel_stream(context: &StreamContext, subscription: ChannelStream) -> Response {
    let ChannelStream {
        open,
        mut live,
        catch_up,
        start,
        key,
        format,
    } = subscription;
    let context_ = context.for_stream();
    let stream = async_stream::stream! {
        let context = context_;
        let mut cursor = start.unwrap_or_else(|| live.snapshot.clone());
        // The subscription is live from here: say so, and where it starts.
        let start = cursor.to_string();
        yield frame("subscribed", Some(&start), &format!(r#"{{"positions":"{start}"}}"#));
        let matches = |event: &ChannelEvent| key.is_none() || event.key == key;
        if let Some(mut catch_up) = catch_up {
            context.metrics.sse_catch_up_reads.inc();
            loop {
                let Some(received) = context.unless_shutdown(catch_up.recv()).await else {
                    yield shutdown_frame(Some(&cursor.to_string()));
                    return;
                };
                match received {
                    Some(CatchUp::Event(event)) => {
                        if event.offset < cursor.get(event.partition).unwrap_or(0) {
                            continue;
                        }
                        cursor.advance(event.partition, event.offset);
                        if matches(&event) {
                            context.sent(StreamKind::Channel);
                            yield record_frame(&event, &cursor.to_string(), format);
                        }
                    }
                    Some(CatchUp::Lost { partition, from, to }) => {
                        cursor.set(partition, to);
                        yield lost_frame(partition, from, to, &cursor.to_string());
                    }
                    Some(CatchUp::Done) => break,
                    // Never a silent jump to the live feed: the stream ends
                    // where the subscriber is, and it resumes from there.
                    Some(CatchUp::Failed(error)) => {
                        tracing::warn!(%error, "catch-up failed; ending the stream");
                        yield interrupted_frame(&cursor.to_string(), &error.to_string());
                        return;
                    }
                    None => {
                        yield interrupted_frame(
                            &cursor.to_string(),
                            "the catch-up stopped (the subscriber read too slowly, or Kafka made no progress)",
                        );
                        return;
                    }
                }
            }
        }
        // The catch-up read up to the snapshot: from here on the live feed
        // delivers, and the subscriber moves in step with it.
        for (partition, next) in live.snapshot.iter() {
            if cursor.get(partition).is_none_or(|mine| mine < next) {
                cursor.set(partition, next);
            }
        }
        let mut in_step = cursor == live.snapshot;
        loop {
            let Some(received) = context.unless_shutdown(live.events.recv()).await else {
                yield shutdown_frame(Some(&cursor.to_string()));
                return;
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    context.metrics.sse_slow_disconnects.inc();
                    tracing::info!(missed, "cutting off a slow subscriber");
                    yield frame(
                        "overflow",
                        Some(&cursor.to_string()),
                        r#"{"reason":"the subscriber fell too far behind; reconnect with Last-Event-ID to resume"}"#,
                    );
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let mine = cursor.get(event.partition).unwrap_or(0);
            if event.offset < mine {
                continue;
            }
            in_step &= event.offset == mine;
            cursor.advance(event.partition, event.offset);
            if !matches(&event) {
                continue;
            }
            context.sent(StreamKind::Channel);
            if in_step {
                yield shared_record_frame(&event, format);
            } else {
                yield record_frame(&event, &cursor.to_string(), format);
            }
        }
    };
    context.respond(open, stream)
}

/// Records a resume asked for that retention deleted: which, and why.
fn lost_frame(partition: i32, from: i64, to: i64, id: &str) -> Bytes {
    let data = serde_json::json!({
        "partition": partition,
        "from": from,
        "to": to,
        "reason": "retention deleted these records before they were read",
    });
    frame("lost", Some(id), &data.to_string())
}

/// The end of a stream whose catch-up could not finish; its id is where
/// to resume.
fn interrupted_frame(id: &str, reason: &str) -> Bytes {
    let data = serde_json::json!({
        "reason": reason,
        "resume": "reconnect with Last-Event-ID",
    });
    frame("interrupted", Some(id), &data.to_string())
}

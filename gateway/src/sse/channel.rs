//! A channel subscription as Server-Sent Events: the catch-up from a resume
//! position (if any), then the live feed, filtered by key; cut off with an
//! `overflow` event when the subscriber falls more than its buffer behind.

use axum::response::Response;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::context::{OpenStream, StreamContext, StreamKind};
use super::frames::{RecordFormat, frame, record_frame, shared_record_frame, shutdown_frame};
use crate::subscriptions::{ChannelEvent, LiveSubscription, Positions, SubscriptionError};

/// Everything one subscription's stream needs.
pub struct ChannelStream {
    pub open: OpenStream,
    pub live: LiveSubscription,
    /// Records from `start` up to the live feed's snapshot, when resuming.
    pub catch_up: Option<mpsc::Receiver<Result<ChannelEvent, SubscriptionError>>>,
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
    let context_ = context.clone();
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
                    Some(Ok(event)) => {
                        if event.offset < cursor.get(event.partition).unwrap_or(0) {
                            continue;
                        }
                        cursor.advance(event.partition, event.offset);
                        if matches(&event) {
                            context.sent(StreamKind::Channel);
                            yield record_frame(&event, &cursor.to_string(), format);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "catch-up failed; joining the live feed");
                        break;
                    }
                    None => break,
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

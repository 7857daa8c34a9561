//! Where a reply reaches a streaming client: the events of one request as
//! Server-Sent Events — `accepted`, any `progress`, then `reply`.

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use osmosis_protocol::EventKind;
use tokio::sync::broadcast;

use super::context::{OpenStream, StreamContext, StreamKind};
use super::frames::{reply_frame, shutdown_frame};
use crate::replies::{FollowReceiver, ReplyEvent};

/// The events of a request accepted by this instance: `accepted` first
/// (with the channel position), then what its waiter receives. When the
/// waiter is gone before the stream saw the final reply (it was completed
/// while the stream lagged), `final_from_cache` fetches it.
pub fn own_request_stream(
    context: &StreamContext,
    open: OpenStream,
    accepted: Bytes,
    mut events: broadcast::Receiver<Arc<ReplyEvent>>,
    final_from_cache: impl FnOnce() -> Option<Arc<ReplyEvent>> + Send + 'static,
) -> Response {
    let context_ = context.clone();
    let stream = async_stream::stream! {
        let context = context_;
        yield accepted;
        context.sent(StreamKind::Request);
        let limit = tokio::time::sleep(context.request_stream_limit);
        tokio::pin!(limit);
        let mut final_from_cache = Some(final_from_cache);
        loop {
            let next = async {
                tokio::select! {
                    () = &mut limit => None,
                    received = events.recv() => Some(received),
                }
            };
            let Some(next) = context.unless_shutdown(next).await else {
                yield shutdown_frame(None);
                return;
            };
            let Some(received) = next else {
                return; // the time limit: the client polls or resumes
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    match final_from_cache.take().and_then(|cached| cached()) {
                        Some(event) => event,
                        None => return,
                    }
                }
            };
            context.sent(StreamKind::Request);
            yield reply_frame(&event);
            if event.envelope.kind == EventKind::Final {
                return;
            }
        }
    };
    context.respond(open, stream)
}

/// The events of any request, followed on its reply partition by this or
/// any other instance, after `Last-Event-ID` when given.
pub fn followed_request_stream(
    context: &StreamContext,
    open: OpenStream,
    mut events: FollowReceiver,
) -> Response {
    let context_ = context.clone();
    let stream = async_stream::stream! {
        let context = context_;
        loop {
            let Some(received) = context.unless_shutdown(events.recv()).await else {
                yield shutdown_frame(None);
                return;
            };
            match received {
                Some(Ok(event)) => {
                    context.sent(StreamKind::Request);
                    yield reply_frame(&event);
                    if event.envelope.kind == EventKind::Final {
                        return;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "request stream ended by a Kafka error");
                    return;
                }
                None => return,
            }
        }
    };
    context.respond(open, stream)
}

//! Where a reply reaches a streaming client: the events of one request as
//! Server-Sent Events — `accepted`, any `progress`, then `reply`.

use axum::response::Response;
use bytes::Bytes;
use osmosis_protocol::EventKind;

use super::context::{OpenStream, StreamContext, StreamKind};
use super::frames::{reply_frame, shutdown_frame};
use crate::replies::{FollowReceiver, Waiting};

/// The events of a request accepted by this instance: `accepted` first
/// (with the channel position), then what it waits for here. The request
/// stops waiting here when the stream ends or the client goes away.
pub fn own_request_stream(
    context: &StreamContext,
    open: OpenStream,
    accepted: Bytes,
    mut waiting: Waiting,
) -> Response {
    let context_ = context.for_stream();
    let stream = async_stream::stream! {
        let context = context_;
        yield accepted;
        context.sent(StreamKind::Request);
        let limit = tokio::time::sleep(context.request_stream_limit);
        tokio::pin!(limit);
        loop {
            let next = async {
                tokio::select! {
                    () = &mut limit => None,
                    event = waiting.next() => Some(event),
                }
            };
            let Some(next) = context.unless_shutdown(next).await else {
                yield shutdown_frame(None);
                return;
            };
            // The time limit, or nothing more to come: the client polls or
            // resumes.
            let Some(Some(event)) = next else {
                return;
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
    let context_ = context.for_stream();
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

//! Server-Sent Event streams: a request's events (`accepted`, `progress`,
//! `reply`) and live channel subscriptions, with resume by `Last-Event-ID`.
//!
//! Every stream starts with a `retry:` hint, sends keep-alive comments while
//! idle, counts against the connection cap for as long as it is open, and
//! ends with a final event when the gateway shuts down or when a subscriber
//! falls too far behind; that event's id is where to resume.
//!
//! # Layout
//! - [`frames`]: the encoding of every event (pure).
//! - [`request`]: where a reply reaches a streaming client — a request's
//!   events, for the instance that accepted it or for any other.
//! - [`channel`]: a channel subscription: catch-up, then the live feed.
//! - [`context`]: the [`StreamContext`] every stream shares: the connection
//!   cap, keep-alives, and the end at shutdown.

pub mod channel;
pub mod context;
pub mod frames;
pub mod request;

use http::HeaderMap;

pub use channel::{ChannelStream, channel_stream};
pub use context::{OpenStream, StreamContext, StreamKind};
pub use frames::{RecordFormat, accepted_frame};
pub use request::{followed_request_stream, own_request_stream};

/// Whether the client asked for an event stream.
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The `Last-Event-ID` header, if any.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok())
}

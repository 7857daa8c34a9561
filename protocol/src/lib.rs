//! The wire contract between the Osmosis gateway and its workers.
//!
//! A client's HTTP request travels through Kafka as a *request record* in its
//! route's channel topic: the record value is the body exactly as received,
//! the record key is the route's routing key (or none), and the request's
//! metadata rides in Kafka headers. This crate owns those header names, the
//! request id format and the encoding of the metadata to and from headers.
//!
//! # Layout
//! - [`headers`]: every Kafka header name the gateway writes; all of them
//!   begin with [`headers::PREFIX`], except W3C [`headers::TRACEPARENT`].
//! - [`RequestId`]: time-ordered request ids (UUIDv7).
//! - [`RequestEnvelope`]: the request metadata (with its [`ReplyAddress`]
//!   and deadline), encoded as header pairs and decoded back from them.
//! - [`ReplyEnvelope`]: the metadata of a reply record: `accepted`,
//!   `progress` and `final` events on the request's reply partition.
//! - `header_fields`: the one decoder both envelopes read headers with.
//! - [`clock`]: unix milliseconds, the contract's unit of time.
//!
//! It performs no I/O and knows nothing of HTTP servers or Kafka clients, so
//! the gateway, the worker SDK and tests in any crate share one definition.

pub mod clock;
pub mod headers;

mod envelope;
mod header_fields;
mod reply;
mod request_id;

pub use envelope::{Caller, ReplyAddress, RequestEnvelope};
pub use header_fields::DecodeError;
pub use reply::{EventKind, ReplyEnvelope};
pub use request_id::{MAX_REPLY_PARTITION, ParseRequestIdError, RequestId};

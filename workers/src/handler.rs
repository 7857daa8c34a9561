//! What a user writes: a [`Handler`] from [`Request`] to [`Reply`], and
//! the runtime's own error replies (problem+json, like the gateway's).
//!
//! A request sends its progress events through the `replier`; that is this
//! module's only way to Kafka. It does not run handlers nor retry them.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use osmosis_protocol::{
    Caller, EventKind, ReplyAddress, ReplyEnvelope, RequestEnvelope, RequestId,
};

use crate::replier::Replier;

/// One request taken from the channel.
#[derive(Clone)]
pub struct Request {
    /// The request's metadata: id, method, path, query, content type,
    /// trace context and forwarded client headers.
    pub envelope: RequestEnvelope,
    /// The body exactly as the client sent it.
    pub body: Bytes,
    /// The routing key, if the route has one.
    pub key: Option<Bytes>,
    /// Partition and offset the request was read from.
    pub partition: i32,
    pub offset: i64,
    /// Where progress events go while the handler runs; `None` when the
    /// request expects no reply.
    pub(crate) progress: Option<Arc<ReplyTo>>,
}

/// A request's reply address with the replier that writes to it.
pub(crate) struct ReplyTo {
    pub(crate) replier: Replier,
    pub(crate) address: ReplyAddress,
}

impl Request {
    pub fn id(&self) -> RequestId {
        self.envelope.id
    }

    /// The body's media type as the client declared it.
    pub fn content_type(&self) -> Option<&str> {
        self.envelope.content_type.as_deref()
    }

    /// Who called, as the gateway verified it (subject and scopes); `None`
    /// when the route let the caller in anonymously.
    pub fn caller(&self) -> Option<&Caller> {
        self.envelope.caller.as_ref()
    }

    /// When the request stops being worth processing, if it has a deadline.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.envelope
            .deadline_ms
            .map(osmosis_protocol::clock::from_unix_ms)
    }

    /// A forwarded client header (lower-case name), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope
            .forwarded
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Sends a progress event to the client, waiting until Kafka has it.
    /// Does nothing when the request expects no reply.
    pub async fn progress(
        &self,
        body: impl Into<Bytes>,
        content_type: Option<&str>,
    ) -> Result<(), HandlerError> {
        match &self.progress {
            Some(to) => to
                .replier
                .progress(&to.address, self.id(), &body.into(), content_type)
                .await
                .map_err(|error| HandlerError::retryable(format!("sending progress: {error}"))),
            None => Ok(()),
        }
    }
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    /// Response headers for the client (names not starting with `osmosis-`).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Reply {
    /// A 200 reply with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self {
            status: 200,
            content_type: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A problem+json body for error replies, like the gateway's own errors.
    pub(crate) fn problem(status: u16, detail: &str) -> Self {
        let title = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = serde_json::json!({
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail,
        });
        Self::ok(body.to_string())
            .with_status(status)
            .with_content_type("application/problem+json")
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push((name.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// This reply's metadata as request `id`'s `final` event; the body goes
    /// as the record's value.
    pub(crate) fn final_envelope(&self, id: RequestId) -> ReplyEnvelope {
        ReplyEnvelope {
            id,
            kind: EventKind::Final,
            status: self.status,
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// Why a handler could not produce a reply.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What went wrong, for logs, the dead-letter record and the client.
    pub message: String,
    /// Whether trying again may succeed; permanent errors skip the retries.
    pub retryable: bool,
    /// Status of the error reply the client gets once retries are exhausted.
    pub status: u16,
}

impl HandlerError {
    /// A failure worth retrying (a dependency down, a timeout); 500 in the end.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            status: 500,
        }
    }

    /// A failure that retrying cannot fix (bad input); 500 unless changed.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            status: 500,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// Business logic: turns a request into a reply. Called again for retries,
/// so it should be idempotent, as any at-least-once consumer must be.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply, HandlerError>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, HandlerError>> + Send,
{
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply, HandlerError>> + Send {
        self(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reply_is_problem_json_titled_by_its_status() {
        let reply = Reply::problem(504, "too late");
        assert_eq!(reply.status, 504);
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/problem+json")
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "type": "about:blank",
                "title": "Gateway Timeout",
                "status": 504,
                "detail": "too late",
            })
        );
    }

    #[test]
    fn the_final_envelope_carries_the_replys_metadata() {
        let id = RequestId::new(Some(3));
        let reply = Reply::ok("hi")
            .with_status(201)
            .with_content_type("text/plain")
            .with_header("X-Trace", "t");
        let envelope = reply.final_envelope(id);
        assert_eq!(envelope.id, id);
        assert_eq!(envelope.kind, EventKind::Final);
        assert_eq!(envelope.status, 201);
        assert_eq!(envelope.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            envelope.headers,
            vec![("x-trace".to_owned(), b"t".to_vec())]
        );
    }
}

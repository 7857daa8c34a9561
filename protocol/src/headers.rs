//! Kafka header names of the wire contract.
//!
//! The gateway's own headers all begin with [`PREFIX`]. Clients can never set
//! them: HTTP headers whose name begins with the prefix are stripped on
//! ingress ([`is_reserved`]), so a worker can trust every `osmosis-*` header
//! it reads.

/// Prefix of every header the gateway owns.
pub const PREFIX: &str = "osmosis-";

/// Time-ordered id of the request (see [`crate::RequestId`]).
pub const REQUEST_ID: &str = "osmosis-request-id";
/// HTTP method of the client's request, e.g. `POST`.
pub const METHOD: &str = "osmosis-method";
/// Path of the client's request, without the query string.
pub const PATH: &str = "osmosis-path";
/// Raw query string of the client's request, without the `?`; absent when empty.
pub const QUERY: &str = "osmosis-query";
/// `Content-Type` of the client's body; absent when the client sent none.
pub const CONTENT_TYPE: &str = "osmosis-content-type";
/// Name of the gateway route that accepted the request.
pub const ROUTE: &str = "osmosis-route";
/// Topic a reply goes to; absent when the request expects no reply.
pub const REPLY_TOPIC: &str = "osmosis-reply-topic";
/// Partition of [`REPLY_TOPIC`] a reply goes to (decimal).
pub const REPLY_PARTITION: &str = "osmosis-reply-partition";
/// Unix time in milliseconds after which the request must not be processed.
pub const DEADLINE: &str = "osmosis-deadline";
/// The verified subject of the caller (a JWT's `sub`, an API key's
/// subject); absent when the route let the caller in anonymously.
pub const SUBJECT: &str = "osmosis-subject";
/// The caller's verified scopes, space separated (as OAuth writes them).
pub const SCOPES: &str = "osmosis-scopes";
/// The client's `Idempotency-Key`, when it sent one: the gateway wrote the
/// request once for every retry with that key (within its window), so a
/// worker may use it to deduplicate its own side effects further.
pub const IDEMPOTENCY_KEY: &str = "osmosis-idempotency-key";

/// Reply records: what the event is, see [`crate::EventKind`].
pub const EVENT: &str = "osmosis-event";
/// Reply records: the HTTP status of the reply (decimal).
pub const STATUS: &str = "osmosis-status";

/// Dead-letter records: why the request failed.
pub const ERROR: &str = "osmosis-error";
/// Dead-letter records: how many times the handler ran.
pub const ATTEMPTS: &str = "osmosis-attempts";
/// Dead-letter records: where the request was read from (`topic/partition/offset`).
pub const SOURCE: &str = "osmosis-source";
/// Dead-letter records: present when the record was cut down to fit its
/// topic; the original body's size in bytes (decimal).
pub const TRUNCATED: &str = "osmosis-truncated";

/// W3C trace context. It keeps its standard name so that tracing
/// instrumentation for Kafka picks it up without knowing Osmosis.
pub const TRACEPARENT: &str = "traceparent";

/// Whether a client-supplied header name is reserved for the gateway and must
/// be stripped on ingress. Header names are case-insensitive.
pub fn is_reserved(name: &str) -> bool {
    name.len() >= PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_matched_case_insensitively() {
        assert!(is_reserved("osmosis-request-id"));
        assert!(is_reserved("Osmosis-Request-Id"));
        assert!(is_reserved("OSMOSIS-anything"));
        assert!(!is_reserved("osmosis"));
        assert!(!is_reserved("x-osmosis-id"));
        assert!(!is_reserved("traceparent"));
    }

    #[test]
    fn every_gateway_header_is_reserved() {
        for name in [
            REQUEST_ID,
            METHOD,
            PATH,
            QUERY,
            CONTENT_TYPE,
            ROUTE,
            REPLY_TOPIC,
            REPLY_PARTITION,
            DEADLINE,
            SUBJECT,
            SCOPES,
            TRUNCATED,
            IDEMPOTENCY_KEY,
            EVENT,
            STATUS,
            ERROR,
            ATTEMPTS,
            SOURCE,
        ] {
            assert!(is_reserved(name), "{name} must carry the osmosis- prefix");
        }
    }
}

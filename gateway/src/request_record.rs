//! Where an HTTP request becomes a Kafka record: the body within the
//! route's limit, the routing key, the allow-listed client headers and the
//! trace context, wrapped in the protocol's request envelope.
//!
//! Pure apart from reading the body: it writes nothing (that is the
//! [`crate::writer`]'s job) and decides no answer (the server's).

use std::collections::HashMap;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Uri, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use osmosis_protocol::clock::unix_ms_after;
use osmosis_protocol::{Caller, ReplyAddress, RequestEnvelope, RequestId, headers as contract};
use osmosis_support::kafka::to_record_headers;

use crate::config::KeySource;
use crate::problem::Problem;
use crate::route::Route;
use crate::trace_context::continue_trace;
use crate::writer::OutboundRecord;

/// The parts of a client's call a request record is built from.
pub struct CallHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The route pattern's `{param}`s, percent-decoded.
    pub params: HashMap<String, String>,
}

/// A request record for its channel, and the id it carries.
pub struct RequestRecord {
    pub id: RequestId,
    pub record: OutboundRecord,
}

impl RequestRecord {
    /// Builds the record of a call to `route` by `caller` (verified, or
    /// `None` for an anonymous call); `reply_to` names the reply partition
    /// when the route waits for a reply.
    pub fn build(
        route: &Route,
        call: &CallHead,
        body: Bytes,
        caller: Option<Caller>,
        reply_to: Option<ReplyAddress>,
    ) -> Result<Self, Problem> {
        let key = routing_key(route, call, &body)?;
        let id = RequestId::new(reply_to.as_ref().map(|address| address.partition));
        let envelope = RequestEnvelope {
            id,
            route: route.label.clone(),
            method: call.method.as_str().to_owned(),
            path: call.uri.path().to_owned(),
            query: call.uri.query().map(str::to_owned),
            content_type: call
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            traceparent: continue_trace(call.headers.get(contract::TRACEPARENT)),
            forwarded: forwarded_headers(&route.forward_headers, &call.headers),
            reply_to,
            deadline_ms: route.deadline.map(unix_ms_after),
            caller,
        };
        let record = OutboundRecord {
            topic: route.channel.clone(),
            partition: None,
            key,
            value: body,
            headers: to_record_headers(envelope.to_headers()),
        };
        Ok(Self { id, record })
    }
}

/// Reads the body up to `limit` bytes. A declared `Content-Length` over the
/// limit is refused before reading; a chunked body is cut off as soon as it
/// passes the limit, so an oversized upload is never buffered whole.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Problem::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Problem::BodyTooLarge { limit }),
        Err(error) => Err(Problem::BodyUnreadable(error.to_string())),
    }
}

fn routing_key(route: &Route, call: &CallHead, body: &Bytes) -> Result<Option<Vec<u8>>, Problem> {
    match &route.key {
        None => Ok(None),
        Some(KeySource::Path(param)) => Ok(call.params.get(param).map(|v| v.as_bytes().to_vec())),
        Some(KeySource::Header(name)) => call
            .headers
            .get(name.as_str())
            .map(|v| Some(v.as_bytes().to_vec()))
            .ok_or_else(|| {
                Problem::BadRequest(format!("the routing key header {name} is missing"))
            }),
        Some(KeySource::Json(pointer)) => {
            let document: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
                Problem::BadRequest(format!(
                    "the body must be JSON to take the routing key from {pointer}: {error}"
                ))
            })?;
            match document.pointer(pointer) {
                Some(serde_json::Value::String(text)) => Ok(Some(text.as_bytes().to_vec())),
                Some(serde_json::Value::Null) | None => Err(Problem::BadRequest(format!(
                    "the routing key {pointer} is missing from the JSON body"
                ))),
                Some(other) => Ok(Some(other.to_string().into_bytes())),
            }
        }
    }
}

fn forwarded_headers(allowed: &[HeaderName], headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    allowed
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .map(move |value| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        })
        .collect()
}

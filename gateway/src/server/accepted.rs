//! The 202 Accepted answer: where Kafka stored the request, and — when a
//! reply is still to come — where to ask for it.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use osmosis_protocol::RequestId;
use serde::Serialize;

use crate::writer::Stored;

/// Response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "osmosis-request-id";

/// The body of a 202: where the request is, and whether a reply is pending.
#[derive(Serialize)]
pub struct Accepted<'a> {
    id: String,
    channel: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

impl<'a> Accepted<'a> {
    /// `pending` says a reply is still to come.
    pub fn new(id: RequestId, channel: &'a str, stored: Stored, pending: bool) -> Self {
        Self {
            id: id.to_string(),
            channel,
            partition: stored.partition,
            offset: stored.offset,
            status: pending.then_some("pending"),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

/// The 202 naming where the request went; `pending` adds the `Location`
/// to poll for the reply.
pub fn accepted_response(id: RequestId, channel: &str, stored: Stored, pending: bool) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted::new(id, channel, stored, pending)),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID_HEADER, id_header(id));
    if pending {
        let location = format!("/v1/requests/{id}");
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("a path of ASCII characters"),
        );
    }
    response
}

pub fn id_header(id: RequestId) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("a UUID is a valid header value")
}

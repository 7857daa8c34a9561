//! Reply records: what a worker sends back to a request's reply address.
//!
//! A request's reply partition is also its event log: the gateway writes an
//! `accepted` event when it takes the request, the worker any number of
//! `progress` events and one `final` reply. The record key is the request id,
//! so every instance can find a request's events by scanning the partition
//! its id names, from the id's timestamp on.

use std::borrow::Cow;

use crate::header_fields::{DecodeError, HeaderFields};
use crate::headers;
use crate::request_id::RequestId;

/// What a reply record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Written by the gateway once the request is in its channel.
    Accepted,
    /// An intermediate event from the worker; more follow.
    Progress,
    /// The reply; nothing follows.
    Final,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Progress => "progress",
            EventKind::Final => "final",
        }
    }

    fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"accepted" => Some(EventKind::Accepted),
            b"progress" => Some(EventKind::Progress),
            b"final" => Some(EventKind::Final),
            _ => None,
        }
    }
}

/// Metadata of a reply record. The body is the record value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyEnvelope {
    /// The request this event belongs to (also the record key).
    pub id: RequestId,
    pub kind: EventKind,
    /// HTTP status for the client (meaningful for `final`).
    pub status: u16,
    /// Media type of the body.
    pub content_type: Option<String>,
    /// Response headers for the client: lower-case names, never `osmosis-*`.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReplyEnvelope {
    /// The envelope as `(name, value)` header pairs. Headers the worker set
    /// under a reserved name are dropped.
    pub fn to_headers(&self) -> Vec<(&str, Cow<'_, [u8]>)> {
        let mut out = Vec::with_capacity(4 + self.headers.len());
        out.push((
            headers::REQUEST_ID,
            Cow::Owned(self.id.to_string().into_bytes()),
        ));
        out.push((headers::EVENT, Cow::Borrowed(self.kind.as_str().as_bytes())));
        out.push((
            headers::STATUS,
            Cow::Owned(self.status.to_string().into_bytes()),
        ));
        if let Some(content_type) = &self.content_type {
            out.push((
                headers::CONTENT_TYPE,
                Cow::Borrowed(content_type.as_bytes()),
            ));
        }
        for (name, value) in &self.headers {
            if !headers::is_reserved(name) {
                out.push((name.as_str(), Cow::Borrowed(value.as_slice())));
            }
        }
        out
    }

    /// Reads a reply envelope back from a record's headers.
    pub fn from_headers<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, DecodeError> {
        let fields = HeaderFields::split(pairs, &[]);
        let kind = fields
            .bytes(headers::EVENT)
            .map(|value| EventKind::parse(value).ok_or(DecodeError::UnknownValue(headers::EVENT)))
            .transpose()?;
        Ok(Self {
            id: fields.required_text(headers::REQUEST_ID)?.parse()?,
            kind: kind.ok_or(DecodeError::Missing(headers::EVENT))?,
            status: fields.number(headers::STATUS)?.unwrap_or(200),
            content_type: fields.text(headers::CONTENT_TYPE)?.map(str::to_owned),
            headers: fields.other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(envelope: &ReplyEnvelope) -> Result<ReplyEnvelope, DecodeError> {
        let pairs = envelope.to_headers();
        ReplyEnvelope::from_headers(pairs.iter().map(|(n, v)| (*n, Some(v.as_ref()))))
    }

    #[test]
    fn a_reply_round_trips_through_headers() {
        let reply = ReplyEnvelope {
            id: RequestId::new(Some(0)),
            kind: EventKind::Final,
            status: 201,
            content_type: Some("text/plain".into()),
            headers: vec![("x-worker".into(), b"w1".to_vec())],
        };
        assert_eq!(decode(&reply).unwrap(), reply);
    }

    #[test]
    fn workers_cannot_write_reserved_headers() {
        let reply = ReplyEnvelope {
            id: RequestId::new(Some(0)),
            kind: EventKind::Progress,
            status: 200,
            content_type: None,
            headers: vec![("osmosis-status".into(), b"500".to_vec())],
        };
        let decoded = decode(&reply).unwrap();
        assert_eq!(decoded.status, 200);
        assert!(decoded.headers.is_empty());
    }

    #[test]
    fn an_unknown_event_kind_is_an_error() {
        let id = RequestId::new(Some(0)).to_string();
        let pairs = [
            (headers::REQUEST_ID, Some(id.as_bytes())),
            (headers::EVENT, Some(&b"maybe"[..])),
        ];
        assert!(matches!(
            ReplyEnvelope::from_headers(pairs),
            Err(DecodeError::UnknownValue(headers::EVENT))
        ));
    }
}

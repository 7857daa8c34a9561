//! The request envelope: a request's metadata as Kafka header pairs.

use std::borrow::Cow;

use crate::header_fields::{DecodeError, HeaderFields};
use crate::headers;
use crate::request_id::RequestId;

/// Metadata of one client request, carried in the headers of its record.
///
/// The body and the routing key are the record's value and key; they are not
/// part of the envelope, so that neither is copied to build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestEnvelope {
    /// Correlates the record with the client's request, its reply and logs.
    pub id: RequestId,
    /// Name of the route that accepted the request, so a worker serving
    /// several routes on one channel can tell them apart.
    pub route: String,
    /// HTTP method, upper case as sent.
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    /// Raw query string without the `?`; `None` when the URL had none.
    pub query: Option<String>,
    /// The body's media type as the client declared it.
    pub content_type: Option<String>,
    /// W3C `traceparent` continuing the client's trace (or a fresh one).
    pub traceparent: String,
    /// Allow-listed client headers, lower-case names, values as sent.
    pub forwarded: Vec<(String, Vec<u8>)>,
    /// Where the reply goes; `None` when the request expects no reply.
    pub reply_to: Option<ReplyAddress>,
    /// Unix time in milliseconds after which the request must not be
    /// processed any more.
    pub deadline_ms: Option<u64>,
    /// Who called, as the gateway verified it; `None` for an anonymous call.
    pub caller: Option<Caller>,
}

/// The verified identity of a request's caller. Clients cannot forge it:
/// the gateway strips every `osmosis-*` header they send and writes these
/// only from a verified token or API key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Caller {
    pub subject: String,
    pub scopes: Vec<String>,
}

/// A reply topic and partition: where a worker sends a request's reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplyAddress {
    pub topic: String,
    pub partition: i32,
}

impl RequestEnvelope {
    /// The envelope as `(name, value)` header pairs, gateway headers first.
    pub fn to_headers(&self) -> Vec<(&str, Cow<'_, [u8]>)> {
        let mut out = Vec::with_capacity(9 + self.forwarded.len());
        fn borrowed(text: &str) -> Cow<'_, [u8]> {
            Cow::Borrowed(text.as_bytes())
        }
        out.push((
            headers::REQUEST_ID,
            Cow::Owned(self.id.to_string().into_bytes()),
        ));
        out.push((headers::ROUTE, borrowed(&self.route)));
        out.push((headers::METHOD, borrowed(&self.method)));
        out.push((headers::PATH, borrowed(&self.path)));
        if let Some(query) = &self.query {
            out.push((headers::QUERY, borrowed(query)));
        }
        if let Some(content_type) = &self.content_type {
            out.push((headers::CONTENT_TYPE, borrowed(content_type)));
        }
        out.push((headers::TRACEPARENT, borrowed(&self.traceparent)));
        if let Some(reply_to) = &self.reply_to {
            out.push((headers::REPLY_TOPIC, borrowed(&reply_to.topic)));
            out.push((
                headers::REPLY_PARTITION,
                Cow::Owned(reply_to.partition.to_string().into_bytes()),
            ));
        }
        if let Some(deadline) = self.deadline_ms {
            out.push((
                headers::DEADLINE,
                Cow::Owned(deadline.to_string().into_bytes()),
            ));
        }
        if let Some(caller) = &self.caller {
            out.push((headers::SUBJECT, borrowed(&caller.subject)));
            out.push((
                headers::SCOPES,
                Cow::Owned(caller.scopes.join(" ").into_bytes()),
            ));
        }
        for (name, value) in &self.forwarded {
            out.push((name.as_str(), Cow::Borrowed(value.as_slice())));
        }
        out
    }

    /// Reads an envelope back from a record's headers. Unknown `osmosis-*`
    /// headers are ignored, so newer gateways can add headers without
    /// breaking older workers.
    pub fn from_headers<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, DecodeError> {
        let fields = HeaderFields::split(pairs, &[headers::TRACEPARENT]);
        let owned = |text: Option<&str>| text.map(str::to_owned);
        let reply_to = match (
            fields.text(headers::REPLY_TOPIC)?,
            fields.number(headers::REPLY_PARTITION)?,
        ) {
            (Some(topic), Some(partition)) => Some(ReplyAddress {
                topic: topic.to_owned(),
                partition,
            }),
            (None, None) => None,
            (Some(_), None) => return Err(DecodeError::Missing(headers::REPLY_PARTITION)),
            (None, Some(_)) => return Err(DecodeError::Missing(headers::REPLY_TOPIC)),
        };
        Ok(Self {
            id: fields.required_text(headers::REQUEST_ID)?.parse()?,
            route: fields.required_text(headers::ROUTE)?.to_owned(),
            method: fields.required_text(headers::METHOD)?.to_owned(),
            path: fields.required_text(headers::PATH)?.to_owned(),
            query: owned(fields.text(headers::QUERY)?),
            content_type: owned(fields.text(headers::CONTENT_TYPE)?),
            traceparent: fields.required_text(headers::TRACEPARENT)?.to_owned(),
            reply_to,
            deadline_ms: fields.number(headers::DEADLINE)?,
            caller: match fields.text(headers::SUBJECT)? {
                Some(subject) => Some(Caller {
                    subject: subject.to_owned(),
                    scopes: fields
                        .text(headers::SCOPES)?
                        .unwrap_or_default()
                        .split_ascii_whitespace()
                        .map(str::to_owned)
                        .collect(),
                }),
                None => None,
            },
            forwarded: fields.other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RequestEnvelope {
        RequestEnvelope {
            id: RequestId::new(Some(2)),
            route: "orders".into(),
            method: "POST".into(),
            path: "/orders/42".into(),
            query: Some("dry_run=1".into()),
            content_type: Some("application/json".into()),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            forwarded: vec![("x-tenant".into(), b"acme".to_vec())],
            reply_to: Some(ReplyAddress {
                topic: "osmosis.replies".into(),
                partition: 2,
            }),
            deadline_ms: Some(1_790_000_000_000),
            caller: Some(Caller {
                subject: "alice".into(),
                scopes: vec!["orders:write".into(), "orders:read".into()],
            }),
        }
    }

    fn decode(pairs: &[(&str, Cow<'_, [u8]>)]) -> Result<RequestEnvelope, DecodeError> {
        RequestEnvelope::from_headers(pairs.iter().map(|(n, v)| (*n, Some(v.as_ref()))))
    }

    #[test]
    fn an_envelope_round_trips_through_headers() {
        let envelope = sample();
        assert_eq!(decode(&envelope.to_headers()).unwrap(), envelope);
    }

    #[test]
    fn absent_optional_fields_write_no_header() {
        let envelope = RequestEnvelope {
            query: None,
            content_type: None,
            forwarded: vec![],
            reply_to: None,
            deadline_ms: None,
            caller: None,
            ..sample()
        };
        let pairs = envelope.to_headers();
        let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        assert!(!names.contains(&headers::QUERY));
        assert!(!names.contains(&headers::CONTENT_TYPE));
        assert!(!names.contains(&headers::REPLY_TOPIC));
        assert!(!names.contains(&headers::DEADLINE));
        assert!(!names.contains(&headers::SUBJECT));
        assert_eq!(decode(&pairs).unwrap(), envelope);
    }

    #[test]
    fn a_missing_request_id_is_an_error() {
        let envelope = sample();
        let pairs: Vec<_> = envelope
            .to_headers()
            .into_iter()
            .filter(|(n, _)| *n != headers::REQUEST_ID)
            .collect();
        assert!(matches!(
            decode(&pairs),
            Err(DecodeError::Missing(headers::REQUEST_ID))
        ));
    }

    #[test]
    fn unknown_gateway_headers_are_ignored_not_forwarded() {
        let envelope = sample();
        let mut pairs = envelope.to_headers();
        pairs.push(("osmosis-from-the-future", Cow::Borrowed(b"1")));
        assert_eq!(decode(&pairs).unwrap(), envelope);
    }
}

//! Property-based tests of every parser a client's bytes reach: `Prefer`,
//! `Last-Event-ID` position vectors, request ids, `Idempotency-Key`s and
//! routing keys. Whatever the input, a parser answers (a value or an
//! error) without panicking, within its bounds, and what it accepts
//! round-trips.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use osmosis_gateway::config::{KeySource, RouteConfig};
use osmosis_gateway::idempotency::{MAX_KEY_BYTES, parse_key};
use osmosis_gateway::request_record::{CallHead, RequestRecord};
use osmosis_gateway::route::Route;
use osmosis_gateway::server::prefer::Preference;
use osmosis_gateway::subscriptions::Positions;
use osmosis_gateway::subscriptions::positions::MAX_TEXT_BYTES;
use osmosis_protocol::RequestId;
use proptest::prelude::*;

fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(bytes).ok()
}

/// Text that looks like the real thing often enough to reach deep paths.
fn prefer_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("respond-async".to_owned()),
            "wait=[0-9]{0,25}".prop_map(|s| s),
            "wait=-?[0-9]{1,5}(\\.[0-9]{1,3})?".prop_map(|s| s),
            "[ -~]{0,40}".prop_map(|s| s),
        ],
        0..6,
    )
    .prop_map(|parts| parts.join(if parts.len() % 2 == 0 { ", " } else { ";" }))
}

fn route(key: Option<KeySource>) -> Route {
    Route::from(&RouteConfig {
        name: Some("fuzz".into()),
        method: "POST".into(),
        path: "/in/{id}".into(),
        channel: "fuzz".into(),
        mode: osmosis_gateway::config::Mode::Publish,
        key,
        max_body_bytes: 1024,
        forward_headers: Vec::new(),
        timeout_ms: 1000,
        max_wait_ms: 5000,
        deadline_ms: None,
        access: Default::default(),
        cors: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prefer_never_asks_for_more_than_the_route_allows(text in prefer_text()) {
        let mut headers = HeaderMap::new();
        if let Some(value) = header_value(text.as_bytes()) {
            headers.insert("prefer", value);
        }
        let max = Duration::from_secs(60);
        let preference = Preference::parse(&headers, Duration::from_secs(10), max);
        prop_assert!(preference.wait <= max);
    }

    #[test]
    fn position_vectors_round_trip_or_are_refused(
        text in prop_oneof![
            "([0-9]{1,4}:[0-9]{1,19},){0,8}[0-9]{1,4}:[0-9]{1,19}",
            "[ -~]{0,64}",
        ]
    ) {
        if let Ok(positions) = text.parse::<Positions>() {
            let again: Positions = positions.to_string().parse().unwrap();
            prop_assert_eq!(&again, &positions);
            prop_assert!(positions.iter().all(|(p, o)| p >= 0 && o >= 0));
        }
    }

    #[test]
    fn oversized_position_vectors_are_refused(repeat in 1usize..4) {
        let text = "1:1,".repeat(MAX_TEXT_BYTES / 4 * repeat + 1);
        prop_assert!(text.parse::<Positions>().is_err());
    }

    #[test]
    fn request_ids_round_trip_or_are_refused(text in "[ -~]{0,48}", partition in prop::option::of(0i32..1024)) {
        let _ = text.parse::<RequestId>();
        let id = RequestId::new(partition);
        let again: RequestId = id.to_string().parse().unwrap();
        prop_assert_eq!(again, id);
        prop_assert_eq!(again.reply_partition(), partition);
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_text(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(key) = parse_key(&bytes) {
            prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
            prop_assert!(key.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
    }

    #[test]
    fn routing_keys_from_any_header_path_or_body_never_panic(
        header in prop::collection::vec(any::<u8>(), 0..64),
        param in "[ -~]{0,32}",
        body in prop::collection::vec(any::<u8>(), 0..128),
        pointer in "(/[a-z0-9~]{0,4}){0,3}",
    ) {
        let mut headers = HeaderMap::new();
        if let Some(value) = header_value(&header) {
            headers.insert("x-key", value);
        }
        let head = CallHead {
            method: Method::POST,
            uri: Uri::from_static("/in/x"),
            headers,
            params: HashMap::from([("id".to_owned(), param)]),
        };
        for key in [
            Some(KeySource::Header("x-key".into())),
            Some(KeySource::Path("id".into())),
            Some(KeySource::Json(pointer.clone())),
            None,
        ] {
            let _ = RequestRecord::build(&route(key), &head, Bytes::from(body.clone()), None, None);
        }
    }
}

//! Durable ingest, end to end: HTTP requests through the real gateway binary
//! land in a real Kafka broker, byte for byte, with the contract's headers.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::kafka::{self, Record};
use osmosis_e2e::process::{Gateway, Service};
use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use reqwest::StatusCode;
use serde_json::Value;

const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A gateway configuration for the shared broker with `routes` (YAML list
/// items) and every topic in `channels` declared.
fn config(brokers: &str, channels: &[&str], routes: &str) -> String {
    let channels: String = channels
        .iter()
        .map(|c| format!("  {c}: {{ partitions: 1 }}\n"))
        .collect();
    format!(
        "listen: 127.0.0.1:0\nkafka:\n  brokers: {brokers}\n  produce_timeout_ms: 3000\nchannels:\n{channels}routes:\n{routes}"
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

/// Asserts a problem+json response with `status` and returns its body.
async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    let body = json(response).await;
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

fn find(records: &[Record], partition: i64, offset: i64) -> &Record {
    records
        .iter()
        .find(|r| i64::from(r.partition) == partition && r.offset == offset)
        .unwrap_or_else(|| panic!("no record at {partition}/{offset}"))
}

/// The record in Kafka is the body exactly as sent, at the partition and
/// offset the 202 reported, with the contract's headers and nothing the
/// client was not allowed to set.
#[tokio::test]
async fn a_publish_lands_the_exact_body_and_contract_headers() {
    let topic = kafka::create_topic("ingest.exact", 3).await;
    let gateway = Gateway::start(&config(
        kafka::bootstrap(),
        &[&topic],
        &format!(
            "  - {{ name: orders, method: POST, path: /orders, channel: {topic}, forward_headers: [X-Tenant] }}\n"
        ),
    ));
    let body: Vec<u8> = (0..=255u8)
        .chain(b"\r\n\0 not utf-8 \xff".iter().copied())
        .collect();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .post(gateway.url("/orders?dry_run=1&x=%20y"))
        .header("content-type", "application/octet-stream")
        .header("traceparent", traceparent)
        .header("x-tenant", "acme")
        .header("x-not-forwarded", "secret")
        .header("Osmosis-Request-Id", "spoofed")
        .header("osmosis-method", "DELETE")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id_header = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let accepted = json(response).await;
    assert_eq!(accepted["id"], id_header.as_str());
    assert_eq!(accepted["channel"], topic.as_str());

    let records = kafka::read_records(&topic, 1, READ_TIMEOUT);
    let record = find(
        &records,
        accepted["partition"].as_i64().unwrap(),
        accepted["offset"].as_i64().unwrap(),
    );
    assert_eq!(record.value, body, "the body reaches Kafka byte for byte");
    assert_eq!(record.key, None, "no key source: no key");
    assert_eq!(
        record.header("osmosis-request-id"),
        Some(id_header.as_str())
    );
    assert_eq!(record.header("osmosis-route"), Some("orders"));
    assert_eq!(record.header("osmosis-method"), Some("POST"));
    assert_eq!(record.header("osmosis-path"), Some("/orders"));
    assert_eq!(record.header("osmosis-query"), Some("dry_run=1&x=%20y"));
    assert_eq!(
        record.header("osmosis-content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(record.header("x-tenant"), Some("acme"));
    let trace = record.header("traceparent").unwrap();
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && trace.ends_with("-01"),
        "the client's trace continues: {trace}"
    );
    assert_ne!(trace, traceparent, "the gateway's hop has its own span id");
    let names: HashSet<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
    let expected: HashSet<&str> = [
        "osmosis-request-id",
        "osmosis-route",
        "osmosis-method",
        "osmosis-path",
        "osmosis-query",
        "osmosis-content-type",
        "traceparent",
        "x-tenant",
    ]
    .into();
    assert_eq!(names, expected, "exactly the contract headers");
    assert_eq!(record.headers.len(), expected.len(), "no header twice");
}

/// Without a client trace the gateway starts one; without a body type or a
/// query string those headers are absent rather than empty.
#[tokio::test]
async fn a_bare_request_gets_a_fresh_trace_and_no_empty_headers() {
    let topic = kafka::create_topic("ingest.bare", 1).await;
    let gateway = Gateway::start(&config(
        kafka::bootstrap(),
        &[&topic],
        &format!("  - {{ method: PUT, path: /bare, channel: {topic} }}\n"),
    ));
    let response = client().put(gateway.url("/bare")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let record = &kafka::read_records(&topic, 1, READ_TIMEOUT)[0];
    assert!(record.value.is_empty());
    assert_eq!(record.header("osmosis-route"), Some("PUT /bare"));
    assert_eq!(record.header("osmosis-query"), None);
    assert_eq!(record.header("osmosis-content-type"), None);
    let trace = record.header("traceparent").unwrap();
    assert_eq!(trace.len(), 55, "a valid W3C traceparent: {trace}");
    assert!(trace.starts_with("00-"));
}

/// Routing keys from a path parameter, a header and a JSON pointer become the
/// record key, and records with one key share one partition.
#[tokio::test]
async fn routing_keys_become_record_keys_and_pin_a_partition() {
    let topic = kafka::create_topic("ingest.keys", 6).await;
    let routes = format!(
        "  - {{ method: POST, path: \"/devices/{{device}}/events\", channel: {topic}, key: {{ path: device }} }}\n\
         \x20 - {{ method: POST, path: /by-header, channel: {topic}, key: {{ header: X-Customer }} }}\n\
         \x20 - {{ method: POST, path: /by-json, channel: {topic}, key: {{ json: /customer/id }} }}\n"
    );
    let gateway = Gateway::start(&config(kafka::bootstrap(), &[&topic], &routes));
    let http = client();
    let mut sent = 0;
    let mut partitions_by_key: HashMap<String, HashSet<i64>> = HashMap::new();
    for round in 0..8 {
        for key in ["alpha", "beta", "gamma"] {
            let requests = [
                http.post(gateway.url(&format!("/devices/{key}/events")))
                    .body(format!("path {round}")),
                http.post(gateway.url("/by-header"))
                    .header("x-customer", key)
                    .body(format!("header {round}")),
                http.post(gateway.url("/by-json"))
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"customer":{{"id":"{key}"}},"round":{round}}}"#
                    )),
            ];
            for request in requests {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let accepted = json(response).await;
                partitions_by_key
                    .entry(key.to_owned())
                    .or_default()
                    .insert(accepted["partition"].as_i64().unwrap());
                sent += 1;
            }
        }
    }
    for (key, partitions) in &partitions_by_key {
        assert_eq!(partitions.len(), 1, "key {key} spread over {partitions:?}");
    }
    let records = kafka::read_records(&topic, sent, READ_TIMEOUT);
    for record in &records {
        let key = String::from_utf8(record.key.clone().expect("every record has a key")).unwrap();
        let expected = partitions_by_key[&key].iter().next().copied().unwrap();
        assert_eq!(i64::from(record.partition), expected);
    }
}

/// A non-string JSON key is keyed by its JSON text.
#[tokio::test]
async fn a_numeric_json_key_is_its_json_text() {
    let topic = kafka::create_topic("ingest.numkey", 1).await;
    let gateway = Gateway::start(&config(
        kafka::bootstrap(),
        &[&topic],
        &format!("  - {{ method: POST, path: /n, channel: {topic}, key: {{ json: /id }} }}\n"),
    ));
    let response = client()
        .post(gateway.url("/n"))
        .body(r#"{"id": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let record = &kafka::read_records(&topic, 1, READ_TIMEOUT)[0];
    assert_eq!(record.key.as_deref(), Some(&b"42"[..]));
}

/// Every client error is problem+json with the right status, nothing
/// reaches Kafka, and the gateway keeps serving.
#[tokio::test]
async fn bad_requests_get_problem_json_and_nothing_is_written() {
    let topic = kafka::create_topic("ingest.errors", 1).await;
    let routes = format!(
        "  - {{ method: POST, path: /small, channel: {topic}, max_body_bytes: 16 }}\n\
         \x20 - {{ method: POST, path: /json, channel: {topic}, key: {{ json: /id }} }}\n\
         \x20 - {{ method: POST, path: /hdr, channel: {topic}, key: {{ header: x-key }} }}\n"
    );
    let gateway = Gateway::start(&config(kafka::bootstrap(), &[&topic], &routes));
    let http = client();

    let body = problem(
        http.get(gateway.url("/nowhere")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("/nowhere"));

    let response = http.delete(gateway.url("/small")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;

    // Declared too large: refused from Content-Length alone.
    problem(
        http.post(gateway.url("/small"))
            .body(vec![b'x'; 17])
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // Chunked, no length: cut off while streaming.
    let chunks =
        futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(bytes_of(b"0123456789"))));
    problem(
        http.post(gateway.url("/small"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;

    let body = problem(
        http.post(gateway.url("/json"))
            .body("{not json")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("JSON"));
    problem(
        http.post(gateway.url("/json"))
            .body(r#"{"other": 1}"#)
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        http.post(gateway.url("/hdr"))
            .body("x")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Still serving, and only this record reached the channel.
    let response = http
        .post(gateway.url("/small"))
        .body("exactly 16 bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(kafka::high_watermarks(kafka::bootstrap(), &topic)[&0], 1);
}

fn bytes_of(data: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(data)
}

/// 1,000 concurrent publishes: 1,000 records, each position reported once,
/// each holding the body whose 202 reported it.
#[tokio::test]
async fn a_thousand_concurrent_publishes_lose_nothing() {
    const N: usize = 1000;
    let topic = kafka::create_topic("ingest.concurrent", 4).await;
    let gateway = Gateway::start(&config(
        kafka::bootstrap(),
        &[&topic],
        &format!("  - {{ method: POST, path: /load, channel: {topic} }}\n"),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(N)
        .build()
        .unwrap();
    let url = gateway.url("/load");
    let requests = (0..N).map(|i| {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let body = format!("message {i}");
            let response = http.post(&url).body(body.clone()).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let accepted: Value = response.json().await.unwrap();
            (
                body,
                accepted["partition"].as_i64().unwrap(),
                accepted["offset"].as_i64().unwrap(),
            )
        })
    });
    let results = futures::future::try_join_all(requests).await.unwrap();
    let positions: HashSet<(i64, i64)> = results.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(positions.len(), N, "every offset reported exactly once");

    let records = kafka::read_records(&topic, N, READ_TIMEOUT);
    let in_kafka: HashMap<(i64, i64), &[u8]> = records
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r.value.as_slice()))
        .collect();
    assert_eq!(in_kafka.len(), N);
    for (body, partition, offset) in &results {
        assert_eq!(in_kafka[&(*partition, *offset)], body.as_bytes());
    }
    let total: i64 = kafka::high_watermarks(kafka::bootstrap(), &topic)
        .values()
        .sum();
    assert_eq!(total, N as i64, "no extra records (no duplicates)");
}

/// A gateway whose channel topic does not exist refuses to start and says so.
#[tokio::test]
async fn a_missing_channel_topic_stops_start_up_with_a_clear_message() {
    let topic = kafka::unique_name("ingest.missing");
    let mut service = Service::start(
        "osmosis-gateway",
        &config(
            kafka::bootstrap(),
            &[&topic],
            &format!("  - {{ method: POST, path: /x, channel: {topic} }}\n"),
        ),
        &[],
        &[],
    );
    let status = service.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = service.log_text();
    assert!(
        log.contains(&format!("channel topic \"{topic}\" does not exist"))
            && log.contains("--create-topics"),
        "{log}"
    );
}

/// `--create-topics` creates missing channel topics with their partitions.
#[tokio::test]
async fn create_topics_creates_the_channels_with_their_partitions() {
    let topic = kafka::unique_name("ingest.created");
    let yaml = format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\nchannels:\n  {topic}: {{ partitions: 5 }}\nroutes:\n  - {{ method: POST, path: /c, channel: {topic} }}\n",
        kafka::bootstrap()
    );
    let gateway = Gateway::start_with(&yaml, &["--create-topics"]);
    assert_eq!(kafka::partition_count(kafka::bootstrap(), &topic), 5);
    let response = client()
        .post(gateway.url("/c"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// `--create-topics` gives a channel the `min.insync.replicas` it is
/// configured with, as a topic setting of its own (not the broker's default).
#[tokio::test]
async fn create_topics_sets_the_channels_min_insync_replicas() {
    let topic = kafka::unique_name("ingest.durable");
    let yaml = format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\nchannels:\n  {topic}: {{ partitions: 1, replication_factor: 1, min_insync_replicas: 1 }}\nroutes:\n  - {{ method: POST, path: /d, channel: {topic} }}\n",
        kafka::bootstrap()
    );
    let _gateway = Gateway::start_with(&yaml, &["--create-topics"]);
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .unwrap();
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let min = resource.get("min.insync.replicas").unwrap();
    assert_eq!(min.value.as_deref(), Some("1"));
    assert_eq!(
        min.source,
        ConfigSource::DynamicTopic,
        "set on the topic itself"
    );
}

/// An existing channel weaker than its configuration (fewer replicas, fewer
/// in-sync replicas required) is a warning at start-up that names both
/// numbers; the gateway still serves.
#[tokio::test]
async fn a_channel_weaker_than_configured_is_a_warning_not_a_refusal() {
    let topic = kafka::create_topic("ingest.weak", 1).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\nchannels:\n  {topic}: {{ partitions: 1, replication_factor: 3, min_insync_replicas: 2 }}\nroutes:\n  - {{ method: POST, path: /w, channel: {topic} }}\n",
        kafka::bootstrap()
    );
    let gateway = Gateway::start(&yaml);
    let replicas = gateway.service.wait_for_log(
        "the topic has fewer replicas than configured: an acknowledged write survives fewer broker losses",
        Duration::from_secs(10),
    );
    assert_eq!(
        (
            replicas["replicas"].as_i64(),
            replicas["configured"].as_i64()
        ),
        (Some(1), Some(3))
    );
    let in_sync = gateway.service.wait_for_log(
        "the topic acknowledges writes with fewer in-sync replicas than configured",
        Duration::from_secs(10),
    );
    assert_eq!(in_sync["configured"].as_i64(), Some(2));
    let response = client()
        .post(gateway.url("/w"))
        .body("still served")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// SIGTERM while a request is in flight: the request still gets its 202, new
/// connections are refused, the process exits 0 and the record is in Kafka.
#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let topic = kafka::create_topic("ingest.shutdown", 1).await;
    let mut gateway = Gateway::start(&config(
        kafka::bootstrap(),
        &[&topic],
        &format!("  - {{ method: POST, path: /slow, channel: {topic} }}\n"),
    ));
    let (body_tx, body_rx) =
        futures::channel::mpsc::unbounded::<Result<bytes::Bytes, std::io::Error>>();
    body_tx
        .unbounded_send(Ok(bytes_of(b"first half, ")))
        .unwrap();
    let in_flight = tokio::spawn(
        client()
            .post(gateway.url("/slow"))
            .body(reqwest::Body::wrap_stream(body_rx))
            .send(),
    );
    // The request is in flight once the gateway counts it.
    let metrics_url = gateway.url("/metrics");
    osmosis_e2e::eventually(
        Duration::from_secs(10),
        "the request to be in flight",
        || {
            let url = metrics_url.clone();
            async move {
                let text = client().get(&url).send().await.ok()?.text().await.ok()?;
                // This scrape is itself in flight, so two means the upload is too.
                text.lines()
                    .any(|l| l == "osmosis_gateway_requests_in_flight 2")
                    .then_some(())
            }
        },
    )
    .await;

    gateway.service.signal(Signal::SIGTERM);
    gateway.service.wait_for_log(
        "shutting down: finishing in-flight requests",
        Duration::from_secs(10),
    );
    body_tx
        .unbounded_send(Ok(bytes_of(b"second half")))
        .unwrap();
    drop(body_tx);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let status = gateway.service.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(
        client().get(gateway.url("/healthz")).send().await.is_err(),
        "no longer accepting connections"
    );
    let record = &kafka::read_records(&topic, 1, READ_TIMEOUT)[0];
    assert_eq!(record.value, b"first half, second half");
}

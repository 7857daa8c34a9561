//! Poison messages: records Kafka will never take as they are must not
//! wedge a worker's partition. Each test shrinks one topic's
//! `max.message.bytes` so that a request's dead letter, or its reply, is
//! too large; then it asserts what the client got (exactly one final
//! answer), what Kafka holds (one dead letter, cut down when it had to be)
//! and that the partition moved on (the next request is answered). Also
//! the HTTP bridge's cap on upstream bodies and its refusal of dot
//! segments, through the whole path.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker, binary};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with a request-mode `POST /work` (and `GET /bridge/*`) on
/// `channel`; returns it with its reply topic.
fn gateway_for(channel: &str) -> (Gateway, String) {
    let replies = kafka::unique_name("poison.replies");
    let gateway = Gateway::for_channel(
        channel,
        &replies,
        &[
            "method: POST, path: /work, mode: request, timeout_ms: 60000",
            "method: GET, path: \"/bridge/{*rest}\", mode: request, timeout_ms: 60000",
        ],
    );
    (gateway, replies)
}

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .expect("admin client")
}

/// Creates `topic` (one partition) accepting records of at most `max_bytes`.
async fn create_small_topic(topic: &str, max_bytes: usize) {
    let max = max_bytes.to_string();
    let results = admin()
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &max)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating {topic}: {code}"));
    }
}

/// Lowers an existing topic's `max.message.bytes`.
async fn shrink_topic(topic: &str, max_bytes: usize) {
    let max = max_bytes.to_string();
    let results = admin()
        .alter_configs(
            &[AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &max)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("alter_configs");
    for result in results {
        result.unwrap_or_else(|(resource, code)| panic!("altering {resource:?}: {code}"));
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// A failing request whose dead letter exceeds the dead-letter topic's
/// limit: the letter is cut down (1 KiB of body kept, `osmosis-truncated`
/// giving the original size) instead of being retried forever; the client
/// gets exactly one final answer (the error reply), and the next request
/// on the same partition is processed.
#[tokio::test]
async fn a_dead_letter_too_large_for_its_topic_is_cut_down_and_the_partition_moves_on() {
    let channel = kafka::create_topic("poison.dlq", 1).await;
    let dlq = format!("{channel}.dlq");
    create_small_topic(&dlq, 4096).await;
    let (gateway, replies) = gateway_for(&channel);
    let slow = binary("examples/slow");
    let worker = Worker::start(
        slow.to_str().unwrap(),
        kafka::bootstrap(),
        &channel,
        &["--work-ms", "0", "--fail", "--max-retries", "0"],
    );
    worker.wait_assigned();

    let big = "x".repeat(16 * 1024);
    let http = client();
    for body in [big.as_str(), "small"] {
        let response = http
            .post(gateway.url("/work"))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains("told to fail"),
            "{problem}"
        );
    }

    let letters = kafka::read_records(&dlq, 2, Duration::from_secs(30));
    let (cut, whole) = (&letters[0], &letters[1]);
    assert_eq!(cut.value.len(), 1024, "the body's first KiB is kept");
    assert_eq!(cut.header("osmosis-truncated"), Some("16384"));
    assert!(cut.header("osmosis-request-id").is_some(), "headers kept");
    assert_eq!(whole.value, b"small");
    assert_eq!(whole.header("osmosis-truncated"), None);
    // Exactly one final reply per request, and exactly two letters.
    let finals = kafka::final_replies(kafka::bootstrap(), &replies);
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert!(finals.values().all(|count| *count == 1), "{finals:?}");
    let letters: i64 = kafka::high_watermarks(kafka::bootstrap(), &dlq)
        .values()
        .sum();
    assert_eq!(letters, 2);
    worker
        .wait_metric(
            "osmosis_worker_records_refused_total{record=\"dead_letter\",reason=\"too_large\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    worker
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"dead_lettered\"}",
            2.0,
            Duration::from_secs(10),
        )
        .await;
}

/// A reply larger than the reply topic takes: the client gets one 502
/// problem reply naming the size instead (never a wait forever), the
/// request goes to the dead-letter topic, and the next request is
/// answered normally.
#[tokio::test]
async fn a_reply_too_large_for_the_reply_topic_becomes_a_problem_reply_and_a_dead_letter() {
    let channel = kafka::create_topic("poison.reply", 1).await;
    let (gateway, replies) = gateway_for(&channel);
    shrink_topic(&replies, 4096).await;
    let slow = binary("examples/slow");
    let worker = Worker::start(
        slow.to_str().unwrap(),
        kafka::bootstrap(),
        &channel,
        &["--work-ms", "0", "--echo"],
    );
    worker.wait_assigned();

    let http = client();
    let big = "y".repeat(16 * 1024);
    let response = http
        .post(gateway.url("/work"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("16384 bytes"), "{detail}");
    assert!(detail.contains("too_large"), "{detail}");

    let response = http
        .post(gateway.url("/work"))
        .body("next")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "next");

    let dead = &kafka::read_records(&format!("{channel}.dlq"), 1, Duration::from_secs(30))[0];
    assert_eq!(dead.value, big.as_bytes());
    assert!(
        dead.header("osmosis-error")
            .unwrap()
            .contains("could not be delivered"),
        "{:?}",
        dead.header("osmosis-error")
    );
    worker
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"undeliverable\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    worker
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"replied\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
}

/// An upstream answering more than `--max-response-bytes`: 502 with a
/// detail naming the limit, and the bridge's next request works. A client
/// path with encoded dot segments never reaches the upstream.
#[tokio::test]
async fn the_http_bridge_caps_upstream_bodies_and_refuses_dot_segments() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/bridge/huge", get(|| async { "z".repeat(64 * 1024) }))
        .route("/api/bridge/small", get(|| async { "fine" }))
        .fallback(|uri: axum::http::Uri| async move { format!("reached {uri}") });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let channel = kafka::create_topic("poison.bridge", 1).await;
    let (gateway, _) = gateway_for(&channel);
    let worker = Worker::start(
        "osmosis-http-worker",
        kafka::bootstrap(),
        &channel,
        &[
            "--upstream",
            &format!("http://{upstream}/api"),
            "--max-response-bytes",
            "4096",
        ],
    );
    worker.wait_assigned();

    let http = client();
    let response = http.get(gateway.url("/bridge/huge")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("limit of 4096 bytes"), "{detail}");

    let response = http.get(gateway.url("/bridge/small")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "fine");

    // reqwest would resolve the dot segments itself: write the request raw.
    let (status, body) = raw_get(gateway.addr, "/bridge/%2e%2e/%2E%2e/secret").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("dot segments"), "{body}");
    assert!(!body.contains("reached"), "{body}");
}

/// `GET path` over a plain TCP connection, the path sent as written;
/// returns the status and the body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("a response within 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, text)
}

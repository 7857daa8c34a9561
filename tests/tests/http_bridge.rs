//! The HTTP bridge worker against a small upstream server started here:
//! method, path, query, headers and body go through; status, headers and
//! body come back; an upstream that is down is retried, then dead-lettered.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode as AxumStatus, Uri};
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
use reqwest::StatusCode;
use serde_json::{Value, json};

const BRIDGE: &str = "osmosis-http-worker";

/// Answers 201 with what it received as JSON, and an `x-upstream` header.
async fn upstream() -> std::net::SocketAddr {
    async fn mirror(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> impl axum::response::IntoResponse {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let seen = json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "tenant": header("x-tenant"),
            "content_type": header("content-type"),
            "request_id": header("osmosis-request-id"),
            "traceparent": header("traceparent"),
            "body": String::from_utf8_lossy(&body),
        });
        (
            AxumStatus::CREATED,
            [("x-upstream", "yes"), ("content-type", "application/json")],
            seen.to_string(),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().fallback(mirror))
            .await
            .unwrap();
    });
    addr
}

async fn gateway_for(channel: &str) -> Gateway {
    let replies = kafka::unique_name("bridge.replies");
    Gateway::start_with(
        &format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{}\" }}\n\
             channels: {{ {channel}: {{}} }}\n\
             replies: {{ topic: {replies} }}\n\
             routes:\n  - {{ method: PUT, path: \"/bridge/{{*rest}}\", channel: {channel}, mode: request, timeout_ms: 30000, forward_headers: [x-tenant] }}\n",
            kafka::bootstrap()
        ),
        &["--create-topics"],
    )
}

/// Everything the client sent reaches the upstream, and the upstream's
/// status, headers and body reach the client.
#[tokio::test]
async fn the_bridge_passes_requests_and_responses_through() {
    let upstream = upstream().await;
    let channel = kafka::create_topic("bridge.ok", 1).await;
    let gateway = gateway_for(&channel).await;
    let worker = Worker::start(
        BRIDGE,
        kafka::bootstrap(),
        &channel,
        &["--upstream", &format!("http://{upstream}/api")],
    );
    worker.wait_assigned();
    let response = reqwest::Client::new()
        .put(gateway.url("/bridge/items/7?color=blue"))
        .header("x-tenant", "acme")
        .header("content-type", "text/plain")
        .body("a body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.headers()["content-type"], "application/json");
    let id = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/api/bridge/items/7");
    assert_eq!(seen["query"], "color=blue");
    assert_eq!(seen["tenant"], "acme");
    assert_eq!(seen["content_type"], "text/plain");
    assert_eq!(seen["request_id"], id.as_str());
    assert!(
        seen["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-"))
    );
    assert_eq!(seen["body"], "a body");
}

/// An upstream that is down: retried, then dead-lettered, and the client
/// gets a 502 problem.
#[tokio::test]
async fn an_unreachable_upstream_is_retried_then_dead_lettered() {
    let channel = kafka::create_topic("bridge.down", 1).await;
    let gateway = gateway_for(&channel).await;
    let closed = kafka::free_port();
    let worker = Worker::start(
        BRIDGE,
        kafka::bootstrap(),
        &channel,
        &[
            "--upstream",
            &format!("http://127.0.0.1:{closed}"),
            "--max-retries",
            "2",
            "--retry-backoff-ms",
            "50",
        ],
    );
    worker.wait_assigned();
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .put(gateway.url("/bridge/x"))
        .body("lost upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("unreachable"));
    let dead = &kafka::read_records(&format!("{channel}.dlq"), 1, Duration::from_secs(30))[0];
    assert_eq!(dead.value, b"lost upstream");
    assert_eq!(dead.header("osmosis-attempts"), Some("3"));
    worker
        .wait_metric("osmosis_worker_retries_total", 2.0, Duration::from_secs(10))
        .await;
}

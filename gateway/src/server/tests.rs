//! The HTTP layer against an in-memory writer: route matching, keys and
//! every error status, without a broker.

use std::sync::Mutex;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::Request;
use tower::ServiceExt;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use osmosis_protocol::RequestEnvelope;

use super::app;
use super::state::AppState;
use crate::config::{Config, SseConfig};
use crate::writer::{OutboundRecord, RecordWriter, Stored, Unreachable, WriteError};

/// Remembers what it was asked to write, or fails every write.
#[derive(Default)]
struct MemoryWriter {
    written: Mutex<Vec<OutboundRecord>>,
    fail_with: Option<fn() -> WriteError>,
}

impl RecordWriter for MemoryWriter {
    fn write(&self, record: OutboundRecord) -> BoxFuture<'static, Result<Stored, WriteError>> {
        let outcome = match self.fail_with {
            Some(error) => Err(error()),
            None => {
                let mut written = self.written.lock().unwrap();
                written.push(record);
                Ok(Stored {
                    partition: 0,
                    offset: written.len() as i64 - 1,
                })
            }
        };
        async move { outcome }.boxed()
    }

    fn queue_depth(&self) -> u64 {
        0
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), Unreachable>> {
        async { Ok(()) }.boxed()
    }
}

const CONFIG: &str = r#"
kafka: { brokers: "127.0.0.1:9092" }
channels: { orders: {}, audit: {} }
routes:
  - { name: create, method: POST, path: "/orders/{id}", channel: orders, key: { path: id }, max_body_bytes: 8 }
  - { name: replace, method: PUT, path: "/orders/{id}", channel: audit }
  - { method: POST, path: "/files/{*rest}", channel: audit, key: { path: rest } }
  - { method: POST, path: /by-header, channel: audit, key: { header: X-Key } }
"#;

fn setup(writer: MemoryWriter) -> (Router, Arc<MemoryWriter>, AppState) {
    let writer = Arc::new(writer);
    let state = AppState::new(
        writer.clone(),
        Arc::default(),
        Duration::from_secs(3),
        &SseConfig::default(),
    );
    let config = Config::from_yaml(CONFIG).unwrap();
    (app(&config, state.clone()), writer, state)
}

fn envelope(record: &OutboundRecord) -> RequestEnvelope {
    RequestEnvelope::from_headers(record.header_pairs()).unwrap()
}

fn post(uri: &str, body: &'static str) -> Request<Body> {
    Request::post(uri).body(Body::from(body)).unwrap()
}

async fn problem_status(response: Response) -> u16 {
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    problem["status"].as_u64().unwrap() as u16
}

#[tokio::test]
async fn method_and_path_pick_the_route_and_its_channel() {
    let (app, writer, _) = setup(MemoryWriter::default());
    let response = app.clone().oneshot(post("/orders/7", "new")).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = app
        .oneshot(
            Request::put("/orders/7")
                .body(Body::from("replaced"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let written = writer.written.lock().unwrap();
    assert_eq!(&*written[0].topic, "orders");
    assert_eq!(envelope(&written[0]).route, "create");
    assert_eq!(written[0].key.as_deref(), Some(&b"7"[..]));
    assert_eq!(&*written[1].topic, "audit");
    assert_eq!(envelope(&written[1]).route, "replace");
    assert_eq!(written[1].key, None);
}

#[tokio::test]
async fn path_parameters_are_percent_decoded_and_wildcards_take_the_rest() {
    let (app, writer, _) = setup(MemoryWriter::default());
    let response = app.oneshot(post("/files/a/b%20c", "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let written = writer.written.lock().unwrap();
    assert_eq!(written[0].key.as_deref(), Some(&b"a/b c"[..]));
    assert_eq!(envelope(&written[0]).path, "/files/a/b%20c");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let (app, _, _) = setup(MemoryWriter::default());
    let response = app.clone().oneshot(post("/orders", "x")).await.unwrap();
    assert_eq!(problem_status(response).await, 404);
    let response = app
        .clone()
        .oneshot(post("/orders/1/extra", "x"))
        .await
        .unwrap();
    assert_eq!(problem_status(response).await, 404);
    let response = app
        .oneshot(Request::delete("/orders/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem_status(response).await, 405);
}

#[tokio::test]
async fn a_body_over_the_route_limit_is_413_and_not_written() {
    let (app, writer, _) = setup(MemoryWriter::default());
    let response = app.oneshot(post("/orders/1", "123456789")).await.unwrap();
    assert_eq!(problem_status(response).await, 413);
    assert!(writer.written.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_missing_key_header_is_400() {
    let (app, _, _) = setup(MemoryWriter::default());
    let response = app.oneshot(post("/by-header", "x")).await.unwrap();
    assert_eq!(problem_status(response).await, 400);
}

#[tokio::test]
async fn a_full_producer_queue_is_503_with_retry_after() {
    let (app, _, _) = setup(MemoryWriter {
        fail_with: Some(|| WriteError::QueueFull),
        ..MemoryWriter::default()
    });
    let response = app.oneshot(post("/orders/1", "x")).await.unwrap();
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    assert_eq!(problem_status(response).await, 503);
}

#[tokio::test]
async fn requests_during_shutdown_are_503_and_not_written() {
    let (app, writer, state) = setup(MemoryWriter::default());
    state.shutdown.cancel();
    let response = app.clone().oneshot(post("/orders/1", "x")).await.unwrap();
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(problem_status(response).await, 503);
    let response = app
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(writer.written.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_record_over_the_brokers_limit_is_413_naming_kafka_not_the_route() {
    let (app, _, _) = setup(MemoryWriter {
        fail_with: Some(|| WriteError::TooLarge),
        ..MemoryWriter::default()
    });
    let response = app.oneshot(post("/orders/1", "small")).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        !response.headers().contains_key(header::CONNECTION),
        "the body was read whole"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("Kafka") && !detail.contains("8 bytes"),
        "{detail}"
    );
}

#[tokio::test]
async fn malformed_paths_and_query_strings_are_problem_json() {
    let (app, _, _) = setup(MemoryWriter::default());
    let get = |uri: &'static str| Request::get(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(get("/v1/requests/%FF")).await.unwrap();
    assert_eq!(problem_status(response).await, 400);
    let response = app
        .oneshot(get("/v1/channels/orders?from=earliest&from=latest"))
        .await
        .unwrap();
    assert_eq!(problem_status(response).await, 400);
}

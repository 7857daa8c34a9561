//! Kafka outages: a broker that goes away mid-test makes the gateway answer
//! 503 with Retry-After within a bounded time (never a hung request), and
//! the gateway recovers by itself once the broker is back.

use std::time::{Duration, Instant};

use osmosis_e2e::kafka::{self, DedicatedKafka};
use osmosis_e2e::process::Gateway;
use reqwest::StatusCode;

/// Stop the broker, expect 503s with Retry-After, start it again, expect
/// 202s and the accepted records in Kafka, all without restarting the gateway.
#[tokio::test]
async fn a_stopped_broker_means_503_then_the_gateway_recovers() {
    let broker = DedicatedKafka::start();
    let topic = kafka::create_topic_on(&broker.bootstrap(), "outage", 1).await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{}\", produce_timeout_ms: 2000, metadata_timeout_ms: 1000 }}\n\
         channels: {{ {topic}: {{ partitions: 1 }} }}\n\
         routes:\n  - {{ method: POST, path: /in, channel: {topic} }}\n",
        broker.bootstrap()
    ));
    // The client's own deadline is far beyond the produce timeout: if the
    // gateway hung, this test would fail on the deadline, not pass.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |body: &'static str| http.post(gateway.url("/in")).body(body).send();

    assert_eq!(post("before").await.unwrap().status(), StatusCode::ACCEPTED);

    broker.down();
    let started = Instant::now();
    let response = post("during").await.expect("an answer, not a hang");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    eprintln!("503 after {:?}", started.elapsed());
    let ready = http.get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    let health = http.get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "the process itself is fine"
    );

    broker.up();
    osmosis_e2e::eventually(
        Duration::from_secs(60),
        "a 202 after the broker restart",
        || async {
            let response = post("after").await.ok()?;
            (response.status() == StatusCode::ACCEPTED).then_some(())
        },
    )
    .await;
    let ready = http.get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Everything that got a 202 is in Kafka; what got a 503 may or may not be
    // (the client was told to retry), but "before" and "after" must be.
    let watermark = kafka::high_watermarks(&broker.bootstrap(), &topic)[&0] as usize;
    let records = kafka::read_records_from(
        &broker.bootstrap(),
        &topic,
        watermark,
        Duration::from_secs(30),
    );
    let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values.first(), Some(&&b"before"[..]));
    assert_eq!(values.last(), Some(&&b"after"[..]));
}

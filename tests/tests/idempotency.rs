//! `Idempotency-Key` across gateway instances, against the real broker:
//! a retry is written once and answered alike wherever it lands, another
//! body with the same key is 422, concurrent duplicates are 409 or the
//! same answer, and a claim left open (a 503 whose write may have landed,
//! a gateway that died mid-write) is settled from the channel itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use osmosis_protocol::RequestId;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

fn config(channel: &str, index: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{}\", produce_timeout_ms: 2000 }}\n\
         channels: {{ {channel}: {{ partitions: 1 }} }}\n\
         idempotency: {{ topic: {index}, window_secs: 3600 }}\n\
         routes:\n  - {{ name: in, method: POST, path: /in, channel: {channel} }}\n",
        kafka::bootstrap()
    )
}

async fn post(
    http: &reqwest::Client,
    gateway: &Gateway,
    key: &str,
    body: &'static str,
) -> reqwest::Response {
    http.post(gateway.url("/in"))
        .header("idempotency-key", format!("\"{key}\""))
        .body(body)
        .send()
        .await
        .expect("an answer")
}

/// Two instances share one index: the retry on the other instance gets
/// the first answer byte for byte, and Kafka holds one record per key.
#[tokio::test]
async fn a_retried_publish_is_written_once_and_answered_alike_on_any_instance() {
    let channel = kafka::create_topic("idem.channel", 1).await;
    let index = kafka::create_topic("idem.index", 1).await;
    let a = Gateway::start(&config(&channel, &index));
    let b = Gateway::start(&config(&channel, &index));
    let http = reqwest::Client::new();

    let first = post(&http, &a, "order-1", "one").await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first_id = first.headers()["osmosis-request-id"].clone();
    let first_body = first.text().await.unwrap();
    let retry = post(&http, &b, "order-1", "one").await;
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers()["osmosis-request-id"], first_id);
    assert_eq!(retry.text().await.unwrap(), first_body);

    let other_body = post(&http, &b, "order-1", "two").await;
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other_body.headers()["content-type"],
        "application/problem+json"
    );

    // Concurrent duplicates on both instances: each gets the one answer
    // or 409, never a second record.
    let calls = (0..16).map(|i| {
        let (http, url) = (http.clone(), [&a, &b][i % 2].url("/in"));
        async move {
            let response = http
                .post(url)
                .header("idempotency-key", "order-2")
                .body("x")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let id = response.headers().get("osmosis-request-id").cloned();
            (status, id)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let ids: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .map(|(_, id)| id.clone().unwrap())
        .collect();
    assert!(!ids.is_empty(), "{answers:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, _)| [StatusCode::ACCEPTED, StatusCode::CONFLICT].contains(status)),
        "{answers:?}"
    );
    // A retry after the race settles gets the answer.
    let late = post(&http, &a, "order-2", "x").await;
    assert_eq!(late.headers()["osmosis-request-id"], ids[0]);

    let watermark = kafka::high_watermarks(kafka::bootstrap(), &channel)[&0];
    assert_eq!(watermark, 2, "one record per key");
    let records = kafka::read_records(&channel, 2, Duration::from_secs(30));
    let keys: Vec<_> = records
        .iter()
        .map(|r| r.header("osmosis-idempotency-key").unwrap())
        .collect();
    assert_eq!(keys, ["order-1", "order-2"]);
    assert_eq!(
        records[0].header("osmosis-request-id").unwrap(),
        first_id.to_str().unwrap()
    );
}

fn length_prefixed_sha256(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What a gateway that died between its claim and its write (or got no
/// acknowledgement) leaves behind: a claim without outcome, and maybe the
/// request. The next retry reads the channel around the claim's time: a
/// request that landed is answered, one that did not is written now.
#[tokio::test]
async fn a_claim_left_open_is_settled_from_the_channel() {
    let channel = kafka::create_topic("idem.settle", 1).await;
    let index = kafka::create_topic("idem.settle.index", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .unwrap();
    let claimed_at = now_ms() - 60_000;
    let print = length_prefixed_sha256(&[b"POST", b"/in", b"body"]);
    let (landed, lost) = (RequestId::new(None), RequestId::new(None));
    for (key, attempt) in [("landed", landed), ("lost", lost)] {
        let scope = length_prefixed_sha256(&[b"in", b"", key.as_bytes()]);
        let claim = serde_json::json!({
            "kind": "claim", "attempt": attempt.to_string(),
            "fingerprint": print, "at_ms": claimed_at,
        })
        .to_string();
        producer
            .send(
                FutureRecord::to(&index).key(&scope).payload(&claim),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let id = landed.to_string();
    producer
        .send(
            FutureRecord::<(), _>::to(&channel)
                .payload("body")
                .timestamp(claimed_at + 500)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "osmosis-request-id",
                    value: Some(&id),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let gateway = Gateway::start(&config(&channel, &index));
    let http = reqwest::Client::new();
    let answer = post(&http, &gateway, "landed", "body").await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    assert_eq!(answer.headers()["osmosis-request-id"], id.as_str());
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["offset"], 0, "the record that landed");

    let answer = post(&http, &gateway, "lost", "body").await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let new_id = answer.headers()["osmosis-request-id"].to_str().unwrap();
    assert_ne!(new_id, lost.to_string(), "the lost attempt is written anew");
    let retry = post(&http, &gateway, "lost", "body").await;
    assert_eq!(retry.headers()["osmosis-request-id"], new_id);
    assert_eq!(
        kafka::high_watermarks(kafka::bootstrap(), &channel)[&0],
        2,
        "the landed request once, the lost one once"
    );
}

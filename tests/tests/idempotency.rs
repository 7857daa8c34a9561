//! `Idempotency-Key` across gateway instances, against the real broker:
//! a retry is written once and answered alike wherever it lands, another
//! body with the same key is 422, concurrent duplicates are 409 or the
//! same answer, and a claim left open (a 503 whose write may have landed,
//! a gateway that died mid-write) is settled from the channel itself. In
//! request mode the answer is the first request's reply, from the real
//! echo worker, or the wait for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
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

/// Two gateways sharing a reply topic (one partition each) and an index,
/// in front of one request-mode route.
struct RequestSetup {
    channel: String,
    replies: String,
    index: String,
}

impl RequestSetup {
    async fn new(prefix: &str) -> Self {
        Self {
            channel: kafka::create_topic(&format!("{prefix}.requests"), 1).await,
            replies: kafka::unique_name(&format!("{prefix}.replies")),
            index: kafka::create_topic(&format!("{prefix}.index"), 1).await,
        }
    }

    /// A gateway, once it owns a reply partition.
    async fn gateway(&self) -> Gateway {
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{brokers}\" }}\n\
             channels: {{ {channel}: {{ partitions: 1 }} }}\n\
             replies: {{ topic: {replies}, partitions: 2 }}\n\
             idempotency: {{ topic: {index}, window_secs: 3600 }}\n\
             routes:\n  - {{ name: work, method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 60000, max_wait_ms: 60000 }}\n",
            brokers = kafka::bootstrap(),
            channel = self.channel,
            replies = self.replies,
            index = self.index,
        );
        let gateway = Gateway::start_with(&yaml, &["--create-topics"]);
        gateway.wait_ready().await;
        gateway
    }

    fn echo_worker(&self) -> Worker {
        Worker::start("examples/echo", kafka::bootstrap(), &self.channel, &[])
    }

    /// Request records in the channel.
    fn requests_written(&self) -> i64 {
        kafka::high_watermarks(kafka::bootstrap(), &self.channel)
            .values()
            .sum()
    }
}

/// What a client got: status, headers (but `date`) and body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn request_id(&self) -> &str {
        self.header("osmosis-request-id").expect("a request id")
    }

    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, value)| value.as_str())
    }
}

async fn call(gateway_url: String, key: &str, body: &'static str, prefer: Option<&str>) -> Answer {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let mut request = http
        .post(gateway_url)
        .header("idempotency-key", format!("\"{key}\""))
        .header("content-type", "text/plain")
        .body(body);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A retry after the reply — on the same instance or another — is the
/// first reply byte for byte and writes nothing; another body is 422.
#[tokio::test]
async fn a_retried_request_gets_the_first_reply_on_any_instance_and_is_written_once() {
    let setup = RequestSetup::new("idem.reply").await;
    let (a, b) = (setup.gateway().await, setup.gateway().await);
    let worker = setup.echo_worker();
    worker.wait_assigned();

    let first = call(a.url("/work"), "quote-1", "ping", None).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body, b"ping");
    assert_eq!(first.header("content-type"), Some("text/plain"));
    let on_a = call(a.url("/work"), "quote-1", "ping", None).await;
    assert_eq!(on_a, first);
    let on_b = call(b.url("/work"), "quote-1", "ping", None).await;
    assert_eq!(on_b, first);

    let other = call(b.url("/work"), "quote-1", "pong", None).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{other:?}");
    assert_eq!(
        other.header("content-type"),
        Some("application/problem+json")
    );

    assert_eq!(setup.requests_written(), 1, "one record for the key");
    let record = &kafka::read_records(&setup.channel, 1, Duration::from_secs(30))[0];
    assert_eq!(
        record.header("osmosis-request-id"),
        Some(first.request_id())
    );
    assert_eq!(record.header("osmosis-idempotency-key"), Some("quote-1"));
}

/// With no worker running, a retry waits for the first request's reply as
/// the first call does: a short wait ends in 202 + the first request's
/// `Location`; once a worker starts, the first call and the waiting retries
/// on both instances get the one reply, and the channel holds one record.
#[tokio::test]
async fn a_retry_while_the_first_request_is_pending_waits_for_its_reply() {
    let setup = RequestSetup::new("idem.pending").await;
    let (a, b) = (setup.gateway().await, setup.gateway().await);

    let first = tokio::spawn(call(a.url("/work"), "job-1", "slow", None));
    eventually(
        Duration::from_secs(30),
        "the first request in its channel",
        || async { (setup.requests_written() == 1).then_some(()) },
    )
    .await;
    let id = kafka::read_records(&setup.channel, 1, Duration::from_secs(30))[0]
        .header("osmosis-request-id")
        .unwrap()
        .to_owned();

    // Until the first call's write is recorded, a retry is 409.
    let short = eventually(Duration::from_secs(30), "a retry past 409", || async {
        let answer = call(b.url("/work"), "job-1", "slow", Some("wait=0.2")).await;
        (answer.status != StatusCode::CONFLICT).then_some(answer)
    })
    .await;
    assert_eq!(short.status, StatusCode::ACCEPTED, "{short:?}");
    assert_eq!(short.request_id(), id);
    let location = format!("/v1/requests/{id}");
    assert_eq!(short.header("location"), Some(location.as_str()));
    let pending: serde_json::Value = serde_json::from_slice(&short.body).unwrap();
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["channel"], setup.channel.as_str());

    let on_b = tokio::spawn(call(b.url("/work"), "job-1", "slow", None));
    let on_a = tokio::spawn(call(a.url("/work"), "job-1", "slow", None));
    let _worker = setup.echo_worker();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body, b"slow");
    assert_eq!(first.request_id(), id);
    assert_eq!(on_b.await.unwrap(), first);
    assert_eq!(on_a.await.unwrap(), first);
    assert_eq!(setup.requests_written(), 1, "one record for the key");
    let finals = kafka::final_replies(kafka::bootstrap(), &setup.replies);
    assert_eq!(finals.get(&id), Some(&1), "one reply: {finals:?}");
}

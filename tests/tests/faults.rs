//! The fault matrix, gateway side: a broker frozen (SIGSTOP) and then let
//! go, under publish load and a live subscription. The invariant: every
//! request acknowledged with 202 is in Kafka exactly once (and nothing
//! else is doubled), the subscriber neither misses nor repeats a record
//! across its resumes, and `/healthz` and `/readyz` answer within 1 s
//! throughout.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use osmosis_e2e::kafka::{self, DedicatedKafka};
use osmosis_e2e::process::Gateway;
use reqwest::StatusCode;

/// Probes `/healthz` and `/readyz` every 100 ms until `stop`; returns the
/// slowest answer and the probes that got none within 1 s.
async fn probe(gateway_url: String, stop: Arc<AtomicBool>) -> (Duration, Vec<String>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut slowest, mut failures) = (Duration::ZERO, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        for path in ["/healthz", "/readyz"] {
            let started = Instant::now();
            match http.get(format!("{gateway_url}{path}")).send().await {
                Ok(_) => slowest = slowest.max(started.elapsed()),
                Err(error) => failures.push(format!("{path}: {error}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (slowest, failures)
}

/// Follows the channel from its current end, resuming with Last-Event-ID
/// whenever the stream ends, until `stop`; every record delivered, in
/// order, as (partition, offset).
/// `subscribed` is set once the first stream's `subscribed` event arrived:
/// from then on the stream has its start positions.
async fn subscribe(
    url: String,
    stop: Arc<AtomicBool>,
    subscribed: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(i64, i64)>>>,
) {
    let http = reqwest::Client::new();
    let mut last_id: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut request = http.get(&url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let Ok(response) = request.send().await else {
            continue;
        };
        if response.status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut events = response.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Ok(_) => break,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => continue,
            };
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            if event.event == "subscribed" {
                subscribed.store(true, Ordering::Relaxed);
            }
            if event.event == "record" {
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                let at = (
                    data["partition"].as_i64().unwrap(),
                    data["offset"].as_i64().unwrap(),
                );
                seen.lock().unwrap().push(at);
            }
        }
    }
}

#[tokio::test]
async fn a_frozen_broker_loses_and_doubles_nothing_and_probes_keep_answering() {
    let broker = DedicatedKafka::start();
    let topic = kafka::create_topic_on(&broker.bootstrap(), "fault.pause", 2).await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{}\", produce_timeout_ms: 3000, metadata_timeout_ms: 500 }}\n\
         channels: {{ {topic}: {{ partitions: 2, subscribable: true }} }}\n\
         sse: {{ keep_alive_ms: 500 }}\n\
         routes:\n  - {{ method: POST, path: /in, channel: {topic} }}\n",
        broker.bootstrap()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe(gateway.url(""), Arc::clone(&stop)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscribed = Arc::new(AtomicBool::new(false));
    let subscriber = tokio::spawn(subscribe(
        gateway.url(&format!("/v1/channels/{topic}?format=json")),
        Arc::clone(&stop),
        Arc::clone(&subscribed),
        Arc::clone(&seen),
    ));
    // The subscription is live before the first record: its `subscribed`
    // event comes once its start positions are fixed (the stream's count
    // goes up before that, so it is no sign).
    osmosis_e2e::eventually(Duration::from_secs(10), "the subscription", || {
        let subscribed = subscribed.load(Ordering::Relaxed);
        async move { subscribed.then_some(()) }
    })
    .await;

    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (url, publishing) = (gateway.url("/in"), Arc::clone(&publishing));
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap();
            let mut answers = Vec::new();
            let mut i = 0;
            while publishing.load(Ordering::Relaxed) {
                let answer = http.post(&url).body(format!("p{i}")).send().await;
                let outcome = answer.map(|response| {
                    let id = response
                        .headers()
                        .get("osmosis-request-id")
                        .map(|v| v.to_str().unwrap().to_owned());
                    (response.status(), id)
                });
                answers.push(outcome);
                i += 1;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.resume();
    tokio::time::sleep(Duration::from_secs(5)).await;
    publishing.store(false, Ordering::Relaxed);
    let answers = publisher.await.unwrap();

    let acknowledged: Vec<String> = answers
        .iter()
        .filter_map(|answer| match answer {
            Ok((StatusCode::ACCEPTED, Some(id))) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok((StatusCode::SERVICE_UNAVAILABLE, _))))
        .count();
    eprintln!(
        "{} calls: {} acknowledged, {refused} 503",
        answers.len(),
        acknowledged.len()
    );
    assert!(
        answers.iter().all(|a| matches!(
            a,
            Ok((StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE, _))
        )),
        "every call answered 202 or 503"
    );

    let total: i64 = kafka::high_watermarks(&broker.bootstrap(), &topic)
        .values()
        .sum();
    let records = kafka::read_records_from(
        &broker.bootstrap(),
        &topic,
        total as usize,
        Duration::from_secs(30),
    );
    let mut copies: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *copies
            .entry(record.header("osmosis-request-id").unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(copies.values().all(|n| *n == 1), "a request written twice");
    for id in &acknowledged {
        assert_eq!(
            copies.get(id),
            Some(&1),
            "acknowledged request {id} is in Kafka once"
        );
    }

    // The subscriber gets every record, once, whatever it resumed across.
    let expected: BTreeSet<(i64, i64)> = records
        .iter()
        .map(|r| (i64::from(r.partition), r.offset))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < expected.len() {
        if std::time::Instant::now() > deadline {
            let got: BTreeSet<(i64, i64)> = seen.lock().unwrap().iter().copied().collect();
            let missing: Vec<_> = expected.difference(&got).take(10).collect();
            panic!(
                "the subscriber saw {} of {} records within 30 s; missing (first 10): {missing:?}; last seen: {:?}",
                got.len(),
                expected.len(),
                seen.lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    subscriber.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let unique: BTreeSet<(i64, i64)> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a record delivered twice");
    assert_eq!(unique, expected, "the subscriber missed records");

    let (slowest, failures) = prober.await.unwrap();
    assert!(
        failures.is_empty(),
        "probes without an answer within 1 s: {failures:?}"
    );
    eprintln!("slowest probe {slowest:?}");
}

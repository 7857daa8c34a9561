//! Client load for the fault matrix, and its invariant checked against
//! what the clients got and what Kafka holds: every request acknowledged
//! (a 202, or a 200 carrying its reply) is in its channel exactly once and
//! gets exactly one final answer, its own; a subscriber neither misses nor
//! repeats a record across its resumes; `/healthz` and `/readyz` answer
//! within 1 s throughout.
//!
//! Each load is a task that runs until it is stopped and then hands over
//! what its clients got; a [`Tally`] lets the test wait on the product's
//! own answers (the first 503 of a fault, the first 202s after it) rather
//! than on time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;
use tokio::task::JoinHandle;

use crate::eventually;
use crate::kafka::Record;

/// How long a test waits for a load to reach a count.
const WAIT: Duration = Duration::from_secs(60);

/// Answers a load's clients got so far, by kind.
#[derive(Default)]
pub struct Tally {
    /// 202 or 200: the request is in Kafka.
    acknowledged: AtomicUsize,
    /// 503: Kafka could not take it (the client may retry).
    refused: AtomicUsize,
}

impl Tally {
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn count(&self, status: StatusCode) {
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => &self.acknowledged,
            StatusCode::SERVICE_UNAVAILABLE => &self.refused,
            _ => return,
        }
        .fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until `more` further requests are acknowledged.
    pub async fn wait_acknowledged(&self, more: usize, what: &str) {
        let target = self.acknowledged() + more;
        eventually(WAIT, what, || async {
            (self.acknowledged() >= target).then_some(())
        })
        .await;
    }

    /// Waits for a 503: Kafka is away, as far as the gateway can tell.
    pub async fn wait_refused(&self, what: &str) {
        let target = self.refused() + 1;
        eventually(WAIT, what, || async {
            (self.refused() >= target).then_some(())
        })
        .await;
    }
}

/// A load task and what it shares with the test.
struct Running<T> {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    task: JoinHandle<T>,
}

impl<T: Send + 'static> Running<T> {
    fn spawn<F, Fut>(load: F) -> Self
    where
        F: FnOnce(Arc<AtomicBool>, Arc<Tally>) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (stop, tally) = (Arc::default(), Arc::default());
        let task = tokio::spawn(load(Arc::clone(&stop), Arc::clone(&tally)));
        Self { stop, tally, task }
    }

    async fn stop(self) -> T {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

/// Waits as long as a 503's `Retry-After` asks before the client's next
/// call, as a well-behaved client does: one that called again at once
/// would spin on refusals that take no time (a gateway without a reply
/// partition answers at once).
async fn retry_after(response: &reqwest::Response) {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return;
    }
    let seconds = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a 503 says when to retry");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

fn request_id(response: &reqwest::Response) -> Option<String> {
    let id = response.headers().get("osmosis-request-id")?;
    Some(id.to_str().expect("an ASCII request id").to_owned())
}

/// Probes `/healthz` and `/readyz` every 100 ms, each with a 1 s deadline.
pub struct Probes(Running<(Duration, Vec<String>)>);

impl Probes {
    pub fn start(gateway_url: String) -> Self {
        Self(Running::spawn(|stop, _| async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap();
            let (mut slowest, mut failures) = (Duration::ZERO, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for path in ["/healthz", "/readyz"] {
                    let started = Instant::now();
                    match http.get(format!("{gateway_url}{path}")).send().await {
                        Ok(_) => slowest = slowest.max(started.elapsed()),
                        Err(error) => failures
                            .push(format!("{path} after {:?}: {error:?}", started.elapsed())),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (slowest, failures)
        }))
    }

    /// Stops probing; panics if a probe got no answer within 1 s.
    pub async fn assert_always_answered(self) {
        let (slowest, failures) = self.0.stop().await;
        assert!(
            failures.is_empty(),
            "probes without an answer within 1 s: {failures:?}"
        );
        eprintln!("slowest probe {slowest:?}");
    }
}

/// One client publishing `p0`, `p1`... to a publish route, one call after
/// the other.
pub struct Publisher(Running<Vec<Result<Call, String>>>);

impl Publisher {
    pub fn start(url: String) -> Self {
        Self(Running::spawn(|stop, tally| {
            one_after_the_other(url, "p".into(), stop, tally)
        }))
    }

    pub fn tally(&self) -> &Tally {
        &self.0.tally
    }

    /// Stops publishing; asserts that every call was answered 202 or 503
    /// and returns the ids of the acknowledged ones.
    pub async fn acknowledged(self) -> Vec<String> {
        let mut acknowledged = Vec::new();
        for call in self.0.stop().await {
            let call = call.unwrap_or_else(|error| panic!("a publish got no answer: {error}"));
            match call.status {
                StatusCode::SERVICE_UNAVAILABLE => {}
                StatusCode::ACCEPTED => {
                    acknowledged.push(call.id.expect("a 202 names its request"))
                }
                other => panic!("a publish answered {other}: {call:?}"),
            }
        }
        eprintln!("publish: {} acknowledged", acknowledged.len());
        acknowledged
    }
}

/// One call: the body sent and what came back at once.
#[derive(Debug)]
struct Call {
    sent: String,
    status: StatusCode,
    id: Option<String>,
    /// The body, or for a 202 with a `Location` (a reply to come), where
    /// to poll it.
    body_or_location: String,
}

/// Clients calling a request-mode route of an echoing worker, each one
/// call after the other with its own bodies.
pub struct Callers(Running<Vec<Result<Call, String>>>);

impl Callers {
    pub fn start(url: String, clients: usize) -> Self {
        Self(Running::spawn(move |stop, tally| async move {
            let calls = (0..clients).map(|client| {
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                one_after_the_other(url.clone(), format!("c{client}-"), stop, tally)
            });
            futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect()
        }))
    }

    pub fn tally(&self) -> &Tally {
        &self.0.tally
    }

    /// Stops calling; asserts that every call was answered 200, 202 or
    /// 503, and that each acknowledged request gets exactly one final
    /// answer — at once, or at its `Location` from `gateway_url` — carrying
    /// the body it sent. Returns the acknowledged request ids.
    pub async fn acknowledged(self, gateway_url: &str) -> Vec<String> {
        let calls = self.0.stop().await;
        let http = reqwest::Client::new();
        let mut finals: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let (mut at_once, mut later) = (0, 0);
        for call in calls {
            let call = call.unwrap_or_else(|error| panic!("a call got no answer: {error}"));
            let reply = match call.status {
                StatusCode::SERVICE_UNAVAILABLE => continue,
                StatusCode::OK => {
                    at_once += 1;
                    call.body_or_location.clone()
                }
                StatusCode::ACCEPTED => {
                    later += 1;
                    polled_reply(&http, &format!("{gateway_url}{}", call.body_or_location)).await
                }
                other => panic!("a call answered {other}: {call:?}"),
            };
            let id = call.id.expect("an acknowledged call names its request");
            finals.entry(id).or_default().push((call.sent, reply));
        }
        for (id, answers) in &finals {
            assert_eq!(answers.len(), 1, "request {id} answered twice: {answers:?}");
            let (sent, reply) = &answers[0];
            assert_eq!(reply, sent, "request {id} got another request's reply");
        }
        eprintln!("request: {at_once} replied at once, {later} accepted and polled");
        finals.into_keys().collect()
    }
}

/// One client's calls to `url`, one after the other until `stop`, with
/// the bodies `<prefix>0`, `<prefix>1`...
async fn one_after_the_other(
    url: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<Result<Call, String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut calls = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        calls.push(call(&http, &url, format!("{prefix}{i}"), &tally).await);
    }
    calls
}

/// One call, counted in `tally` as soon as it is answered.
async fn call(
    http: &reqwest::Client,
    url: &str,
    sent: String,
    tally: &Tally,
) -> Result<Call, String> {
    let response = http
        .post(url)
        .body(sent.clone())
        .send()
        .await
        .map_err(|e| format!("{sent}: {e:?}"))?;
    let (status, id) = (response.status(), request_id(&response));
    tally.count(status);
    retry_after(&response).await;
    let body_or_location = match response.headers().get("location") {
        Some(location) if status == StatusCode::ACCEPTED => {
            location.to_str().expect("an ASCII location").to_owned()
        }
        _ => response
            .text()
            .await
            .map_err(|e| format!("{sent}: {e:?}"))?,
    };
    Ok(Call {
        sent,
        status,
        id,
        body_or_location,
    })
}

/// The reply at `location`, polled until it is there.
async fn polled_reply(http: &reqwest::Client, location: &str) -> String {
    let response = eventually(WAIT, &format!("the reply at {location}"), || async {
        let response = http.get(location).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(response)
    })
    .await;
    response.text().await.expect("the reply's body")
}

/// A subscriber to a channel from its current end, resuming with
/// `Last-Event-ID` whenever its stream ends; it keeps every record it is
/// delivered, as (partition, offset), in order.
pub struct Subscriber {
    running: Running<()>,
    seen: Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
    /// `lost` events: records the gateway says it could not deliver.
    lost: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Subscriber {
    /// Subscribes to `url` (`/v1/channels/{name}?format=json`) and returns
    /// once the stream's `subscribed` event says its start positions are
    /// fixed: every record written after that is the subscriber's.
    pub async fn start(url: String) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lost = Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let running = Running::spawn({
            let shared = Shared {
                subscribed: Arc::clone(&subscribed),
                seen: Arc::clone(&seen),
                lost: Arc::clone(&lost),
            };
            |stop, _| follow(url, stop, shared)
        });
        eventually(Duration::from_secs(10), "the subscription", || {
            let subscribed = subscribed.load(Ordering::SeqCst);
            async move { subscribed.then_some(()) }
        })
        .await;
        Self {
            running,
            seen,
            lost,
        }
    }

    /// Waits until the subscriber was delivered as many records as the
    /// channel holds, then asserts it got each of `records` exactly once.
    pub async fn assert_saw_each_once(self, records: &[Record]) {
        let expected: BTreeSet<(i64, i64)> = records
            .iter()
            .map(|r| (i64::from(r.partition), r.offset))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.seen.lock().unwrap().len() < expected.len() {
            if Instant::now() > deadline {
                let seen = self.seen.lock().unwrap();
                let got: BTreeSet<(i64, i64)> = seen.iter().copied().collect();
                let missing: Vec<_> = expected.difference(&got).take(10).collect();
                panic!(
                    "the subscriber saw {} of {} records within 30 s; missing (first 10): \
                     {missing:?}; last seen: {:?}",
                    got.len(),
                    expected.len(),
                    seen.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.running.stop().await;
        let lost = self.lost.lock().unwrap();
        assert!(lost.is_empty(), "records reported lost: {lost:?}");
        let seen = self.seen.lock().unwrap().clone();
        let unique: BTreeSet<(i64, i64)> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a record delivered twice");
        assert_eq!(unique, expected, "the subscriber missed records");
    }
}

/// What the subscriber's loop shares with its [`Subscriber`].
struct Shared {
    /// Set by the first `subscribed` event.
    subscribed: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
    lost: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The subscriber's loop: one stream after the other, each resuming where
/// the last one ended, until `stop`.
async fn follow(url: String, stop: Arc<AtomicBool>, shared: Shared) {
    let http = reqwest::Client::new();
    let mut last_id: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
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
                Err(_) if stop.load(Ordering::SeqCst) => return,
                Err(_) => continue,
            };
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            match event.event.as_str() {
                "subscribed" => shared.subscribed.store(true, Ordering::SeqCst),
                "lost" => shared.lost.lock().unwrap().push(event.data),
                "record" => {
                    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    let at = (
                        data["partition"].as_i64().unwrap(),
                        data["offset"].as_i64().unwrap(),
                    );
                    shared.seen.lock().unwrap().push(at);
                }
                _ => {}
            }
        }
    }
}

/// Asserts that no request is in `records` twice and that every one of
/// `acknowledged` is there exactly once.
pub fn assert_each_once(records: &[Record], acknowledged: &[String]) {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for record in records {
        let id = record
            .header("osmosis-request-id")
            .expect("a request record names its request");
        *copies.entry(id).or_default() += 1;
    }
    let doubled: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "requests written twice: {doubled:?}");
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !copies.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged requests not in Kafka: {missing:?}"
    );
}

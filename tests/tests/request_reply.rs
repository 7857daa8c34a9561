//! Request-reply, end to end: the real gateway and real worker processes
//! round-trip requests through a real Kafka broker, and nothing is lost when
//! workers are slow, killed, drained or failing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::kafka::{self, Record};
use osmosis_e2e::process::{Gateway, Worker};
use reqwest::StatusCode;
use serde_json::Value;

const ECHO: &str = "examples/echo";
const SLOW: &str = "examples/slow";
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A gateway in front of `channel` with one request route at `path`, its own
/// reply topic, and `route_extra` YAML added to the route.
struct Setup {
    channel: String,
    replies: String,
}

impl Setup {
    async fn new(prefix: &str, partitions: i32) -> Self {
        Self {
            channel: kafka::create_topic(&format!("{prefix}.requests"), partitions).await,
            replies: kafka::unique_name(&format!("{prefix}.replies")),
        }
    }

    fn gateway_yaml(&self, route_extra: &str, replies_extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{brokers}\" }}\n\
             channels: {{ {channel}: {{}} }}\n\
             replies: {{ topic: {replies}, partitions: 2 {replies_extra} }}\n\
             routes:\n  - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 20000 {route_extra} }}\n",
            brokers = kafka::bootstrap(),
            channel = self.channel,
            replies = self.replies,
        )
    }

    fn gateway(&self, route_extra: &str) -> Gateway {
        Gateway::start_with(&self.gateway_yaml(route_extra, ""), &["--create-topics"])
    }

    fn worker(&self, binary: &str, args: &[&str]) -> Worker {
        Worker::start(binary, kafka::bootstrap(), &self.channel, args)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
}

/// All `final` events in a reply topic, by request id.
fn finals(topic: &str) -> HashMap<String, Vec<Record>> {
    let total: i64 = kafka::high_watermarks(kafka::bootstrap(), topic)
        .values()
        .sum();
    let mut by_id: HashMap<String, Vec<Record>> = HashMap::new();
    for record in kafka::read_records(topic, total as usize, READ_TIMEOUT) {
        if record.header("osmosis-event") == Some("final") {
            let id = record.header("osmosis-request-id").unwrap().to_owned();
            by_id.entry(id).or_default().push(record);
        }
    }
    by_id
}

/// A reply carries the worker's bytes and content type back to the client.
#[tokio::test]
async fn a_request_round_trips_through_the_echo_worker() {
    let setup = Setup::new("rr.echo", 2).await;
    let gateway = setup.gateway("");
    let worker = setup.worker(ECHO, &[]);
    worker.wait_assigned();
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let response = client()
        .post(gateway.url("/work"))
        .header("content-type", "application/x-custom")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-custom");
    let id = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());
    // The request record carried the reply address the id names.
    let request = &kafka::read_records(&setup.channel, 1, READ_TIMEOUT)[0];
    assert_eq!(request.header("osmosis-request-id"), Some(id.as_str()));
    assert_eq!(
        request.header("osmosis-reply-topic"),
        Some(setup.replies.as_str())
    );
}

/// Properties for one side of the worker's Kafka clients reach only that
/// side: no librdkafka warning about a property the other side ignores, as
/// a property for both sides gives.
#[tokio::test]
async fn worker_properties_for_one_side_stay_on_that_side() {
    let setup = Setup::new("rr.properties", 1).await;
    let gateway = setup.gateway("");
    let sided = setup.worker(
        ECHO,
        &[
            "--producer-property",
            "linger.ms=5",
            "--consumer-property",
            "fetch.max.bytes=1048576",
        ],
    );
    sided.wait_assigned();
    let response = client()
        .post(gateway.url("/work"))
        .body("sided")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "sided");
    assert!(
        !sided.service.log_text().contains("CONFWARN"),
        "{}",
        sided.service.log_text()
    );

    let both = setup.worker(ECHO, &["--kafka-property", "linger.ms=5"]);
    osmosis_e2e::eventually(
        READ_TIMEOUT,
        "librdkafka's warning about a producer property on the consumer",
        || async {
            let log = both.service.log_text();
            log.contains("CONFWARN").then_some(())
        },
    )
    .await;
}

/// 1,000 concurrent requests with distinct bodies: each gets its own reply.
#[tokio::test]
async fn a_thousand_concurrent_requests_each_get_their_own_reply() {
    const N: usize = 1000;
    let setup = Setup::new("rr.crosstalk", 4).await;
    let gateway = setup.gateway("");
    let worker = setup.worker(ECHO, &["--max-in-flight", "64"]);
    worker.wait_assigned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(N)
        .build()
        .unwrap();
    let url = gateway.url("/work");
    let requests = (0..N).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let body = format!("request number {i}");
            let response = http.post(&url).body(body.clone()).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
            (body, response.text().await.unwrap())
        })
    });
    for (sent, received) in futures::future::try_join_all(requests).await.unwrap() {
        assert_eq!(received, sent, "a reply reached the wrong request");
    }
}

/// Beyond the route's timeout the client gets 202 + Location, and the
/// Location answers 202 while pending, then the reply; `respond-async`
/// answers 202 at once; `Prefer: wait` waits longer than the route would.
#[tokio::test]
async fn a_slow_reply_is_found_at_its_location() {
    let setup = Setup::new("rr.slow", 1).await;
    let gateway = setup.gateway(", max_wait_ms: 30000");
    let worker = setup.worker(SLOW, &["--work-ms", "1500"]);
    worker.wait_assigned();
    let http = client();

    let response = http
        .post(gateway.url("/work"))
        .header("prefer", "wait=0.2")
        .body("slow one")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/requests/{}", accepted["id"].as_str().unwrap())
    );
    assert_eq!(accepted["status"], "pending");
    let pending = http.get(gateway.url(&location)).send().await.unwrap();
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    let reply = eventually(
        Duration::from_secs(30),
        "the reply at its location",
        || async {
            let response = http.get(gateway.url(&location)).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        },
    )
    .await;
    assert_eq!(reply.headers()["content-type"], "application/json");
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["bytes"], 8);

    let response = http
        .post(gateway.url("/work"))
        .header("prefer", "respond-async")
        .body("async")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().contains_key("location"));

    let response = http
        .post(gateway.url("/work"))
        .header("prefer", "wait=25")
        .body("patient")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "waited for the reply");

    let unknown = http
        .get(gateway.url("/v1/requests/01a2177b-8a64-7001-899f-6411ae19c199"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let malformed = http
        .get(gateway.url("/v1/requests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

/// A second gateway instance answers `GET /v1/requests/{id}` for a request
/// the first one accepted: pending first, then the reply, found in Kafka.
#[tokio::test]
async fn another_gateway_instance_serves_the_reply() {
    let setup = Setup::new("rr.instances", 1).await;
    let first = Gateway::start_with(&setup.gateway_yaml("", ""), &["--create-topics"]);
    let second = Gateway::start(&setup.gateway_yaml("", ""));
    let worker = setup.worker(SLOW, &["--work-ms", "1000"]);
    worker.wait_assigned();
    let http = client();
    let response = http
        .post(first.url("/work"))
        .header("prefer", "respond-async")
        .body("shared")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let pending = http.get(second.url(&location)).send().await.unwrap();
    assert_eq!(
        pending.status(),
        StatusCode::ACCEPTED,
        "known as pending elsewhere"
    );
    let reply = eventually(
        Duration::from_secs(30),
        "the reply on the other instance",
        || async {
            let response = http.get(second.url(&location)).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(response)
        },
    )
    .await;
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["bytes"], 6);
}

/// A worker killed with SIGKILL in the middle of a message: the message is
/// redelivered to the other worker of the group and the client gets exactly
/// one reply.
#[tokio::test]
async fn a_killed_worker_s_message_is_redelivered_and_replied_once() {
    let setup = Setup::new("rr.sigkill", 1).await;
    let gateway = setup.gateway(", max_wait_ms: 60000");
    let fast_failover = [
        "--work-ms",
        "1500",
        "--kafka-property",
        "session.timeout.ms=6000",
    ];
    let mut doomed = setup.worker(SLOW, &fast_failover);
    doomed.wait_assigned();
    let survivor = setup.worker(SLOW, &fast_failover);

    let http = client();
    let request = tokio::spawn(
        http.post(gateway.url("/work"))
            .header("prefer", "wait=60")
            .body("survive")
            .send(),
    );
    eventually(
        Duration::from_secs(20),
        "the message to be in flight",
        || async { (doomed.metric("osmosis_worker_in_flight").await? >= 1.0).then_some(()) },
    )
    .await;
    doomed.service.signal(Signal::SIGKILL);
    doomed.service.wait_exit(Duration::from_secs(10));

    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["bytes"], 7);
    survivor
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"replied\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(finals(&setup.replies)[&id].len(), 1, "exactly one reply");
}

/// SIGTERM under steady load: the worker drains and exits 0, every request
/// gets its reply, and the group's committed offsets reach the end of every
/// partition (no offset skipped, none left behind).
#[tokio::test]
async fn a_drained_worker_exits_cleanly_and_nothing_is_lost() {
    const N: usize = 200;
    let setup = Setup::new("rr.drain", 4).await;
    let gateway = setup.gateway(", max_wait_ms: 60000");
    let args = ["--work-ms", "40", "--max-in-flight", "8"];
    let mut leaving = setup.worker(SLOW, &args);
    leaving.wait_assigned();
    let staying = setup.worker(SLOW, &args);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    let url = gateway.url("/work");
    let load = tokio::spawn(async move {
        let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        let requests = (0..N).map(|i| {
            let (http, url, semaphore) = (http.clone(), url.clone(), semaphore.clone());
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                let response = http
                    .post(&url)
                    .header("prefer", "wait=60")
                    .body(format!("load {i}"))
                    .send()
                    .await
                    .unwrap();
                response.status()
            })
        });
        futures::future::try_join_all(requests).await.unwrap()
    });
    eventually(
        Duration::from_secs(30),
        "load to reach the leaving worker",
        || async {
            let replied = leaving
                .metric("osmosis_worker_messages_total{outcome=\"replied\"}")
                .await?;
            (replied >= 10.0).then_some(())
        },
    )
    .await;
    leaving.service.signal(Signal::SIGTERM);
    let status = leaving.service.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "drained worker exit status {status}");
    assert!(
        leaving
            .service
            .log_text()
            .contains("drained: offsets committed, left the group")
    );

    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every request got its reply: {statuses:?}"
    );
    let ends = kafka::high_watermarks(kafka::bootstrap(), &setup.channel);
    assert_eq!(ends.values().sum::<i64>(), N as i64);
    let group = format!("{}.workers", setup.channel);
    eventually(
        Duration::from_secs(30),
        "committed offsets at the end of every partition",
        || {
            let committed = kafka::committed_offsets(&group, &setup.channel, ends.len() as i32);
            let ends = ends.clone();
            async move { (committed == ends).then_some(()) }
        },
    )
    .await;
    let replied: HashSet<String> = finals(&setup.replies).into_keys().collect();
    assert_eq!(replied.len(), N, "one distinct reply per request");
    drop(staying);
}

/// A handler that always fails: retried, then a dead-letter record with the
/// original bytes and an error reply to the client.
#[tokio::test]
async fn a_failing_handler_is_retried_then_dead_lettered() {
    let setup = Setup::new("rr.dlq", 1).await;
    let gateway = setup.gateway("");
    let worker = setup.worker(
        SLOW,
        &[
            "--fail",
            "--work-ms",
            "10",
            "--max-retries",
            "2",
            "--retry-backoff-ms",
            "50",
        ],
    );
    worker.wait_assigned();
    let response = client()
        .post(gateway.url("/work"))
        .header("content-type", "text/plain")
        .body("doomed bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let id = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("after 3 attempt(s)") && detail.contains("told to fail"),
        "{detail}"
    );

    let dead = &kafka::read_records(&format!("{}.dlq", setup.channel), 1, READ_TIMEOUT)[0];
    assert_eq!(dead.value, b"doomed bytes");
    assert_eq!(dead.header("osmosis-request-id"), Some(id.as_str()));
    assert_eq!(dead.header("osmosis-content-type"), Some("text/plain"));
    assert_eq!(dead.header("osmosis-attempts"), Some("3"));
    assert!(
        dead.header("osmosis-error")
            .unwrap()
            .contains("told to fail")
    );
    assert_eq!(
        dead.header("osmosis-source"),
        Some(format!("{}/0/0", setup.channel).as_str())
    );
    worker
        .wait_metric("osmosis_worker_retries_total", 2.0, Duration::from_secs(10))
        .await;
    worker
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"dead_lettered\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
}

/// A request whose deadline passed before a worker took it is not
/// processed: the client finds a 504 instead of the echo.
#[tokio::test]
async fn an_expired_request_is_not_processed() {
    let setup = Setup::new("rr.deadline", 1).await;
    let gateway = setup.gateway(", deadline_ms: 300");
    let http = client();
    let response = http
        .post(gateway.url("/work"))
        .header("prefer", "respond-async")
        .body("too late")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let request = &kafka::read_records(&setup.channel, 1, READ_TIMEOUT)[0];
    let deadline: u64 = request.header("osmosis-deadline").unwrap().parse().unwrap();
    eventually(
        Duration::from_secs(10),
        "the deadline to pass",
        || async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            (now > deadline).then_some(())
        },
    )
    .await;

    let worker = setup.worker(ECHO, &[]);
    let reply = eventually(
        Duration::from_secs(60),
        "an answer for the expired request",
        || async {
            let response = http.get(gateway.url(&location)).send().await.ok()?;
            (response.status() != StatusCode::ACCEPTED).then_some(response)
        },
    )
    .await;
    assert_eq!(reply.status(), StatusCode::GATEWAY_TIMEOUT);
    worker
        .wait_metric(
            "osmosis_worker_messages_total{outcome=\"expired\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        worker
            .metric("osmosis_worker_messages_total{outcome=\"replied\"}")
            .await,
        None,
        "the handler never ran"
    );
}

/// Requests waiting for their replies when the gateway is stopped each get
/// 202 + Location before the grace period would cut their connections:
/// each is in Kafka, once, and its reply is found at its Location on
/// another instance once a worker answers.
#[tokio::test]
async fn waiting_requests_get_their_locations_when_the_gateway_stops() {
    const WAITING: usize = 5;
    let setup = Setup::new("rr.stopping", 1).await;
    let yaml = format!("shutdown_grace_ms: 1500\n{}", setup.gateway_yaml("", ""));
    let mut gateway = Gateway::start_with(&yaml, &["--create-topics"]);
    let http = client();
    // No worker yet: every call waits until the gateway stops.
    let waiting: Vec<_> = (0..WAITING)
        .map(|i| {
            let (http, url) = (http.clone(), gateway.url("/work"));
            tokio::spawn(async move {
                http.post(url)
                    .body(format!("outlives its gateway {i}"))
                    .send()
                    .await
            })
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "every call to wait for its reply",
        || async {
            let waiting = gateway.metric("osmosis_gateway_requests_waiting").await?;
            (waiting == WAITING as f64).then_some(())
        },
    )
    .await;

    gateway.service.signal(Signal::SIGTERM);
    let mut locations = Vec::with_capacity(WAITING);
    for (i, call) in waiting.into_iter().enumerate() {
        let response = call
            .await
            .unwrap()
            .expect("an answer, not a cut connection");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        locations.push((location, format!("outlives its gateway {i}")));
    }
    assert!(gateway.service.wait_exit(Duration::from_secs(30)).success());
    let ids: Vec<String> = locations
        .iter()
        .map(|(location, _)| location.rsplit('/').next().unwrap().to_owned())
        .collect();
    let records = kafka::read_records(&setup.channel, WAITING, READ_TIMEOUT);
    osmosis_e2e::load::assert_each_once(&records, &ids);
    assert_eq!(
        kafka::high_watermarks(kafka::bootstrap(), &setup.channel)[&0],
        WAITING as i64,
        "nothing but the waiting requests in the channel"
    );

    let other = Gateway::start(&setup.gateway_yaml("", ""));
    let _worker = setup.worker(ECHO, &[]);
    for (location, sent) in &locations {
        let reply = eventually(
            Duration::from_secs(30),
            "the reply at its location",
            || async {
                let response = http.get(other.url(location)).send().await.ok()?;
                (response.status() == StatusCode::OK).then_some(response)
            },
        )
        .await;
        assert_eq!(&reply.text().await.unwrap(), sent, "{location}");
    }
    let finals = finals(&setup.replies);
    for id in &ids {
        assert_eq!(
            finals.get(id).map(Vec::len),
            Some(1),
            "final replies of {id}"
        );
    }
}

/// A client that gives up on a request-mode call stops holding memory on
/// the gateway: its request no longer waits there (the gauge of waiting
/// requests falls back to 0) while the worker still works on it.
#[tokio::test]
async fn a_client_that_goes_away_stops_waiting() {
    let setup = Setup::new("rr.gone", 1).await;
    let gateway = setup.gateway(", max_wait_ms: 60000");
    let worker = setup.worker(SLOW, &["--work-ms", "20000"]);
    worker.wait_assigned();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let waiting = |expected: f64| {
        let gateway = &gateway;
        async move {
            gateway
                .metric("osmosis_gateway_requests_waiting")
                .await
                .filter(|v| *v == expected)
        }
    };
    let gave_up = tokio::spawn(
        impatient
            .post(gateway.url("/work"))
            .header("prefer", "wait=30")
            .body("never mind")
            .send(),
    );
    eventually(Duration::from_secs(10), "the request to wait", || {
        waiting(1.0)
    })
    .await;
    let gave_up = gave_up.await.unwrap();
    assert!(gave_up.is_err(), "the client timed out");
    eventually(
        Duration::from_secs(10),
        "no request waiting any more",
        || waiting(0.0),
    )
    .await;
    assert_eq!(
        worker.metric("osmosis_worker_in_flight").await,
        Some(1.0),
        "still working"
    );
}

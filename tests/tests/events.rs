//! Event-based clients, end to end: streamed replies with progress, request
//! streams resumed on another instance, channel subscriptions with fan-out,
//! key filters, replay and resume across a gateway restart, slow subscribers
//! cut off, the connection cap, and SSE over HTTP/2.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
use osmosis_e2e::sse::EventStream;
use reqwest::StatusCode;
use serde_json::Value;

const SLOW: &str = "examples/slow";
const WAIT: Duration = Duration::from_secs(30);

fn json(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("{data:?} is not JSON: {e}"))
}

/// A gateway config with a request route `/work` on `channel`, a publish
/// route `/publish` and a subscription on the subscribable `feed` topic.
fn yaml(channel: &str, replies: &str, feed: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{brokers}\" }}\n\
         channels:\n  {channel}: {{}}\n  {feed}: {{ partitions: 3, subscribable: true }}\n\
         replies: {{ topic: {replies}, partitions: 2 {extra} }}\n\
         sse: {{ keep_alive_ms: 1000 }}\n\
         routes:\n\
         \x20 - {{ method: POST, path: /work, channel: {channel}, mode: request }}\n\
         \x20 - {{ method: POST, path: \"/publish/{{key}}\", channel: {feed}, key: {{ path: key }} }}\n",
        brokers = kafka::bootstrap(),
    )
}

struct Topics {
    channel: String,
    replies: String,
    feed: String,
}

async fn topics(prefix: &str) -> Topics {
    Topics {
        channel: kafka::create_topic(&format!("{prefix}.requests"), 1).await,
        replies: kafka::unique_name(&format!("{prefix}.replies")),
        feed: kafka::unique_name(&format!("{prefix}.feed")),
    }
}

impl Topics {
    fn gateway(&self, extra: &str) -> Gateway {
        Gateway::start_with(
            &yaml(&self.channel, &self.replies, &self.feed, extra),
            &["--create-topics"],
        )
    }

    /// Two gateways of one fleet: group membership gives each a share of
    /// the reply partitions.
    fn two_instances(&self) -> (Gateway, Gateway) {
        let first = self.gateway("");
        let second = Gateway::start(&yaml(&self.channel, &self.replies, &self.feed, ""));
        (first, second)
    }
}

async fn publish(gateway: &Gateway, key: &str, body: String) -> Value {
    let response = reqwest::Client::new()
        .post(gateway.url(&format!("/publish/{key}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

/// `accepted`, each progress event, then `reply`, in that order, with the
/// worker's bytes; the stream then ends.
#[tokio::test]
async fn a_streamed_reply_arrives_in_order() {
    let t = topics("sse.stream").await;
    let gateway = t.gateway("");
    let worker = Worker::start(
        SLOW,
        kafka::bootstrap(),
        &t.channel,
        &["--work-ms", "600", "--progress-steps", "2"],
    );
    worker.wait_assigned();
    let mut stream = EventStream::open(
        reqwest::Client::new()
            .post(gateway.url("/work"))
            .body("stream me"),
    )
    .await;
    let accepted = stream.expect("accepted").await;
    let data = json(&accepted.data);
    assert_eq!(data["channel"], t.channel.as_str());
    assert!(data["id"].is_string() && data["offset"].is_number());
    let mut last_id: i64 = accepted.id.parse().unwrap();
    for step in 1..=2 {
        let progress = stream.expect("progress").await;
        let body = json(json(&progress.data)["body"].as_str().unwrap());
        assert_eq!(body["step"], step);
        let id: i64 = progress.id.parse().unwrap();
        assert!(id > last_id, "ids grow: {id} after {last_id}");
        last_id = id;
    }
    let reply = stream.expect("reply").await;
    let data = json(&reply.data);
    assert_eq!(data["status"], 200);
    assert_eq!(data["content_type"], "application/json");
    assert_eq!(json(data["body"].as_str().unwrap())["bytes"], 9);
    assert!(
        stream.next(WAIT).await.is_none(),
        "the stream ends after the reply"
    );
}

/// Disconnect after the first progress event, reconnect with its id to a
/// second gateway instance: the remaining events arrive, none repeated.
#[tokio::test]
async fn a_request_stream_resumes_on_another_instance() {
    let t = topics("sse.resume").await;
    let (first, second) = t.two_instances();
    let worker = Worker::start(
        SLOW,
        kafka::bootstrap(),
        &t.channel,
        &["--work-ms", "1600", "--progress-steps", "3"],
    );
    worker.wait_assigned();
    let mut stream = EventStream::open(
        reqwest::Client::new()
            .post(first.url("/work"))
            .body("resume"),
    )
    .await;
    let accepted = stream.expect("accepted").await;
    let id = json(&accepted.data)["id"].as_str().unwrap().to_owned();
    let first_progress = stream.expect("progress").await;
    drop(stream);

    let mut resumed = EventStream::open(
        reqwest::Client::new()
            .get(second.url(&format!("/v1/requests/{id}")))
            .header("last-event-id", &first_progress.id),
    )
    .await;
    let rest = resumed.rest(WAIT).await;
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["progress", "progress", "reply"]);
    let steps: Vec<i64> = rest[..2]
        .iter()
        .map(|e| {
            json(json(&e.data)["body"].as_str().unwrap())["step"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [2, 3], "none repeated, none missing");

    // From the start, on any instance, the whole history is there.
    let mut replay =
        EventStream::open(reqwest::Client::new().get(second.url(&format!("/v1/requests/{id}"))))
            .await;
    let names: Vec<String> = replay
        .rest(WAIT)
        .await
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        names,
        ["accepted", "progress", "progress", "progress", "reply"]
    );

    let bad = reqwest::Client::new()
        .get(second.url(&format!("/v1/requests/{id}")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "not-an-offset")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    for offset in ["-2", "9223372036854775807"] {
        let bad = reqwest::Client::new()
            .get(second.url(&format!("/v1/requests/{id}")))
            .header("accept", "text/event-stream")
            .header("last-event-id", offset)
            .send()
            .await
            .unwrap();
        assert_eq!(
            bad.status(),
            StatusCode::BAD_REQUEST,
            "Last-Event-ID {offset}"
        );
    }
}

/// Threads of a running process, from /proc.
fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Many clients stream requests of another instance at once: each gets its
/// own reply, and the streams share one tail per reply partition instead of
/// a Kafka client (with its threads) each.
#[tokio::test]
async fn many_request_streams_on_another_instance_share_the_tails() {
    const STREAMS: usize = 100;
    let t = topics("sse.many").await;
    let (first, second) = t.two_instances();
    let http = reqwest::Client::new();
    // Accepted while no worker runs: every reply is still to come.
    let mut ids = Vec::new();
    for i in 0..STREAMS {
        let response = http
            .post(first.url("/work"))
            .header("prefer", "respond-async")
            .body(format!("request {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let accepted: Value = response.json().await.unwrap();
        ids.push(accepted["id"].as_str().unwrap().to_owned());
    }
    let idle_threads = threads(second.service.pid());
    let mut streams = Vec::new();
    for id in &ids {
        let mut stream =
            EventStream::open(http.get(second.url(&format!("/v1/requests/{id}")))).await;
        stream.expect("accepted").await;
        streams.push(stream);
    }
    let streaming_threads = threads(second.service.pid());
    assert!(
        streaming_threads < idle_threads + 40,
        "{STREAMS} streams took the gateway from {idle_threads} to {streaming_threads} threads"
    );

    let worker = Worker::start("examples/echo", kafka::bootstrap(), &t.channel, &[]);
    worker.wait_assigned();
    for (i, stream) in streams.iter_mut().enumerate() {
        let reply = stream.expect("reply").await;
        assert_eq!(
            json(&reply.data)["body"],
            format!("request {i}"),
            "{reply:?}"
        );
    }
}

/// Records received by one subscriber: (partition, offset) → (key, value).
type Received = Vec<(i64, i64, String, String)>;

async fn receive(stream: &mut EventStream, count: usize) -> (Received, String) {
    let mut received = Vec::new();
    let mut last_id = String::new();
    while received.len() < count {
        let event = stream.expect("record").await;
        let data = json(&event.data);
        received.push((
            data["partition"].as_i64().unwrap(),
            data["offset"].as_i64().unwrap(),
            data["key"].as_str().unwrap().to_owned(),
            data["value"].as_str().unwrap().to_owned(),
        ));
        last_id = event.id;
    }
    (received, last_id)
}

fn assert_kafka_order(received: &Received) {
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (partition, offset, _, _) in received {
        if let Some(previous) = last.insert(*partition, *offset) {
            assert!(
                *offset > previous,
                "partition {partition}: {offset} after {previous}"
            );
        }
    }
}

/// N records reach M concurrent subscribers in Kafka order per partition; a
/// key filter delivers only its key; `from=earliest` replays history.
#[tokio::test]
async fn subscribers_share_one_feed_in_kafka_order() {
    const N: usize = 60;
    let t = topics("sse.fanout").await;
    let gateway = t.gateway("");
    for i in 0..6 {
        publish(&gateway, &format!("k{}", i % 3), format!("history {i}")).await;
    }
    let subscribe = |query: &str| {
        reqwest::Client::new()
            .get(gateway.url(&format!("/v1/channels/{}?format=json{query}", t.feed)))
    };
    let mut subscribers = Vec::new();
    for _ in 0..4 {
        let mut stream = EventStream::open(subscribe("")).await;
        stream.expect("subscribed").await;
        subscribers.push(stream);
    }
    let mut filtered = EventStream::open(subscribe("&key=k1")).await;
    filtered.expect("subscribed").await;

    for i in 0..N {
        publish(&gateway, &format!("k{}", i % 3), format!("live {i}")).await;
    }
    let mut first: Option<Received> = None;
    for stream in &mut subscribers {
        let (received, _) = receive(stream, N).await;
        assert_kafka_order(&received);
        let values: HashSet<&str> = received.iter().map(|r| r.3.as_str()).collect();
        assert_eq!(values.len(), N, "every record once");
        assert!(
            values.iter().all(|v| v.starts_with("live")),
            "latest: no history"
        );
        if let Some(first) = &first {
            assert_eq!(first, &received, "every subscriber sees the same sequence");
        }
        first = Some(received);
    }
    let (only_k1, _) = receive(&mut filtered, N / 3).await;
    assert!(only_k1.iter().all(|r| r.2 == "k1"));

    let mut replay = EventStream::open(subscribe("&from=earliest")).await;
    replay.expect("subscribed").await;
    let (history, _) = receive(&mut replay, 6 + N).await;
    assert_kafka_order(&history);
    let histories = history
        .iter()
        .filter(|r| r.3.starts_with("history"))
        .count();
    assert_eq!(histories, 6);

    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("osmosis_gateway_sse_streams{kind=\"channel\"} 6"),
        "{metrics}"
    );
}

/// Many subscribers replay the channel from its start at once, each through
/// a buffer smaller than the history: every one gets every record exactly
/// once, in Kafka order, and the catch-ups share one reader per topic
/// instead of a Kafka client (with its threads) each.
#[tokio::test]
async fn many_catch_ups_share_one_reader_and_each_gets_every_record_once() {
    const SUBSCRIBERS: usize = 40;
    const RECORDS: usize = 3000;
    let t = topics("sse.catchups").await;
    let limits = "limits: { catch_ups: { buffer_bytes: 16384 } }\n";
    let gateway = Gateway::start_with(
        &(yaml(&t.channel, &t.replies, &t.feed, "") + limits),
        &["--create-topics"],
    );
    kafka::produce_keyed(&t.feed, "k", RECORDS).await;
    let replay = || {
        EventStream::open(reqwest::Client::new().get(gateway.url(&format!(
            "/v1/channels/{}?format=json&from=earliest",
            t.feed
        ))))
    };
    // One replay first, so that the feed, the reader and the metadata
    // client exist before the threads are counted.
    let mut first = replay().await;
    first.expect("subscribed").await;
    let (reference, _) = receive(&mut first, RECORDS).await;
    assert_kafka_order(&reference);
    let ends = kafka::high_watermarks(kafka::bootstrap(), &t.feed);
    let expected: usize = ends.values().map(|end| *end as usize).sum();
    assert_eq!(expected, RECORDS);
    let warm_threads = threads(gateway.service.pid());

    let pid = gateway.service.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak_threads = tokio::spawn({
        let stop = std::sync::Arc::clone(&stop);
        async move {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(threads(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    });
    let replays = (0..SUBSCRIBERS).map(|_| async {
        let mut stream = replay().await;
        stream.expect("subscribed").await;
        receive(&mut stream, RECORDS).await.0
    });
    let received = futures::future::join_all(replays).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_threads = peak_threads.await.unwrap();

    let sorted = |records: &Received| {
        let mut records = records.clone();
        records.sort();
        records
    };
    let reference = sorted(&reference);
    for records in &received {
        assert_kafka_order(records);
        assert_eq!(sorted(records), reference, "every record exactly once");
    }
    assert!(
        peak_threads < warm_threads + 16,
        "{SUBSCRIBERS} catch-ups took the gateway from {warm_threads} to {peak_threads} threads"
    );
}

/// A resume from positions retention has since deleted says so with a
/// `lost` event naming the records, then delivers every record left.
#[tokio::test]
async fn a_resume_names_the_records_retention_deleted() {
    const RECORDS: usize = 60;
    let t = topics("sse.lost").await;
    let gateway = t.gateway("");
    kafka::produce_keyed(&t.feed, "k", RECORDS).await;
    let ends = kafka::high_watermarks(kafka::bootstrap(), &t.feed);
    let deleted = ends[&0] / 2;
    assert!(deleted > 0, "partition 0 got records: {ends:?}");
    kafka::delete_records(&t.feed, 0, deleted).await;

    let mut stream = EventStream::open(
        reqwest::Client::new()
            .get(gateway.url(&format!("/v1/channels/{}?format=json", t.feed)))
            .header("last-event-id", "0:0,1:0,2:0"),
    )
    .await;
    stream.expect("subscribed").await;
    let lost = stream.expect("lost").await;
    assert_eq!(
        json(&lost.data),
        serde_json::json!({
            "partition": 0, "from": 0, "to": deleted,
            "reason": "retention deleted these records before they were read",
        })
    );
    assert_eq!(lost.id, format!("0:{deleted},1:0,2:0"));
    let (received, _) = receive(&mut stream, RECORDS - deleted as usize).await;
    assert_kafka_order(&received);
    let mut offsets: Vec<(i64, i64)> = received.iter().map(|r| (r.0, r.1)).collect();
    offsets.sort();
    let expected: Vec<(i64, i64)> = ends
        .iter()
        .flat_map(|(partition, end)| {
            let from = if *partition == 0 { deleted } else { 0 };
            (from..*end).map(|offset| (i64::from(*partition), offset))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(offsets, expected, "every record left, once");
}

/// A catch-up whose subscriber stops reading is dropped when its buffer
/// stays full: the subscriber then reads what was buffered and an
/// `interrupted` event whose id resumes the rest, without gap or repeat.
#[tokio::test]
async fn a_stalled_catch_up_ends_explicitly_and_resumes_without_a_gap() {
    // 32 MiB of history: more than the sockets buffer, so the catch-up's
    // own buffer fills while the subscriber does not read.
    const RECORDS: usize = 8000;
    let t = topics("sse.stalled").await;
    let limits = "limits: { catch_ups: { buffer_bytes: 16384, send_timeout_ms: 500 } }\n";
    let gateway = Gateway::start_with(
        &(yaml(&t.channel, &t.replies, &t.feed, "") + limits),
        &["--create-topics"],
    );
    kafka::produce_values(&t.feed, "k", RECORDS, &"v".repeat(4096)).await;
    let url = gateway.url(&format!("/v1/channels/{}?format=json", t.feed));
    let mut stream =
        EventStream::open(reqwest::Client::new().get(format!("{url}&from=earliest"))).await;
    stream.expect("subscribed").await;
    osmosis_e2e::eventually(WAIT, "the stalled catch-up is dropped", || async {
        gateway
            .metric("osmosis_gateway_limited_total{limit=\"catch_up_stalled\"}")
            .await
            .filter(|dropped| *dropped >= 1.0)
    })
    .await;
    let mut received: Received = Vec::new();
    let resume_at = loop {
        let event = stream
            .next(WAIT)
            .await
            .expect("the stream ends with an event, not a cut");
        match event.event.as_str() {
            "record" => {
                let data = json(&event.data);
                received.push((
                    data["partition"].as_i64().unwrap(),
                    data["offset"].as_i64().unwrap(),
                    data["key"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            }
            "interrupted" => break event.id,
            other => panic!("unexpected event {other}: {event:?}"),
        }
    };
    assert!(received.len() < RECORDS, "the catch-up stopped early");
    let mut resumed = EventStream::open(
        reqwest::Client::new()
            .get(&url)
            .header("last-event-id", &resume_at),
    )
    .await;
    resumed.expect("subscribed").await;
    let (rest, _) = receive(&mut resumed, RECORDS - received.len()).await;
    received.extend(rest.into_iter().map(|r| (r.0, r.1, r.2, String::new())));
    assert_kafka_order(&received);
    let keys: HashSet<&str> = received.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(keys.len(), RECORDS, "every record exactly once");
}

/// A subscriber resumes with `Last-Event-ID` after the gateway restarted:
/// no gap, no duplicate. The shutdown itself ends the stream with an event.
#[tokio::test]
async fn a_subscription_resumes_across_a_gateway_restart() {
    let t = topics("sse.restart").await;
    let mut gateway = t.gateway("");
    for i in 0..30 {
        publish(&gateway, &format!("k{}", i % 3), format!("before {i}")).await;
    }
    let url = |g: &Gateway| {
        g.url(&format!(
            "/v1/channels/{}?format=json&from=earliest",
            t.feed
        ))
    };
    let mut stream = EventStream::open(reqwest::Client::new().get(url(&gateway))).await;
    stream.expect("subscribed").await;
    let (mut first_part, _) = receive(&mut stream, 10).await;

    // Whatever was on its way still arrives, then the final event, whose id
    // is where to resume.
    gateway.service.signal(Signal::SIGTERM);
    let last_id = loop {
        let event = stream
            .next(WAIT)
            .await
            .expect("a shutdown event before the end");
        if event.event == "shutdown" {
            break event.id;
        }
        assert_eq!(event.event, "record");
        let data = json(&event.data);
        first_part.push((
            data["partition"].as_i64().unwrap(),
            data["offset"].as_i64().unwrap(),
            data["key"].as_str().unwrap().to_owned(),
            data["value"].as_str().unwrap().to_owned(),
        ));
    };
    assert!(!last_id.is_empty(), "the final event says where to resume");
    assert!(stream.next(WAIT).await.is_none(), "and the stream ends");
    assert!(gateway.service.wait_exit(WAIT).success());

    let gateway = t.gateway("");
    for i in 0..15 {
        publish(&gateway, &format!("k{}", i % 3), format!("after {i}")).await;
    }
    let mut resumed = EventStream::open(
        reqwest::Client::new()
            .get(url(&gateway))
            .header("last-event-id", &last_id),
    )
    .await;
    resumed.expect("subscribed").await;
    let (second_part, _) = receive(&mut resumed, 45 - first_part.len()).await;
    let all: Vec<&(i64, i64, String, String)> = first_part.iter().chain(&second_part).collect();
    let positions: HashSet<(i64, i64)> = all.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(positions.len(), 45, "no duplicate");
    let ends = kafka::high_watermarks(kafka::bootstrap(), &t.feed);
    for (partition, end) in ends {
        let offsets: HashSet<i64> = all
            .iter()
            .filter(|r| r.0 == i64::from(partition))
            .map(|r| r.1)
            .collect();
        assert_eq!(
            offsets,
            (0..end).collect(),
            "no gap in partition {partition}"
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A stalled subscriber is cut off with an `overflow` event saying where to
/// resume, while a healthy one receives every record; the gateway's memory
/// stays bounded meanwhile.
#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_and_others_keep_receiving() {
    const N: usize = 600;
    let t = topics("sse.stall").await;
    let gateway = Gateway::start_with(
        &yaml(&t.channel, &t.replies, &t.feed, "").replace(
            "sse: { keep_alive_ms: 1000 }",
            "sse: { keep_alive_ms: 1000, subscriber_buffer: 16 }",
        ),
        &["--create-topics"],
    );
    let url = gateway.url(&format!("/v1/channels/{}", t.feed));
    let mut healthy = EventStream::open(reqwest::Client::new().get(&url)).await;
    healthy.expect("subscribed").await;
    let mut stalled = EventStream::open(reqwest::Client::new().get(&url)).await;
    stalled.expect("subscribed").await;

    let before = rss_kib(gateway.service.pid());
    // 600 × 64 KiB, in lockstep with the healthy subscriber: far more than
    // the stalled client's socket buffers hold.
    let big = "x".repeat(64 * 1024);
    let http = reqwest::Client::new();
    let mut peak = before;
    for i in 0..N {
        let response = http
            .post(gateway.url("/publish/k"))
            .body(format!("{i} {big}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let event = healthy.expect("record").await;
        assert!(
            event.data.starts_with(&format!("{i} ")),
            "record {i} in order"
        );
        if i % 50 == 0 {
            peak = peak.max(rss_kib(gateway.service.pid()));
        }
    }
    let after = rss_kib(gateway.service.pid()).max(peak);

    let events = stalled.rest(WAIT).await;
    let last = events.last().expect("the stalled stream got events");
    assert_eq!(last.event, "overflow", "cut off with a resume event");
    assert!(!last.id.is_empty());
    assert!(
        events.len() < N,
        "it did not get everything: {} events",
        events.len()
    );
    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("osmosis_gateway_sse_slow_disconnects_total 1"),
        "{metrics}"
    );
    // 600 × 64 KiB went through: a gateway that buffered them for the
    // stalled subscriber would have grown by ~38 MiB for it alone.
    let grown = after.saturating_sub(before);
    eprintln!("gateway RSS {before} KiB → {after} KiB");
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
}

/// Over the connection cap: 503; a malformed Last-Event-ID: 400; an unknown
/// or non-subscribable channel: 404.
#[tokio::test]
async fn stream_requests_are_refused_clearly() {
    let t = topics("sse.refusals").await;
    let gateway = Gateway::start_with(
        &yaml(&t.channel, &t.replies, &t.feed, "").replace(
            "sse: { keep_alive_ms: 1000 }",
            "sse: { keep_alive_ms: 1000, max_connections: 2 }",
        ),
        &["--create-topics"],
    );
    let http = reqwest::Client::new();
    let url = gateway.url(&format!("/v1/channels/{}", t.feed));
    let get = |url: &str| http.get(url).header("accept", "text/event-stream");

    let bad = get(&url)
        .header("last-event-id", "0:x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    let bad_from = get(&format!("{url}?from=yesterday")).send().await.unwrap();
    assert_eq!(bad_from.status(), StatusCode::BAD_REQUEST);
    let unknown = get(&gateway.url("/v1/channels/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let not_subscribable = get(&gateway.url(&format!("/v1/channels/{}", t.channel)))
        .send()
        .await
        .unwrap();
    assert_eq!(not_subscribable.status(), StatusCode::NOT_FOUND);
    // A resume may name only partitions the channel has (it has 3).
    let made_up = get(&url)
        .header("last-event-id", "0:0,7:0")
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), StatusCode::BAD_REQUEST);
    let problem: Value = made_up.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("partition 7"),
        "{problem}"
    );
    // Resuming a request nobody accepted is a 404, as a fresh stream is.
    let nobody = osmosis_protocol::RequestId::new(Some(0));
    let resumed = get(&gateway.url(&format!("/v1/requests/{nobody}")))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::NOT_FOUND);

    let mut one = EventStream::open(http.get(&url)).await;
    one.expect("subscribed").await;
    let mut two = EventStream::open(http.get(&url)).await;
    two.expect("subscribed").await;
    let third = get(&url).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key("retry-after"));
    drop(one);
    osmosis_e2e::eventually(WAIT, "a free slot after a client left", || async {
        let response = get(&url).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// SSE over HTTP/2 (cleartext, prior knowledge) on the same port: several
/// streams share one connection.
#[tokio::test]
async fn subscriptions_work_over_http2() {
    let t = topics("sse.h2").await;
    let gateway = t.gateway("");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = gateway.url(&format!("/v1/channels/{}?format=json", t.feed));
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut stream = EventStream::open(h2.get(&url)).await;
        assert_eq!(stream.version, reqwest::Version::HTTP_2);
        stream.expect("subscribed").await;
        streams.push(stream);
    }
    let response = h2
        .post(gateway.url("/publish/h2"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    for stream in &mut streams {
        let (received, _) = receive(stream, 1).await;
        assert_eq!(received[0].3, "over h2");
    }
}

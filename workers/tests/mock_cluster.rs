//! The runtime against librdkafka's mock cluster: fast checks that a request
//! is answered and committed, and that a failing one is dead-lettered and
//! answered with a problem. The real broker's tests live in `tests/`.

use std::time::Duration;

use osmosis_protocol::{ReplyAddress, ReplyEnvelope, RequestEnvelope, RequestId, headers};
use osmosis_support::kafka::{header_pairs, to_record_headers};
use osmosis_worker::{HandlerError, Reply, Request, WorkerConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};

use osmosis_worker::config::Ordering;
use tokio::sync::{Barrier, oneshot};

const CHANNEL: &str = "orders";
const REPLIES: &str = "replies";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(CHANNEL, 1, 1).unwrap();
    cluster
        .create_topic(&format!("{CHANNEL}.dlq"), 1, 1)
        .unwrap();
    cluster.create_topic(REPLIES, 1, 1).unwrap();
    cluster
}

async fn send_request(brokers: &str, body: &str) -> RequestId {
    send_keyed_request(brokers, None, body).await
}

async fn send_keyed_request(brokers: &str, key: Option<&str>, body: &str) -> RequestId {
    let id = RequestId::new(Some(0));
    let envelope = RequestEnvelope {
        id,
        route: "orders".into(),
        method: "POST".into(),
        path: "/orders".into(),
        query: None,
        content_type: Some("text/plain".into()),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        forwarded: Vec::new(),
        reply_to: Some(ReplyAddress {
            topic: REPLIES.into(),
            partition: 0,
        }),
        deadline_ms: None,
        caller: None,
    };
    let headers = to_record_headers(envelope.to_headers());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut record = FutureRecord::to(CHANNEL).payload(body).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    id
}

/// Runs a worker with `config` and `handler` until `count` replies are in
/// the reply topic, then stops it cleanly; the replies.
async fn replies_of<H: osmosis_worker::Handler>(
    brokers: &str,
    config: WorkerConfig,
    handler: H,
    count: usize,
) -> Vec<OwnedMessage> {
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(osmosis_worker::run(config, handler, async {
        stopped.await.ok();
    }));
    let replies = tokio::task::spawn_blocking({
        let brokers = brokers.to_owned();
        move || records(&brokers, REPLIES, count)
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    replies
}

/// The first `count` records of `topic`, in partition order, waiting up
/// to 30 s.
fn records(brokers: &str, topic: &str, count: usize) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-all-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut records = Vec::with_capacity(count);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} records on {topic}",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            records.push(message.unwrap().detach());
        }
    }
    records
}

/// The first record of `topic`, waiting up to 30 s.
fn first_record(brokers: &str, topic: &str) -> OwnedMessage {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    for _ in 0..30 {
        if let Some(message) = consumer.poll(Duration::from_secs(1)) {
            return message.unwrap().detach();
        }
    }
    panic!("nothing on {topic}");
}

fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m [u8]> {
    header_pairs(message.headers()?)
        .into_iter()
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value)
}

fn committed(brokers: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{CHANNEL}.workers"))
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(CHANNEL, 0);
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    committed.elements()[0].offset()
}

fn config(brokers: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(brokers, CHANNEL);
    config.retry_backoff_ms = 10;
    config.max_retries = 1;
    config.drain_timeout_ms = 5_000;
    config
}

/// A request is answered on its reply address, and its offset is committed
/// by the time the drained worker returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_answered_then_committed() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let id = send_request(&brokers, "hello").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let shout = |request: Request| async move {
        let text = std::str::from_utf8(&request.body).unwrap().to_uppercase();
        Ok(Reply::ok(text).with_content_type("text/plain"))
    };
    let worker = tokio::spawn(osmosis_worker::run(config(&brokers), shout, async {
        stopped.await.ok();
    }));

    let reply = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || first_record(&brokers, REPLIES)
    })
    .await
    .unwrap();
    let envelope = ReplyEnvelope::from_headers(header_pairs(reply.headers().unwrap())).unwrap();
    assert_eq!(envelope.id, id);
    assert_eq!(envelope.status, 200);
    assert_eq!(reply.payload(), Some(&b"HELLO"[..]));

    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(committed(&brokers), Offset::Offset(1));
}

/// A handler failing every attempt sends the request to `<channel>.dlq`
/// with the error headers, the client gets a problem reply, and the offset
/// is committed.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_request_is_dead_lettered_and_answered_with_a_problem() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    send_request(&brokers, "hello").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let failing = |_: Request| async move {
        Err::<Reply, _>(HandlerError::retryable("down").with_status(503))
    };
    let worker = tokio::spawn(osmosis_worker::run(config(&brokers), failing, async {
        stopped.await.ok();
    }));

    let (letter, reply) = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || {
            (
                first_record(&brokers, &format!("{CHANNEL}.dlq")),
                first_record(&brokers, REPLIES),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(letter.payload(), Some(&b"hello"[..]));
    assert_eq!(header(&letter, headers::ERROR), Some(&b"down"[..]));
    assert_eq!(header(&letter, headers::ATTEMPTS), Some(&b"2"[..]));
    assert_eq!(header(&letter, headers::SOURCE), Some(&b"orders/0/0"[..]));
    assert_eq!(header(&letter, headers::METHOD), Some(&b"POST"[..]));
    assert_eq!(header(&reply, headers::STATUS), Some(&b"503"[..]));
    let problem: serde_json::Value = serde_json::from_slice(reply.payload().unwrap()).unwrap();
    assert_eq!(
        problem["detail"],
        "the worker failed after 2 attempt(s): down"
    );

    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(committed(&brokers), Offset::Offset(1));
}

/// With `--ordering key`, different keys of one partition run at once
/// (the first request of each of four keys waits for the other three to
/// start: it could not under partition order), each key's requests are
/// handled in their order, every request is answered, and the committed
/// offset is the whole partition once the worker drained.
#[tokio::test(flavor = "multi_thread")]
async fn key_ordering_runs_keys_of_a_partition_at_once_and_each_key_in_order() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    const KEYS: usize = 4;
    const PER_KEY: usize = 5;
    // Grouped by key: under partition order the replies would come key by key.
    for key in 0..KEYS {
        for seq in 0..PER_KEY {
            send_keyed_request(&brokers, Some(&format!("k{key}")), &format!("k{key}/{seq}")).await;
        }
    }
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let all_keys_started = Arc::new(Barrier::new(KEYS));
    let handler = {
        let handled = Arc::clone(&handled);
        move |request: Request| {
            let (handled, all_keys_started) = (Arc::clone(&handled), Arc::clone(&all_keys_started));
            async move {
                let body = String::from_utf8(request.body.to_vec()).unwrap();
                if body.ends_with("/0") {
                    all_keys_started.wait().await;
                }
                handled.lock().unwrap().push(body.clone());
                Ok(Reply::ok(body))
            }
        }
    };
    let mut config = config(&brokers);
    config.ordering = Ordering::Key;
    let replies = replies_of(&brokers, config, handler, KEYS * PER_KEY).await;

    let bodies: Vec<String> = replies
        .iter()
        .map(|r| String::from_utf8(r.payload().unwrap().to_vec()).unwrap())
        .collect();
    for key in 0..KEYS {
        let prefix = format!("k{key}/");
        let expected: Vec<String> = (0..PER_KEY).map(|seq| format!("k{key}/{seq}")).collect();
        let in_replies: Vec<&String> = bodies.iter().filter(|b| b.starts_with(&prefix)).collect();
        assert_eq!(
            in_replies,
            expected.iter().collect::<Vec<_>>(),
            "replies of k{key}"
        );
        let handled = handled.lock().unwrap();
        let in_handler: Vec<&String> = handled.iter().filter(|b| b.starts_with(&prefix)).collect();
        assert_eq!(
            in_handler,
            expected.iter().collect::<Vec<_>>(),
            "handled k{key}"
        );
    }
    assert_eq!(committed(&brokers), Offset::Offset((KEYS * PER_KEY) as i64));
}

/// Partition order with pipelined acknowledgements: many requests are
/// handled and answered in offset order, and the committed offset is the
/// whole partition once the worker drained.
#[tokio::test(flavor = "multi_thread")]
async fn partition_ordering_answers_in_offset_order_with_acknowledgements_pipelined() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    const COUNT: usize = 50;
    for seq in 0..COUNT {
        send_keyed_request(&brokers, Some(&format!("k{}", seq % 7)), &format!("{seq}")).await;
    }
    let handled: Arc<Mutex<Vec<usize>>> = Arc::default();
    let handler = {
        let handled = Arc::clone(&handled);
        move |request: Request| {
            let handled = Arc::clone(&handled);
            async move {
                let seq: usize = std::str::from_utf8(&request.body).unwrap().parse().unwrap();
                handled.lock().unwrap().push(seq);
                Ok(Reply::ok(request.body.clone()))
            }
        }
    };
    let replies = replies_of(&brokers, config(&brokers), handler, COUNT).await;

    let in_order: Vec<usize> = (0..COUNT).collect();
    let replied: Vec<usize> = replies
        .iter()
        .map(|r| {
            std::str::from_utf8(r.payload().unwrap())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(replied, in_order);
    assert_eq!(*handled.lock().unwrap(), in_order);
    assert_eq!(committed(&brokers), Offset::Offset(COUNT as i64));
}

/// A reply the broker does not acknowledge holds back the commit but not
/// the handler: with the reply partition's broker down, the handler still
/// gets the partition's next requests, and a worker drained meanwhile
/// commits nothing (at least once); once the broker is back, a new worker
/// answers every request and commits them all.
#[tokio::test(flavor = "multi_thread")]
async fn unacknowledged_replies_hold_back_the_commit_but_not_the_next_handler() {
    let cluster = MockCluster::new(2).unwrap();
    cluster.create_topic(CHANNEL, 1, 1).unwrap();
    cluster
        .create_topic(&format!("{CHANNEL}.dlq"), 1, 1)
        .unwrap();
    cluster.create_topic(REPLIES, 1, 1).unwrap();
    cluster.partition_leader(CHANNEL, 0, Some(1)).unwrap();
    cluster.partition_leader(REPLIES, 0, Some(2)).unwrap();
    cluster
        .coordinator(
            rdkafka::mocking::MockCoordinator::Group(format!("{CHANNEL}.workers")),
            1,
        )
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    const COUNT: usize = 5;
    for seq in 0..COUNT {
        send_keyed_request(&brokers, None, &format!("{seq}")).await;
    }
    cluster.broker_down(2).unwrap();

    let (seen_all, all_seen) = tokio::sync::mpsc::channel::<()>(COUNT);
    let handler = move |request: Request| {
        let seen_all = seen_all.clone();
        async move {
            seen_all.send(()).await.ok();
            Ok(Reply::ok(request.body.clone()))
        }
    };
    let mut held = config(&brokers);
    held.drain_timeout_ms = 500;
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(osmosis_worker::run(held, handler, async {
        stopped.await.ok();
    }));
    let mut all_seen = all_seen;
    for _ in 0..COUNT {
        tokio::time::timeout(Duration::from_secs(30), all_seen.recv())
            .await
            .expect("the handler got every request while no reply was acknowledged");
    }
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(
        committed(&brokers),
        Offset::Invalid,
        "nothing acknowledged, nothing committed"
    );

    cluster.broker_up(2).unwrap();
    let echo = |request: Request| async move { Ok(Reply::ok(request.body.clone())) };
    let replies = replies_of(&brokers, config(&brokers), echo, COUNT).await;
    assert!(replies.len() >= COUNT);
    assert_eq!(committed(&brokers), Offset::Offset(COUNT as i64));
}

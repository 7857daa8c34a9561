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
use tokio::sync::oneshot;

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
    producer
        .send(
            FutureRecord::<(), _>::to(CHANNEL)
                .payload(body)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    id
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

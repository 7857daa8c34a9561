//! The real Kafka broker the tests run against.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use osmosis_protocol::{ReplyAddress, RequestEnvelope, RequestId};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Environment variable naming the test broker's bootstrap address.
pub const BROKER_ENV: &str = "OSMOSIS_TEST_KAFKA";

/// Bootstrap address of the shared test broker. Panics with instructions
/// when it is not reachable: tests never skip for lack of Kafka.
pub fn bootstrap() -> &'static str {
    static CHECKED: OnceLock<String> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let brokers = std::env::var(BROKER_ENV).unwrap_or_else(|_| "127.0.0.1:9092".into());
        if let Err(error) = metadata_reachable(&brokers, Duration::from_secs(10)) {
            panic!(
                "Kafka is not reachable at {brokers} ({error}). These tests need a real broker: \
                 run `make test`, which starts one, or start it with `scripts/kafka.sh up` \
                 and set {BROKER_ENV}."
            );
        }
        brokers
    })
}

fn metadata_reachable(brokers: &str, timeout: Duration) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    producer
        .client()
        .fetch_metadata(None, timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh topic with `partitions` partitions on `brokers` and waits
/// until its metadata is visible.
pub async fn create_topic_on(brokers: &str, prefix: &str, partitions: i32) -> String {
    let name = unique_name(prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code}"));
    }
    // The creation is acknowledged before every partition has a leader that
    // answers; a client started right away could find no topic yet.
    let probe: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("consumer"),
    );
    crate::eventually(
        Duration::from_secs(30),
        &format!("topic {name} to have leaders for its {partitions} partitions"),
        || {
            let (probe, topic) = (std::sync::Arc::clone(&probe), name.clone());
            async move {
                tokio::task::spawn_blocking(move || topic_ready(&probe, &topic, partitions))
                    .await
                    .expect("metadata task")
                    .then_some(())
            }
        },
    )
    .await;
    name
}

/// Whether every partition of `topic` is known and answers for its offsets.
fn topic_ready(probe: &BaseConsumer, topic: &str, partitions: i32) -> bool {
    let timeout = Duration::from_secs(2);
    let Ok(metadata) = probe.fetch_metadata(Some(topic), timeout) else {
        return false;
    };
    let Some(found) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return false;
    };
    found.partitions().len() == partitions as usize
        && found.partitions().iter().all(|p| {
            p.error().is_none()
                && p.leader() >= 0
                && probe.fetch_watermarks(topic, p.id(), timeout).is_ok()
        })
}

/// Writes `count` records keyed `<prefix><i>` (value `work`) into `topic`
/// as one burst: all sent before any acknowledgement is awaited, so that a
/// burst lands within one surge-watch interval rather than trickling over
/// several; returns once every one is acknowledged.
pub async fn produce_keyed(topic: &str, prefix: &str, count: usize) {
    produce_values(topic, prefix, count, "work").await;
}

/// [`produce_keyed`] with `value` as every record's value.
pub async fn produce_values(topic: &str, prefix: &str, count: usize, value: &str) {
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("producer");
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
    let sends = keys.iter().map(|key| {
        producer.send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(value),
            Duration::from_secs(30),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(e, _)| e).expect("record acknowledged");
    }
}

/// Deletes the records of `partition` of `topic` below `before`, as
/// retention would.
pub async fn delete_records(topic: &str, partition: i32, before: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))
        .unwrap();
    let deleted = admin
        .delete_records(&offsets, &AdminOptions::new())
        .await
        .expect("delete_records request");
    for entry in deleted.elements() {
        entry.error().expect("records deleted");
    }
}

/// Consumes `count` records of `topic` on the shared test broker as a
/// member of `group`, committing each: what workers that drained the
/// channel leave behind. The member leaves the group on return.
pub async fn drain(topic: &str, group: &str, count: usize) {
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribing");
    for _ in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(90), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no record of {topic} within 90 s"))
            .expect("a record");
        consumer
            .commit_message(&message, rdkafka::consumer::CommitMode::Sync)
            .expect("committing");
    }
}

/// Creates a fresh topic on the shared test broker.
pub async fn create_topic(prefix: &str, partitions: i32) -> String {
    create_topic_on(bootstrap(), prefix, partitions).await
}

/// A record as read back from Kafka.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header called `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("UTF-8 header"))
    }

    fn from_message(message: &OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }
}

/// Reads `count` records of `topic` from the beginning of every partition
/// on `brokers`; panics if they do not all arrive within `timeout`.
pub fn read_records_from(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("osmosis-test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records from {topic} within {timeout:?}",
            records.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => records.push(Record::from_message(&message.detach())),
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    records
}

/// Reads `count` records of `topic` from the shared test broker.
pub fn read_records(topic: &str, count: usize, timeout: Duration) -> Vec<Record> {
    read_records_from(bootstrap(), topic, count, timeout)
}

/// Partitions of `topic` as the cluster's metadata lists them (0: none).
pub fn partition_count(brokers: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .sum()
        })
        .unwrap_or(0)
}

/// End offsets (high watermarks) of every partition of `topic`.
pub fn high_watermarks(brokers: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), high)
        })
        .collect()
}

/// The offsets `group` committed on `topic`'s partitions `0..partitions`
/// (-1: none yet).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(query, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), offset),
            _ => (e.partition(), -1),
        })
        .collect()
}

/// A request envelope as the record headers the gateway writes.
pub fn envelope_headers(envelope: &RequestEnvelope) -> OwnedHeaders {
    osmosis_support::kafka::to_record_headers(envelope.to_headers())
}

/// Writes requests as the gateway writes them (envelope, a reply address
/// on partition 0 of `replies`) into `channel`, one `(key, body)` each, in
/// order, into `partition` (or the key's partition); returns once every
/// one is acknowledged.
pub async fn produce_requests(
    channel: &str,
    replies: &str,
    partition: Option<i32>,
    requests: impl IntoIterator<Item = (String, String)>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, body) in requests {
        let envelope = RequestEnvelope {
            id: RequestId::new(Some(0)),
            route: "test".into(),
            method: "POST".into(),
            path: "/work".into(),
            query: None,
            content_type: Some("text/plain".into()),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            forwarded: Vec::new(),
            reply_to: Some(ReplyAddress {
                topic: replies.to_owned(),
                partition: 0,
            }),
            deadline_ms: None,
            caller: None,
        };
        let headers = envelope_headers(&envelope);
        let mut record = FutureRecord::to(channel)
            .key(&key)
            .payload(&body)
            .headers(headers);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("request acknowledged");
    }
}

/// A broker of a test's own, started with the project's script on its own
/// port and state directory, which the test may stop, freeze, kill and
/// start again.
pub struct DedicatedKafka {
    port: u16,
    controller_port: u16,
    state_dir: tempfile::TempDir,
}

impl DedicatedKafka {
    /// Starts a fresh broker on a free loopback port.
    pub fn start() -> Self {
        let port = free_port();
        let kafka = Self {
            port,
            controller_port: free_port(),
            state_dir: tempfile::tempdir().expect("temp dir"),
        };
        kafka.up();
        kafka
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same port and data.
    pub fn up(&self) {
        self.script("up");
    }

    /// Stops the broker (SIGTERM, then waits for the process to exit).
    pub fn down(&self) {
        self.script("down");
    }

    /// Freezes the broker process (SIGSTOP): its sockets stay open and
    /// nothing answers, as with a broker stuck in a long GC pause.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Kills the broker (SIGKILL: no orderly shutdown, so its next start
    /// recovers its logs as after a crash) and returns once the process is
    /// gone, so that [`Self::up`] can start it again on its ports and data.
    pub fn kill(&self) {
        let pid = self.pid();
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Signal 0 fails once the process is gone (and reaped: the broker
        // is not our child, its parent was the script).
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the broker outlived SIGKILL for 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> nix::unistd::Pid {
        let pid_file = self.state_dir.path().join("kafka.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("the broker's pid file")
            .trim()
            .parse()
            .expect("a pid");
        nix::unistd::Pid::from_raw(pid)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signalling the broker");
    }

    fn script(&self, verb: &str) {
        let status = Command::new(script_path())
            .arg(verb)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CTRL_PORT", self.controller_port.to_string())
            .env("KAFKA_STATE_DIR", self.state_dir.path())
            // The shared broker's SASL_SSL port (scripts/test.sh) is not ours.
            .env_remove("KAFKA_SASL_SSL_PORT")
            .status()
            .expect("running scripts/kafka.sh");
        assert!(status.success(), "scripts/kafka.sh {verb} failed: {status}");
    }
}

impl Drop for DedicatedKafka {
    fn drop(&mut self) {
        let _ = Command::new(script_path())
            .arg("down")
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_STATE_DIR", self.state_dir.path())
            .status();
    }
}

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Every `final` reply record of a reply topic, counted by request id (the
/// record's key): what a worker wrote as final answers, whatever else
/// (`accepted`, `progress` events) the topic holds.
pub fn final_replies(brokers: &str, topic: &str) -> HashMap<String, usize> {
    let total: i64 = high_watermarks(brokers, topic).values().sum();
    let mut finals = HashMap::new();
    for record in read_records_from(brokers, topic, total as usize, Duration::from_secs(30)) {
        if record.header("osmosis-event") == Some("final") {
            let id = String::from_utf8(record.key.unwrap_or_default()).expect("UTF-8 key");
            *finals.entry(id).or_default() += 1;
        }
    }
    finals
}

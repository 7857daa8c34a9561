//! The fault matrix, broker side: a broker frozen (SIGSTOP) and let go, or
//! killed (SIGKILL) and started again on its ports and data, while clients
//! publish, call a request-mode route and follow the channel. The
//! invariant (see `osmosis_e2e::load`): every request acknowledged with a
//! 202 or a 200 is in Kafka exactly once and gets exactly one final
//! answer, its own; the subscriber neither misses nor repeats a record
//! across its resumes; `/healthz` and `/readyz` answer within 1 s
//! throughout. What got a 503 may or may not be in Kafka (the client was
//! told to retry), but never twice.

use std::time::Duration;

use osmosis_e2e::kafka::{self, DedicatedKafka};
use osmosis_e2e::load::{self, Callers, Probes, Publisher, Subscriber};
use osmosis_e2e::process::{Gateway, Worker};

/// What happens to the broker in the middle of the load.
#[derive(Clone, Copy)]
enum Fault {
    /// SIGSTOP, then SIGCONT: its sockets stay open and nothing answers.
    Freeze,
    /// SIGKILL, then a start on the same ports and data directory.
    Restart,
}

impl Fault {
    /// Takes the broker away (`back: false`) or lets it back. The broker's
    /// script blocks this thread for seconds: the load and the probes go
    /// on on the runtime's other one.
    fn apply(self, broker: &DedicatedKafka, back: bool) {
        tokio::task::block_in_place(|| match (self, back) {
            (Fault::Freeze, false) => broker.pause(),
            (Fault::Freeze, true) => broker.resume(),
            (Fault::Restart, false) => broker.kill(),
            (Fault::Restart, true) => broker.up(),
        });
    }
}

/// Waits until both loads have had 20 more requests acknowledged.
async fn acknowledged_again(publisher: &Publisher, callers: &Callers, when: &str) {
    let publishes = format!("publishes {when}");
    publisher.tally().wait_acknowledged(20, &publishes).await;
    let calls = format!("calls {when}");
    callers.tally().wait_acknowledged(20, &calls).await;
}

/// Runs the load, applies `fault` once each load has been acknowledged
/// a few times, lets the broker back once the gateway refused a publish
/// (it noticed), and checks the invariant once each load has been
/// acknowledged again.
async fn under_load(fault: Fault) {
    let broker = DedicatedKafka::start();
    let topic = kafka::create_topic_on(&broker.bootstrap(), "fault", 2).await;
    let replies = kafka::unique_name("fault.replies");
    // A short wait for replies: calls waiting through the fault get their
    // 202 + Location and are polled later.
    let gateway = Gateway::start_with(
        &format!(
            "listen: 127.0.0.1:0\n\
             kafka: {{ brokers: \"{}\", produce_timeout_ms: 3000, metadata_timeout_ms: 500 }}\n\
             channels: {{ {topic}: {{ partitions: 2, subscribable: true }} }}\n\
             replies: {{ topic: {replies} }}\n\
             sse: {{ keep_alive_ms: 500 }}\n\
             routes:\n\
             \x20 - {{ method: POST, path: /in, channel: {topic} }}\n\
             \x20 - {{ method: POST, path: /work, channel: {topic}, mode: request, timeout_ms: 2000 }}\n",
            broker.bootstrap()
        ),
        &["--create-topics"],
    );
    let worker = Worker::start("examples/echo", &broker.bootstrap(), &topic, &[]);
    worker.wait_assigned();
    let probes = Probes::start(gateway.url(""));
    let subscriber =
        Subscriber::start(gateway.url(&format!("/v1/channels/{topic}?format=json"))).await;
    let publisher = Publisher::start(gateway.url("/in"));
    let callers = Callers::start(gateway.url("/work"), 4);
    acknowledged_again(&publisher, &callers, "before the fault").await;

    fault.apply(&broker, false);
    let noticed = "a 503 with the broker away";
    publisher.tally().wait_refused(noticed).await;
    fault.apply(&broker, true);
    acknowledged_again(&publisher, &callers, "after the fault").await;
    eprintln!(
        "refused: {} publishes, {} calls",
        publisher.tally().refused(),
        callers.tally().refused()
    );

    let called = callers.acknowledged(&gateway.url("")).await;
    // The worker may write a reply twice (at least once: its offset not
    // committed while the broker was away); its client saw one.
    let finals = kafka::final_replies(&broker.bootstrap(), &replies);
    let doubled = called
        .iter()
        .filter(|id| finals.get(*id) > Some(&1))
        .count();
    eprintln!("{doubled} of {} replies written twice", called.len());
    let mut acknowledged = publisher.acknowledged().await;
    acknowledged.extend(called);
    let total: i64 = kafka::high_watermarks(&broker.bootstrap(), &topic)
        .values()
        .sum();
    let records = kafka::read_records_from(
        &broker.bootstrap(),
        &topic,
        total as usize,
        Duration::from_secs(30),
    );
    load::assert_each_once(&records, &acknowledged);
    subscriber.assert_saw_each_once(&records).await;
    probes.assert_always_answered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_under_load_loses_and_doubles_nothing_and_probes_keep_answering() {
    under_load(Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_broker_under_load_loses_and_doubles_nothing_and_probes_keep_answering()
 {
    under_load(Fault::Restart).await;
}

//! One held-up partition does not hold the others back. The `slow` worker
//! holds every request keyed `held` (its handler waits until a request
//! keyed `held.release` is handled), and partition 0 holds more of them
//! than the worker keeps in memory for a partition (its pipeline, its queue
//! and 4 MiB held), so the worker pauses that partition
//! (`osmosis_worker_partitions_paused` 1).
//! Requests written to partitions 1 and 2 after that are all answered
//! while partition 0 is still held — the control: not one of its requests
//! has a reply yet. Once released, partition 0's requests are answered in
//! their order, every request has exactly one final reply and the
//! committed offsets are the end of every partition: the pause and resume
//! skipped nothing and repeated nothing.

use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::kafka::{self, Record};
use osmosis_e2e::process::{Worker, binary};

/// Requests on the held partition, of [`HELD_BYTES`] each: more than the
/// worker takes in for a partition before pausing it (its pipeline, its
/// queue and 4 MiB held).
const HELD: usize = 200;
const HELD_BYTES: usize = 64 * 1024;
/// Requests on each of the two other partitions.
const OTHERS: usize = 20;
const PAUSED: &str = "osmosis_worker_partitions_paused";

/// Reads the first `count` records of the reply topic.
async fn replies_read(replies: &str, count: usize) -> Vec<Record> {
    let replies = replies.to_owned();
    tokio::task::spawn_blocking(move || {
        kafka::read_records(&replies, count, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

fn body(record: &Record) -> String {
    String::from_utf8(record.value.clone()).unwrap()
}

/// The `i`th held request's body: its name, padded to [`HELD_BYTES`].
fn held_body(i: usize) -> String {
    let name = format!("held/{i}/");
    format!("{name}{}", ".".repeat(HELD_BYTES - name.len()))
}

#[tokio::test]
async fn a_full_partition_is_paused_and_the_other_partitions_are_answered_meanwhile() {
    let channel = kafka::create_topic("backpressure.requests", 3).await;
    let replies = kafka::create_topic("backpressure.replies", 1).await;
    let held = (0..HELD).map(|i| ("held".to_owned(), held_body(i)));
    kafka::produce_requests(&channel, &replies, Some(0), held).await;
    let slow = binary("examples/slow");
    let mut worker = Worker::start(
        slow.to_str().unwrap(),
        kafka::bootstrap(),
        &channel,
        &["--work-ms", "0", "--echo", "--hold-key", "held"],
    );
    worker
        .wait_metric(PAUSED, 1.0, Duration::from_secs(60))
        .await;

    for partition in [1, 2] {
        let others = (0..OTHERS).map(move |i| (format!("k{i}"), format!("p{partition}/{i}")));
        kafka::produce_requests(&channel, &replies, Some(partition), others).await;
    }
    let answered = replies_read(&replies, 2 * OTHERS).await;
    let mut bodies: Vec<String> = answered.iter().map(body).collect();
    bodies.sort();
    let mut expected: Vec<String> = [1, 2]
        .into_iter()
        .flat_map(|partition| (0..OTHERS).map(move |i| format!("p{partition}/{i}")))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected, "partitions 1 and 2 answered");
    let finals = kafka::final_replies(kafka::bootstrap(), &replies);
    assert_eq!(
        finals.len(),
        2 * OTHERS,
        "the held partition is still held: none of its requests is answered"
    );
    assert_eq!(worker.metric(PAUSED).await, Some(1.0));

    let release = [("held.release".to_owned(), "release".to_owned())];
    kafka::produce_requests(&channel, &replies, Some(1), release).await;
    let total = HELD + 2 * OTHERS + 1;
    let all = replies_read(&replies, total).await;
    let held_bodies: Vec<String> = all
        .iter()
        .map(body)
        .filter(|body| body.starts_with("held/"))
        .collect();
    let held_expected: Vec<String> = (0..HELD).map(held_body).collect();
    assert_eq!(
        held_bodies, held_expected,
        "the held partition in its order"
    );
    worker
        .wait_metric(PAUSED, 0.0, Duration::from_secs(30))
        .await;

    worker.service.signal(Signal::SIGTERM);
    assert!(worker.service.wait_exit(Duration::from_secs(30)).success());
    let finals = kafka::final_replies(kafka::bootstrap(), &replies);
    assert_eq!(finals.len(), total, "one final reply per request");
    assert!(finals.values().all(|n| *n == 1), "{finals:?}");
    let ends = kafka::high_watermarks(kafka::bootstrap(), &channel);
    let group = format!("{channel}.workers");
    assert_eq!(kafka::committed_offsets(&group, &channel, 3), ends);
}

//! The worker's ordering against the real broker: requests written as the
//! gateway writes them (envelope, reply address, a routing key), grouped by
//! key in the channel, answered by the `slow` worker (100 ms per request):
//! - `--ordering key`: each key's replies come in its requests' order, and
//!   keys overlap: a later key's first reply comes before an earlier key's
//!   last one, which a worker taking one request at a time could not do;
//! - `--ordering partition` (the default, pipelined): the replies come in
//!   the channel's order, exactly;
//! - either way every request gets one final reply and, once the worker
//!   drained on SIGTERM, the group's committed offset is the whole channel.

use std::time::Duration;

use nix::sys::signal::Signal;
use osmosis_e2e::kafka::{self, Record};
use osmosis_e2e::process::{Worker, binary};

const KEYS: usize = 4;
const PER_KEY: usize = 5;

/// A one-partition channel holding `KEYS × PER_KEY` requests, key by key
/// (`k0/0 … k0/4, k1/0 …`), with their reply topic.
async fn backlog(prefix: &str) -> (String, String) {
    let channel = kafka::create_topic(&format!("{prefix}.requests"), 1).await;
    let replies = kafka::create_topic(&format!("{prefix}.replies"), 1).await;
    let requests = (0..KEYS)
        .flat_map(|key| (0..PER_KEY).map(move |seq| (format!("k{key}"), format!("k{key}/{seq}"))));
    kafka::produce_requests(&channel, &replies, None, requests).await;
    (channel, replies)
}

/// Runs the slow echo worker with `args` on `channel` until every request
/// has its reply, stops it with SIGTERM, and returns the reply bodies in
/// the reply topic's order, after checking one final reply per request and
/// the committed offset.
async fn answered(channel: &str, replies: &str, args: &[&str]) -> Vec<String> {
    let slow = binary("examples/slow");
    let mut all_args = vec!["--work-ms", "100", "--echo"];
    all_args.extend_from_slice(args);
    let mut worker = Worker::start(
        slow.to_str().unwrap(),
        kafka::bootstrap(),
        channel,
        &all_args,
    );
    let total = KEYS * PER_KEY;
    let records = {
        let replies = replies.to_owned();
        tokio::task::spawn_blocking(move || {
            kafka::read_records(&replies, total, Duration::from_secs(60))
        })
        .await
        .unwrap()
    };
    worker.service.signal(Signal::SIGTERM);
    assert!(worker.service.wait_exit(Duration::from_secs(30)).success());

    let finals = kafka::final_replies(kafka::bootstrap(), replies);
    assert_eq!(finals.len(), total, "one final reply per request");
    assert!(finals.values().all(|n| *n == 1), "{finals:?}");
    let group = format!("{channel}.workers");
    assert_eq!(
        kafka::committed_offsets(&group, channel, 1)[&0],
        total as i64
    );
    records.iter().map(body).collect()
}

fn body(record: &Record) -> String {
    String::from_utf8(record.value.clone()).unwrap()
}

/// Positions of `key`'s replies in `bodies`, and its bodies in that order.
fn of_key(bodies: &[String], key: usize) -> (Vec<usize>, Vec<String>) {
    let prefix = format!("k{key}/");
    bodies
        .iter()
        .enumerate()
        .filter(|(_, body)| body.starts_with(&prefix))
        .map(|(position, body)| (position, body.clone()))
        .unzip()
}

#[tokio::test]
async fn key_ordering_keeps_each_keys_order_and_runs_the_keys_of_a_partition_at_once() {
    let (channel, replies) = backlog("ordering.key").await;
    let bodies = answered(&channel, &replies, &["--ordering", "key"]).await;
    for key in 0..KEYS {
        let (_, in_order) = of_key(&bodies, key);
        let expected: Vec<String> = (0..PER_KEY).map(|seq| format!("k{key}/{seq}")).collect();
        assert_eq!(in_order, expected, "k{key}'s replies in {bodies:?}");
    }
    // One request at a time would answer k0 entirely before k1 began.
    for key in 1..KEYS {
        let (earlier, _) = of_key(&bodies, key - 1);
        let (later, _) = of_key(&bodies, key);
        assert!(
            later[0] < earlier[PER_KEY - 1],
            "k{key} started only after k{} finished: {bodies:?}",
            key - 1
        );
    }
}

#[tokio::test]
async fn partition_ordering_answers_in_the_channels_order_with_acknowledgements_pipelined() {
    let (channel, replies) = backlog("ordering.partition").await;
    let bodies = answered(&channel, &replies, &[]).await;
    let expected: Vec<String> = (0..KEYS)
        .flat_map(|key| (0..PER_KEY).map(move |seq| format!("k{key}/{seq}")))
        .collect();
    assert_eq!(bodies, expected);
}

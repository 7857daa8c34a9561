//! Worker: one worker process's throughput on a pre-filled backlog, the
//! sequential loop against the pipelined runtime, in one run against one
//! broker.
//!
//! For each configuration: a fresh channel (3 partitions by default) is
//! filled with N request records as the gateway writes them (the request
//! envelope in the headers, a reply address, a key), then one worker
//! process starts on it; the clock runs from its partition assignment to
//! the moment every reply is in the reply topic (the sum of its high
//! watermarks). `--max-in-flight-per-partition 1` is the old sequential
//! loop (each reply acknowledged before the partition's next message); the
//! default is the pipelined runtime; `--ordering key` runs different keys
//! of a partition at once.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use osmosis_e2e::kafka;
use osmosis_e2e::process::Worker;
use osmosis_protocol::{ReplyAddress, RequestEnvelope, RequestId};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::load::header;

#[derive(Parser)]
pub struct WorkerArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Requests in the backlog for the `echo` handler.
    #[arg(long, default_value_t = 30_000)]
    echo_messages: usize,
    /// Requests in the backlog for the 10 ms handler.
    #[arg(long, default_value_t = 2_000)]
    slow_messages: usize,
    /// Partitions of the channel (and of the reply topic).
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Distinct record keys in the backlog (spread over the partitions).
    #[arg(long, default_value_t = 64)]
    keys: usize,
    /// Work per message of the slow handler (`slow --work-ms`).
    #[arg(long, default_value_t = 10)]
    work_ms: u64,
    /// A directory holding another build's `echo` example (e.g. one built
    /// from `main`): its default runtime is measured in the same run too,
    /// for before/after tables.
    #[arg(long)]
    baseline_examples: Option<std::path::PathBuf>,
}

/// One measured configuration.
struct Case {
    handler: &'static str,
    runtime: String,
    binary: String,
    args: Vec<String>,
    messages: usize,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let sequential = ["--max-in-flight-per-partition", "1"];
    let pipelined: [&str; 0] = [];
    let keyed = ["--ordering", "key"];
    let slow = ["--work-ms", &args.work_ms.to_string(), "--echo"].map(str::to_owned);
    let mut cases = Vec::new();
    for (runtime, flags) in [
        (
            "sequential (`--max-in-flight-per-partition 1`)",
            &sequential[..],
        ),
        (
            "pipelined (default: partition order, 32 in flight)",
            &pipelined[..],
        ),
        ("pipelined, `--ordering key`", &keyed[..]),
    ] {
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        cases.push(Case {
            handler: "echo",
            runtime: runtime.to_owned(),
            binary: "examples/echo".to_owned(),
            args: flags.clone(),
            messages: args.echo_messages,
        });
        cases.push(Case {
            handler: "slow, 10 ms",
            runtime: runtime.to_owned(),
            binary: "examples/slow".to_owned(),
            args: [flags, slow.to_vec()].concat(),
            messages: args.slow_messages,
        });
    }
    if let Some(baseline) = &args.baseline_examples {
        cases.push(Case {
            handler: "echo",
            runtime: format!("pipelined, baseline build (`{}`)", baseline.display()),
            binary: baseline.join("echo").display().to_string(),
            args: Vec::new(),
            messages: args.echo_messages,
        });
    }
    cases.sort_by_key(|case| case.handler);

    let mut rows = Vec::new();
    for case in &cases {
        let elapsed = measure(&args, case).await?;
        rows.push((case, elapsed));
    }

    header(
        "Worker throughput: one worker on a pre-filled backlog, sequential against pipelined",
        &format!(
            "one worker process, {} partitions, {} keys, requests written as the gateway writes them (envelope, reply address), time from partition assignment to every reply in the reply topic; every configuration in this run against the same broker",
            args.partitions, args.keys,
        ),
    );
    println!("| handler | runtime | messages | seconds | msg/s |");
    println!("|---|---|---:|---:|---:|");
    for (case, elapsed) in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} |",
            case.handler,
            case.runtime,
            case.messages,
            elapsed.as_secs_f64(),
            case.messages as f64 / elapsed.as_secs_f64(),
        );
    }
    println!(
        "\n`--max-in-flight-per-partition 1` is the runtime before pipelining: one message per partition at a time, its reply acknowledged before the next is taken."
    );
    println!(
        "Target (performance issue): `echo` through one worker on 3 partitions ≥ 5,000 msg/s."
    );
    Ok(())
}

/// Fills a fresh channel with `case.messages` requests, runs the worker on
/// it and returns the time from its assignment to the last reply.
async fn measure(args: &WorkerArgs, case: &Case) -> anyhow::Result<Duration> {
    let channel =
        kafka::create_topic_on(&args.brokers, "bench.worker.requests", args.partitions).await;
    let replies =
        kafka::create_topic_on(&args.brokers, "bench.worker.replies", args.partitions).await;
    fill(args, &channel, &replies, case.messages).await?;
    let flags: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let worker = Worker::start(&case.binary, &args.brokers, &channel, &flags);
    let brokers = args.brokers.clone();
    let expected = case.messages as i64;
    let elapsed = tokio::task::spawn_blocking(move || {
        worker.wait_assigned();
        let started = Instant::now();
        loop {
            let done: i64 = kafka::high_watermarks(&brokers, &replies).values().sum();
            if done >= expected {
                return (started.elapsed(), worker);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .await
    .context("waiting for the replies")?;
    drop(elapsed.1);
    Ok(elapsed.0)
}

/// Writes `count` request records to `channel`, spread evenly over its
/// partitions and over `args.keys` keys, each expecting its reply on the
/// same partition of `replies`.
async fn fill(args: &WorkerArgs, channel: &str, replies: &str, count: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating the backlog's producer")?;
    let body = br#"{"order":42,"items":["tea","milk"]}"#;
    let mut deliveries = Vec::with_capacity(count);
    for i in 0..count {
        let partition = (i % args.partitions as usize) as i32;
        let envelope = RequestEnvelope {
            id: RequestId::new(Some(partition)),
            route: "bench".into(),
            method: "POST".into(),
            path: "/work".into(),
            query: None,
            content_type: Some("application/json".into()),
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            forwarded: Vec::new(),
            reply_to: Some(ReplyAddress {
                topic: replies.to_owned(),
                partition,
            }),
            deadline_ms: None,
            caller: None,
        };
        let headers = kafka::envelope_headers(&envelope);
        let key = format!("k{}", i % args.keys);
        let record = FutureRecord::to(channel)
            .partition(partition)
            .key(&key)
            .payload(&body[..])
            .headers(headers);
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| error)
            .context("filling the backlog")?;
        deliveries.push(delivery);
        if deliveries.len() == 10_000 {
            acknowledged(deliveries.drain(..)).await?;
        }
    }
    acknowledged(deliveries).await
}

/// Waits until every record of `deliveries` is acknowledged.
async fn acknowledged(
    deliveries: impl IntoIterator<Item = rdkafka::producer::DeliveryFuture>,
) -> anyhow::Result<()> {
    for sent in futures::future::join_all(deliveries).await {
        sent.context("the producer went away")?
            .map_err(|(error, _)| error)
            .context("filling the backlog")?;
    }
    Ok(())
}

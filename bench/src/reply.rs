//! Reply: the request-reply round trip through the gateway against its
//! floor, Kafka's own round trip with plain rdkafka clients, at the same
//! fixed arrival rates, in one run against one broker.
//!
//! - **Gateway**: open-loop HTTP requests to a request-mode route, answered
//!   by the `echo` worker: client → gateway → channel → worker → reply
//!   partition → gateway → client.
//! - **Raw floor**: produce a request record → a plain consumer reads it →
//!   a plain producer writes the reply → a plain consumer hands it to the
//!   waiting caller; both producers with the gateway's producer settings
//!   (acks=all, idempotent, no linger, and any `--gateway-property`). No HTTP, no envelope, no offsets stored: what any Kafka
//!   request-reply costs on this broker.
//!
//! Latency is measured from each request's scheduled send time (open loop),
//! so a slow path cannot hide its queueing by slowing the offered load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::fleet::request_op;
use crate::load::{Sample, header, open_loop};
use crate::properties::GatewayProperties;
use osmosis_support::kafka::PropertyParser;

#[derive(Parser)]
pub struct ReplyArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Arrival rates (requests per second) to measure, both paths each.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,1500")]
    rates: Vec<f64>,
    /// While the last rate keeps the gateway's p99 within 100 ms without
    /// errors, the run goes on at half as much again, up to this rate: the
    /// highest rate within the bound is found, not assumed to be the last
    /// one listed. `0` measures the listed rates only.
    #[arg(long, default_value_t = 20000.0)]
    max_rate: f64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Partitions of the request channels.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// An extra flag for the `echo` worker (repeatable), e.g.
    /// `--worker-arg=--max-in-flight-per-partition=1` for the sequential
    /// loop or `--worker-arg=--producer-property=linger.ms=0`.
    #[arg(long = "worker-arg", allow_hyphen_values = true)]
    worker_args: Vec<String>,
    /// A librdkafka property of the gateway's clients and of the raw
    /// floor's producers (repeatable), e.g.
    /// `--gateway-property linger.ms=0`.
    #[arg(long = "gateway-property", value_parser = PropertyParser)]
    gateway_properties: Vec<(String, String)>,
}

pub async fn run(args: ReplyArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);

    let channel =
        kafka::create_topic_on(&args.brokers, "bench.reply.requests", args.partitions).await;
    let replies =
        kafka::create_topic_on(&args.brokers, "bench.reply.replies", args.partitions).await;
    let worker_args: Vec<&str> = args.worker_args.iter().map(String::as_str).collect();
    let worker = Worker::start("examples/echo", &args.brokers, &channel, &worker_args);
    worker.wait_assigned();
    let properties = GatewayProperties(args.gateway_properties.clone());
    // The load generator is one client address standing for many clients:
    // past saturation it opens more connections than one client may hold,
    // and the rows would show the per-client cap instead of the gateway.
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         {kafka}\
         channels: {{ {channel}: {{}} }}\n\
         replies: {{ topic: {replies} }}\n\
         routes:\n  - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 30000, max_wait_ms: 30000 }}\n\
         limits: {{ connections: {{ per_client: 100000 }} }}\n",
        kafka = properties.kafka_yaml(&args.brokers),
    ));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let gateway_op = request_op(http, Arc::new(Mutex::new(vec![gateway.url("")])));

    let raw = RawRoundTrip::start(&args.brokers, args.partitions, &properties).await?;
    let raw_op = raw.op();

    // Warm both paths: connections, metadata, the worker's first fetches.
    open_loop(50.0, Duration::from_secs(3), gateway_op.clone()).await;
    open_loop(50.0, Duration::from_secs(3), raw_op.clone()).await;

    let mut rows = Vec::new();
    let mut rates = args.rates.clone();
    let mut next = 0;
    while let Some(&rate) = rates.get(next) {
        let raw_sample = open_loop(rate, duration, raw_op.clone()).await;
        let gateway_sample = open_loop(rate, duration, gateway_op.clone()).await;
        next += 1;
        if next == rates.len() && within_bound(&gateway_sample) {
            let higher = (rate * 1.5 / 100.0).round() * 100.0;
            if higher > rate && higher <= args.max_rate {
                rates.push(higher);
            }
        }
        rows.push((rate, gateway_sample, raw_sample));
    }

    header(
        "Request-reply round trip: the gateway against Kafka's own round trip",
        &format!(
            "one `echo` worker ({}), gateway properties: {}, {} partitions, open-loop, {} s per rate, both paths against the same broker in one run",
            if worker_args.is_empty() {
                "default flags".to_owned()
            } else {
                worker_args.join(" ")
            },
            properties.describe(),
            args.partitions,
            args.seconds,
        ),
    );
    println!("| rate/s | path | done | p50 ms | p99 ms | p99.9 ms | max ms | errors |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (rate, gateway_sample, raw_sample) in &rows {
        line(*rate, "gateway", gateway_sample);
        line(*rate, "raw Kafka", raw_sample);
        println!(
            "| {rate:.0} | gateway − raw | | {:+.1} | {:+.1} | {:+.1} | | |",
            gateway_sample.ms(0.5) - raw_sample.ms(0.5),
            gateway_sample.ms(0.99) - raw_sample.ms(0.99),
            gateway_sample.ms(0.999) - raw_sample.ms(0.999),
        );
    }
    let best = rows
        .iter()
        .filter(|(_, gateway, _)| within_bound(gateway))
        .map(|(rate, _, _)| *rate)
        .fold(None, |best: Option<f64>, rate| {
            Some(best.map_or(rate, |b| b.max(rate)))
        });
    let beyond = match rows.last() {
        Some((rate, gateway, _)) if !within_bound(gateway) => {
            format!("{rate:.0} req/s, the last rate measured, was not")
        }
        _ => "the run stopped at the highest rate asked for (`--max-rate`, `--rates`)".to_owned(),
    };
    match best {
        Some(rate) => println!(
            "\nHighest measured rate with the gateway's p99 ≤ 100 ms and no errors: **{rate:.0} req/s**; {beyond}."
        ),
        None => println!("\nNo measured rate kept the gateway's p99 ≤ 100 ms without errors."),
    }
    println!("Targets (performance issue): at 500 req/s, p50 ≤ raw p50 + 2 ms and p99 ≤ 10 ms.");
    drop((gateway, worker, raw));
    Ok(())
}

/// The bound the highest rate is searched under: p99 ≤ 100 ms, no errors.
fn within_bound(sample: &Sample) -> bool {
    sample.errors == 0 && sample.ms(0.99) <= 100.0
}

fn line(rate: f64, path: &str, sample: &Sample) {
    println!("| {rate:.0} | {path} | {} |", sample.cells());
}

type Op = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// Kafka's own request-reply round trip: a plain echo service between two
/// topics and a caller that matches replies to requests by key.
struct RawRoundTrip {
    producer: FutureProducer,
    requests: String,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
    next: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RawRoundTrip {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RawRoundTrip {
    async fn start(
        brokers: &str,
        partitions: i32,
        properties: &GatewayProperties,
    ) -> anyhow::Result<Self> {
        let requests = kafka::create_topic_on(brokers, "bench.raw.requests", partitions).await;
        let replies = kafka::create_topic_on(brokers, "bench.raw.replies", partitions).await;
        let producer = properties.raw_producer(brokers)?;
        let echo_in = consumer_at_end(brokers, &requests, partitions)?;
        let echo_out = properties.raw_producer(brokers)?;
        let replies_in = consumer_at_end(brokers, &replies, partitions)?;
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();

        let echo = {
            let replies = replies.clone();
            tokio::spawn(async move {
                while let Ok(message) = echo_in.recv().await {
                    let key = message.key().unwrap_or_default().to_vec();
                    let value = message.payload().unwrap_or_default().to_vec();
                    let delivery =
                        echo_out.send_result(FutureRecord::to(&replies).key(&key).payload(&value));
                    // The reply's acknowledgement is not awaited before the
                    // next request: the floor is Kafka's, not a worker's.
                    if let Ok(delivery) = delivery {
                        tokio::spawn(delivery);
                    }
                }
            })
        };
        let deliver = {
            let waiting = Arc::clone(&waiting);
            tokio::spawn(async move {
                while let Ok(message) = replies_in.recv().await {
                    let id = message
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.parse::<u64>().ok());
                    if let Some(waiter) = id.and_then(|id| waiting.lock().unwrap().remove(&id)) {
                        let _ = waiter.send(());
                    }
                }
            })
        };
        Ok(Self {
            producer,
            requests,
            waiting,
            next: Arc::default(),
            tasks: vec![echo, deliver],
        })
    }

    /// One raw round trip; a success is the reply arriving.
    fn op(&self) -> impl Fn() -> Op + Clone + Send + 'static {
        let (producer, requests, waiting, next) = (
            self.producer.clone(),
            self.requests.clone(),
            Arc::clone(&self.waiting),
            Arc::clone(&self.next),
        );
        move || {
            let (producer, requests, waiting) =
                (producer.clone(), requests.clone(), Arc::clone(&waiting));
            let id = next.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let (tx, rx) = oneshot::channel();
                waiting.lock().unwrap().insert(id, tx);
                let key = id.to_string();
                let sent = producer
                    .send(
                        FutureRecord::to(&requests).key(&key).payload("request"),
                        Duration::from_secs(30),
                    )
                    .await;
                if sent.is_err() {
                    waiting.lock().unwrap().remove(&id);
                    return false;
                }
                tokio::time::timeout(Duration::from_secs(60), rx)
                    .await
                    .is_ok_and(|r| r.is_ok())
            }) as Op
        }
    }
}

/// A consumer of every partition of `topic` from its current end.
fn consumer_at_end(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.bench"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating a raw consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

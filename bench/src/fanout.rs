//! Fan-out: N concurrent SSE subscribers on one gateway (HTTP/1.1 with one
//! connection each, or HTTP/2 with many streams per connection), records
//! produced to the channel at a fixed rate. Measures delivery latency from
//! produce to receipt (the record's value is its produce time), events
//! delivered per second, and the gateway's resident memory per subscriber:
//! (RSS with N subscribers − RSS idle) / N; next to it the same for
//! `sse-floor`, the bare HTTP stack holding streams and fanning out events
//! POSTed to it (no Kafka), with hyper's defaults and with the gateway's
//! listener; with `--baseline-gateway`, another build of the gateway in the
//! same run.
//!
//! The subscribers run in this process with a minimal SSE line scanner (the
//! tests use a full SSE client library; here the client's own CPU cost would
//! otherwise be what is measured on a 2-core machine).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::floor::Floor;
use crate::load::header;

#[derive(Parser)]
pub struct FanoutArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Subscriber counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    subscribers: Vec<usize>,
    /// Records per second to produce.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    rates: Vec<u64>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Protocols to measure: `h1` (one connection per subscriber, like
    /// browsers' EventSource over HTTP/1.1) and `h2` (cleartext HTTP/2,
    /// `--streams-per-connection` subscribers multiplexed per connection).
    #[arg(long, value_delimiter = ',', default_value = "h1,h2")]
    protocols: Vec<String>,
    /// Subscribers sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// Another gateway binary measured in the same run after this build's
    /// (e.g. one built from `main`), for before/after tables.
    #[arg(long)]
    baseline_gateway: Option<PathBuf>,
}

/// Latency histogram: 100 µs buckets up to 10 s, shared by all subscribers.
struct Latencies {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
}

const BUCKET_MICROS: u64 = 100;
const BUCKETS: usize = 100_000;

impl Latencies {
    fn new() -> Self {
        Self {
            buckets: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
        }
    }

    fn record(&self, micros: u64) {
        let bucket = ((micros / BUCKET_MICROS) as usize).min(BUCKETS);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn reset(&self) {
        self.buckets
            .iter()
            .for_each(|b| b.store(0, Ordering::Relaxed));
        self.count.store(0, Ordering::Relaxed);
    }

    /// Upper bound of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count.load(Ordering::Relaxed);
        let rank = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank.max(1) {
                return ((i as u64 + 1) * BUCKET_MICROS) as f64 / 1000.0;
            }
        }
        f64::INFINITY
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One subscriber: counts itself subscribed, then records the latency of
/// every `record` event until the connection ends.
async fn subscriber(
    http: reqwest::Client,
    url: String,
    subscribed: Arc<AtomicUsize>,
    latencies: Arc<Latencies>,
    mut connecting: Option<tokio::sync::OwnedSemaphorePermit>,
) -> anyhow::Result<()> {
    let response = http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "subscription answered {}",
        response.status()
    );
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        // Events usually arrive one per chunk: parse them in place.
        let buffer: &[u8] = if pending.is_empty() {
            &chunk
        } else {
            pending.extend_from_slice(&chunk);
            &pending
        };
        let mut consumed = 0;
        while let Some(end) = find(&buffer[consumed..], b"\n\n") {
            let block = &buffer[consumed..consumed + end];
            consumed += end + 2;
            let mut event: &[u8] = b"";
            let mut data: &[u8] = b"";
            for line in block.split(|b| *b == b'\n') {
                if let Some(name) = line.strip_prefix(b"event: ") {
                    event = name;
                } else if let Some(value) = line.strip_prefix(b"data: ") {
                    data = value;
                }
            }
            match event {
                b"subscribed" => {
                    subscribed.fetch_add(1, Ordering::Relaxed);
                    connecting.take();
                }
                b"record" => {
                    if let Some(sent) = std::str::from_utf8(data)
                        .ok()
                        .and_then(|d| d.parse::<u64>().ok())
                    {
                        latencies.record(now_micros().saturating_sub(sent));
                    }
                }
                _ => {}
            }
        }
        let rest = buffer[consumed..].to_vec();
        pending = rest;
    }
    Ok(())
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let topic = kafka::create_topic_on(&args.brokers, "bench.fanout", 3).await;
    let max = args.subscribers.iter().copied().max().unwrap_or(0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "0")
        .create()
        .context("creating the producer")?;

    header(
        "Fan-out: SSE subscribers on one gateway",
        &format!(
            "{} records/s per row for {} s, HTTP/2 with {} subscribers per connection",
            args.rates
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            args.seconds,
            args.streams_per_connection
        ),
    );
    // The floors first, on an idle machine: what the HTTP stack costs per
    // held event stream before any Osmosis code, with hyper's defaults and
    // with the gateway's own listener and settings.
    println!(
        "| floor | protocol | subscribers | connections | KiB per subscriber | records/s | events delivered/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for protocol in &args.protocols {
        for floor in ["stock", "gateway"] {
            measure_floor(&args, floor, protocol, max).await?;
        }
    }
    println!();
    println!(
        "| gateway | protocol | subscribers | connections | records/s | events delivered/s | expected/s | p50 ms | p99 ms | max ms | RSS idle MiB | RSS with subscribers MiB | KiB per subscriber |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut gateways = vec![("this build".to_owned(), "osmosis-gateway".to_owned())];
    if let Some(baseline) = &args.baseline_gateway {
        gateways.push(("baseline".to_owned(), baseline.display().to_string()));
    }
    for (label, binary) in &gateways {
        let gateway = Gateway::start_binary(
            binary,
            &format!(
                "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\n\
                 channels: {{ {topic}: {{ partitions: 3, subscribable: true }} }}\n\
                 sse: {{ max_connections: {} }}\n\
                 limits: {{ connections: {{ max: {}, per_client: {} }} }}\n",
                args.brokers,
                max + 100,
                max + 200,
                max + 200,
            ),
            &[],
        );
        measure_gateway(&args, label, &gateway, &topic, &producer).await?;
    }
    println!();
    Ok(())
}

/// The subscriptions of one measurement: `count` subscribers over
/// `protocol`, connecting 64 at a time, as a fleet of clients ramps up,
/// rather than as one burst whose transient peak would be measured instead
/// of what holding the connections costs. Returns once all are subscribed.
struct Subscribers {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Dropped after the tasks, to close the connections.
    clients: Vec<reqwest::Client>,
    connections: usize,
}

impl Subscribers {
    async fn connect(
        url: &str,
        protocol: &str,
        count: usize,
        streams_per_connection: usize,
        latencies: &Arc<Latencies>,
    ) -> anyhow::Result<Self> {
        let (clients, connections) = match protocol {
            "h1" => (
                vec![
                    reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()?,
                ],
                count,
            ),
            "h2" => {
                let connections = count.div_ceil(streams_per_connection);
                let clients = (0..connections)
                    .map(|_| reqwest::Client::builder().http2_prior_knowledge().build())
                    .collect::<Result<Vec<_>, _>>()?;
                (clients, connections)
            }
            other => anyhow::bail!("unknown protocol {other:?}: h1 or h2"),
        };
        let subscribed = Arc::new(AtomicUsize::new(0));
        let connecting = Arc::new(tokio::sync::Semaphore::new(64));
        let tasks: Vec<_> = (0..count)
            .map(|i| {
                let permit = connecting.clone();
                let (client, url, subscribed, latencies) = (
                    clients[i % clients.len()].clone(),
                    url.to_owned(),
                    subscribed.clone(),
                    latencies.clone(),
                );
                tokio::spawn(async move {
                    let permit = permit.acquire_owned().await.expect("never closed");
                    subscriber(client, url, subscribed, latencies, Some(permit)).await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while subscribed.load(Ordering::Relaxed) < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {count} subscribers connected",
                subscribed.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            tasks,
            clients,
            connections,
        })
    }

    fn close(self) {
        self.tasks.iter().for_each(|task| task.abort());
        drop(self.clients);
    }
}

/// Every row of one gateway build: per protocol and subscriber count, the
/// memory the subscriptions hold and the delivery at each rate.
async fn measure_gateway(
    args: &FanoutArgs,
    label: &str,
    gateway: &Gateway,
    topic: &str,
    producer: &FutureProducer,
) -> anyhow::Result<()> {
    let pid = gateway.service.pid();
    let url = gateway.url(&format!("/v1/channels/{topic}"));
    let latencies = Arc::new(Latencies::new());
    // One subscription first starts the topic's live feed (its Kafka
    // consumer), so that "idle" includes it and the rows measure connections;
    // records go through until it gets one, so that no row times the feed's
    // first fetch or the producer's first metadata request.
    let publish = |i: u64, value: String| async move {
        let key = (i % 3).to_string();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|(error, _)| anyhow::Error::from(error))
    };
    let warmed = Arc::new(Latencies::new());
    let warm_up = Subscribers::connect(&url, "h1", 1, 1, &warmed).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while warmed.count.load(Ordering::Relaxed) == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no record reached the warm-up subscriber of {url} within 30 s"
        );
        publish(0, now_micros().to_string()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for protocol in &args.protocols {
        for &count in &args.subscribers {
            let idle = rss_kib(pid);
            let subscribers = Subscribers::connect(
                &url,
                protocol,
                count,
                args.streams_per_connection,
                &latencies,
            )
            .await?;
            let connected = rss_kib(pid);
            let per_subscriber = connected.saturating_sub(idle) as f64 / count as f64;
            for &rate in &args.rates {
                let delivery = deliver(args, rate, count, &latencies, publish).await?;
                println!(
                    "| {label} | {protocol} | {count} | {} | {rate} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    subscribers.connections,
                    delivery.per_second,
                    (rate * count as u64) as f64,
                    delivery.p50_ms,
                    delivery.p99_ms,
                    delivery.max_ms,
                    idle as f64 / 1024.0,
                    connected as f64 / 1024.0,
                    per_subscriber,
                );
            }
            subscribers.close();
            // Wait for the gateway to notice the disconnects before the next size.
            let settle = Instant::now() + Duration::from_secs(30);
            while Instant::now() < settle {
                let metrics = reqwest::get(gateway.url("/metrics")).await?.text().await?;
                if metrics.contains("osmosis_gateway_sse_streams{kind=\"channel\"} 1\n") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    warm_up.close();
    Ok(())
}

/// What subscribers received of the events published at one rate.
struct Delivery {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Publishes `rate` events a second for the run's seconds, each valued
/// with its send time, then waits (up to 10 s) until the `count`
/// subscribers recording into `latencies` got every one.
async fn deliver<F, Fut>(
    args: &FanoutArgs,
    rate: u64,
    count: usize,
    latencies: &Latencies,
    publish: F,
) -> anyhow::Result<Delivery>
where
    F: Fn(u64, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    latencies.reset();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * args.seconds;
    let started = Instant::now();
    for i in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        publish(i, now_micros().to_string()).await?;
    }
    let expected = total * count as u64;
    let drain = Instant::now() + Duration::from_secs(10);
    while latencies.count.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64().max(args.seconds as f64);
    Ok(Delivery {
        per_second: latencies.count.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: latencies.quantile_ms(0.5),
        p99_ms: latencies.quantile_ms(0.99),
        max_ms: latencies.quantile_ms(1.0),
    })
}

/// The rows of `sse-floor --http <http>` holding `count` streams over
/// `protocol`: resident memory per subscriber, and delivery at each rate
/// of events POSTed to it (no Kafka: the HTTP stack's own fan-out).
async fn measure_floor(
    args: &FanoutArgs,
    http: &str,
    protocol: &str,
    count: usize,
) -> anyhow::Result<()> {
    let floor_args = [
        "--http".to_owned(),
        http.to_owned(),
        "--max-connections".to_owned(),
        (count + 100).to_string(),
    ];
    let floor = Floor::start("sse-floor", &floor_args).await?;
    let (pid, addr) = (floor.pid()?, &floor.addr);
    let idle = rss_kib(pid);
    let latencies = Arc::new(Latencies::new());
    let subscribers = Subscribers::connect(
        &format!("http://{addr}/"),
        protocol,
        count,
        args.streams_per_connection,
        &latencies,
    )
    .await?;
    let per_subscriber = rss_kib(pid).saturating_sub(idle) as f64 / count as f64;
    let connections = subscribers.connections;
    let publisher = reqwest::Client::new();
    let url = format!("http://{addr}/publish");
    for &rate in &args.rates {
        let publish = |_: u64, value: String| {
            let request = publisher.post(&url).body(value).send();
            async move {
                request.await?.error_for_status()?;
                Ok(())
            }
        };
        let delivery = deliver(args, rate, count, &latencies, publish).await?;
        println!(
            "| sse-floor --http {http} | {protocol} | {count} | {connections} | {per_subscriber:.1} | {rate} | {:.0} | {:.1} | {:.1} | {:.1} |",
            delivery.per_second, delivery.p50_ms, delivery.p99_ms, delivery.max_ms,
        );
    }
    subscribers.close();
    drop(floor);
    Ok(())
}

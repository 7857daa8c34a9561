//! Fan-out: N concurrent SSE subscribers (HTTP/1.1, one connection each) on
//! one gateway, records produced to the channel at a fixed rate. Measures
//! delivery latency from produce to receipt (the record's value is its
//! produce time), events delivered per second, and the gateway's resident
//! memory per connection: (RSS with N connections − RSS idle) / N.
//!
//! The subscribers run in this process with a minimal SSE line scanner (the
//! tests use a full SSE client library; here the client's own CPU cost would
//! otherwise be what is measured on a 2-core machine).

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
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let topic = kafka::create_topic_on(&args.brokers, "bench.fanout", 3).await;
    let max = args.subscribers.iter().copied().max().unwrap_or(0);
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\n\
         channels: {{ {topic}: {{ partitions: 3, subscribable: true }} }}\n\
         sse: {{ max_connections: {} }}\n",
        args.brokers,
        max + 100,
    ));
    let pid = gateway.service.pid();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "0")
        .create()
        .context("creating the producer")?;
    let url = gateway.url(&format!("/v1/channels/{topic}"));
    let latencies = Arc::new(Latencies::new());

    let floor = floor_kib_per_connection(max).await?;
    println!("## Fan-out: SSE subscribers on one gateway\n");
    println!("`{command}`\n");
    println!(
        "| protocol | subscribers | connections | records/s | events delivered/s | expected/s | p50 ms | p99 ms | max ms | RSS idle MiB | RSS with subscribers MiB | KiB per subscriber |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // One subscription first starts the topic's live feed (its Kafka
    // consumer), so that "idle" includes it and the rows measure connections.
    let warmed = Arc::new(AtomicUsize::new(0));
    let warm_up = tokio::spawn(subscriber(
        reqwest::Client::new(),
        url.clone(),
        warmed.clone(),
        Arc::new(Latencies::new()),
        None,
    ));
    while warmed.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for protocol in &args.protocols {
        for &count in &args.subscribers {
            let idle = rss_kib(pid);
            let subscribed = Arc::new(AtomicUsize::new(0));
            let (clients, connections) = match protocol.as_str() {
                "h1" => (
                    vec![
                        reqwest::Client::builder()
                            .pool_max_idle_per_host(0)
                            .build()?,
                    ],
                    count,
                ),
                "h2" => {
                    let connections = count.div_ceil(args.streams_per_connection);
                    let clients = (0..connections)
                        .map(|_| reqwest::Client::builder().http2_prior_knowledge().build())
                        .collect::<Result<Vec<_>, _>>()?;
                    (clients, connections)
                }
                other => anyhow::bail!("unknown protocol {other:?}: h1 or h2"),
            };
            // Subscribers connect 64 at a time, as a fleet of clients ramps
            // up, rather than as one burst whose transient peak would be
            // measured instead of what holding the connections costs.
            let connecting = Arc::new(tokio::sync::Semaphore::new(64));
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let permit = connecting.clone();
                    let (client, url, subscribed, latencies) = (
                        clients[i % clients.len()].clone(),
                        url.clone(),
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
            let connected = rss_kib(pid);
            let per_connection = connected.saturating_sub(idle) as f64 / count as f64;
            for &rate in &args.rates {
                latencies.reset();
                let interval = Duration::from_secs_f64(1.0 / rate as f64);
                let total = rate * args.seconds;
                let started = Instant::now();
                for i in 0..total {
                    tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
                    let value = now_micros().to_string();
                    let key = (i % 3).to_string();
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(5),
                        )
                        .await
                        .map_err(|(e, _)| e)?;
                }
                // Let the last records arrive.
                let expected = total * count as u64;
                let drain = Instant::now() + Duration::from_secs(10);
                while latencies.count.load(Ordering::Relaxed) < expected && Instant::now() < drain {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let elapsed = started.elapsed().as_secs_f64().max(args.seconds as f64);
                let delivered = latencies.count.load(Ordering::Relaxed);
                println!(
                    "| {protocol} | {count} | {connections} | {rate} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    delivered as f64 / elapsed,
                    (rate * count as u64) as f64,
                    latencies.quantile_ms(0.5),
                    latencies.quantile_ms(0.99),
                    latencies.quantile_ms(1.0),
                    idle as f64 / 1024.0,
                    connected as f64 / 1024.0,
                    per_connection,
                );
            }
            for task in tasks {
                task.abort();
            }
            drop(clients);
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
    warm_up.abort();
    println!(
        "\nFloor: a bare axum server holding {max} HTTP/1.1 event streams (`sse-floor`) costs {floor:.1} KiB per connection.\n"
    );
    Ok(())
}

/// Resident memory per HTTP/1.1 connection of `sse-floor` holding `count`
/// streams: what the HTTP stack costs before any Osmosis code runs.
async fn floor_kib_per_connection(count: usize) -> anyhow::Result<f64> {
    let mut child = tokio::process::Command::new(osmosis_e2e::process::binary("sse-floor"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting sse-floor")?;
    let pid = child.id().context("sse-floor pid")?;
    let stdout = child.stdout.take().context("sse-floor stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = lines.next_line().await?.context("sse-floor said nothing")?;
    let addr = serde_json::from_str::<serde_json::Value>(&line)?["addr"]
        .as_str()
        .context("sse-floor address")?
        .to_owned();
    let idle = rss_kib(pid);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let latencies = Arc::new(Latencies::new());
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (http, url, subscribed, latencies, connecting) = (
                http.clone(),
                format!("http://{addr}/"),
                subscribed.clone(),
                latencies.clone(),
                connecting.clone(),
            );
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.expect("never closed");
                subscriber(http, url, subscribed, latencies, Some(permit)).await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while subscribed.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = rss_kib(pid);
    tasks.iter().for_each(|t| t.abort());
    child.kill().await.ok();
    Ok(held.saturating_sub(idle) as f64 / count as f64)
}

//! Abuse: the gateway's normal publish traffic alone, then the same
//! traffic while abusive clients hold slow subscriptions (never reading)
//! and keep opening catch-ups from the log's start (never reading), side
//! by side in one run. Measures the publishes' latency (open loop, from
//! each call's scheduled start) and the gateway's peak resident memory.
//!
//! Target: the publishes' p99 under abuse less than twice the p99 alone,
//! and RSS under [`RSS_BOUND_MIB`] with the default limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::load::{Sample, header, open_loop};

/// The documented bound on the gateway's RSS under this abuse, with the
/// default limits (64 catch-ups, 1,024-event subscriber buffers).
pub const RSS_BOUND_MIB: u64 = 512;

#[derive(Parser)]
pub struct AbuseArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Publishes per second of the normal traffic.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Slow subscribers (live, never reading).
    #[arg(long, default_value_t = 500)]
    slow_subscribers: usize,
    /// Catch-ups from the log's start opened per second (never reading).
    #[arg(long, default_value_t = 20)]
    catch_ups_per_second: u64,
    /// Records (1 KiB each) in the channel before the run, for catch-ups.
    #[arg(long, default_value_t = 20_000)]
    preload: usize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples the gateway's RSS every 100 ms until `stop`; the peak in KiB.
fn peak_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    })
}

async fn publishes(gateway: &Gateway, rate: u64, seconds: u64) -> (Sample, u64) {
    let http = reqwest::Client::new();
    let url = gateway.url("/in");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = peak_rss(gateway.service.pid(), Arc::clone(&stop));
    let sample =
        open_loop(rate as f64, Duration::from_secs(seconds), move || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                matches!(http.post(&url).body("normal").send().await, Ok(r) if r.status() == 202)
            }
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    (sample, peak.await.expect("rss sampler"))
}

pub async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    let topic = kafka::create_topic_on(&args.brokers, "bench.abuse", 2).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .context("creating the producer")?;
    let value = "x".repeat(1024);
    let sends = (0..args.preload).map(|_| {
        producer.send(
            FutureRecord::<(), _>::to(&topic).payload(&value),
            Duration::from_secs(30),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.map_err(|(error, _)| error).context("preloading")?;
    }
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{}\" }}\n\
         channels: {{ {topic}: {{ partitions: 2, subscribable: true }} }}\n\
         routes:\n  - {{ method: POST, path: /in, channel: {topic} }}\n",
        args.brokers
    ));
    let pid = gateway.service.pid();
    // Warm up: the producer's connections and the live feed.
    let _ = publishes(&gateway, args.rate, 1).await;
    let idle_kib = rss_kib(pid);
    let (alone, alone_peak) = publishes(&gateway, args.rate, args.seconds).await;

    // The abuse: slow subscribers, and catch-ups that never read.
    let stop = Arc::new(AtomicBool::new(false));
    let (admitted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let url = gateway.url(&format!("/v1/channels/{topic}"));
    let mut held = Vec::new();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for _ in 0..args.slow_subscribers {
        let response = http
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        held.push(response);
    }
    let catch_ups = {
        let (stop, admitted, refused, http) = (
            stop.clone(),
            admitted.clone(),
            refused.clone(),
            http.clone(),
        );
        let url = format!("{url}?from=earliest");
        let every = Duration::from_secs_f64(1.0 / args.catch_ups_per_second as f64);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http
                    .get(&url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 200 => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        held.push(response);
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(every).await;
            }
            held.len()
        })
    };
    let (abused, abused_peak) = publishes(&gateway, args.rate, args.seconds).await;
    stop.store(true, Ordering::Relaxed);
    catch_ups.await?;
    drop(held);

    header(
        "Abuse: publish latency and RSS with and without abusive clients",
        &format!(
            "{} publishes/s open loop for {} s per phase; abuse: {} slow subscribers, {} catch-ups/s from the start of {} records (admitted {}, refused 503 {}); RSS idle {} MiB, bound {RSS_BOUND_MIB} MiB",
            args.rate,
            args.seconds,
            args.slow_subscribers,
            args.catch_ups_per_second,
            args.preload,
            admitted.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            idle_kib / 1024,
        ),
    );
    println!(
        "| traffic | publishes | p50 ms | p99 ms | p99.9 ms | max ms | errors | peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| normal alone | {} | {} |",
        alone.cells(),
        alone_peak / 1024
    );
    println!(
        "| normal + abuse | {} | {} |",
        abused.cells(),
        abused_peak / 1024
    );
    println!(
        "\np99 ratio (abuse / alone): {:.2} (target < 2); peak RSS under abuse {} MiB (bound {RSS_BOUND_MIB} MiB)",
        abused.ms(0.99) / alone.ms(0.99).max(0.001),
        abused_peak / 1024
    );
    Ok(())
}

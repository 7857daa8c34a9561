//! Reaction: how long the real local autoscaler takes from a step in
//! arrivals to its scale-up decision, with the surge watch and with polls
//! only, in the same run against the same broker.
//!
//! Each trial gets a fresh channel, an `osmosis-autoscaler local` with
//! `slow` workers (so a real consumer group keeps up with the base rate),
//! a warm-up at the base rate, then the step; the step falls at a different
//! second of the poll cycle in each trial. The decision time is the
//! autoscaler's own log timestamp of its first scale-up after the step.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::Signal;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Service, binary};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
pub struct ReactionArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Trials per mode; trial i steps i × (poll + 1 s) / trials later.
    #[arg(long, default_value_t = 5)]
    trials: u32,
    /// The autoscaler's poll interval, milliseconds.
    #[arg(long, default_value_t = 5000)]
    poll_ms: u64,
    /// Messages per second before the step.
    #[arg(long, default_value_t = 8.0)]
    base_rate: f64,
    /// Messages per second after the step.
    #[arg(long, default_value_t = 80.0)]
    step_rate: f64,
    /// Seconds at the base rate before the step.
    #[arg(long, default_value_t = 20)]
    warm_up: u64,
}

/// Sends `rate` messages per second to `topic` until `until` returns true
/// or `limit` passes; returns whether `until` did.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    rate: f64,
    limit: Duration,
    mut until: impl FnMut() -> bool,
) -> bool {
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < limit {
        if until() {
            return true;
        }
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let key = sent.to_string();
            // Delivery is not awaited: the offered rate must not bend to
            // the broker's latency.
            let _ = producer.send_result(FutureRecord::to(topic).key(&key).payload("work"));
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The autoscaler's first scale-up logged after `after`: seconds after it,
/// and the replicas it asked for.
fn scale_up_after(autoscaler: &Service, after: SystemTime) -> Option<(f64, u64)> {
    autoscaler.log_text().lines().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        if value["message"] != "scaling" || value["to"].as_u64()? <= value["from"].as_u64()? {
            return None;
        }
        let at = humantime::parse_rfc3339(value["timestamp"].as_str()?).ok()?;
        let seconds = at.duration_since(after).ok()?.as_secs_f64();
        Some((seconds, value["to"].as_u64()?))
    })
}

/// One trial: seconds from the step to the scale-up decision, and the
/// replicas decided.
async fn trial(
    args: &ReactionArgs,
    surge_watch_ms: u64,
    offset: Duration,
) -> anyhow::Result<Option<(f64, u64)>> {
    let topic = kafka::create_topic_on(&args.brokers, "reaction", 8).await;
    let slow = binary("examples/slow");
    let poll_ms = args.poll_ms.to_string();
    let surge_ms = surge_watch_ms.to_string();
    let mut autoscaler = Service::spawn(
        "osmosis-autoscaler",
        &[
            "local",
            "--brokers",
            &args.brokers,
            "--topic",
            &topic,
            "--min-replicas",
            "1",
            "--max-replicas",
            "8",
            "--lag-per-replica",
            "100000",
            "--poll-interval-ms",
            &poll_ms,
            "--surge-watch-ms",
            &surge_ms,
            "--",
            &slow.to_string_lossy(),
            "--brokers",
            &args.brokers,
            "--channel",
            &topic,
            "--work-ms",
            "200",
            "--max-in-flight",
            "2",
        ],
        &[],
    );
    autoscaler.wait_for_log("local autoscaler started", Duration::from_secs(30));
    let started = Instant::now();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .create()
        .context("producer")?;
    let warm_up = Duration::from_secs(args.warm_up) + offset;
    produce(&producer, &topic, args.base_rate, warm_up, || false).await;
    let step = SystemTime::now();
    let step_instant = Instant::now();
    let reacted = produce(
        &producer,
        &topic,
        args.step_rate,
        Duration::from_secs(30),
        || scale_up_after(&autoscaler, step).is_some(),
    )
    .await;
    let reaction = reacted.then(|| scale_up_after(&autoscaler, step)).flatten();
    eprintln!(
        "reaction: surge watch {surge_watch_ms} ms, step {:.1} s after start: {reaction:?} (measured in {:.1} s)",
        (step_instant - started).as_secs_f64(),
        step_instant.elapsed().as_secs_f64()
    );
    autoscaler.signal(Signal::SIGTERM);
    autoscaler.wait_exit(Duration::from_secs(60));
    Ok(reaction)
}

pub async fn run(args: ReactionArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!(
        "## Reaction of the local autoscaler: {}/s → {}/s, poll {} ms, `slow` workers\n",
        args.base_rate, args.step_rate, args.poll_ms
    );
    println!("`{command}`\n");
    println!("| mode | trials | reacted | min s | mean s | max s | replicas decided |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (mode, surge_watch_ms) in [("surge watch 1 s", 1000), ("polls only", 0)] {
        let mut times = Vec::new();
        let mut decided = Vec::new();
        for i in 0..args.trials {
            // Across the poll cycle and, by the extra second, the watch's.
            let offset = Duration::from_millis(
                (args.poll_ms + 1000) * u64::from(i) / u64::from(args.trials),
            );
            if let Some((seconds, replicas)) = trial(&args, surge_watch_ms, offset).await? {
                times.push(seconds);
                decided.push(replicas.to_string());
            }
        }
        let (min, max) = times.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), t| {
            (lo.min(*t), hi.max(*t))
        });
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        println!(
            "| {mode} | {} | {} | {min:.2} | {mean:.2} | {max:.2} | {} |",
            args.trials,
            times.len(),
            decided.join(", ")
        );
    }
    Ok(())
}

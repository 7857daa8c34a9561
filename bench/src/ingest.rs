//! Ingest: the gateway's publish path against its ceiling, a plain rdkafka
//! producer with the same durability settings (acks=all, idempotent) sending
//! the same records to the same broker, at several concurrencies in the same
//! run; then latency at half of the gateway's peak rate, offered open-loop
//! (a fixed schedule, so a slow response cannot slow the offered load down
//! and hide its own latency).
//!
//! The gateway is loaded two ways: by `wrk` (a C load generator in its own
//! process, light enough that the gateway rather than the client is what is
//! measured on a 2-core machine) and by an in-process `reqwest` client.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::load::{closed_loop, open_loop};
use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
pub struct IngestArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Concurrencies (requests or sends in flight) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128,256,512")]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

fn raw_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .context("creating the raw producer")
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let duration = Duration::from_secs(args.seconds);
    let topic = kafka::create_topic_on(&args.brokers, "bench.ingest", args.partitions).await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\nchannels: {{ {topic}: {{ partitions: {} }} }}\n\
         routes:\n  - {{ method: POST, path: /ingest, channel: {topic}, max_body_bytes: {} }}\n",
        args.brokers,
        args.partitions,
        args.body_bytes.max(1024 * 1024),
    ));
    let url = gateway.url("/ingest");
    let body = bytes::Bytes::from(vec![b'x'; args.body_bytes]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let producer = raw_producer(&args.brokers)?;

    let gateway_op = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move || {
            let request = http.post(&url).body(body.clone()).send();
            async move { matches!(request.await, Ok(r) if r.status() == 202) }
        }
    };
    let raw_op = {
        let (producer, topic, body) = (producer.clone(), topic.clone(), body.clone());
        move || {
            let delivery = producer
                .send_result(FutureRecord::<(), _>::to(&topic).payload(&body[..]))
                .ok();
            async move {
                match delivery {
                    Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
                    None => false,
                }
            }
        }
    };

    // Warm both paths (connections, producer ids, JIT in the broker).
    closed_loop(8, Duration::from_secs(2), gateway_op.clone()).await;
    closed_loop(8, Duration::from_secs(2), raw_op.clone()).await;

    println!(
        "## Ingest: gateway vs raw rdkafka producer ({} B bodies, {} partitions, acks=all, idempotent)\n",
        args.body_bytes, args.partitions
    );
    println!("`{command}`\n");
    let wrk_script = tempfile_with(&format!(
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {})\n",
        args.body_bytes
    ))?;
    println!(
        "| concurrency | raw rec/s | raw p50 ms | raw p99 ms | gateway (wrk) rec/s | p50 ms | p99 ms | gateway (wrk)/raw | gateway (reqwest) rec/s | p50 ms | p99 ms | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut best_gateway = 0.0f64;
    let mut best_in_process = 0.0f64;
    let mut best_raw = 0.0f64;
    for &concurrency in &args.concurrency {
        let raw = closed_loop(concurrency, duration, raw_op.clone()).await;
        let wrk = wrk(&url, concurrency, duration, wrk_script.path()).await?;
        let gw = closed_loop(concurrency, duration, gateway_op.clone()).await;
        best_gateway = best_gateway.max(wrk.rate).max(gw.rate());
        best_in_process = best_in_process.max(gw.rate());
        best_raw = best_raw.max(raw.rate());
        println!(
            "| {concurrency} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0} | {:.2} | {:.2} | {} |",
            raw.rate(),
            raw.ms(0.5),
            raw.ms(0.99),
            wrk.rate,
            wrk.p50_ms,
            wrk.p99_ms,
            100.0 * wrk.rate / raw.rate(),
            gw.rate(),
            gw.ms(0.5),
            gw.ms(0.99),
            gw.errors + wrk.errors,
        );
    }
    println!(
        "\nBest: gateway {best_gateway:.0} rec/s, raw {best_raw:.0} rec/s: gateway at {:.0}% of the raw producer.\n",
        100.0 * best_gateway / best_raw
    );

    // Offered open-loop by this process's own client, which costs about as
    // much CPU per request as the gateway: half of the peak it can drive
    // (beyond it, the client rather than the gateway sets the latency).
    let half = best_in_process / 2.0;
    let gw = open_loop(half, duration, gateway_op.clone()).await;
    let raw = open_loop(half, duration, raw_op.clone()).await;
    println!(
        "### Latency at half of the peak load ({half:.0} rec/s offered open-loop by the in-process client, {}s)\n",
        args.seconds
    );
    println!("| path | achieved rec/s | p50 ms | p90 ms | p99 ms | max ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, sample) in [("raw producer", &raw), ("gateway", &gw)] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            sample.rate(),
            sample.ms(0.5),
            sample.ms(0.9),
            sample.ms(0.99),
            sample.latency.max() as f64 / 1000.0,
            sample.errors,
        );
    }
    if gw.errors > 0 {
        bail!(
            "{} gateway requests failed during the latency run",
            gw.errors
        );
    }
    Ok(())
}

/// What one `wrk` run measured.
struct WrkRun {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn tempfile_with(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new().suffix(".lua").tempfile()?;
    file.write_all(text.as_bytes())?;
    Ok(file)
}

/// Runs `wrk` (one thread, `connections` connections) against `url`.
async fn wrk(
    url: &str,
    connections: usize,
    duration: Duration,
    script: &std::path::Path,
) -> anyhow::Result<WrkRun> {
    let output = tokio::process::Command::new("wrk")
        .args(["-t1", "--latency", "-s"])
        .arg(script)
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg(url)
        .output()
        .await
        .context("running wrk (scripts/bench.sh installs it)")?;
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|line| {
            line.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let rate = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rate in wrk's output:\n{text}"))?;
    let latency = |prefix: &str| {
        field(prefix)
            .and_then(|v| parse_wrk_duration_ms(&v))
            .unwrap_or(f64::NAN)
    };
    let errors = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(WrkRun {
        rate,
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        errors,
    })
}

/// `850.00us`, `3.35ms`, `1.20s` → milliseconds.
fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

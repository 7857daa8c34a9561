//! Ingest: the gateway's publish path against its ceiling, a plain rdkafka
//! producer with the gateway's producer settings (acks=all, idempotent, no
//! linger) sending the same records to the same broker, at several
//! concurrencies in the same run; then latency at half of the gateway's peak rate, offered open-loop
//! (a fixed schedule, so a slow response cannot slow the offered load down
//! and hide its own latency).
//!
//! The gateway is loaded two ways: by `wrk` (a C load generator in its own
//! process, light enough that the gateway rather than the client is what is
//! measured on a 2-core machine) and by an in-process `reqwest` client.
//! Next to it, in the same run, `wrk` loads `http-floor` (a bare axum
//! server answering 202 without Kafka): with the raw producer it gives the
//! physical limit of a gateway sharing the machine's cores,
//! 1/(1/raw + 1/http); `--baseline-gateway` loads another build too.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::floor::Floor;
use crate::load::{closed_loop, header, note_failure, open_loop};
use crate::properties::GatewayProperties;
use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use osmosis_support::kafka::PropertyParser;
use rdkafka::producer::FutureRecord;

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
    /// Another gateway binary loaded by `wrk` in the same run, row by row
    /// (e.g. one built from `main`), for before/after tables.
    #[arg(long)]
    baseline_gateway: Option<std::path::PathBuf>,
    /// A librdkafka property of the gateway under test (repeatable), e.g.
    /// `--gateway-property linger.ms=2`.
    #[arg(long = "gateway-property", value_parser = PropertyParser)]
    gateway_properties: Vec<(String, String)>,
    /// A librdkafka property of the baseline gateway (repeatable): with
    /// `--baseline-gateway` set to the same binary, two settings side by
    /// side in one run.
    #[arg(long = "baseline-property", value_parser = PropertyParser)]
    baseline_properties: Vec<(String, String)>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let topic = kafka::create_topic_on(&args.brokers, "bench.ingest", args.partitions).await;
    let properties = GatewayProperties(args.gateway_properties.clone());
    let baseline_properties = GatewayProperties(args.baseline_properties.clone());
    // Every load generator here is one client address (loopback), and one
    // cell's connections may still be closing when the next cell opens its
    // own: the per-client connection cap would answer 503 to the excess.
    let config = |properties: &GatewayProperties| {
        format!(
            "listen: 127.0.0.1:0\n{}channels: {{ {topic}: {{ partitions: {} }} }}\n\
             routes:\n  - {{ method: POST, path: /ingest, channel: {topic}, max_body_bytes: {} }}\n\
             limits: {{ connections: {{ per_client: 100000 }} }}\n",
            properties.kafka_yaml(&args.brokers),
            args.partitions,
            args.body_bytes.max(1024 * 1024),
        )
    };
    let gateway = Gateway::start(&config(&properties));
    let baseline = args.baseline_gateway.as_ref().map(|binary| {
        Gateway::start_binary(
            &binary.display().to_string(),
            &config(&baseline_properties),
            &[],
        )
    });
    let floor = Floor::start("http-floor", &[]).await?;
    let floor_url = format!("http://{}/ingest", floor.addr);
    let url = gateway.url("/ingest");
    let body = bytes::Bytes::from(vec![b'x'; args.body_bytes]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let producer = properties.raw_producer(&args.brokers)?;

    let gateway_op = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move || {
            let request = http.post(&url).body(body.clone()).send();
            async move {
                let failure = match request.await {
                    Ok(response) if response.status() == 202 => return true,
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        format!("status {status}: {body}")
                    }
                    Err(error) => format!("{error:?}"),
                };
                note_failure(&failure);
                false
            }
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

    header(
        "Ingest: gateway vs raw rdkafka producer and a bare HTTP server",
        &format!(
            "{} B bodies, {} partitions, acks=all, idempotent, {} s per cell; gateway properties: {}{}",
            args.body_bytes,
            args.partitions,
            args.seconds,
            properties.describe(),
            match &args.baseline_gateway {
                Some(binary) => format!(
                    "; baseline `{}` with properties: {}",
                    binary.display(),
                    baseline_properties.describe()
                ),
                None => String::new(),
            },
        ),
    );
    let wrk_script = tempfile_with(&format!(
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {})\n",
        args.body_bytes
    ))?;
    println!(
        "| concurrency | raw rec/s | raw p50 ms | raw p99 ms | HTTP floor (wrk) req/s | limit rec/s | gateway (wrk) rec/s | p50 ms | p99 ms | gateway/limit | gateway/raw | baseline gateway (wrk) rec/s | gateway (reqwest) rec/s | p50 ms | p99 ms | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &concurrency in &args.concurrency {
        let raw = closed_loop(concurrency, duration, raw_op.clone()).await;
        let http = wrk(&floor_url, concurrency, duration, wrk_script.path()).await?;
        let wrk_run = wrk(&url, concurrency, duration, wrk_script.path()).await?;
        let before = match &baseline {
            Some(baseline) => {
                let url = baseline.url("/ingest");
                Some(wrk(&url, concurrency, duration, wrk_script.path()).await?)
            }
            None => None,
        };
        let gw = closed_loop(concurrency, duration, gateway_op.clone()).await;
        let limit = physical_limit(raw.rate(), http.rate);
        println!(
            "| {concurrency} | {:.0} | {:.2} | {:.2} | {:.0} | {limit:.0} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0}% | {} | {:.0} | {:.2} | {:.2} | {} |",
            raw.rate(),
            raw.ms(0.5),
            raw.ms(0.99),
            http.rate,
            wrk_run.rate,
            wrk_run.p50_ms,
            wrk_run.p99_ms,
            100.0 * wrk_run.rate / limit,
            100.0 * wrk_run.rate / raw.rate(),
            before
                .as_ref()
                .map_or_else(|| "–".to_owned(), |run| format!("{:.0}", run.rate)),
            gw.rate(),
            gw.ms(0.5),
            gw.ms(0.99),
            gw.errors + wrk_run.errors,
        );
        rows.push(Row {
            concurrency,
            raw: raw.rate(),
            http: http.rate,
            gateway: wrk_run.rate,
            baseline: before.map(|run| run.rate),
            in_process: gw.rate(),
        });
    }
    summary(&rows);
    let best_in_process = rows.iter().map(|row| row.in_process).fold(0.0, f64::max);

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

/// One concurrency's rates.
struct Row {
    concurrency: usize,
    raw: f64,
    http: f64,
    gateway: f64,
    baseline: Option<f64>,
    in_process: f64,
}

/// The physical limit of a gateway on a shared machine: each record costs
/// the HTTP side's time and the producer's, on the same cores.
fn physical_limit(raw: f64, http: f64) -> f64 {
    1.0 / (1.0 / raw + 1.0 / http)
}

/// The gateway against its limit at its best concurrency, and against the
/// raw producer at the producer's best.
fn summary(rows: &[Row]) {
    let by = |rate: fn(&Row) -> f64| {
        rows.iter()
            .max_by(|a, b| rate(a).total_cmp(&rate(b)))
            .expect("at least one concurrency")
    };
    let best = by(|row| row.gateway);
    let limit = physical_limit(best.raw, best.http);
    println!(
        "\nGateway at its best concurrency ({}): {:.0} rec/s, {:.0}% of the physical limit 1/(1/raw + 1/http) = {limit:.0} rec/s there (raw {:.0}, HTTP floor {:.0}).",
        best.concurrency,
        best.gateway,
        100.0 * best.gateway / limit,
        best.raw,
        best.http,
    );
    let raw_best = by(|row| row.raw);
    println!(
        "Raw producer at its best concurrency ({}): {:.0} rec/s; the gateway there: {:.0} rec/s, {:.0}% of it.",
        raw_best.concurrency,
        raw_best.raw,
        raw_best.gateway,
        100.0 * raw_best.gateway / raw_best.raw,
    );
    let at = by(|row| row.baseline.unwrap_or(0.0));
    if let Some(baseline) = at.baseline {
        println!(
            "Baseline gateway at its best concurrency ({}): {baseline:.0} rec/s, {:.0}% of the limit there.",
            at.concurrency,
            100.0 * baseline / physical_limit(at.raw, at.http),
        );
    }
    println!();
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

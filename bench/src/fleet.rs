//! Fleet: request-reply latency through a gateway fleet while its
//! membership changes, against the steady state, in one run against one
//! broker. The gateways share the reply partitions by Kafka group
//! membership; a join or a leave moves partitions between them while
//! requests are waiting.
//!
//! Open-loop load (latency from each request's scheduled start) through the
//! request route to the `echo` worker, spread round-robin over the members
//! in rotation. Phases of equal length: steady; a new gateway joins (it
//! enters the rotation once it serves); a gateway is terminated (it leaves
//! the rotation first, as a Service drops a terminating pod). Also timed:
//! from starting the new gateway's process to its first request-mode reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::Signal;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};

use crate::load::{Sample, header, note_failure, open_loop};

#[derive(Parser)]
pub struct FleetArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Requests per second offered to the fleet.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Gateways at the start.
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Partitions of the reply topic (at least the largest fleet).
    #[arg(long, default_value_t = 6)]
    reply_partitions: i32,
}

/// The fleet's members in the clients' rotation, by base URL.
pub(crate) type Rotation = Arc<Mutex<Vec<String>>>;

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let phase = Duration::from_secs(args.seconds);
    let channel = kafka::create_topic_on(&args.brokers, "bench.fleet.requests", 3).await;
    let replies =
        kafka::create_topic_on(&args.brokers, "bench.fleet.replies", args.reply_partitions).await;
    let worker = Worker::start("examples/echo", &args.brokers, &channel, &[]);
    worker.wait_assigned();
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{brokers}\" }}\n\
         channels: {{ {channel}: {{}} }}\n\
         replies: {{ topic: {replies} }}\n\
         routes:\n  - {{ method: POST, path: /work, channel: {channel}, mode: request, timeout_ms: 10000 }}\n",
        brokers = args.brokers,
    );
    let mut gateways = Vec::new();
    for _ in 0..args.gateways {
        gateways.push(start_serving(&yaml).await?.0);
    }
    let rotation: Rotation = Arc::new(Mutex::new(gateways.iter().map(|g| g.url("")).collect()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let op = request_op(http, Arc::clone(&rotation));

    open_loop(args.rate, Duration::from_secs(3), op.clone()).await;
    let steady = open_loop(args.rate, phase, op.clone()).await;

    let joining = {
        let (yaml, rotation) = (yaml.clone(), Arc::clone(&rotation));
        tokio::spawn(async move {
            let (gateway, serving_after) = start_serving(&yaml).await?;
            rotation.lock().unwrap().push(gateway.url(""));
            anyhow::Ok((gateway, serving_after))
        })
    };
    let during_join = open_loop(args.rate, phase, op.clone()).await;
    let (joined, serving_after) = joining.await??;
    gateways.push(joined);

    let mut leaving = gateways.remove(1);
    rotation
        .lock()
        .unwrap()
        .retain(|url| *url != leaving.url(""));
    leaving.service.signal(Signal::SIGTERM);
    let left = tokio::task::spawn_blocking(move || {
        leaving.service.wait_exit(Duration::from_secs(60)).success()
    });
    let during_leave = open_loop(args.rate, phase, op.clone()).await;
    let left_cleanly = left.await?;

    header(
        "Request-reply latency through a gateway fleet during membership changes",
        &format!(
            "{} gateways, {} reply partitions, the `echo` worker, {} req/s open-loop, {} s per phase",
            args.gateways, args.reply_partitions, args.rate, args.seconds,
        ),
    );
    println!("| phase | requests | p50 ms | p99 ms | p99.9 ms | max ms | errors | p99 / steady |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, sample) in [
        ("steady", &steady),
        ("a gateway joins", &during_join),
        ("a gateway leaves (SIGTERM)", &during_leave),
    ] {
        row(name, sample, steady.ms(0.99));
    }
    println!(
        "\nFrom starting the new gateway's process to its first request-mode reply: **{:.2} s** (target ≤ 5 s). The terminated gateway exited cleanly: {left_cleanly}.",
        serving_after.as_secs_f64()
    );
    drop((gateways, worker));
    Ok(())
}

fn row(name: &str, sample: &Sample, steady_p99: f64) {
    println!(
        "| {name} | {} | {:.2} |",
        sample.cells(),
        sample.ms(0.99) / steady_p99
    );
}

/// One request-mode call to the next member in rotation; a success is a
/// 200 carrying the request's own body.
pub(crate) fn request_op(
    http: reqwest::Client,
    rotation: Rotation,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ 'static {
    let turn = Arc::new(AtomicUsize::new(0));
    move || {
        let n = turn.fetch_add(1, Ordering::Relaxed);
        let base = {
            let rotation = rotation.lock().unwrap();
            rotation[n % rotation.len()].clone()
        };
        let http = http.clone();
        Box::pin(async move {
            let sent = format!("request {n}");
            match http
                .post(format!("{base}/work"))
                .body(sent.clone())
                .send()
                .await
            {
                Ok(response) if response.status() == reqwest::StatusCode::OK => {
                    response.text().await.is_ok_and(|got| got == sent)
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    note_failure(&format!("status {status}: {body}"));
                    false
                }
                Err(error) => {
                    note_failure(&format!("{error:?}"));
                    false
                }
            }
        })
    }
}

/// Starts a gateway and waits until it answers a request-mode call with its
/// reply; returns it and how long that took from the process's start.
async fn start_serving(yaml: &str) -> anyhow::Result<(Gateway, Duration)> {
    let started = Instant::now();
    let yaml = yaml.to_owned();
    let gateway = tokio::task::spawn_blocking(move || Gateway::start(&yaml))
        .await
        .context("starting a gateway")?;
    let http = reqwest::Client::new();
    let url = gateway.url("/work");
    while started.elapsed() < Duration::from_secs(60) {
        let answered = http.post(&url).body("probe").send().await;
        if let Ok(response) = answered
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok((gateway, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("the new gateway did not serve request mode within 60 s")
}

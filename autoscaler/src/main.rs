//! The `osmosis-autoscaler` binary.
//!
//! `osmosis-autoscaler local ... -- <worker command>` scales a pool of local
//! worker processes on a channel's backlog: the autoscaler without a cluster.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use osmosis_autoscaler::estimate::{EstimatorConfig, OffsetReset};
use osmosis_autoscaler::local_loop::{self, LocalConfig};
use osmosis_autoscaler::policy::{Behavior, RatePolicy, ScalerSpec, Select};

#[derive(Parser)]
#[command(
    version,
    about = "Scales channel workers on their backlog and arrival rate"
)]
struct Cli {
    /// Log JSON lines instead of text.
    #[arg(long, global = true, env = "OSMOSIS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Scale a pool of local worker processes (no Kubernetes).
    Local(LocalArgs),
    /// Run the Kubernetes controller for `ChannelScaler` resources
    /// (in-cluster configuration, or KUBECONFIG).
    Controller(ControllerArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "OSMOSIS_AUTOSCALER_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    listen: std::net::SocketAddr,
}

#[derive(Args)]
struct LocalArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Channel topic the workers consume.
    #[arg(long)]
    topic: String,
    /// Consumer group of the workers (default `<topic>.workers`).
    #[arg(long)]
    group: Option<String>,
    #[arg(long, default_value_t = 0)]
    min_replicas: u32,
    #[arg(long, default_value_t = 10)]
    max_replicas: u32,
    /// Backlog one replica is expected to hold (KEDA's lagThreshold).
    #[arg(long, default_value_t = 100)]
    lag_per_replica: u64,
    /// From zero replicas, start only above this lag.
    #[arg(long, default_value_t = 0)]
    activation_lag: u64,
    /// Time in which a backlog should be drained.
    #[arg(long, default_value_t = 30.0)]
    target_drain_seconds: f64,
    /// Scale up while the oldest message is older than this.
    #[arg(long)]
    max_time_lag_seconds: Option<f64>,
    /// Without lag or arrivals this long, go down to the minimum.
    #[arg(long, default_value_t = 60.0)]
    idle_seconds: f64,
    /// Scale-down stabilisation window.
    #[arg(long, default_value_t = 30.0)]
    scale_down_stabilization_seconds: f64,
    #[arg(long, default_value_t = 5000)]
    poll_interval_ms: u64,
    /// How long a stopped worker may take to drain before it is killed.
    #[arg(long, default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// The worker command; `{replica}` is replaced by the replica's number.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format == "json");
    match cli.command {
        Command::Controller(args) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
            let metrics = std::sync::Arc::new(osmosis_autoscaler::metrics::Metrics::default());
            let addr = osmosis_autoscaler::metrics::serve(args.listen, metrics.clone())
                .await
                .with_context(|| format!("serving metrics on {}", args.listen))?;
            tracing::info!(%addr, "listening");
            // The controller wants a Sync trigger: a signal future is not one.
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(());
            });
            osmosis_autoscaler::controller::run(client, metrics, async move {
                let _ = stopped.await;
            })
            .await;
        }
        Command::Local(args) => {
            let spec = ScalerSpec {
                min_replicas: args.min_replicas,
                max_replicas: args.max_replicas,
                lag_per_replica: args.lag_per_replica,
                activation_lag: args.activation_lag,
                target_drain_seconds: args.target_drain_seconds,
                max_time_lag_seconds: args.max_time_lag_seconds,
                idle_seconds: args.idle_seconds,
                scale_down: Behavior {
                    stabilization_seconds: args.scale_down_stabilization_seconds,
                    policies: vec![RatePolicy::Percent {
                        value: 50,
                        period_seconds: args.scale_down_stabilization_seconds.max(1.0),
                    }],
                    select: Select::Max,
                },
                ..ScalerSpec::default()
            };
            let group = args
                .group
                .unwrap_or_else(|| format!("{}.workers", args.topic));
            tracing::info!(topic = %args.topic, %group, "local autoscaler started");
            let config = LocalConfig {
                brokers: args.brokers,
                kafka_properties: Vec::new(),
                topic: args.topic,
                group,
                spec,
                estimator: EstimatorConfig {
                    offset_reset: OffsetReset::Earliest,
                    ..EstimatorConfig::default()
                },
                poll_interval: Duration::from_millis(args.poll_interval_ms),
                command: args.command,
                drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            };
            local_loop::run(config, shutdown_signal())
                .await
                .context("the local autoscaler failed")?;
        }
    }
    Ok(())
}

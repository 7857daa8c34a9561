//! The `osmosis-autoscaler` binary.
//!
//! `osmosis-autoscaler local ... -- <worker command>` scales a pool of local
//! worker processes on a channel's backlog: the autoscaler without a cluster.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use osmosis_autoscaler::estimate::{EstimatorConfig, OffsetReset};
use osmosis_autoscaler::policy::{Behavior, RatePolicy, ScalerSpec, Select};
use osmosis_autoscaler::pool::{self, LocalConfig};
use osmosis_support::{LogArgs, shutdown_signal};

#[derive(Parser)]
#[command(
    version,
    about = "Scales channel workers on their backlog and arrival rate"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
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
    /// The coordination.k8s.io Lease replicas elect their leader with; only
    /// the leader reconciles, so two replicas are safe.
    #[arg(
        long,
        env = "OSMOSIS_AUTOSCALER_LEASE",
        default_value = "osmosis-autoscaler"
    )]
    lease_name: String,
    /// Namespace of the Lease.
    #[arg(
        long,
        env = "OSMOSIS_AUTOSCALER_LEASE_NAMESPACE",
        default_value = "default"
    )]
    lease_namespace: String,
    /// Only watch ChannelScalers of this namespace (default: all).
    #[arg(long, env = "OSMOSIS_AUTOSCALER_NAMESPACE")]
    namespace: Option<String>,
    /// This replica's identity in the Lease (default: POD_NAME, else the pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds the Lease stays valid after the leader last renewed it: how
    /// long the other replicas wait when the leader dies without releasing
    /// it. The leader renews a third of this before it expires.
    #[arg(
        long,
        env = "OSMOSIS_AUTOSCALER_LEASE_DURATION_SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(3..)
    )]
    lease_duration_seconds: u64,
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
    /// A partition with lag whose committed offset has not moved this long
    /// is reported slow (a live member holds it: its lag still counts) or
    /// stuck (none does: its lag is left out, never down to zero).
    #[arg(long, default_value_t = 60.0)]
    stuck_after_seconds: f64,
    /// Scale-down stabilisation window.
    #[arg(long, default_value_t = 30.0)]
    scale_down_stabilization_seconds: f64,
    /// Milliseconds between measurements.
    #[arg(long, default_value_t = 5000)]
    poll_interval_ms: u64,
    /// Milliseconds between reads of the channel's end offsets in between
    /// polls; a surge of arrivals brings the next poll forward. 0: off.
    #[arg(long, default_value_t = 1000)]
    surge_watch_ms: u64,
    /// How long a stopped worker may take to drain before it is killed.
    #[arg(long, default_value_t = 30_000)]
    drain_timeout_ms: u64,
    /// librdkafka property of the client that measures the channel,
    /// `name=value` (repeatable; e.g. `security.protocol=SASL_SSL`). The
    /// workers take their own, in their command.
    #[arg(long = "kafka-property", value_parser = osmosis_support::kafka::PropertyParser)]
    kafka_properties: Vec<(String, String)>,
    /// The worker command; `{replica}` is replaced by the replica's number.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Waits for the Lease, runs the controller while leading, releases the
/// Lease on shutdown so that another replica takes over at once. Losing the
/// Lease ends the process with an error: its supervisor restarts it as a
/// candidate, and no two replicas ever reconcile at once.
async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let metrics = std::sync::Arc::new(osmosis_autoscaler::metrics::Metrics::default());
    let addr = osmosis_support::ops::serve(args.listen, metrics.clone())
        .await
        .with_context(|| format!("serving metrics on {}", args.listen))?;
    tracing::info!(%addr, "listening");

    let identity = args
        .identity
        .unwrap_or_else(|| format!("osmosis-autoscaler-{}", std::process::id()));
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(args.lease_duration_seconds / 3)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");
    let mut signal = Box::pin(shutdown_signal());
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => changed.context("leader election stopped")?,
            () = &mut signal => return Ok(()),
        }
    }
    tracing::info!(%identity, "leading");

    // The controller wants a Sync trigger: a oneshot receiver is one.
    let (stop, stopped) = tokio::sync::oneshot::channel::<bool>();
    tokio::spawn(async move {
        let lost = tokio::select! {
            () = signal => false,
            _ = async {
                while leading.changed().await.is_ok() && *leading.borrow() {}
            } => true,
        };
        let _ = stop.send(lost);
        // Dropping the receiver releases the Lease.
        drop(leading);
    });
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<bool>();
    osmosis_autoscaler::controller::run(client, args.namespace, metrics, async move {
        let lost = stopped.await.unwrap_or(false);
        let _ = lost_tx.send(lost);
    })
    .await;
    let lost = lost_rx.await.unwrap_or(false);
    match tokio::time::timeout(std::time::Duration::from_secs(10), lease_task).await {
        Ok(_) => tracing::info!("lease released"),
        Err(_) => tracing::warn!("lease not released within 10s; it expires on its own"),
    }
    anyhow::ensure!(!lost, "lost the leader Lease");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    match cli.command {
        Command::Controller(args) => run_controller(args).await?,
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
                kafka_properties: args.kafka_properties,
                topic: args.topic,
                group,
                spec,
                estimator: EstimatorConfig {
                    offset_reset: OffsetReset::Earliest,
                    stuck_after_seconds: args.stuck_after_seconds,
                    ..EstimatorConfig::default()
                },
                poll_interval: Duration::from_millis(args.poll_interval_ms),
                surge_watch: (args.surge_watch_ms > 0)
                    .then(|| Duration::from_millis(args.surge_watch_ms)),
                command: args.command,
                drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            };
            pool::run(config, shutdown_signal())
                .await
                .context("the local autoscaler failed")?;
        }
    }
    Ok(())
}

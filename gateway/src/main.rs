//! The `osmosis-gateway` binary: configuration, logging, signals.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use osmosis_gateway::config::Config;
use osmosis_gateway::{RunOptions, run};
use osmosis_support::{LogArgs, shutdown_signal};

/// HTTP → Kafka gateway: every request becomes a record in its channel topic.
#[derive(Parser, Debug)]
#[command(version, after_help = ENV_HELP)]
struct Args {
    /// YAML configuration file.
    #[arg(long, short, env = "OSMOSIS_CONFIG")]
    config: Option<PathBuf>,
    /// Create missing channel topics (with their configured partitions)
    /// instead of refusing to start.
    #[arg(long)]
    create_topics: bool,
    #[command(flatten)]
    log: LogArgs,
}

const ENV_HELP: &str = "\
Every setting of the configuration file can be overridden from the environment
with the prefix OSMOSIS_ and `__` between nested keys, for example:
  OSMOSIS_LISTEN=0.0.0.0:8080
  OSMOSIS_SHUTDOWN_GRACE_MS=10000
  OSMOSIS_KAFKA__BROKERS=kafka-0:9092,kafka-1:9092
  OSMOSIS_KAFKA__PRODUCE_TIMEOUT_MS=5000
  OSMOSIS_KAFKA__METADATA_TIMEOUT_MS=2000
  OSMOSIS_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL   (sets security.protocol)
  OSMOSIS_CHANNELS__ORDERS__PARTITIONS=12
Log verbosity: RUST_LOG (default info).";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init();
    let config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let options = RunOptions {
        create_topics: args.create_topics,
    };
    run(config, listener, options, shutdown_signal()).await?;
    Ok(())
}

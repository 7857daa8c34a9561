//! The `osmosis-gateway` binary: configuration, logging, signals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use osmosis_gateway::auth::mint;
use osmosis_gateway::config::Config;
use osmosis_gateway::{RunOptions, run};
use osmosis_support::{LogArgs, shutdown_signal};

// Every request allocates its headers, record and futures: glibc's malloc
// took ~17 % of the gateway's CPU at depth, much of it waiting on arena
// locks between the runtime's threads. jemalloc took ingest at depth from
// ~22k to ~31k records/s and SSE memory from 14.4 to 11.0 KiB per
// subscriber; mimalloc was as fast but cost 22.7 KiB per subscriber
// (`osmosis-bench ingest` and `fanout`, same run, `--baseline-gateway`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a signed JWT for development and tests (production tokens
    /// come from your identity provider).
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// A JWKS file with a symmetric (oct) key to sign with, e.g. the demo's.
    #[arg(long, conflicts_with = "key_pem")]
    jwks_file: Option<PathBuf>,
    /// A private key in PEM to sign with instead.
    #[arg(long, requires = "algorithm")]
    key_pem: Option<PathBuf>,
    /// The algorithm of --key-pem: RS256, ES256, EdDSA...
    #[arg(long)]
    algorithm: Option<String>,
    /// The key id the token names (and, with --jwks-file, the key used).
    #[arg(long)]
    kid: Option<String>,
    /// The caller the token names (`sub`).
    #[arg(long)]
    subject: String,
    /// A scope; repeat for more.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    #[arg(long)]
    issuer: String,
    #[arg(long)]
    audience: String,
    /// How long the token is valid, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// A further claim as name=value (e.g. tenant=acme); repeat for more.
    #[arg(long = "claim", value_parser = name_value)]
    claims: Vec<(String, String)>,
}

fn name_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let claims = mint::Claims {
        subject: args.subject,
        scopes: args.scopes,
        issuer: args.issuer,
        audience: args.audience,
        lifetime: args.lifetime,
        extra: args.claims.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let token = match (args.jwks_file, args.key_pem) {
        (Some(path), _) => mint::with_jwks_secret(&path, args.kid.as_deref(), &claims)?,
        (None, Some(path)) => {
            let pem =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let algorithm = args.algorithm.expect("required by clap");
            mint::with_pem(&pem, &algorithm, args.kid.as_deref(), &claims)?
        }
        (None, None) => anyhow::bail!("give --jwks-file or --key-pem"),
    };
    println!("{token}");
    Ok(())
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
    if let Some(Command::Token(token)) = args.command {
        return print_token(token);
    }
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

//! `osmosis-bench`: benchmarks that print tables (markdown) with the command
//! that produced them; never assertions.
//!
//! - `ingest`: the gateway's publish path against a raw rdkafka producer.
//! - `fanout`: channel subscriptions: thousands of SSE subscribers on one
//!   gateway, delivery latency and memory per connection.
//! - `autoscale`: the scaling policy against KEDA + HPA and a CPU HPA in a
//!   deterministic simulation (no broker needed).
//! - `reaction`: the real local autoscaler's time from a step in arrivals to
//!   its scale-up decision, with the surge watch and with polls only.
//! - `reply`: the request-reply round trip through the gateway against
//!   Kafka's own round trip with plain clients, at the same rates.
//! - `fleet`: request-reply latency through a gateway fleet while a member
//!   joins and while one leaves, against the steady state, in one run.
//! - `auth`: publish throughput and latency with JWT verification off and
//!   on, side by side.
//! - `abuse`: publish latency and the gateway's RSS with and without
//!   abusive clients (slow subscribers, catch-ups that never read).
//! - `worker`: one worker's throughput on a pre-filled backlog, the
//!   sequential loop against the pipelined runtime.

mod abuse;
mod auth;
mod autoscale;
mod fanout;
mod fleet;
mod floor;
mod ingest;
mod load;
mod properties;
mod reaction;
mod reply;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Osmosis benchmarks; each prints a table and the command that produced it")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Ingest throughput and latency: gateway vs raw rdkafka producer.
    Ingest(ingest::IngestArgs),
    /// Fan-out to SSE subscribers: latency, delivery rate, memory per connection.
    Fanout(fanout::FanoutArgs),
    /// Autoscaling policy simulation against KEDA + HPA and a CPU HPA.
    Autoscale(autoscale::AutoscaleArgs),
    /// The local autoscaler's reaction to a step in arrivals, surge watch on and off.
    Reaction(reaction::ReactionArgs),
    /// Request-reply round trip: gateway vs raw Kafka, open-loop, same rates.
    Reply(reply::ReplyArgs),
    /// Request-reply latency through a gateway fleet during membership changes.
    Fleet(fleet::FleetArgs),
    /// Publish with JWT verification off and on, side by side.
    Auth(auth::AuthArgs),
    /// Publish latency and RSS with and without abusive clients.
    Abuse(abuse::AbuseArgs),
    /// One worker's throughput on a backlog: sequential against pipelined.
    Worker(worker::WorkerArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().bench {
        Bench::Ingest(args) => ingest::run(args).await,
        Bench::Fanout(args) => fanout::run(args).await,
        Bench::Autoscale(args) => autoscale::run(args),
        Bench::Reaction(args) => reaction::run(args).await,
        Bench::Reply(args) => reply::run(args).await,
        Bench::Fleet(args) => fleet::run(args).await,
        Bench::Auth(args) => auth::run(args).await,
        Bench::Abuse(args) => abuse::run(args).await,
        Bench::Worker(args) => worker::run(args).await,
    }
}

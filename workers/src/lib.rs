//! `osmosis-worker`: the worker SDK and runtime. A worker *pulls* requests
//! from its channel when it has capacity, runs your handler and sends the
//! reply back through Kafka to the gateway that is holding the client.
//!
//! You write one async handler from [`Request`] to [`Reply`] (or a
//! [`HandlerError`]); [`run`] does the rest:
//! - one consumer group per channel, cooperative-sticky assignment;
//! - at least once: an offset is committed only after the reply (or the
//!   dead-letter record) for it was acknowledged by Kafka;
//! - order kept per partition (or per key, `--ordering key`), partitions
//!   processed in parallel (handlers bounded by `max_in_flight`); a
//!   partition whose pipeline is full has its messages held (up to 4 MiB,
//!   then it is paused), never the others;
//! - pipelined acknowledgements: a reply waiting for Kafka's acknowledgement
//!   does not hold back the partition's next message (up to
//!   `max_in_flight_per_partition` unfinished); the committed offset is the
//!   end of the contiguous prefix of acknowledged work;
//! - expired deadlines are not processed (the client gets a 504);
//! - failing handlers are retried with exponential backoff, then the request
//!   goes to `<channel>.dlq` and the client gets an error reply;
//! - the shutdown future (SIGTERM/SIGINT in [`shutdown_signal`]) drains:
//!   no new messages, in-flight ones finish within the drain timeout,
//!   offsets are committed and the consumer leaves the group at once; a
//!   revoked partition finishes its messages in flight the same way before
//!   the rebalance goes on;
//! - a record Kafka refuses for good (too large, invalid, unauthorized, its
//!   topic gone) is never retried forever: a reply gives way to a problem
//!   reply, a dead letter is cut down, and the partition moves on;
//! - `/metrics` and `/healthz` on `metrics_listen`; a partition whose
//!   message stays in process beyond a bound is reported slow (handler) or
//!   stuck (delivery, `/healthz` 503).
//!
//! # Example
//!
//! ```no_run
//! use clap::Parser;
//! use osmosis_worker::{HandlerError, Reply, Request, WorkerConfig};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     worker: WorkerConfig,
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let args = Args::parse();
//!     args.worker.log.init();
//!     let shout = |request: Request| async move {
//!         let text = std::str::from_utf8(&request.body)
//!             .map_err(|_| HandlerError::permanent("not UTF-8").with_status(400))?;
//!         Ok(Reply::ok(text.to_uppercase()).with_content_type("text/plain"))
//!     };
//!     osmosis_worker::run(args.worker, shout, osmosis_worker::shutdown_signal()).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//! From the loop down to the leaves; a module imports only modules listed
//! below it.
//! - `runtime`: [`run`]: starts the clients, fetches messages and queues
//!   each on its partition's pipeline, and drains on shutdown.
//! - `partitions`: one pipeline task per partition: started, revoked and
//!   drained.
//! - `paused`: partitions whose pipeline is full: their extra messages
//!   held, the partition paused in the consumer once it holds too much, so
//!   that the others keep flowing.
//! - `pipeline`: one partition's messages in flight: taken in order,
//!   handlers started in their lane's order, replies enqueued in handler
//!   order and acknowledged in the background, the finished prefix's
//!   offset stored (the at-least-once invariant).
//! - `lanes`: which waiting message may start: per partition or per key.
//! - `ledger`: the contiguous prefix of finished offsets.
//! - `process`: one message: decoding, the deadline, the handler's attempts
//!   with retries and backoff, then the reply or the dead letter.
//! - [`handler`]: the types a handler sees and returns.
//! - `progress`: where each partition's current message is; slow and
//!   stuck partitions in `/healthz`, `/metrics` and the log.
//! - `replier`: the producer: final replies and dead letters (retried until
//!   acknowledged or refused for good; a dead letter too large is cut
//!   down) and progress events.
//! - `delivery`: transient and permanent produce errors, and the retry
//!   loop that gives up only on permanent ones.
//! - `clients`: the Kafka consumer's and producer's settings, the
//!   consumer's context (rebalance and commit logs, lag metric) and the
//!   dead-letter topic.
//! - [`config`]: the runtime's settings as flags and environment variables.
//! - [`metrics`]: Prometheus metrics and the `/metrics` server.
//! - `error`: [`Error`], why the worker could not start.

pub mod config;
pub mod handler;
pub mod metrics;

mod clients;
mod delivery;
mod error;
mod lanes;
mod ledger;
mod partitions;
mod paused;
mod pipeline;
mod process;
mod progress;
mod replier;
mod runtime;

pub use config::WorkerConfig;
pub use error::Error;
pub use handler::{Handler, HandlerError, Reply, Request};
/// Who called: the subject and scopes the gateway verified ([`Request::caller`]).
pub use osmosis_protocol::Caller;
pub use runtime::run;

/// Logging and the shutdown signal, as every Osmosis binary sets them up:
/// a worker binary needs no other crate for them.
pub use osmosis_support::{LogArgs, LogFormat, init_logging, shutdown_signal};

//! The slow worker: takes a fixed time per message, reporting progress on
//! the way, then replies. What the autoscaler demo scales. With
//! `--hold-key`, the requests of one key wait until they are released: a
//! partition held up on purpose, to show that the others go on.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use osmosis_worker::{HandlerError, Reply, Request, WorkerConfig};
use tokio::sync::watch;

#[derive(Parser)]
#[command(about = "Osmosis example worker: sleeps per message, then replies")]
struct Args {
    #[command(flatten)]
    worker: WorkerConfig,
    /// Time spent on each message.
    #[arg(long, env = "OSMOSIS_SLOW_WORK_MS", default_value_t = 1000)]
    work_ms: u64,
    /// Progress events sent while working (0: none).
    #[arg(long, env = "OSMOSIS_SLOW_PROGRESS_STEPS", default_value_t = 0)]
    progress_steps: u32,
    /// Fail every message (to exercise retries and the dead-letter topic).
    #[arg(long, env = "OSMOSIS_SLOW_FAIL")]
    fail: bool,
    /// Reply with the request's own body (a slow echo) instead of a summary.
    #[arg(long, env = "OSMOSIS_SLOW_ECHO")]
    echo: bool,
    /// Requests with this record key wait before their work until a
    /// request keyed `<KEY>.release` has been handled.
    #[arg(long, env = "OSMOSIS_SLOW_HOLD_KEY")]
    hold_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.worker.log.init();
    let work = Work {
        time: Duration::from_millis(args.work_ms),
        steps: args.progress_steps,
        fail: args.fail,
        echo: args.echo,
    };
    let hold = args.hold_key.map(Hold::new).map(Arc::new);
    let slow = move |request: Request| {
        let hold = hold.clone();
        async move {
            if let Some(hold) = hold {
                hold.pass(request.key.as_deref()).await;
            }
            work.on(request).await
        }
    };
    osmosis_worker::run(args.worker, slow, osmosis_worker::shutdown_signal()).await?;
    Ok(())
}

/// What every request costs and gets.
#[derive(Clone, Copy)]
struct Work {
    time: Duration,
    /// Progress events on the way.
    steps: u32,
    fail: bool,
    echo: bool,
}

impl Work {
    async fn on(self, request: Request) -> Result<Reply, HandlerError> {
        let pieces = self.steps + 1;
        for step in 1..=self.steps {
            tokio::time::sleep(self.time / pieces).await;
            let event = format!(r#"{{"step":{step},"of":{pieces}}}"#);
            request.progress(event, Some("application/json")).await?;
        }
        tokio::time::sleep(self.time / pieces).await;
        if self.fail {
            return Err(HandlerError::retryable("the slow worker was told to fail"));
        }
        if self.echo {
            return Ok(Reply::ok(request.body.clone()));
        }
        let body = format!(
            r#"{{"worked_ms":{},"bytes":{}}}"#,
            self.time.as_millis(),
            request.body.len()
        );
        Ok(Reply::ok(body).with_content_type("application/json"))
    }
}

/// The requests of one key held until a release request comes.
struct Hold {
    key: String,
    release_key: String,
    released: watch::Sender<bool>,
}

impl Hold {
    fn new(key: String) -> Self {
        let release_key = format!("{key}.release");
        let (released, _) = watch::channel(false);
        Self {
            key,
            release_key,
            released,
        }
    }

    /// Waits while `key` is held; a release lets every held request go.
    async fn pass(&self, key: Option<&[u8]>) {
        if key == Some(self.release_key.as_bytes()) {
            self.released.send_replace(true);
        } else if key == Some(self.key.as_bytes()) {
            let mut released = self.released.subscribe();
            // The sender lives as long as the hold: never an error.
            let _ = released.wait_for(|released| *released).await;
        }
    }
}

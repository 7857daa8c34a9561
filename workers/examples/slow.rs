//! The slow worker: takes a fixed time per message, reporting progress on
//! the way, then replies. What the autoscaler demo scales.

use std::time::Duration;

use clap::Parser;
use osmosis_worker::{HandlerError, Reply, Request, WorkerConfig};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.worker.log.init();
    let work = Duration::from_millis(args.work_ms);
    let steps = args.progress_steps;
    let (fail, echo) = (args.fail, args.echo);
    let slow = move |request: Request| async move {
        let pieces = steps + 1;
        for step in 1..=steps {
            tokio::time::sleep(work / pieces).await;
            let event = format!(r#"{{"step":{step},"of":{pieces}}}"#);
            request.progress(event, Some("application/json")).await?;
        }
        tokio::time::sleep(work / pieces).await;
        if fail {
            return Err(HandlerError::retryable("the slow worker was told to fail"));
        }
        if echo {
            return Ok(Reply::ok(request.body.clone()));
        }
        let body = format!(
            r#"{{"worked_ms":{},"bytes":{}}}"#,
            work.as_millis(),
            request.body.len()
        );
        Ok(Reply::ok(body).with_content_type("application/json"))
    };
    osmosis_worker::run(args.worker, slow, osmosis_worker::shutdown_signal()).await?;
    Ok(())
}

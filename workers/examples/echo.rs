//! The echo worker: replies with the request's body and content type, and
//! names the caller the gateway verified in `x-echo-caller`.

use clap::Parser;
use osmosis_worker::{Reply, Request, WorkerConfig};

#[derive(Parser)]
#[command(about = "Osmosis example worker: replies with the request's own body")]
struct Args {
    #[command(flatten)]
    worker: WorkerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.worker.log.init();
    let echo = |request: Request| async move {
        let mut reply = Reply::ok(request.body.clone());
        if let Some(content_type) = request.content_type() {
            reply = reply.with_content_type(content_type);
        }
        if let Some(caller) = request.caller() {
            reply = reply.with_header("x-echo-caller", caller.subject.as_bytes());
        }
        Ok(reply)
    };
    osmosis_worker::run(args.worker, echo, osmosis_worker::shutdown_signal()).await?;
    Ok(())
}

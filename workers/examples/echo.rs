//! The echo worker: replies with the request's body and content type.

use clap::Parser;
use osmosis_worker::{Reply, Request, WorkerConfig};

#[derive(Parser)]
#[command(about = "Osmosis example worker: replies with the request's own body")]
struct Args {
    #[command(flatten)]
    worker: WorkerConfig,
    /// Log JSON lines instead of text.
    #[arg(long, env = "OSMOSIS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    osmosis_worker::init_logging(args.log_format == "json");
    let echo = |request: Request| async move {
        let mut reply = Reply::ok(request.body.clone());
        if let Some(content_type) = request.content_type() {
            reply = reply.with_content_type(content_type);
        }
        Ok(reply)
    };
    osmosis_worker::run(args.worker, echo, osmosis_worker::shutdown_signal()).await?;
    Ok(())
}

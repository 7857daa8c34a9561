//! The floor of the fan-out benchmark: the smallest axum application that
//! holds event streams (one `subscribed` event, then nothing). Its memory
//! per connection is what the HTTP stack itself costs, before any Osmosis
//! code: served either as `axum::serve` serves it (`--http stock`, hyper's
//! defaults) or by the gateway's own listener with its connection settings
//! (`--http gateway`), so that the gateway is compared with the same stack.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use osmosis_gateway::config::ConnectionLimits;
use osmosis_gateway::limits::connections::ConnectionGate;
use osmosis_gateway::metrics::Metrics;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Http {
    /// `axum::serve` with hyper's defaults.
    Stock,
    /// The gateway's listener (`osmosis_gateway::listen`) and settings.
    Gateway,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "gateway")]
    http: Http,
    /// Connections the gateway's listener admits (with `--http gateway`).
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
}

async fn hold() -> Response {
    let frames = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b"event: subscribed\ndata: {}\n\n"))
    })
    .chain(futures::stream::pending());
    let mut response = Response::new(Body::from_stream(frames));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    let app = Router::new().fallback(get(hold));
    match args.http {
        Http::Stock => axum::serve(listener, app).await?,
        Http::Gateway => {
            let limits = ConnectionLimits {
                max: args.max_connections,
                per_client: args.max_connections,
                ..ConnectionLimits::default()
            };
            let gate = ConnectionGate::new(&limits, Arc::new(Metrics::default()));
            let never = std::future::pending();
            osmosis_gateway::listen::serve(listener, app, gate, &limits, None, never).await?;
        }
    }
    Ok(())
}

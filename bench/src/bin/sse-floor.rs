//! The floor of the fan-out benchmark: the smallest axum application that
//! holds event streams (one `subscribed` event, then a `record` event for
//! every body POSTed to `/publish`, through a broadcast channel). Its memory
//! per connection is what the HTTP stack itself costs, before any Osmosis
//! code, and its delivery latency what writing one event to every stream
//! costs, without Kafka: served either as `axum::serve` serves it
//! (`--http stock`, hyper's defaults) or by the gateway's own listener with
//! its connection settings (`--http gateway`), so that the gateway is
//! compared with the same stack.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use osmosis_gateway::config::ConnectionLimits;
use osmosis_gateway::limits::connections::ConnectionGate;
use osmosis_gateway::metrics::Metrics;
use tokio::sync::broadcast;

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

async fn hold(State(feed): State<broadcast::Sender<Bytes>>) -> Response {
    let subscribed = futures::stream::once(async {
        Ok::<_, Infallible>(Bytes::from_static(b"event: subscribed\ndata: {}\n\n"))
    });
    let records = futures::stream::unfold(feed.subscribe(), |mut feed| async move {
        loop {
            match feed.recv().await {
                Ok(frame) => return Some((Ok(frame), feed)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let mut response = Response::new(Body::from_stream(subscribed.chain(records)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// One `record` event with the body as its data, to every stream.
async fn publish(State(feed): State<broadcast::Sender<Bytes>>, body: Bytes) -> http::StatusCode {
    let mut frame = Vec::with_capacity(body.len() + 24);
    frame.extend_from_slice(b"event: record\ndata: ");
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"\n\n");
    feed.send(Bytes::from(frame)).ok();
    http::StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    let (feed, _) = broadcast::channel(64);
    let app = Router::new()
        .route("/publish", post(publish))
        .fallback(get(hold))
        .with_state(feed);
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

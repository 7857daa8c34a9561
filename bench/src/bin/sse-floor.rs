//! The floor of the fan-out benchmark: the smallest axum server that holds
//! event streams (one `subscribed` event, then nothing). Its memory per
//! connection is what the HTTP stack itself costs, before any Osmosis code.

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    axum::serve(listener, Router::new().fallback(get(hold))).await?;
    Ok(())
}

//! The floor of the ingest benchmark: the smallest axum server that takes
//! the gateway's publish calls (reads the body, answers 202 with a small
//! JSON body) without Kafka. What the HTTP stack can do on this machine is
//! the other half of the gateway's physical limit, next to the producer.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;

async fn accept(body: Bytes) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        [(http::header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"id":"0191e7a0-0000-7000-8000-000000000000","channel":"floor","partition":0,"offset":{}}}"#,
            body.len()
        ),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{{\"message\":\"listening\",\"addr\":\"{}\"}}",
        listener.local_addr()?
    );
    let app = Router::new()
        .route("/ingest", post(accept))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
    axum::serve(listener, app).await?;
    Ok(())
}

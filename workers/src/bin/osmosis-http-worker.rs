//! `osmosis-http-worker`: turns any HTTP service into an Osmosis worker.
//!
//! Each request pulled from the channel is sent to the upstream as an HTTP
//! request (method, path, query, forwarded headers, body) and the upstream's
//! response becomes the reply. Upstream 5xx answers and connection errors are
//! retried with backoff and end in the dead-letter topic, like any handler
//! error; 4xx answers are replies like any other.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use osmosis_worker::{HandlerError, Reply, Request, WorkerConfig};

#[derive(Parser)]
#[command(about = "Osmosis worker that forwards each request to an HTTP upstream")]
struct Args {
    #[command(flatten)]
    worker: WorkerConfig,
    /// Base URL of the upstream service; the request's path and query are
    /// appended to it.
    #[arg(long, env = "OSMOSIS_HTTP_WORKER_UPSTREAM")]
    upstream: reqwest::Url,
    /// Longest time one upstream call may take.
    #[arg(long, env = "OSMOSIS_HTTP_WORKER_TIMEOUT_MS", default_value_t = 30_000)]
    timeout_ms: u64,
}

/// Response headers that describe the hop, not the reply.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
    "content-type",
    "date",
];

/// The upstream URL for a request: the base URL's path joined with the
/// request's path, and the request's query.
fn upstream_url(base: &reqwest::Url, path: &str, query: Option<&str>) -> reqwest::Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url.set_query(query);
    url
}

async fn forward(
    http: &reqwest::Client,
    upstream: &reqwest::Url,
    request: Request,
) -> Result<Reply, HandlerError> {
    let envelope = &request.envelope;
    let method = reqwest::Method::from_bytes(envelope.method.as_bytes()).map_err(|_| {
        HandlerError::permanent(format!("invalid method {}", envelope.method)).with_status(400)
    })?;
    let url = upstream_url(upstream, &envelope.path, envelope.query.as_deref());
    let mut call = http
        .request(method, url.clone())
        .header("traceparent", &envelope.traceparent)
        .header("osmosis-request-id", envelope.id.to_string())
        .body(request.body.clone());
    if let Some(content_type) = &envelope.content_type {
        call = call.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    for (name, value) in &envelope.forwarded {
        call = call.header(name.as_str(), value.as_slice());
    }
    let response = call.send().await.map_err(|error| {
        HandlerError::retryable(format!("upstream {url} unreachable: {error}")).with_status(502)
    })?;
    let status = response.status();
    if status.is_server_error() {
        return Err(
            HandlerError::retryable(format!("upstream {url} answered {status}")).with_status(502),
        );
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let headers: Vec<(String, Vec<u8>)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !HOP_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let body = response.bytes().await.map_err(|error| {
        HandlerError::retryable(format!("reading the upstream response: {error}")).with_status(502)
    })?;
    let mut reply = Reply::ok(body).with_status(status.as_u16());
    reply.content_type = content_type;
    reply.headers = headers;
    Ok(reply)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.worker.log.init();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("building the HTTP client")?;
    let upstream = args.upstream;
    tracing::info!(%upstream, "forwarding requests");
    let handler = move |request: Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move { forward(&http, &upstream, request).await }
    };
    osmosis_worker::run(args.worker, handler, osmosis_worker::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_path_and_query_join_the_base_url() {
        let base: reqwest::Url = "http://127.0.0.1:8000/api/".parse().unwrap();
        assert_eq!(
            upstream_url(&base, "/orders/7", Some("a=1")).as_str(),
            "http://127.0.0.1:8000/api/orders/7?a=1"
        );
        let bare: reqwest::Url = "http://127.0.0.1:8000".parse().unwrap();
        assert_eq!(
            upstream_url(&bare, "/x", None).as_str(),
            "http://127.0.0.1:8000/x"
        );
    }
}

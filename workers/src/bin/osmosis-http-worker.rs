//! `osmosis-http-worker`: turns any HTTP service into an Osmosis worker.
//!
//! Each request pulled from the channel is sent to the upstream as an HTTP
//! request (method, path, query, forwarded headers, body) and the upstream's
//! response becomes the reply. Upstream 5xx answers and connection errors are
//! retried with backoff and end in the dead-letter topic, like any handler
//! error; 4xx answers are replies like any other.
//!
//! Bounds: an upstream body larger than `--max-response-bytes` is never
//! buffered whole — the request fails for good with 502 (problem reply to
//! the client, the request in the dead-letter topic). A client path with
//! dot segments (`..`, `.`, also percent-encoded, also behind a backslash)
//! is refused with 400: resolved against the upstream base they would
//! escape its path.

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
    /// Largest upstream response body taken as a reply; a larger one fails
    /// the request with 502. The default leaves room for the reply's
    /// headers under Kafka's default 1 MiB record limit.
    #[arg(
        long,
        env = "OSMOSIS_HTTP_WORKER_MAX_RESPONSE_BYTES",
        default_value_t = DEFAULT_MAX_RESPONSE_BYTES
    )]
    max_response_bytes: usize,
}

/// 900 KiB: under Kafka's default `message.max.bytes` (1 MiB) with room
/// for the reply's headers.
const DEFAULT_MAX_RESPONSE_BYTES: usize = 900 * 1024;

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
/// request's path, and the request's query. `None` when the path has a dot
/// segment, which would climb out of the base path once resolved.
fn upstream_url(base: &reqwest::Url, path: &str, query: Option<&str>) -> Option<reqwest::Url> {
    if path.split(['/', '\\']).any(is_dot_segment) {
        return None;
    }
    let mut url = base.clone();
    let base_path = base.path().trim_end_matches('/');
    let joined = format!("{base_path}/{}", path.trim_start_matches('/'));
    url.set_path(&joined);
    url.set_query(query);
    // Whatever the parser normalised, the result stays under the base.
    url.path().starts_with(base_path).then_some(url)
}

/// `.` or `..`, also percent-encoded (`%2e`, any case), as the URL
/// standard reads a segment.
fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let dots = lower.replace("%2e", ".");
    dots == "." || dots == ".."
}

/// The upstream's body, read chunk by chunk and refused once it passes
/// `max` bytes (at once when its declared length does).
async fn capped_body(
    mut response: reqwest::Response,
    max: usize,
    url: &reqwest::Url,
) -> Result<bytes::Bytes, HandlerError> {
    let too_large = |size: String| {
        HandlerError::permanent(format!(
            "upstream {url} answered a body of {size} bytes, over the bridge's limit of {max} bytes"
        ))
        .with_status(502)
    };
    if let Some(declared) = response.content_length()
        && declared > max as u64
    {
        return Err(too_large(declared.to_string()));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| {
        HandlerError::retryable(format!("reading the upstream response: {error}")).with_status(502)
    })? {
        if body.len() + chunk.len() > max {
            return Err(too_large(format!("more than {max}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn forward(
    http: &reqwest::Client,
    upstream: &reqwest::Url,
    max_response_bytes: usize,
    request: Request,
) -> Result<Reply, HandlerError> {
    let envelope = &request.envelope;
    let method = reqwest::Method::from_bytes(envelope.method.as_bytes()).map_err(|_| {
        HandlerError::permanent(format!("invalid method {}", envelope.method)).with_status(400)
    })?;
    let url =
        upstream_url(upstream, &envelope.path, envelope.query.as_deref()).ok_or_else(|| {
            HandlerError::permanent("the request path has dot segments").with_status(400)
        })?;
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
    let body = capped_body(response, max_response_bytes, &url).await?;
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
    let max_response_bytes = args.max_response_bytes;
    tracing::info!(%upstream, max_response_bytes, "forwarding requests");
    let handler = move |request: Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move { forward(&http, &upstream, max_response_bytes, request).await }
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
            upstream_url(&base, "/orders/7", Some("a=1"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/api/orders/7?a=1"
        );
        let bare: reqwest::Url = "http://127.0.0.1:8000".parse().unwrap();
        assert_eq!(
            upstream_url(&bare, "/x", None).unwrap().as_str(),
            "http://127.0.0.1:8000/x"
        );
    }

    #[test]
    fn dot_segments_never_climb_out_of_the_base_path() {
        let base: reqwest::Url = "http://127.0.0.1:8000/api/".parse().unwrap();
        // The hazard: the URL parser resolves encoded dot segments.
        let mut raw = base.clone();
        raw.set_path("/api/%2e%2e/admin");
        assert_eq!(raw.path(), "/admin");
        for path in [
            "/../admin",
            "/%2e%2e/admin",
            "/%2E%2e/admin",
            "/.%2e/admin",
            "/a/%2e%2e/%2e%2e/admin",
            "/..\\admin",
            "/a\\..\\..\\admin",
            "/./x",
            "/%2e/x",
        ] {
            assert_eq!(upstream_url(&base, path, None), None, "{path}");
        }
        // Dots inside a segment are just characters.
        assert_eq!(
            upstream_url(&base, "/v1.2/file..txt/%2e%2ex", None)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8000/api/v1.2/file..txt/%2e%2ex"
        );
    }
}

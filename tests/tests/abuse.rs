//! Abusive clients against one gateway: slow headers, too many
//! connections, oversized and malformed headers and query values, many
//! catch-ups at once, rates over their bucket (per client, also behind a
//! trusted proxy), and fuzzed methods and paths. Every bound answers as documented (problem+json, 429, 431,
//! 503 with Retry-After, or a closed connection), and each test ends with
//! the gateway serving normally, its RSS and thread count within bounds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use reqwest::StatusCode;

/// The gateway's resident memory after abuse stays below this.
const MAX_RSS_KIB: u64 = 256 * 1024;
/// Its threads (tokio workers, the blocking pool, librdkafka's) below this.
const MAX_THREADS: u64 = 160;

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The gateway still serves, fast, within its memory and thread bounds.
async fn assert_serving_within_bounds(gateway: &Gateway, http: &reqwest::Client) {
    for probe in ["/healthz", "/readyz"] {
        let started = Instant::now();
        let response = http.get(gateway.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{probe} took {:?}",
            started.elapsed()
        );
    }
    let response = http
        .post(gateway.url("/in"))
        .body("after")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pid = gateway.service.pid();
    let (rss, threads) = (status_field(pid, "VmRSS:"), status_field(pid, "Threads:"));
    eprintln!("gateway RSS {rss} KiB, {threads} threads");
    assert!(rss < MAX_RSS_KIB, "RSS {rss} KiB");
    assert!(threads < MAX_THREADS, "{threads} threads");
}

fn gateway(channel: &str, limits: &str) -> Gateway {
    Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{}\" }}\n\
         channels: {{ {channel}: {{ partitions: 2, subscribable: true }} }}\n\
         sse: {{ keep_alive_ms: 500 }}\n\
         limits: {limits}\n\
         routes:\n  - {{ method: POST, path: /in, channel: {channel} }}\n",
        kafka::bootstrap()
    ))
}

/// Sends `request` raw and returns the status line's code (0: the
/// connection closed without an answer).
fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A client over its token bucket gets 429 with Retry-After and the
/// RateLimit fields; probes are never limited.
#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_ratelimit_headers() {
    let channel = kafka::create_topic("abuse.rate", 2).await;
    let gateway = gateway(
        &channel,
        "{ rate: { per_client: { per_second: 2, burst: 5 } } }",
    );
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..20 {
        let response = http
            .post(gateway.url("/in"))
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
        }
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!((5..=7).contains(&accepted), "{statuses:?}");
    let limited = limited.expect("a 429");
    let headers = limited.headers();
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(headers["ratelimit-limit"], "5");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-policy"], "5;w=3");
    for _ in 0..20 {
        let health = http.get(gateway.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "probes are exempt");
    }
    assert!(
        gateway
            .metric("osmosis_gateway_limited_total{limit=\"rate_client\"}")
            .await
            >= Some(1.0)
    );
}

/// Statuses of `calls` publishes that `x_forwarded_for` says come from
/// one client.
async fn publish_as(
    http: &reqwest::Client,
    gateway: &Gateway,
    x_forwarded_for: &str,
    calls: usize,
) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for i in 0..calls {
        let response = http
            .post(gateway.url("/in"))
            .header("x-forwarded-for", x_forwarded_for)
            .body(format!("{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    statuses
}

/// Behind a trusted proxy (this test, from loopback, sets the header a
/// proxy would) every client the proxy names has a bucket of its own; a
/// peer that is no trusted proxy is the client, whatever it sends.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_buckets_of_their_own() {
    let channel = kafka::create_topic("abuse.proxied", 2).await;
    let bucket = "rate: { per_client: { per_second: 1, burst: 3 } }";
    let http = reqwest::Client::new();
    let too_many = |statuses: &[StatusCode]| statuses.contains(&StatusCode::TOO_MANY_REQUESTS);

    // Through a proxy in front of the proxy; the left-most address is the
    // client's own forgery.
    for (trusted, a_bucket_each) in [("127.0.0.0/8", true), ("192.0.2.0/24", false)] {
        let limited = gateway(
            &channel,
            &format!("{{ {bucket}, trusted_proxies: [{trusted}] }}"),
        );
        let first = publish_as(&http, &limited, "198.51.100.1, 203.0.113.1, 127.0.0.9", 10).await;
        assert!(too_many(&first), "{trusted}: {first:?}");
        let second = publish_as(&http, &limited, "198.51.100.1, 203.0.113.2", 3).await;
        if a_bucket_each {
            assert_eq!(second, [StatusCode::ACCEPTED; 3], "a bucket of its own");
        } else {
            // The peer's bucket: at most one token refills meanwhile.
            assert!(too_many(&second), "the header is ignored: {second:?}");
        }
    }
}

/// Slow headers, idle sockets, too many connections, oversized headers,
/// malformed query values and Last-Event-IDs, too many catch-ups.
#[tokio::test]
async fn abusive_connections_and_inputs_are_bounded_and_the_gateway_keeps_serving() {
    let channel = kafka::create_topic("abuse.inputs", 2).await;
    let gateway = gateway(
        &channel,
        "{ connections: { per_client: 48, header_read_timeout_ms: 1000, idle_timeout_ms: 3000 }, \
           catch_ups: { max: 3, send_timeout_ms: 30000 } }",
    );
    // The catch-ups' backlog, written before anyone subscribes: enough
    // records (32 MiB) that a catch-up outlasts the socket buffers, and
    // none of them reaches the live feed (which would cut the catch-ups
    // off as slow subscribers, and free their places).
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .unwrap();
    let value = "v".repeat(4096);
    let sends = (0..8000).map(|_| {
        producer.send(
            rdkafka::producer::FutureRecord::<(), _>::to(&channel).payload(&value),
            Duration::from_secs(10),
        )
    });
    for sent in futures::future::join_all(sends).await {
        sent.unwrap();
    }
    let http = reqwest::Client::new();
    for i in 0..50 {
        let response = http
            .post(gateway.url("/in"))
            .body(format!("r{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }

    // Slowloris: half a request head, then nothing; closed by the
    // header-read timeout, well before the client's own 5 s.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(gateway.addr).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
        })
        .collect();
    let started = Instant::now();
    for mut stream in slow {
        let mut buf = [0u8; 256];
        let timed_out = matches!(
            stream.read(&mut buf),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        );
        assert!(!timed_out, "a slow header is cut off");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut after {:?}",
        started.elapsed()
    );

    // Too many connections from one address: each held one served a
    // request (so it is surely admitted); the one over the cap is
    // answered 503 and closed.
    let held: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut stream = TcpStream::connect(gateway.addr).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 512];
            assert!(stream.read(&mut buf).unwrap() > 0);
            stream
        })
        .collect();
    assert_eq!(
        raw_status(gateway.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        503
    );
    drop(held);
    osmosis_e2e::eventually(
        Duration::from_secs(5),
        "the held connections to close",
        || async {
            (gateway
                .metric("osmosis_gateway_limited_total{limit=\"connections_client\"}")
                .await
                >= Some(1.0))
            .then_some(())
        },
    )
    .await;

    // Oversized and too many headers: 431.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert!([431, 0].contains(&raw_status(gateway.addr, huge.as_bytes())));
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(raw_status(gateway.addr, many.as_bytes()), 431);

    // Malformed query values and event ids: problem+json 400s.
    let subscribe = |query: &str| gateway.url(&format!("/v1/channels/{channel}{query}"));
    for (query, last_event_id) in [
        ("?from=yesterday", None),
        ("?format=xml", None),
        ("?from=%ZZ", None),
        ("", Some("0:1,0:2")),
        ("", Some("99:0")),
        ("", Some("-1:5")),
    ] {
        let mut request = http
            .get(subscribe(query))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{query} {last_event_id:?}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let bad_id = http
        .get(gateway.url("/v1/requests/not-an-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);

    // Many catch-ups that never read (of the backlog written first):
    // beyond the cap, 503 + Retry-After.
    let mut catching_up = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let response = http
            .get(subscribe("?from=earliest"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        match response.status() {
            StatusCode::OK => catching_up.push(response),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(refused, 5, "three catch-ups at once");
    assert!(
        gateway
            .metric("osmosis_gateway_limited_total{limit=\"catch_ups\"}")
            .await
            >= Some(5.0)
    );
    assert_serving_within_bounds(&gateway, &http).await;
    drop(catching_up);
}

/// Random methods and paths, sent raw: every one is answered with a
/// client error or success (never a 5xx, never a dropped connection), and
/// method labels stay within their closed set.
#[tokio::test]
async fn fuzzed_methods_and_paths_get_clean_answers() {
    let channel = kafka::create_topic("abuse.fuzz", 1).await;
    let gateway = gateway(&channel, "{}");
    let addr = gateway.addr;
    tokio::task::spawn_blocking(move || {
        let method = prop_oneof![
            Just("GET".to_owned()),
            Just("POST".to_owned()),
            Just("DELETE".to_owned()),
            "[A-Z]{1,12}",
        ];
        let path = prop_oneof![
            "/[ -~&&[^ ]]{0,80}",
            "/v1/(requests|channels)/[a-zA-Z0-9%._~-]{0,40}(\\?[a-z=&%0-9]{0,30})?",
            Just("/in".to_owned()),
            Just("/../../etc/passwd".to_owned()),
            Just("/%2e%2e/%00".to_owned()),
        ];
        let mut runner = TestRunner::new(ProptestConfig::with_cases(300));
        runner
            .run(&(method, path), |(method, path)| {
                let request =
                    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
                let status = raw_status(addr, request.as_bytes());
                prop_assert!((200..500).contains(&status), "{method} {path} → {status}");
                Ok(())
            })
            .unwrap();
    })
    .await
    .unwrap();
    let metrics = reqwest::get(gateway.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let methods: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("osmosis_gateway_requests_total{"))
        .filter_map(|line| line.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.len() <= 10, "{methods:?}");
    assert_serving_within_bounds(&gateway, &reqwest::Client::new()).await;
}

//! What authentication costs on the publish path: the same gateway
//! configuration with JWT verification off and on, side by side in one run,
//! against the same broker. "On" is measured twice: every client reusing
//! its token (the gateway remembers verified tokens until they expire: the
//! common case) and a fresh token on every request (every request pays a
//! full ES256 signature check: the worst case).
//!
//! The signing key is a P-256 key made with `openssl` for the run; its JWK
//! is written next to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use osmosis_e2e::kafka;
use osmosis_e2e::process::Gateway;
use serde_json::json;

use crate::load::{Sample, closed_loop, header};

#[derive(Parser)]
pub struct AuthArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Concurrencies (requests in flight) to measure.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Distinct tokens cycled through in the fresh-token run (more than
    /// the gateway remembers, so that none is found remembered).
    #[arg(long, default_value_t = 20_000)]
    fresh_tokens: usize,
}

/// A P-256 key for the run: the private key in PEM and its public JWK.
struct SigningKey {
    pem: Vec<u8>,
    jwk: serde_json::Value,
}

fn signing_key(dir: &std::path::Path) -> anyhow::Result<SigningKey> {
    let key = dir.join("key.pem");
    let run = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .context("running openssl")?;
        if !output.status.success() {
            bail!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    };
    let path = key.to_str().context("a UTF-8 temporary path")?;
    run(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path,
    ])?;
    // The public key's DER ends with the uncompressed point: 0x04 | x | y.
    let public = run(&["pkey", "-in", path, "-pubout", "-outform", "DER"])?;
    let point = &public[public.len() - 64..];
    Ok(SigningKey {
        pem: std::fs::read(&key)?,
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[..32]),
            "y": URL_SAFE_NO_PAD.encode(&point[32..]),
        }),
    })
}

fn token(key: &EncodingKey, subject: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": subject, "iss": "bench", "aud": "osmosis",
        "iat": now, "exp": now + 3600, "scope": "ingest",
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("bench".into());
    jsonwebtoken::encode(&header, &claims, key).expect("signing a bench token")
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let dir = tempfile::tempdir()?;
    let key = signing_key(dir.path())?;
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [key.jwk] }).to_string())?;
    let encoding = EncodingKey::from_ec_pem(&key.pem)?;

    let topic = kafka::create_topic_on(&args.brokers, "bench.auth", 6).await;
    let channel_and_route = |access: &str| {
        format!(
            "channels: {{ {topic}: {{ partitions: 6 }} }}\n\
             routes:\n  - {{ method: POST, path: /ingest, channel: {topic}, access: {{ {access} }} }}\n"
        )
    };
    let open = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\n{}",
        args.brokers,
        channel_and_route(""),
    ));
    let guarded = Gateway::start(&format!(
        "listen: 127.0.0.1:0\nkafka: {{ brokers: \"{}\" }}\n\
         auth:\n  jwt: {{ jwks_file: \"{}\", issuers: [bench], audiences: [osmosis], algorithms: [ES256] }}\n{}",
        args.brokers,
        jwks.display(),
        channel_and_route("scopes: [ingest]"),
    ));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = bytes::Bytes::from(vec![b'x'; args.body_bytes]);
    let reused = Arc::new(format!("Bearer {}", token(&encoding, "bench-client")));
    let fresh: Arc<Vec<String>> = Arc::new(
        (0..args.fresh_tokens)
            .map(|i| format!("Bearer {}", token(&encoding, &format!("client-{i}"))))
            .collect(),
    );
    let next_fresh = Arc::new(AtomicUsize::new(0));

    let post = |url: String, authorization: Option<Arc<dyn Fn() -> String + Send + Sync>>| {
        let (http, body) = (http.clone(), body.clone());
        move || {
            let mut request = http.post(&url).body(body.clone());
            if let Some(authorization) = &authorization {
                request = request.header("authorization", authorization());
            }
            async move { matches!(request.send().await, Ok(r) if r.status() == 202) }
        }
    };
    let off = post(open.url("/ingest"), None);
    let cached = post(
        guarded.url("/ingest"),
        Some(Arc::new({
            let reused = Arc::clone(&reused);
            move || reused.as_str().to_owned()
        })),
    );
    let uncached = post(
        guarded.url("/ingest"),
        Some(Arc::new({
            let (fresh, next) = (Arc::clone(&fresh), Arc::clone(&next_fresh));
            move || fresh[next.fetch_add(1, Ordering::Relaxed) % fresh.len()].clone()
        })),
    );

    // Warm both gateways (connections, producer ids) and check the token.
    for op in [off.clone(), cached.clone()] {
        let warm = closed_loop(8, Duration::from_secs(2), op).await;
        if warm.errors > 0 || warm.records == 0 {
            bail!("the warm-up failed: {} errors", warm.errors);
        }
    }

    header(
        "Publish with JWT verification off and on (ES256)",
        &format!(
            "{} B bodies, 6 partitions, acks=all, in-process client, {} s per run",
            args.body_bytes, args.seconds
        ),
    );
    println!(
        "| concurrency | verification | rec/s | p50 ms | p99 ms | errors | throughput vs off | p50 added ms |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for &concurrency in &args.concurrency {
        let baseline = closed_loop(concurrency, duration, off.clone()).await;
        let remembered = closed_loop(concurrency, duration, cached.clone()).await;
        let verified = closed_loop(concurrency, duration, uncached.clone()).await;
        for (name, sample) in [
            ("off", &baseline),
            ("on, token reused", &remembered),
            ("on, fresh token each request", &verified),
        ] {
            row(concurrency, name, sample, &baseline);
        }
    }
    println!(
        "\nTarget: at most 10 % less throughput and 1 ms more p50 with verification on (token reused)."
    );
    Ok(())
}

fn row(concurrency: usize, name: &str, sample: &Sample, baseline: &Sample) {
    println!(
        "| {concurrency} | {name} | {:.0} | {:.2} | {:.2} | {} | {:.0} % | {:+.2} |",
        sample.rate(),
        sample.ms(0.5),
        sample.ms(0.99),
        sample.errors,
        100.0 * sample.rate() / baseline.rate(),
        sample.ms(0.5) - baseline.ms(0.5),
    );
}

//! Trust, end to end: the real gateway with authentication on, a real
//! broker and a real echo worker. Every route and channel policy answers
//! what RFC 6750 says (401 with a `Bearer` challenge, 403 for a missing
//! scope); the verified caller reaches the worker and a spoofed one does
//! not; a reply is read only by its caller, on any instance; a tenant's
//! subscription sees only its records; keys rotate without a restart; the
//! operational endpoints can leave the public port; CORS answers browsers;
//! the gateway serves HTTPS itself when given a certificate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::{Gateway, Worker};
use osmosis_e2e::sse::EventStream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "osmosis";
const API_KEY: &str = "billing-key-7f3a9c";
const OPERATOR_SCOPE: &str = "osmosis:operator";

/// Signing keys and the files the gateway reads them from.
struct Keys {
    dir: tempfile::TempDir,
    secret: Vec<u8>,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret: [u8; 32] = rand_bytes();
        let keys = Self {
            dir,
            secret: secret.to_vec(),
        };
        keys.write_jwks(&[("k1", &keys.secret)]);
        let hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
        std::fs::write(
            keys.dir.path().join("api-keys.yaml"),
            format!("- subject: billing\n  sha256: {hash}\n  scopes: [orders:write]\n"),
        )
        .unwrap();
        keys
    }

    /// Writes a JWKS of symmetric keys (kid, secret).
    fn write_jwks(&self, keys: &[(&str, &[u8])]) {
        std::fs::write(self.jwks_path(), jwks(keys).to_string()).unwrap();
    }

    fn jwks_path(&self) -> String {
        self.dir.path().join("jwks.json").display().to_string()
    }

    /// The gateway configuration with the keys from the JWKS file.
    fn config(&self, channels: &str, routes: &str, extra: &str) -> String {
        let source = format!("jwks_file: \"{}\"", self.jwks_path());
        config(self, &source, channels, routes, extra)
    }

    fn api_keys_path(&self) -> String {
        self.dir.path().join("api-keys.yaml").display().to_string()
    }

    /// A valid token of `subject` with `scopes` and extra claims.
    fn token(&self, subject: &str, scopes: &str, extra: Value) -> String {
        let mut claims = claims(subject, scopes);
        merge(&mut claims, extra);
        sign(&self.secret, "k1", Algorithm::HS256, &claims)
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(16).enumerate() {
        let random = uuid::Uuid::new_v4().as_u128() ^ (i as u128);
        chunk.copy_from_slice(&random.to_le_bytes());
    }
    bytes
}

fn jwks(keys: &[(&str, &[u8])]) -> Value {
    json!({
        "keys": keys.iter().map(|(kid, secret)| json!({
            "kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret),
        })).collect::<Vec<_>>()
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(subject: &str, scopes: &str) -> Value {
    json!({
        "sub": subject, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "exp": now() + 600, "scope": scopes,
    })
}

fn merge(claims: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (name, value) in extra {
            claims[name] = value;
        }
    }
}

fn sign(secret: &[u8], kid: &str, algorithm: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The gateway configuration: `channels` and `routes` YAML under an auth
/// section reading `keys`.
fn config(keys: &Keys, jwks_source: &str, channels: &str, routes: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{brokers}\" }}\n\
         auth:\n  jwt: {{ {jwks_source}, issuers: [\"{ISSUER}\"], audiences: [{AUDIENCE}], algorithms: [HS256], refresh_min_secs: 0 }}\n  api_keys: {{ file: \"{api_keys}\" }}\n  operator_scope: \"{OPERATOR_SCOPE}\"\n\
         channels:\n{channels}\
         routes:\n{routes}{extra}",
        brokers = kafka::bootstrap(),
        api_keys = keys.api_keys_path(),
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Checks a 401/403 answer: status, problem+json, and the challenge.
async fn assert_refused(response: reqwest::Response, status: StatusCode, challenge: &str) {
    assert_eq!(response.status(), status);
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        www.starts_with("Bearer realm=\"osmosis\"") && www.contains(challenge),
        "WWW-Authenticate {www:?} should contain {challenge:?}"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], status.as_u16());
}

#[tokio::test]
async fn every_policy_answers_as_rfc_6750_says() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.policies", 1).await;
    let routes = format!(
        "  - {{ name: open, method: POST, path: /open, channel: {channel}, access: {{ public: true }} }}\n\
         \x20 - {{ name: orders, method: POST, path: /orders, channel: {channel}, access: {{ scopes: [orders:write] }} }}\n\
         \x20 - {{ name: acme, method: POST, path: /acme, channel: {channel}, access: {{ claims: {{ tenant: acme }} }} }}\n"
    );
    let gateway = Gateway::start(&keys.config(&format!("  {channel}: {{}}\n"), &routes, ""));
    let http = client();
    let post = |path: &str| http.post(gateway.url(path)).body("payload");
    let bearer = |token: &str| format!("Bearer {token}");

    // No credential: 401 with a challenge that carries no error code.
    let response = post("/orders").send().await.unwrap();
    assert_refused(response, StatusCode::UNAUTHORIZED, "").await;

    // Bad credentials: 401 invalid_token, each saying what was wrong.
    let good = claims("alice", "orders:write");
    let other_secret = rand_bytes();
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("https://evil.test");
    let mut wrong_audience = good.clone();
    wrong_audience["aud"] = json!("someone-else");
    for (token, why) in [
        (
            sign(&other_secret, "k1", Algorithm::HS256, &good),
            "signature",
        ),
        (
            sign(&keys.secret, "k1", Algorithm::HS256, &expired),
            "expired",
        ),
        (
            sign(&keys.secret, "k1", Algorithm::HS256, &wrong_issuer),
            "issuer",
        ),
        (
            sign(&keys.secret, "k1", Algorithm::HS256, &wrong_audience),
            "audience",
        ),
        (
            sign(&keys.secret, "k1", Algorithm::HS512, &good),
            "does not accept",
        ),
        (
            sign(&keys.secret, "nobody", Algorithm::HS256, &good),
            "unknown key",
        ),
        ("not-a-jwt".to_owned(), "malformed"),
    ] {
        let response = post("/orders")
            .header("authorization", bearer(&token))
            .send()
            .await
            .unwrap();
        let www = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(www.contains(why), "{why}: {www}");
        assert_refused(
            response,
            StatusCode::UNAUTHORIZED,
            "error=\"invalid_token\"",
        )
        .await;
    }
    // A public route still refuses a bad credential rather than ignoring it.
    let response = post("/open")
        .header("authorization", "Bearer not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Valid but not allowed: 403 naming the missing scope.
    let reader = keys.token("bob", "orders:read", json!({}));
    let response = post("/orders")
        .header("authorization", bearer(&reader))
        .send()
        .await
        .unwrap();
    assert_refused(
        response,
        StatusCode::FORBIDDEN,
        "error=\"insufficient_scope\", scope=\"orders:write\"",
    )
    .await;
    let globex = keys.token("carol", "", json!({ "tenant": "globex" }));
    let response = post("/acme")
        .header("authorization", bearer(&globex))
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // Allowed: a token, an API key, and anonymous on the public route.
    let writer = keys.token("alice", "orders:write orders:read", json!({}));
    let acme = keys.token("dave", "", json!({ "tenant": "acme" }));
    for request in [
        post("/orders").header("authorization", bearer(&writer)),
        post("/orders").header("x-api-key", API_KEY),
        post("/acme").header("authorization", bearer(&acme)),
        post("/open"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let response = post("/orders")
        .header("x-api-key", "guessed")
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // No token reaches the log.
    let log = gateway.service.log_text();
    assert!(!log.contains(&writer) && !log.contains(API_KEY));
}

#[tokio::test]
async fn the_verified_caller_reaches_the_worker_and_a_spoofed_one_does_not() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.identity", 1).await;
    let routes = format!(
        "  - {{ name: open, method: POST, path: /open, channel: {channel}, access: {{ public: true }} }}\n\
         \x20 - {{ name: orders, method: POST, path: /orders, channel: {channel}, access: {{ scopes: [orders:write] }} }}\n"
    );
    let gateway = Gateway::start(&keys.config(&format!("  {channel}: {{}}\n"), &routes, ""));
    let http = client();
    let token = keys.token("alice", "orders:write orders:read", json!({}));
    for (path, auth) in [("/orders", Some(token.as_str())), ("/open", None)] {
        let mut request = http
            .post(gateway.url(path))
            .header("osmosis-subject", "mallory")
            .header("osmosis-scopes", "admin")
            .body(path.to_owned());
        if let Some(token) = auth {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        assert_eq!(request.send().await.unwrap().status(), StatusCode::ACCEPTED);
    }
    let records = kafka::read_records(&channel, 2, Duration::from_secs(30));
    let by_body = |body: &str| {
        records
            .iter()
            .find(|r| r.value == body.as_bytes())
            .unwrap_or_else(|| panic!("no record {body}"))
    };
    let authenticated = by_body("/orders");
    assert_eq!(authenticated.header("osmosis-subject"), Some("alice"));
    assert_eq!(
        authenticated.header("osmosis-scopes"),
        Some("orders:read orders:write")
    );
    let anonymous = by_body("/open");
    assert_eq!(anonymous.header("osmosis-subject"), None);
    assert_eq!(anonymous.header("osmosis-scopes"), None);
}

#[tokio::test]
async fn a_reply_is_read_only_by_its_caller_on_any_instance() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.replies", 1).await;
    let replies = kafka::unique_name("trust.replies.out");
    let yaml = keys.config(
        &format!("  {channel}: {{}}\n"),
        &format!(
            "  - {{ name: ask, method: POST, path: /ask, channel: {channel}, mode: request, timeout_ms: 20000 }}\n"
        ),
        &format!("replies: {{ topic: {replies}, partitions: 2 }}\n"),
    );
    let first = Gateway::start_with(&yaml, &["--create-topics"]);
    let second = Gateway::start_with(&yaml, &["--create-topics"]);
    let _worker = Worker::start("examples/echo", kafka::bootstrap(), &channel, &[]);
    let http = client();
    for gateway in [&first, &second] {
        eventually(Duration::from_secs(60), "both gateways ready", || async {
            let ready = http.get(gateway.url("/readyz")).send().await.ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
    }
    let alice = keys.token("alice", "", json!({}));
    let bob = keys.token("bob", "", json!({}));
    let operator = keys.token("support", OPERATOR_SCOPE, json!({}));

    // The caller waits for its reply: the worker saw who called.
    let response = http
        .post(first.url("/ask"))
        .header("authorization", format!("Bearer {alice}"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-echo-caller"], "alice");
    let id = response.headers()["osmosis-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // Both instances answer the caller and an operator, and 404 — as for an
    // unknown id — to anyone else, with or without a token.
    let unknown: Value = http
        .get(first.url("/v1/requests/01900000-0000-7000-8000-000000000000"))
        .header("authorization", format!("Bearer {alice}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for gateway in [&first, &second] {
        let url = gateway.url(&format!("/v1/requests/{id}"));
        for reader in [&alice, &operator] {
            let response = http
                .get(&url)
                .header("authorization", format!("Bearer {reader}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            assert_eq!(response.bytes().await.unwrap(), "hello");
        }
        for reader in [Some(&bob), None] {
            let mut request = http.get(&url);
            if let Some(reader) = reader {
                request = request.header("authorization", format!("Bearer {reader}"));
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{url}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(
                problem["title"], unknown["title"],
                "a 404 like an unknown id's"
            );
        }
        // The event stream too.
        let response = http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {bob}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let mut events = EventStream::open(
            http.get(&url)
                .header("authorization", format!("Bearer {alice}")),
        )
        .await;
        assert!(events.expect("accepted").await.data.contains(&id));
        let reply: Value = serde_json::from_str(&events.expect("reply").await.data).unwrap();
        assert_eq!(reply["body"], "hello");
    }
}

#[tokio::test]
async fn a_tenants_subscription_sees_only_its_own_records() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.tenants", 2).await;
    let gateway = Gateway::start(&keys.config(
        &format!(
            "  {channel}: {{ subscribable: true, access: {{ key_claim: tenant, browser_token: true }} }}\n"
        ),
        &format!(
            "  - {{ name: events, method: POST, path: /events, channel: {channel}, key: {{ header: x-tenant }}, access: {{ public: true }} }}\n"
        ),
        "",
    ));
    let http = client();
    let acme = keys.token("dave", "", json!({ "tenant": "acme" }));
    let url = gateway.url(&format!("/v1/channels/{channel}"));

    // No token, or a key= of another tenant: refused.
    let response = http.get(&url).send().await.unwrap();
    assert_refused(response, StatusCode::UNAUTHORIZED, "").await;
    let response = http
        .get(format!("{url}?key=globex"))
        .header("authorization", format!("Bearer {acme}"))
        .send()
        .await
        .unwrap();
    assert_refused(response, StatusCode::FORBIDDEN, "insufficient_scope").await;

    // The browser's ways: a query token and a cookie, bound to acme.
    let mut by_query =
        EventStream::open(http.get(format!("{url}?access_token={acme}&from=earliest"))).await;
    let mut by_cookie = EventStream::open(
        http.get(format!("{url}?from=earliest"))
            .header("cookie", format!("theme=dark; osmosis_token={acme}")),
    )
    .await;
    for (tenant, body) in [
        ("globex", "g1"),
        ("acme", "a1"),
        ("globex", "g2"),
        ("acme", "a2"),
    ] {
        let response = http
            .post(gateway.url("/events"))
            .header("x-tenant", tenant)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    for events in [&mut by_query, &mut by_cookie] {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = events.next(Duration::from_secs(30)).await.unwrap();
            if event.event == "record" {
                seen.push(event.data);
            }
        }
        seen.sort();
        assert_eq!(seen, vec!["a1", "a2"], "only acme's records");
    }
    assert!(!gateway.service.log_text().contains(&acme));
}

// Multi-threaded: the JWKS server must answer while the test thread waits
// for the gateway to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.rotation", 1).await;
    // The provider's JWKS, served over HTTP and swapped mid-test.
    let served = Arc::new(Mutex::new(jwks(&[("k1", &keys.secret)])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let served = Arc::clone(&served);
            move || async move { axum::Json(served.lock().unwrap().clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gateway = Gateway::start(&config(
        &keys,
        &format!("jwks_url: \"{jwks_url}\""),
        &format!("  {channel}: {{}}\n"),
        &format!("  - {{ method: POST, path: /orders, channel: {channel} }}\n"),
        "",
    ));
    let http = client();
    let new_secret = rand_bytes();
    let rotated = sign(
        &new_secret,
        "k2",
        Algorithm::HS256,
        &claims("alice", "orders:write"),
    );
    let send = |token: String| {
        http.post(gateway.url("/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body("x")
            .send()
    };
    assert_eq!(
        send(rotated.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "k2 is not published yet"
    );
    *served.lock().unwrap() = jwks(&[("k1", &keys.secret), ("k2", &new_secret)]);
    // A token naming the new key id makes the gateway fetch the keys again.
    eventually(Duration::from_secs(30), "the rotated key accepted", || {
        let attempt = send(rotated.clone());
        async move { (attempt.await.ok()?.status() == StatusCode::ACCEPTED).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn operational_endpoints_leave_the_public_port_and_browsers_get_cors() {
    let keys = Keys::new();
    let channel = kafka::create_topic("trust.ops", 1).await;
    let gateway = Gateway::start(&keys.config(
        &format!("  {channel}: {{}}\n"),
        &format!(
            "  - {{ method: POST, path: /orders, channel: {channel}, access: {{ public: true }}, cors: {{ origins: [\"https://app.example.com\"], credentials: true }} }}\n"
        ),
        "ops_listen: 127.0.0.1:0\n",
    ));
    let line = gateway
        .service
        .wait_for_log("operational endpoints listening", Duration::from_secs(30));
    let ops = line["addr"].as_str().unwrap().to_owned();
    let http = client();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let public = http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(
            public.status(),
            StatusCode::NOT_FOUND,
            "{path} is not public"
        );
        let private = http
            .get(format!("http://{ops}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(private.status(), StatusCode::OK, "{path} on {ops}");
    }

    // A preflight from the allowed origin gets its answer; another origin
    // gets no CORS headers, so its browser refuses the call.
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, gateway.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let response = http
        .post(gateway.url("/orders"))
        .header("origin", "https://app.example.com")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("location") && exposed.contains("osmosis-request-id"));
}

#[tokio::test]
async fn the_gateway_serves_https_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(
        path("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    // A CA for the run, and a certificate for 127.0.0.1 that it signs.
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(&format!(
        "req -x509 {ec} -days 1 -subj /CN=osmosis-test-ca -keyout {} -out {ca}",
        path("ca.key")
    ));
    openssl(&format!(
        "req {ec} -subj /CN=localhost -keyout {key} -out {}",
        path("leaf.csr")
    ));
    openssl(&format!(
        "x509 -req -days 1 -CAcreateserial -in {} -CA {ca} -CAkey {} -extfile {} -out {cert}",
        path("leaf.csr"),
        path("ca.key"),
        path("leaf.ext"),
    ));
    let channel = kafka::create_topic("trust.tls", 1).await;
    let gateway = Gateway::start(&format!(
        "listen: 127.0.0.1:0\n\
         kafka: {{ brokers: \"{brokers}\" }}\n\
         tls: {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n\
         channels: {{ {channel}: {{}} }}\n\
         routes:\n  - {{ method: POST, path: /orders, channel: {channel} }}\n",
        brokers = kafka::bootstrap(),
    ));
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = https
        .post(format!("https://{}/orders", gateway.addr))
        .body("over TLS")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "ALPN offers h2"
    );
    let records = kafka::read_records(&channel, 1, Duration::from_secs(30));
    assert_eq!(records[0].value, b"over TLS");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client().get(gateway.url("/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that stalls its handshake does not hold the others up.
    let _stalled = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let response = https
        .get(format!("https://{}/healthz", gateway.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Runs `openssl` with whitespace-separated `args` (no spaces inside one).
fn openssl(args: &str) {
    let made = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .output()
        .expect("openssl is installed (the Kafka TLS listener needs it too)");
    assert!(
        made.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

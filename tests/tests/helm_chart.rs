//! The Helm chart (`helm/osmosis`) with the real binaries: the controller
//! runs as the chart's ServiceAccount, with a token the API server issued
//! for it, and is refused what its RBAC does not grant; every dashboard
//! query returns data from a real Prometheus scraping a gateway configured
//! by the chart, a worker and the controller; each component's `/metrics`
//! passes `promtool check metrics`.
//!
//! Needs, beside Kafka and the API server: `OSMOSIS_TEST_HELM` (helm, from
//! `scripts/helm.sh`), `OSMOSIS_TEST_PROMETHEUS` and `OSMOSIS_TEST_PROMTOOL`
//! (from `scripts/monitoring.sh`), and kubectl. `make test` sets them all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use osmosis_autoscaler::crd::ChannelScaler;
use osmosis_e2e::kafka;
use osmosis_e2e::kube::{
    KUBECONFIG_ENV, apply_crd, controller, create_namespace, deployment, scaler_spec,
};
use osmosis_e2e::process::{Service, Worker};
use osmosis_e2e::{eventually, kube::client};

const WAIT: Duration = Duration::from_secs(60);

/// The path of a tool named by an environment variable; panics with how to
/// get it (tests never skip for lack of a tool).
fn tool(env: &str, script: &str) -> PathBuf {
    let path = std::env::var(env).unwrap_or_else(|_| {
        panic!(
            "{env} is not set: run `make test`, or `{script}` and set {env} to the tool it prints"
        )
    });
    assert!(
        Path::new(&path).exists(),
        "{env}={path} does not exist: run {script}"
    );
    PathBuf::from(path)
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/osmosis")
}

/// Runs a command, panicking with its output when it fails; returns stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `helm template rel <chart>` in `namespace` with `values`, as documents.
fn render(namespace: &str, values: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    // JSON is YAML.
    file.write_all(values.to_string().as_bytes()).unwrap();
    let helm = tool(
        "OSMOSIS_TEST_HELM",
        "scripts/helm.sh build; scripts/helm.sh env",
    );
    let text = run(Command::new(helm)
        .args(["template", "rel"])
        .arg(chart())
        .args(["--namespace", namespace, "-f"])
        .arg(file.path()));
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<serde_json::Value>(doc).ok())
        .filter(|doc| doc.is_object())
        .collect()
}

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let kubeconfig = std::env::var(KUBECONFIG_ENV).unwrap();
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (it is in the machine image) is required");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A kubeconfig for the test API server that authenticates with `token`.
fn token_kubeconfig(token: &str) -> tempfile::NamedTempFile {
    let admin =
        kube::config::Kubeconfig::read_from(std::env::var(KUBECONFIG_ENV).unwrap()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": {
            "server": cluster.server,
            "certificate-authority": cluster.certificate_authority,
        }}],
        "users": [{ "name": "sa", "user": { "token": token } }],
        "contexts": [{ "name": "sa", "context": { "cluster": "test", "user": "sa" } }],
        "current-context": "sa",
    });
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(config.to_string().as_bytes()).unwrap();
    file
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// The chart's RBAC, proven: the controller, started with the chart's own
/// arguments and a token issued for the chart's ServiceAccount, takes its
/// Lease, reads the Kafka Secret, measures the channel, scales the pool's
/// Deployment, records an Event and writes the scaler's status; with the
/// same token the API server refuses Secrets of another namespace, other
/// Secrets, Deployments the chart does not scale, and everything else.
#[tokio::test]
async fn the_controller_runs_as_the_charts_service_account_with_nothing_more() {
    let client = client().await;
    apply_crd(&client).await;
    let topic = kafka::create_topic("helm.rbac", 4).await;
    let suffix = &topic[topic.len() - 8..];
    let namespace = format!("helm-rbac-{suffix}");
    let other = format!("helm-rbac-other-{suffix}");
    create_namespace(&client, &namespace).await;
    create_namespace(&client, &other).await;

    let documents = render(
        &namespace,
        &serde_json::json!({
            "kafka": { "brokers": kafka::bootstrap(), "properties": { "security.protocol": "PLAINTEXT" } },
            "workers": { "orders": {
                "channel": topic,
                "command": ["osmosis-echo-worker"],
                "scaler": { "lagPerReplica": 50, "pollIntervalSeconds": 1, "idleSeconds": 600 },
            }},
        }),
    );
    let manifest: Vec<String> = documents
        .iter()
        .map(|doc| serde_json::to_string(doc).unwrap())
        .collect();
    kubectl(
        &["apply", "-n", &namespace, "-f", "-"],
        Some(&manifest.join("\n")),
    );
    // What the controller must not reach: a Secret of the same name in
    // another namespace, another Secret and a Deployment of its own namespace.
    let secret = |name: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name }, "stringData": { "sasl.password": "do-not-read" }
        }))
        .unwrap()
    };
    let admin_secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    admin_secrets(&other)
        .create(&PostParams::default(), &secret("rel-osmosis-kafka"))
        .await
        .unwrap();
    admin_secrets(&namespace)
        .create(&PostParams::default(), &secret("unrelated"))
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments
        .create(&PostParams::default(), &deployment("unrelated"))
        .await
        .unwrap();

    let token = kubectl(
        &[
            "create",
            "token",
            "rel-osmosis-controller",
            "-n",
            &namespace,
            "--duration=1h",
        ],
        None,
    );
    let kubeconfig = token_kubeconfig(token.trim());
    // The controller's arguments as the chart renders them, on a local port.
    let rendered = documents
        .iter()
        .find(|doc| {
            doc["kind"] == "Deployment" && doc["metadata"]["name"] == "rel-osmosis-controller"
        })
        .expect("the chart renders the controller");
    let container = &rendered["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "osmosis-autoscaler");
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().replace("0.0.0.0:8080", "127.0.0.1:0"))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = Service::spawn(
        "osmosis-autoscaler",
        &args,
        &[
            (
                "KUBECONFIG",
                kubeconfig.path().to_string_lossy().into_owned(),
            ),
            ("POD_NAME", "rel-osmosis-controller-0".into()),
        ],
    );
    controller.wait_for_log("leading", WAIT);

    kafka::produce_keyed(&topic, "k", 200).await;
    // 200 messages, 50 per replica, 4 partitions: 4 replicas.
    eventually(WAIT, "the pool's Deployment scaled to 4", || async {
        let scale = deployments
            .get_scale("rel-osmosis-worker-orders")
            .await
            .ok()?;
        (scale.spec?.replicas? == 4).then_some(())
    })
    .await;
    let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), &namespace);
    eventually(WAIT, "the status written by the controller", || async {
        let status = scalers
            .get("rel-osmosis-worker-orders")
            .await
            .ok()?
            .status?;
        (status.desired_replicas == 4 && status.lag > 0).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    let scaled = events.list(&ListParams::default()).await.unwrap();
    assert!(
        scaled
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scaled")),
        "a Scaled Event: {:?}",
        scaled.items
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &namespace)
        .get("rel-osmosis-controller")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("rel-osmosis-controller-0")
    );
    assert!(
        !controller.log_text().contains("Forbidden"),
        "the controller was refused something it needs:\n{}",
        controller.log_text()
    );

    // The same token, everything else.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig.path()).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let sa = Client::try_from(config).unwrap();
    Api::<Secret>::namespaced(sa.clone(), &namespace)
        .get("rel-osmosis-kafka")
        .await
        .expect("the Kafka Secret is readable by the controller");
    assert_forbidden(
        "the Kafka Secret's namesake in another namespace",
        Api::<Secret>::namespaced(sa.clone(), &other)
            .get("rel-osmosis-kafka")
            .await,
    );
    assert_forbidden(
        "another Secret of its namespace",
        Api::<Secret>::namespaced(sa.clone(), &namespace)
            .get("unrelated")
            .await,
    );
    assert_forbidden(
        "listing Secrets",
        Api::<Secret>::namespaced(sa.clone(), &namespace)
            .list(&ListParams::default())
            .await,
    );
    let sa_deployments: Api<Deployment> = Api::namespaced(sa.clone(), &namespace);
    assert_forbidden(
        "the scale of a Deployment the chart does not scale",
        sa_deployments.get_scale("unrelated").await,
    );
    assert_forbidden(
        "scaling a Deployment the chart does not scale",
        sa_deployments
            .patch_scale(
                "unrelated",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": { "replicas": 3 } })),
            )
            .await,
    );
    assert_forbidden(
        "reading Deployments",
        sa_deployments.get("rel-osmosis-worker-orders").await,
    );
    assert_forbidden(
        "ChannelScalers of another namespace",
        Api::<ChannelScaler>::namespaced(sa.clone(), &other)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "listing Pods",
        Api::<Pod>::namespaced(sa.clone(), &namespace)
            .list(&ListParams::default())
            .await,
    );
}

/// A Prometheus server on loopback scraping `targets` every second; killed
/// when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, String)]) -> Self {
        let binary = tool(
            "OSMOSIS_TEST_PROMETHEUS",
            "scripts/monitoring.sh prometheus; scripts/monitoring.sh env",
        );
        let dir = tempfile::tempdir().unwrap();
        let jobs: Vec<String> = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs: [{{ targets: ['{addr}'] }}]\n")
            })
            .collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n{}",
            jobs.concat()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = kafka::free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("starting prometheus");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result vector of an instant query, or None while Prometheus
    /// cannot answer.
    async fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        assert_ne!(body["status"], "error", "{expr}: {body}");
        body["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every query of a dashboard (panel targets and annotations), with
/// Grafana's variables replaced as Grafana would with "All" selected.
fn dashboard_queries(file: &Path) -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["target"]["expr"].as_str() {
            queries.push((
                format!("annotation {}", annotation["name"]),
                expr.to_owned(),
            ));
        }
    }
    queries
        .into_iter()
        .map(|(title, expr)| {
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "5m")
                .replace("$namespace", ".*")
                .replace("$scaler", ".*")
                .replace("$pool", ".*");
            assert!(
                !expr.contains('$'),
                "{title}: an unknown variable in {expr}"
            );
            (title, expr)
        })
        .collect()
}

/// OpenMetrics text (what the components serve) as the classic Prometheus
/// text format `promtool check metrics` lints: a counter family `x` has
/// samples `x_total` in both, but its HELP and TYPE name `x_total` only in
/// the classic format, which has no `# EOF`.
fn classic_text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    openmetrics
        .lines()
        .filter(|line| *line != "# EOF")
        .map(|line| {
            for prefix in ["# HELP ", "# TYPE "] {
                if let Some(rest) = line.strip_prefix(prefix) {
                    let name = rest.split(' ').next().unwrap_or_default();
                    if counters.contains(&name) {
                        return format!("{prefix}{name}_total{}", &rest[name.len()..]);
                    }
                }
            }
            line.to_owned()
        })
        .map(|line| line + "\n")
        .collect()
}

/// The operator's view works: a gateway configured by the chart, a worker
/// that fails (retries, dead letters) and the controller scaling a
/// backlog, scraped by a real Prometheus; every query of the three
/// dashboards returns data, and each component's `/metrics` passes
/// `promtool check metrics` (read as the classic text format).
#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let promtool = tool(
        "OSMOSIS_TEST_PROMTOOL",
        "scripts/monitoring.sh prometheus; scripts/monitoring.sh env",
    );
    let client = client().await;
    apply_crd(&client).await;
    let work = kafka::unique_name("helm.dash.work");
    let events = kafka::unique_name("helm.dash.events");
    let backlog = kafka::create_topic("helm.dash.backlog", 4).await;
    let suffix = &backlog[backlog.len() - 8..];
    let namespace = format!("helm-dash-{suffix}");
    create_namespace(&client, &namespace).await;

    // The gateway's configuration as the chart renders it (single-broker
    // durability, one stream at a time so that a second one gets 503).
    let documents = render(
        &namespace,
        &serde_json::json!({
            "kafka": { "brokers": kafka::bootstrap() },
            "topicDefaults": { "partitions": 2, "replication_factor": 1, "min_insync_replicas": 1 },
            "gateway": {
                "channels": { (work.clone()): {}, (events.clone()): { "subscribable": true } },
                "replies": { "topic": format!("{work}.replies"), "partitions": 2 },
                "routes": [
                    { "name": "work", "method": "POST", "path": "/work", "channel": work, "mode": "request", "timeout_ms": 20000 },
                    { "name": "events", "method": "POST", "path": "/events", "channel": events },
                ],
                "sse": { "max_connections": 1 },
            },
        }),
    );
    let config = documents
        .iter()
        .find(|doc| doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "rel-osmosis-gateway")
        .expect("the chart renders the gateway's ConfigMap")["data"]["gateway.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let gateway = Service::start(
        "osmosis-gateway",
        &config,
        &["--create-topics"],
        &[
            ("OSMOSIS_LISTEN", "127.0.0.1:0".into()),
            ("OSMOSIS_OPS_LISTEN", "127.0.0.1:0".into()),
        ],
    );
    let gateway_addr = gateway.wait_listening();
    // The chart serves /metrics on the gateway's operational port.
    let gateway_ops = gateway.wait_for_log("operational endpoints listening", WAIT)["addr"]
        .as_str()
        .expect("the operational listener's address")
        .to_owned();
    let worker = Worker::start(
        "examples/slow",
        kafka::bootstrap(),
        &work,
        &[
            "--work-ms",
            "5",
            "--fail",
            "--max-retries",
            "1",
            "--retry-backoff-ms",
            "10",
        ],
    );
    worker.wait_assigned();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments
        .create(&PostParams::default(), &deployment("backlog"))
        .await
        .unwrap();
    let mut spec = scaler_spec("backlog", &backlog, &format!("{backlog}.workers"));
    spec.max_time_lag_seconds = Some(60);
    // Polls an hour apart: the surge watch acts on the backlog.
    spec.poll_interval_seconds = 3600;
    let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), &namespace);
    scalers
        .create(&PostParams::default(), &ChannelScaler::new("backlog", spec))
        .await
        .unwrap();
    let (_controller, controller_addr) = controller(&namespace);
    eventually(WAIT, "the scaler's first measurement", || async {
        let status = scalers.get("backlog").await.ok()?.status?;
        (status.partitions == 4).then_some(())
    })
    .await;

    let prometheus = Prometheus::start(&[
        ("gateway", gateway_ops.clone()),
        ("worker", worker.metrics_addr.to_string()),
        ("autoscaler", controller_addr.clone()),
    ]);
    eventually(WAIT, "Prometheus scraping all three targets", || async {
        let up = prometheus.query("sum(up) == 3").await?;
        (!up.is_empty()).then_some(())
    })
    .await;

    // Traffic for every panel: a channel subscriber and a refused second
    // one (503), published events, request-mode calls the failing worker
    // dead-letters (5xx answers), and a backlog the controller scales on.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{gateway_addr}{path}");
    let subscription = http
        .get(url(&format!("/v1/channels/{events}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(subscription.status(), 200);
    let refused = http
        .get(url(&format!("/v1/channels/{events}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    for _ in 0..5 {
        let published = http.post(url("/events")).body("e").send().await.unwrap();
        assert_eq!(published.status(), 202);
    }
    let failed = http.post(url("/work")).body("w").send().await.unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    kafka::produce_keyed(&backlog, "k", 200).await;
    eventually(WAIT, "the backlog scaled", || async {
        let scale = deployments.get_scale("backlog").await.ok()?;
        (scale.spec?.replicas? > 0).then_some(())
    })
    .await;

    for name in ["gateway", "scaling", "workers"] {
        let file = chart().join(format!("files/dashboards/{name}.json"));
        for (title, expr) in dashboard_queries(&file) {
            eventually(
                WAIT,
                &format!("data for {name}: {title}: {expr}"),
                || async {
                    let result = prometheus.query(&expr).await?;
                    (!result.is_empty()).then_some(())
                },
            )
            .await;
        }
    }
    drop(subscription);

    for (component, addr) in [
        ("gateway", gateway_ops),
        ("worker", worker.metrics_addr.to_string()),
        ("autoscaler", controller_addr),
    ] {
        let metrics = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(classic_text_format(&metrics).as_bytes())
            .unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics on the {component}'s /metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

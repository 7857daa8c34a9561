//! The real Kubernetes API server the tests run against (`scripts/kube.sh`),
//! and what controller tests share: the CRD, a target Deployment (alone in
//! a namespace, with its scaler: a [`Workload`]) and the history of its
//! replicas, controller processes.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt};
use osmosis_autoscaler::crd::{
    ChannelScaler, ChannelScalerSpec, KafkaConnection, ScaleTargetRef, ScalingBehavior,
    ScalingRules, SelectPolicy,
};

use crate::kafka;
use crate::process::Service;

/// Environment variable naming the test API server's kubeconfig.
pub const KUBECONFIG_ENV: &str = "OSMOSIS_TEST_KUBECONFIG";

/// A client of the test API server. Panics with instructions when there is
/// none: tests never skip for lack of Kubernetes.
pub async fn client() -> Client {
    static PATH: OnceLock<String> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        std::env::var(KUBECONFIG_ENV).unwrap_or_else(|_| {
            panic!(
                "{KUBECONFIG_ENV} is not set. These tests need a real kube-apiserver: run `make test`, \
                 which starts one, or `scripts/kube.sh up` and set {KUBECONFIG_ENV} to its kubeconfig."
            )
        })
    });
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading the kubeconfig {path}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading the kubeconfig {path}: {e}"));
    let client = Client::try_from(config).expect("a Kubernetes client");
    tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .unwrap_or_else(|_| panic!("the API server of {path} does not answer within 10s"))
        .unwrap_or_else(|e| panic!("the API server of {path} is not reachable: {e}"));
    client
}

/// A Deployment named `name` at zero replicas (no kubelet runs it: the
/// tests read its `spec.replicas`).
pub fn deployment(name: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "worker", "image": "osmosis/slow:test" }] }
            }
        }
    }))
    .unwrap()
}

/// Installs (or updates) the ChannelScaler CRD from the Rust types.
pub async fn apply_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "channelscalers.osmosis.dev",
        &PatchParams::apply("osmosis-tests").force(),
        &Patch::Apply(ChannelScaler::crd()),
    )
    .await
    .expect("applying the CRD");
}

/// A controller for the ChannelScalers of `namespace` (a Lease of its own),
/// and the address of its `/metrics`.
pub fn controller(namespace: &str) -> (Service, String) {
    let lease = format!("osmosis-autoscaler-{namespace}-{}", std::process::id());
    controller_replica(namespace, &lease, &[])
}

/// One replica of a controller for the ChannelScalers of `namespace` that
/// elects its leader on the Lease `lease`, started with `extra` arguments
/// (`--identity`, `--lease-duration-seconds`...), and the address of its
/// `/metrics`, once it listens (it may still wait for the Lease).
pub fn controller_replica(namespace: &str, lease: &str, extra: &[&str]) -> (Service, String) {
    let mut args = vec![
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--namespace",
        namespace,
        "--lease-name",
        lease,
    ];
    args.extend_from_slice(extra);
    let controller = Service::spawn(
        "osmosis-autoscaler",
        &args,
        &[(
            "KUBECONFIG",
            std::env::var(KUBECONFIG_ENV).unwrap_or_else(|_| {
                panic!("{KUBECONFIG_ENV} is not set: call kube::client() first")
            }),
        )],
    );
    let metrics_addr = controller.wait_for_log("listening", Duration::from_secs(90))["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    (controller, metrics_addr)
}

/// Creates the namespace `name`: a test's own, for objects (and
/// controllers watching them) apart from every other test's.
pub async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }));
    namespaces
        .create(&PostParams::default(), &namespace.unwrap())
        .await
        .expect("creating a namespace");
}

/// What a controller test scales, apart from every other test: a fresh
/// channel topic, its workers' consumer group, and a namespace of its own
/// (which only that test's controllers watch) holding a ChannelScaler and
/// its Deployment, both called `worker`.
pub struct Workload {
    pub client: Client,
    pub topic: String,
    pub group: String,
    pub namespace: String,
    pub deployments: Api<Deployment>,
    pub scalers: Api<ChannelScaler>,
}

impl Workload {
    /// A topic `<prefix>.<id>` of `partitions`, a namespace `<prefix>-<id>`,
    /// the Deployment at zero replicas, and a scaler of `spec` (see
    /// [`scaler_spec`]) that `adjust` may change first.
    pub async fn create(
        prefix: &str,
        partitions: i32,
        adjust: impl FnOnce(&mut ChannelScalerSpec),
    ) -> Self {
        let client = client().await;
        apply_crd(&client).await;
        let topic = kafka::create_topic(prefix, partitions).await;
        let group = format!("{topic}.workers");
        let namespace = format!("{prefix}-{}", &topic[topic.len() - 8..]);
        create_namespace(&client, &namespace).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        deployments
            .create(&PostParams::default(), &deployment("worker"))
            .await
            .expect("creating the deployment");
        let mut spec = scaler_spec("worker", &topic, &group);
        adjust(&mut spec);
        let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), &namespace);
        scalers
            .create(&PostParams::default(), &ChannelScaler::new("worker", spec))
            .await
            .expect("creating the scaler");
        Self {
            client,
            topic,
            group,
            namespace,
            deployments,
            scalers,
        }
    }

    /// The Deployment's replicas now.
    pub async fn replicas(&self) -> i32 {
        let deployment = self.deployments.get("worker").await;
        deployment
            .expect("the deployment")
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0)
    }

    /// Deletes the namespace and all in it.
    pub async fn delete(self) {
        Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &Default::default())
            .await
            .expect("deleting the namespace");
    }
}

/// Every value a Deployment's `spec.replicas` took, in order, as a watch
/// saw them from its creation on: a scale that was undone between two
/// reads of the Deployment shows here.
pub struct ReplicaHistory {
    values: Arc<Mutex<Vec<i32>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl ReplicaHistory {
    /// Watches Deployment `name` and returns once the watch has its first
    /// value.
    pub async fn watch(deployments: Api<Deployment>, name: &str) -> Self {
        let values = Arc::new(Mutex::new(Vec::new()));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let watch = tokio::spawn({
            let values = Arc::clone(&values);
            async move {
                let mut deployments =
                    std::pin::pin!(watcher(deployments, config).applied_objects());
                while let Some(deployment) = deployments.next().await {
                    let Ok(deployment) = deployment else { continue };
                    let replicas = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
                    let mut values = values.lock().unwrap();
                    if values.last() != Some(&replicas) {
                        values.push(replicas);
                    }
                }
            }
        });
        let history = Self { values, watch };
        crate::eventually(
            Duration::from_secs(30),
            &format!("a watch on Deployment {name}"),
            || async { (!history.values().is_empty()).then_some(()) },
        )
        .await;
        history
    }

    pub fn values(&self) -> Vec<i32> {
        self.values.lock().unwrap().clone()
    }
}

impl Drop for ReplicaHistory {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// A ChannelScaler spec scaling Deployment `target` on `topic` as `group`
/// consumes it: 50 messages per replica, up to 10, polled every second,
/// scaled down after 2 idle seconds.
pub fn scaler_spec(target: &str, topic: &str, group: &str) -> ChannelScalerSpec {
    ChannelScalerSpec {
        scale_target_ref: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: target.into(),
        },
        kafka: KafkaConnection {
            brokers: kafka::bootstrap().into(),
            properties_secret_ref: None,
        },
        topic: topic.into(),
        consumer_group: group.into(),
        min_replicas: 0,
        max_replicas: 10,
        lag_per_replica: 50,
        activation_lag: 0,
        target_drain_seconds: 30,
        max_time_lag_seconds: None,
        idle_seconds: 2,
        behavior: ScalingBehavior {
            scale_up: None,
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: 2,
                policies: Vec::new(),
                select_policy: SelectPolicy::Max,
            }),
        },
        poll_interval_seconds: 1,
        surge_watch_seconds: 1,
        paused: false,
    }
}

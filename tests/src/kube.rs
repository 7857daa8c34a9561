//! The real Kubernetes API server the tests run against (`scripts/kube.sh`),
//! and what controller tests share: the CRD, a target Deployment, a
//! controller process.

use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
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
    let controller = Service::spawn(
        "osmosis-autoscaler",
        &[
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            namespace,
            "--lease-name",
            &format!("osmosis-autoscaler-{namespace}-{}", std::process::id()),
        ],
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

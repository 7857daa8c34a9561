//! The real Kubernetes API server the tests run against (`scripts/kube.sh`).

use std::sync::OnceLock;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

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

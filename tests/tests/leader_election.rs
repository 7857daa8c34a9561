//! Two controller replicas: the second stays passive (not ready, not
//! reconciling) while the first holds the Lease, and takes over as soon as
//! the first shuts down and releases it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::process::Service;

const WAIT: Duration = Duration::from_secs(60);

fn controller(lease: &str, identity: &str) -> (Service, String) {
    let kubeconfig = std::env::var(osmosis_e2e::kube::KUBECONFIG_ENV).unwrap_or_default();
    let service = Service::spawn(
        "osmosis-autoscaler",
        &[
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--lease-name",
            lease,
            "--identity",
            identity,
            // A namespace of its own, so that it reconciles nothing of other tests.
            "--namespace",
            "osmosis-leader-election-test",
        ],
        &[("KUBECONFIG", kubeconfig)],
    );
    let addr = service.wait_for_log("listening", WAIT)["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    (service, addr)
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get(name).await.ok()?.spec?.holder_identity
}

async fn ready(addr: &str) -> bool {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
}

#[tokio::test]
async fn a_second_controller_waits_until_the_leader_releases_the_lease() {
    let client = osmosis_e2e::kube::client().await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let lease = format!("osmosis-autoscaler-{}", std::process::id());

    let (mut first, first_addr) = controller(&lease, "first");
    first.wait_for_log("leading", WAIT);
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("first"));
    assert!(ready(&first_addr).await);

    let (second, second_addr) = controller(&lease, "second");
    second.wait_for_log("waiting for leadership", WAIT);
    assert!(!ready(&second_addr).await, "a passive replica is not ready");
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("first"));
    assert!(!second.log_text().contains("\"message\":\"leading\""));

    first.signal(Signal::SIGTERM);
    assert!(first.wait_exit(WAIT).success());
    second.wait_for_log("leading", WAIT);
    eventually(
        WAIT,
        "the second replica to hold the Lease and be ready",
        || async {
            (holder(&leases, &lease).await.as_deref() == Some("second")
                && ready(&second_addr).await)
                .then_some(())
        },
    )
    .await;
}

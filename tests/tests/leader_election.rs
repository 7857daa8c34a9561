//! Two controller replicas on one Lease. The second stays passive (not
//! ready, not reconciling) while the first holds it, and takes over as soon
//! as the first shuts down and releases it — or, when the first is killed
//! and cannot release it, once it expires; then scaling goes on where the
//! dead leader left it, without a scale the dead leader would not have made.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use nix::sys::signal::Signal;
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::kube::{ReplicaHistory, Workload, controller_replica};
use osmosis_e2e::process::{Service, metric_sample};

const WAIT: Duration = Duration::from_secs(60);

/// A replica called `identity` on the Lease `lease` in `namespace`, and
/// the address of its `/metrics`.
fn replica(namespace: &str, lease: &str, identity: &str, extra: &[&str]) -> (Service, String) {
    let mut args = vec!["--identity", identity];
    args.extend_from_slice(extra);
    controller_replica(namespace, lease, &args)
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
    // A namespace of its own, so that it reconciles nothing of other tests.
    let namespace = "osmosis-leader-election-test";

    let (mut first, first_addr) = replica(namespace, &lease, "first", &[]);
    first.wait_for_log("leading", WAIT);
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("first"));
    assert!(ready(&first_addr).await);

    let (second, second_addr) = replica(namespace, &lease, "second", &[]);
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

/// Waits until the controller at `addr` has measured the scaler
/// `namespace/worker` `count` times more than it had when called (it
/// counts from 0 before its first turn).
async fn measure_more(addr: &str, namespace: &str, count: f64) {
    let sample = format!(
        "osmosis_autoscaler_measurements_total{{namespace=\"{namespace}\",name=\"worker\"}}"
    );
    let url = format!("http://{addr}/metrics");
    let since = metric_sample(&url, &sample).await.unwrap_or(0.0);
    eventually(WAIT, &format!("{count} more measurements"), || async {
        metric_sample(&url, &sample)
            .await
            .filter(|n| *n >= since + count)
    })
    .await;
}

/// The leader is killed (SIGKILL: its Lease is not released) after it
/// scaled a backlog to 4 replicas and the workers drained it, while its
/// scale-down window still holds the 4. The other replica takes over once
/// the Lease expires and goes on from there: it keeps the 4 for the
/// window the dead leader had started (no scale-down right after the
/// takeover, to scale up again on the next backlog), and scales a new
/// backlog needing 8 replicas to exactly 8. Every value the Deployment's
/// replicas take is recorded by a watch: 0, 4, 8 and nothing else.
#[tokio::test]
async fn a_killed_leader_is_replaced_when_its_lease_expires_and_scaling_goes_on_without_flapping() {
    // A scale-down window longer than the test: none is due while it runs.
    let workload = Workload::create("failover", 8, |spec| {
        let scale_down = spec.behavior.scale_down.as_mut();
        scale_down
            .expect("scale-down rules")
            .stabilization_window_seconds = 300;
    })
    .await;
    let (topic, group, namespace) = (&workload.topic, &workload.group, &workload.namespace);
    let history = ReplicaHistory::watch(workload.deployments.clone(), "worker").await;

    // The Lease expires 6 s after its last renewal.
    let short_lease = ["--lease-duration-seconds", "6"];
    let lease = format!("osmosis-autoscaler-{namespace}");
    let (mut first, _) = replica(namespace, &lease, "first", &short_lease);
    first.wait_for_log("leading", WAIT);
    let (second, second_addr) = replica(namespace, &lease, "second", &short_lease);
    second.wait_for_log("waiting for leadership", WAIT);

    // 200 / 50 per replica: 4.
    kafka::produce_keyed(topic, "a", 200).await;
    eventually(WAIT, "4 replicas for the first backlog", || async {
        (history.values().last() == Some(&4)).then_some(())
    })
    .await;
    kafka::drain(topic, group, 200).await;
    eventually(WAIT, "the leader to see the channel drained", || async {
        let status = workload.scalers.get("worker").await.ok()?.status?;
        // Desired 4 with lag 0: measured after the drain, not before the backlog.
        (status.lag == 0 && status.desired_replicas == 4).then_some(())
    })
    .await;

    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT);
    second.wait_for_log("leading", WAIT);
    // The new leader's first turns: a drained channel, 4 replicas held.
    measure_more(&second_addr, namespace, 3.0).await;
    assert_eq!(history.values(), [0, 4], "right after the takeover");

    // 400 / 50 per replica: 8, the partition count.
    kafka::produce_keyed(topic, "b", 400).await;
    eventually(WAIT, "8 replicas for the second backlog", || async {
        (history.values().last() == Some(&8)).then_some(())
    })
    .await;
    measure_more(&second_addr, namespace, 3.0).await;
    assert_eq!(history.values(), [0, 4, 8], "every value the replicas took");
    assert!(
        !first.log_text().contains("\"to\":8"),
        "only the new leader scaled to 8"
    );
    workload.delete().await;
}

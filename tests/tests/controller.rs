//! The controller against a real kube-apiserver and a real Kafka: a
//! Deployment with a ChannelScaler scales up when a backlog is produced into
//! its topic, down to zero once a consumer group drains it, and the status
//! and Events carry the numbers. (No kubelet: the Deployment is an object
//! whose `spec.replicas` the test reads.)

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use osmosis_autoscaler::crd::{ChannelScaler, SecretRef};
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::kube::{Workload, apply_crd, controller, deployment, scaler_spec};

const WAIT: Duration = Duration::from_secs(90);

async fn replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    deployments
        .get(name)
        .await
        .expect("the deployment")
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_backlog_scales_a_deployment_up_and_a_drained_channel_down_to_zero() {
    let client = osmosis_e2e::kube::client().await;
    apply_crd(&client).await;
    let topic = kafka::create_topic("controller", 4).await;
    let group = format!("{topic}.workers");
    let name = format!("worker-{}", &topic[topic.len() - 8..]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deployments
        .create(&PostParams::default(), &deployment(&name))
        .await
        .expect("creating the deployment");

    // A backlog of 400 messages, nobody consuming.
    kafka::produce_keyed(&topic, "k", 400).await;

    let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), "default");
    let spec = scaler_spec(&name, &topic, &group);
    scalers
        .create(&PostParams::default(), &ChannelScaler::new(&name, spec))
        .await
        .expect("creating the scaler");

    // A second target that an HPA already scales: the controller must not fight it.
    let contested = format!("{name}-hpa");
    deployments
        .create(&PostParams::default(), &deployment(&contested))
        .await
        .expect("creating the contested deployment");
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": { "name": contested },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": contested },
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 80 } } }]
        }
    }))
    .unwrap();
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &hpa)
        .await
        .expect("creating the HPA");
    scalers
        .create(
            &PostParams::default(),
            &ChannelScaler::new(
                &contested,
                scaler_spec(&contested, &topic, &format!("{group}.other")),
            ),
        )
        .await
        .expect("creating the contested scaler");

    // Client properties come from a Secret: TLS against the broker's
    // PLAINTEXT listener shows up as KafkaReachable=False, which proves
    // they are applied.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret_name = format!("{name}-kafka");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": secret_name },
        "stringData": { "security.protocol": "SSL" }
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    let secured = format!("{name}-secured");
    deployments
        .create(&PostParams::default(), &deployment(&secured))
        .await
        .expect("creating the secured deployment");
    let mut secured_spec = scaler_spec(&secured, &topic, &format!("{group}.secured"));
    secured_spec.kafka.properties_secret_ref = Some(SecretRef {
        name: secret_name.clone(),
    });
    scalers
        .create(
            &PostParams::default(),
            &ChannelScaler::new(&secured, secured_spec),
        )
        .await
        .expect("creating the secured scaler");

    let (controller, metrics_addr) = controller("default");
    controller.wait_for_log("controller started", WAIT);

    // 400 / 50 = 8, but 4 partitions: exactly 4.
    eventually(WAIT, "4 replicas for the backlog", || async {
        (replicas(&deployments, &name).await == 4).then_some(())
    })
    .await;
    // The target is scaled before the status is written.
    let status = eventually(WAIT, "the status of the scale-up", || async {
        let status = scalers.get(&name).await.ok()?.status?;
        (status.desired_replicas == 4).then_some(status)
    })
    .await;
    assert_eq!(status.lag, 400);
    assert_eq!(status.partitions, 4);
    assert_eq!(status.desired_replicas, 4);
    assert!(
        status
            .last_scale_reason
            .as_deref()
            .unwrap()
            .contains("lag 400"),
        "{status:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scaled = eventually(WAIT, "a Scaled event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.involved_object.name.as_deref() == Some(name.as_str())
                && e.reason.as_deref() == Some("Scaled")
        })
    })
    .await;
    assert!(scaled.message.unwrap_or_default().contains("0 → 4"));
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let desired =
        format!("osmosis_autoscaler_desired_replicas{{namespace=\"default\",name=\"{name}\"}} 4");
    assert!(metrics.contains(&desired), "{metrics}");
    let ready = reqwest::get(format!("http://{metrics_addr}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    let unreachable = eventually(
        WAIT,
        "KafkaReachable=False from the Secret's properties",
        || async {
            let status = scalers.get(&secured).await.ok()?.status?;
            status
                .conditions
                .into_iter()
                .find(|c| c.r#type == "KafkaReachable" && c.status == "False")
        },
    )
    .await;
    assert_eq!(unreachable.reason, "MeasurementFailed", "{unreachable:?}");
    assert_eq!(
        replicas(&deployments, &secured).await,
        0,
        "a failed measurement never scales"
    );

    // The contested target keeps its replicas; the conflict is a condition.
    let conflict = eventually(WAIT, "the HPA conflict condition", || async {
        let status = scalers.get(&contested).await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.r#type == "ScalingLimited" && c.reason == "HorizontalPodAutoscalerConflict")
    })
    .await;
    assert!(conflict.message.contains(&contested), "{conflict:?}");
    assert_eq!(replicas(&deployments, &contested).await, 0);

    // Workers drain the channel: a real consumer group commits everything.
    kafka::drain(&topic, &group, 400).await;

    eventually(WAIT, "zero replicas once drained and idle", || async {
        (replicas(&deployments, &name).await == 0).then_some(())
    })
    .await;
    let status = eventually(WAIT, "the status of the scale-down", || async {
        let status = scalers.get(&name).await.ok()?.status?;
        (status.desired_replicas == 0).then_some(status)
    })
    .await;
    assert_eq!(status.lag, 0);

    // New work activates the workload again from zero.
    kafka::produce_keyed(&topic, "again", 60).await;
    eventually(WAIT, "activation from zero", || async {
        (replicas(&deployments, &name).await == 2).then_some(())
    })
    .await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.r#type == "KafkaReachable" && c.status == "True")
    );
}

#[tokio::test]
async fn a_surge_is_acted_on_long_before_the_next_poll() {
    // Polls an hour apart: only the surge watch can react within the test.
    let workload = Workload::create("surge", 4, |spec| spec.poll_interval_seconds = 3600).await;
    let (topic, namespace, scalers) = (&workload.topic, &workload.namespace, &workload.scalers);
    let (_controller, metrics_addr) = controller(namespace);
    // The first poll: an empty channel, nothing to do.
    eventually(WAIT, "the first measurement", || async {
        let status = scalers.get("worker").await.ok()?.status?;
        (status.partitions == 4).then_some(())
    })
    .await;
    assert_eq!(workload.replicas().await, 0);

    kafka::produce_keyed(topic, "k", 200).await;
    // 200 / 50 per replica, 4 partitions: 4, without waiting for the poll.
    eventually(WAIT, "4 replicas from the surge watch", || async {
        (workload.replicas().await == 4).then_some(())
    })
    .await;
    // The status is written after the target is scaled: wait for it.
    let status = eventually(
        WAIT,
        "the status to report the surge's decision",
        || async {
            let status = scalers.get("worker").await.ok()?.status?;
            status
                .last_scale_reason
                .as_deref()
                .is_some_and(|r| r.contains("0 → 4"))
                .then_some(status)
        },
    )
    .await;
    // Measured while the messages were still arriving (or just after).
    assert!((1..=200).contains(&status.lag), "{status:?}");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> u64 {
        let prefix = format!(
            "osmosis_autoscaler_{name}_total{{namespace=\"{namespace}\",name=\"worker\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
    };
    let surges = counter("surges");
    assert!(surges >= 1, "{metrics}");
    // The status writes come back as watch events; they must not be
    // measurements of their own: the first poll, then one per surge.
    assert_eq!(counter("measurements"), 1 + surges, "{metrics}");
    workload.delete().await;
}

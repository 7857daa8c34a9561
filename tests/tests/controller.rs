//! The controller against a real kube-apiserver and a real Kafka: a
//! Deployment with a ChannelScaler scales up when a backlog is produced into
//! its topic, down to zero once a consumer group drains it, and the status
//! and Events carry the numbers. (No kubelet: the Deployment is an object
//! whose `spec.replicas` the test reads.)

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use osmosis_autoscaler::crd::{ChannelScaler, ChannelScalerSpec, KafkaConnection, ScaleTargetRef};
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::process::Service;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "channelscalers.osmosis.dev",
        &PatchParams::apply("osmosis-tests").force(),
        &Patch::Apply(ChannelScaler::crd()),
    )
    .await
    .expect("applying the CRD");
    let topic = kafka::create_topic("controller", 4).await;
    let group = format!("{topic}.workers");
    let name = format!("worker-{}", &topic[topic.len() - 8..]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
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
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("creating the deployment");

    // A backlog of 400 messages, nobody consuming.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .create()
        .unwrap();
    for i in 0..400 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("k{i}"))
                    .payload("work"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), "default");
    let spec = ChannelScalerSpec {
        scale_target_ref: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.clone(),
        },
        kafka: KafkaConnection {
            brokers: kafka::bootstrap().into(),
            properties_secret_ref: None,
        },
        topic: topic.clone(),
        consumer_group: group.clone(),
        min_replicas: 0,
        max_replicas: 10,
        lag_per_replica: 50,
        activation_lag: 0,
        target_drain_seconds: 30,
        max_time_lag_seconds: None,
        idle_seconds: 2,
        scale_down_stabilization_seconds: 2,
        poll_interval_seconds: 1,
        paused: false,
    };
    scalers
        .create(&PostParams::default(), &ChannelScaler::new(&name, spec))
        .await
        .expect("creating the scaler");

    let controller = Service::spawn(
        "osmosis-autoscaler",
        &["controller"],
        &[(
            "KUBECONFIG",
            std::env::var(osmosis_e2e::kube::KUBECONFIG_ENV).unwrap(),
        )],
    );
    controller.wait_for_log("controller started", WAIT);

    // 400 / 50 = 8, but 4 partitions: exactly 4.
    eventually(WAIT, "4 replicas for the backlog", || async {
        (replicas(&deployments, &name).await == 4).then_some(())
    })
    .await;
    let status = scalers.get(&name).await.unwrap().status.expect("a status");
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

    // Workers drain the channel: a real consumer group commits everything.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka::bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    for _ in 0..400 {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap()
            .unwrap();
        consumer.commit_message(&message, CommitMode::Sync).unwrap();
    }
    drop(consumer);

    eventually(WAIT, "zero replicas once drained and idle", || async {
        (replicas(&deployments, &name).await == 0).then_some(())
    })
    .await;
    let status = scalers.get(&name).await.unwrap().status.unwrap();
    assert_eq!(status.lag, 0);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.r#type == "KafkaReachable" && c.status == "True")
    );
}

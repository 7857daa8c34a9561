//! A ChannelScaler's `propertiesSecretRef` never lets a Secret's values out
//! of the controller. Whoever may create a ChannelScaler can name any
//! Secret of its namespace and read what the controller writes about it:
//! a marker value planted in a key that is no client property, and as an
//! invalid value of two keys that are (one refused while the client is
//! configured, one while it is created), is never found in the scalers'
//! status, the namespace's Events, the controller's metrics or its logs.
//! The status still names the property that was refused, and the log the
//! keys that were ignored.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use osmosis_autoscaler::crd::{
    ChannelScaler, ChannelScalerSpec, Condition, KafkaConnection, ScalingBehavior, SecretRef,
};
use osmosis_e2e::eventually;
use osmosis_e2e::kafka;
use osmosis_e2e::kube::{apply_crd, controller, deployment, scaler_spec};

const WAIT: Duration = Duration::from_secs(90);

fn spec(target: &str, topic: &str, secret: &str) -> ChannelScalerSpec {
    ChannelScalerSpec {
        kafka: KafkaConnection {
            brokers: kafka::bootstrap().into(),
            properties_secret_ref: Some(SecretRef {
                name: secret.into(),
            }),
        },
        max_replicas: 4,
        lag_per_replica: 10,
        idle_seconds: 60,
        behavior: ScalingBehavior::default(),
        ..scaler_spec(target, topic, &format!("{topic}.{target}"))
    }
}

fn secret(name: &str, data: serde_json::Value) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "stringData": data,
    }))
    .unwrap()
}

/// The scaler's KafkaReachable condition once it is False.
async fn unreachable(scalers: &Api<ChannelScaler>, name: &str) -> Condition {
    eventually(WAIT, "KafkaReachable=False", || async {
        let status = scalers.get(name).await.ok()?.status?;
        status
            .conditions
            .into_iter()
            .find(|c| c.r#type == "KafkaReachable" && c.status == "False")
    })
    .await
}

#[tokio::test]
async fn no_secret_value_reaches_the_status_the_events_the_metrics_or_the_logs() {
    let client = osmosis_e2e::kube::client().await;
    apply_crd(&client).await;
    let topic = kafka::create_topic("secrets", 2).await;
    // A namespace of its own: this test's controller reconciles nothing else.
    let namespace = format!("secrets-{}", &topic[topic.len() - 8..]);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({ "metadata": { "name": namespace } }))
                .unwrap(),
        )
        .await
        .expect("creating the namespace");
    let marker = format!("osmosis-marker-{}", uuid::Uuid::new_v4().simple());

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // Refused while the client is configured: librdkafka's message quotes
    // the invalid value. The other two keys are no connection properties
    // (librdkafka would quote a plugin path it cannot load).
    let configured = secret(
        "configured",
        serde_json::json!({
            "security.protocol": marker,
            "x-not-a-client-property": marker,
            "plugin.library.paths": marker,
        }),
    );
    // Refused while the client is created: OpenSSL's message names the file.
    let created = secret(
        "created",
        serde_json::json!({
            "security.protocol": "SSL",
            "ssl.ca.location": format!("/nonexistent/{marker}/ca.pem"),
        }),
    );
    for secret in [configured, created] {
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating a Secret");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let scalers: Api<ChannelScaler> = Api::namespaced(client.clone(), &namespace);
    for name in ["configured", "created"] {
        deployments
            .create(&PostParams::default(), &deployment(name))
            .await
            .expect("creating a deployment");
        scalers
            .create(
                &PostParams::default(),
                &ChannelScaler::new(name, spec(name, &topic, name)),
            )
            .await
            .expect("creating a scaler");
    }

    let (controller, metrics_addr) = controller(&namespace);
    let refused = unreachable(&scalers, "configured").await;
    assert!(
        refused.message.contains("\"security.protocol\""),
        "the refused property is named: {refused:?}"
    );
    let refused = unreachable(&scalers, "created").await;
    assert!(
        refused.message.contains("\"ssl.ca.location\""),
        "the refused property is named: {refused:?}"
    );
    for key in ["x-not-a-client-property", "plugin.library.paths"] {
        controller.wait_for_log_where(
            "ignoring a key of the Kafka properties Secret: not a connection or authentication property",
            WAIT,
            |line| line["key"] == key,
        );
    }
    // A few more reconciles, each a chance to repeat a value.
    let metrics = eventually(WAIT, "three measurements of each scaler", || async {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        ["configured", "created"]
            .iter()
            .all(|name| {
                let prefix = format!(
                    "osmosis_autoscaler_measurements_total{{namespace=\"{namespace}\",name=\"{name}\"}} "
                );
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
                    .is_some_and(|n| n >= 3)
            })
            .then_some(text)
    })
    .await;

    for name in ["configured", "created"] {
        let scaler = serde_json::to_string(&scalers.get(name).await.unwrap()).unwrap();
        assert!(!scaler.contains(&marker), "a value in the scaler: {scaler}");
    }
    let events = Api::<Event>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .unwrap();
    let events = serde_json::to_string(&events).unwrap();
    assert!(!events.contains(&marker), "a value in the Events: {events}");
    assert!(
        !metrics.contains(&marker),
        "a value in the metrics: {metrics}"
    );
    let log = controller.log_text();
    assert!(
        !log.contains(&marker),
        "a value in the controller's log: {log}"
    );

    namespaces
        .delete(&namespace, &Default::default())
        .await
        .expect("deleting the namespace");
}

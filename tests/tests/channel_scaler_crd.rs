//! The `ChannelScaler` CRD on a real kube-apiserver: it installs, valid
//! scalers are stored, and the API server itself refuses nonsense with the
//! CEL rules' messages.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use osmosis_autoscaler::crd::{
    ChannelScaler, ChannelScalerSpec, KafkaConnection, ScaleTargetRef, ScalingBehavior,
};
use osmosis_e2e::eventually;

fn spec() -> ChannelScalerSpec {
    ChannelScalerSpec {
        scale_target_ref: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "orders-worker".into(),
        },
        kafka: KafkaConnection {
            brokers: "kafka:9092".into(),
            properties_secret_ref: None,
        },
        topic: "orders".into(),
        consumer_group: "orders.workers".into(),
        min_replicas: 0,
        max_replicas: 10,
        lag_per_replica: 100,
        activation_lag: 0,
        target_drain_seconds: 30,
        max_time_lag_seconds: None,
        idle_seconds: 300,
        behavior: ScalingBehavior::default(),
        poll_interval_seconds: 5,
        surge_watch_seconds: 1,
        paused: false,
    }
}

async fn install_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ChannelScaler::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("osmosis-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("applying the CRD");
    eventually(Duration::from_secs(30), "the CRD to be established", || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("channelscalers.osmosis.dev").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// The API server's refusal of `spec`, as its message.
async fn refusal(api: &Api<ChannelScaler>, name: &str, spec: ChannelScalerSpec) -> String {
    match api
        .create(&PostParams::default(), &ChannelScaler::new(name, spec))
        .await
    {
        Ok(_) => panic!("{name} was accepted"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(other) => panic!("{name}: {other}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_nonsense_with_the_cel_messages() {
    let client = osmosis_e2e::kube::client().await;
    install_crd(&client).await;
    let api: Api<ChannelScaler> = Api::namespaced(client, "default");

    let stored = api
        .create(&PostParams::default(), &ChannelScaler::new("valid", spec()))
        .await
        .expect("a valid scaler is stored");
    assert_eq!(stored.spec.max_replicas, 10);

    let message = refusal(
        &api,
        "inverted",
        ChannelScalerSpec {
            min_replicas: 5,
            max_replicas: 2,
            ..spec()
        },
    )
    .await;
    assert!(
        message.contains("minReplicas must not exceed maxReplicas"),
        "{message}"
    );
    let message = refusal(
        &api,
        "no-topic",
        ChannelScalerSpec {
            topic: String::new(),
            ..spec()
        },
    )
    .await;
    assert!(message.contains("topic must not be empty"), "{message}");
    let message = refusal(
        &api,
        "negative",
        ChannelScalerSpec {
            lag_per_replica: -1,
            activation_lag: -5,
            ..spec()
        },
    )
    .await;
    assert!(
        message.contains("lagPerReplica must be positive"),
        "{message}"
    );
    assert!(
        message.contains("activationLag must not be negative"),
        "{message}"
    );
    let message = refusal(
        &api,
        "no-brokers",
        ChannelScalerSpec {
            kafka: KafkaConnection {
                brokers: String::new(),
                properties_secret_ref: None,
            },
            ..spec()
        },
    )
    .await;
    assert!(
        message.contains("kafka.brokers must not be empty"),
        "{message}"
    );

    // Enumerations are schema enums: anything else is refused by name.
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        api.clone().into_client(),
        "default",
        &ApiResource::erase::<ChannelScaler>(&()),
    );
    let mut raw = serde_json::to_value(ChannelScaler::new("bad-behavior", spec())).unwrap();
    raw["spec"]["behavior"] = serde_json::json!({ "scaleUp": { "selectPolicy": "Sometimes" } });
    let raw: DynamicObject = serde_json::from_value(raw).unwrap();
    match dynamic.create(&PostParams::default(), &raw).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains("Sometimes"), "{}", status.message);
        }
        other => panic!("an unknown selectPolicy was not refused: {other:?}"),
    }

    api.delete("valid", &DeleteParams::default())
        .await
        .expect("deleting");
}

//! The `ChannelScaler` custom resource: which workload to scale on which
//! channel, and how. Derived from these types; the generated YAML is
//! committed in `autoscaler/crd/` and a test fails when it drifts.
//!
//! Nonsense is refused by the API server itself: the CEL rules below become
//! `x-kubernetes-validations` in the CRD.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scales a workload on the backlog and arrival rate of a Kafka channel.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "osmosis.dev",
    version = "v1alpha1",
    kind = "ChannelScaler",
    namespaced,
    shortname = "cs",
    status = "ChannelScalerStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".spec.topic"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#
)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct ChannelScalerSpec {
    /// The workload to scale: anything with a `/scale` subresource.
    pub scale_target_ref: ScaleTargetRef,
    /// How to reach Kafka.
    pub kafka: KafkaConnection,
    /// The channel topic the workers consume.
    #[x_kube(validation = Rule::new("self != ''").message("topic must not be empty"))]
    pub topic: String,
    /// The workers' consumer group.
    #[x_kube(validation = Rule::new("self != ''").message("consumerGroup must not be empty"))]
    pub consumer_group: String,
    /// Fewest replicas; 0 lets the workload scale to zero when idle.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("minReplicas must not be negative"))]
    pub min_replicas: i32,
    /// Most replicas.
    #[x_kube(validation = Rule::new("self >= 1").message("maxReplicas must be at least 1"))]
    pub max_replicas: i32,
    /// Backlog one replica is expected to hold (KEDA's `lagThreshold`).
    #[serde(default = "default_lag_per_replica")]
    #[x_kube(validation = Rule::new("self > 0").message("lagPerReplica must be positive"))]
    pub lag_per_replica: i64,
    /// From zero replicas, scale up only when the lag exceeds this.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("activationLag must not be negative"))]
    pub activation_lag: i64,
    /// Time in which a backlog should be drained.
    #[serde(default = "default_target_drain_seconds")]
    #[x_kube(validation = Rule::new("self > 0").message("targetDrainSeconds must be positive"))]
    pub target_drain_seconds: i64,
    /// Scale up while the oldest unprocessed message is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("maxTimeLagSeconds must be positive"))]
    pub max_time_lag_seconds: Option<i64>,
    /// Without lag or arrivals for this long, go down to `minReplicas`.
    #[serde(default = "default_idle_seconds")]
    #[x_kube(validation = Rule::new("self >= 0").message("idleSeconds must not be negative"))]
    pub idle_seconds: i64,
    /// How fast to scale in each direction, as in HPA v2 `behavior`.
    #[serde(default)]
    pub behavior: ScalingBehavior,
    /// Seconds between measurements.
    #[serde(default = "default_poll_interval_seconds")]
    #[x_kube(validation = Rule::new("self >= 1").message("pollIntervalSeconds must be at least 1"))]
    pub poll_interval_seconds: i64,
    /// Seconds between reads of the topic's end offsets in between polls
    /// (one ListOffsets request): arrivals that outrun the known rate and
    /// the replicas' capacity bring the next measurement forward, so a
    /// surge is acted on within this time rather than within a poll. 0: off.
    #[serde(default = "default_surge_watch_seconds")]
    #[x_kube(validation = Rule::new("self >= 0").message("surgeWatchSeconds must not be negative"))]
    pub surge_watch_seconds: i64,
    /// Stop scaling (the status keeps being updated).
    #[serde(default)]
    pub paused: bool,
}

/// Per-direction scaling behaviour.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Default: no stabilisation, no rate limit (the policy sizes from the
    /// backlog directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Default: a 60 s window and at most 50 % fewer replicas per 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// One direction's rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Recommendations of this window are combined before acting.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 3600").message("stabilizationWindowSeconds must be within 0..3600"))]
    pub stabilization_window_seconds: i64,
    /// Rate limits; none means unlimited.
    #[serde(default)]
    pub policies: Vec<ScalingPolicy>,
    /// Which policy wins when several apply.
    #[serde(default)]
    pub select_policy: SelectPolicy,
}

/// Which rate policy wins (an enum in the schema: the API server refuses others).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the most change.
    #[default]
    Max,
    /// The policy allowing the least change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// What a rate policy counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyType {
    Pods,
    Percent,
}

/// At most `value` pods or percent per `periodSeconds`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    pub r#type: PolicyType,
    #[x_kube(validation = Rule::new("self > 0").message("a scaling policy's value must be positive"))]
    pub value: i32,
    #[x_kube(validation = Rule::new("self > 0 && self <= 1800").message("periodSeconds must be within 1..1800"))]
    pub period_seconds: i32,
}

/// A workload with a `/scale` subresource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// e.g. `apps/v1`.
    pub api_version: String,
    /// e.g. `Deployment`.
    pub kind: String,
    #[x_kube(validation = Rule::new("self != ''").message("scaleTargetRef.name must not be empty"))]
    pub name: String,
}

/// How the autoscaler reaches Kafka.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaConnection {
    /// Bootstrap servers, comma separated.
    #[x_kube(validation = Rule::new("self != ''").message("kafka.brokers must not be empty"))]
    pub brokers: String,
    /// A Secret in the same namespace whose keys are librdkafka properties
    /// (`security.protocol`, `sasl.username`...): TLS and SASL without new
    /// code. Only connection and authentication properties are taken
    /// (`security.protocol`, `sasl.*`, `ssl.*`); other keys are ignored.
    /// File-valued properties take the PEM inline (`ssl.ca.pem`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_secret_ref: Option<SecretRef>,
}

/// A Secret in the scaler's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretRef {
    pub name: String,
}

/// What the autoscaler measured and decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelScalerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Messages not yet processed (stuck partitions excluded).
    #[serde(default)]
    pub lag: i64,
    /// Age of the oldest unprocessed message, seconds.
    #[serde(default)]
    pub time_lag_seconds: f64,
    /// Messages entering the channel per second.
    #[serde(default)]
    pub arrival_rate: f64,
    /// Messages processed per second.
    #[serde(default)]
    pub processing_rate: f64,
    /// Messages one replica processes per second when busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_replica_rate: Option<f64>,
    #[serde(default)]
    pub partitions: i32,
    #[serde(default)]
    pub current_replicas: i32,
    #[serde(default)]
    pub desired_replicas: i32,
    /// RFC 3339 time of the last change of replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Partitions with lag whose committed offset does not move.
    #[serde(default)]
    pub stuck_partitions: Vec<i32>,
    /// Ready, Active, KafkaReachable, ScalingLimited.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition, as Kubernetes conventions shape them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Active`, `KafkaReachable` or `ScalingLimited`.
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
}

fn default_lag_per_replica() -> i64 {
    100
}
fn default_target_drain_seconds() -> i64 {
    30
}
fn default_idle_seconds() -> i64 {
    300
}
fn default_poll_interval_seconds() -> i64 {
    5
}
fn default_surge_watch_seconds() -> i64 {
    1
}

/// The CRD as YAML, as `crdgen` prints it and `autoscaler/crd/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&ChannelScaler::crd()).expect("a CRD serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_matches_the_types() {
        let committed = include_str!("../crd/channelscaler.yaml");
        assert!(
            committed == crd_yaml(),
            "autoscaler/crd/channelscaler.yaml is stale: run `cargo run -p osmosis-autoscaler --bin crdgen > autoscaler/crd/channelscaler.yaml`"
        );
    }

    #[test]
    fn the_crd_carries_the_cel_rules() {
        let yaml = crd_yaml();
        for rule in [
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            "topic must not be empty",
            "lagPerReplica must be positive",
        ] {
            assert!(yaml.contains(rule), "missing {rule:?}");
        }
    }
}

//! A `ChannelScaler`'s spec as the policy's numbers: the resource speaks
//! Kubernetes (signed integers, HPA v2 enums), the policy plain arithmetic.
//! Out-of-range values the CEL rules let through are clamped, not refused.

use crate::crd::{ChannelScaler, PolicyType, ScalingRules, SelectPolicy};
use crate::policy::{Behavior, RatePolicy, ScalerSpec, Select};

/// The policy's spec from the resource's spec.
pub fn policy_spec(scaler: &ChannelScaler) -> ScalerSpec {
    let spec = &scaler.spec;
    let defaults = ScalerSpec::default();
    ScalerSpec {
        min_replicas: spec.min_replicas.max(0) as u32,
        max_replicas: spec.max_replicas.max(0) as u32,
        lag_per_replica: spec.lag_per_replica.max(1) as u64,
        activation_lag: spec.activation_lag.max(0) as u64,
        target_drain_seconds: spec.target_drain_seconds.max(1) as f64,
        max_time_lag_seconds: spec.max_time_lag_seconds.map(|s| s as f64),
        idle_seconds: spec.idle_seconds.max(0) as f64,
        scale_up: behavior(spec.behavior.scale_up.as_ref(), defaults.scale_up.clone()),
        scale_down: behavior(
            spec.behavior.scale_down.as_ref(),
            defaults.scale_down.clone(),
        ),
        ..defaults
    }
}

fn behavior(rules: Option<&ScalingRules>, default: Behavior) -> Behavior {
    let Some(rules) = rules else {
        return default;
    };
    Behavior {
        stabilization_seconds: rules.stabilization_window_seconds.max(0) as f64,
        policies: rules
            .policies
            .iter()
            .map(|p| {
                let (value, period_seconds) =
                    (p.value.max(0) as u32, f64::from(p.period_seconds.max(1)));
                match p.r#type {
                    PolicyType::Percent => RatePolicy::Percent {
                        value,
                        period_seconds,
                    },
                    PolicyType::Pods => RatePolicy::Pods {
                        value,
                        period_seconds,
                    },
                }
            })
            .collect(),
        select: match rules.select_policy {
            SelectPolicy::Max => Select::Max,
            SelectPolicy::Min => Select::Min,
            SelectPolicy::Disabled => Select::Disabled,
        },
    }
}

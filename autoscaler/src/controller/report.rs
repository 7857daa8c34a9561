//! What one reconcile reports: the `Scaled` Event, the status (written
//! with server-side apply under the controller's field manager; a
//! condition keeps its transition time while its status holds) and the
//! scaler's metrics. Reports what the [`Turn`] did; changes nothing.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::context::{Context, Error, MANAGER};
use crate::crd::{ChannelScaler, ChannelScalerStatus, Condition};
use crate::metrics::{Metrics, ScalerLabels};
use crate::policy::Decision;
use crate::scaling::Turn;

/// Counts a scaling and records its Event with the numbers behind it.
pub(super) async fn scaled(
    ctx: &Context,
    scaler: &ChannelScaler,
    key: &str,
    labels: &ScalerLabels,
    decision: &Decision,
) {
    ctx.metrics.scale_events.get_or_create(labels).inc();
    let event = Event {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some(decision.reason.clone()),
        action: "Scale".into(),
        secondary: None,
    };
    // The target is scaled: a lost Event must not keep the status from
    // saying so.
    if let Err(error) = ctx.recorder.publish(&event, &scaler.object_ref(&())).await {
        tracing::warn!(scaler = %key, %error, "cannot record the scaling Event");
    }
}

/// The scaler's new status after `turn`; `conflict` names an HPA that
/// also scales the target.
pub(super) fn status(
    scaler: &ChannelScaler,
    turn: &Turn,
    conflict: Option<&str>,
) -> ChannelScalerStatus {
    let decision = &turn.decision;
    let mut status = scaler.status.clone().unwrap_or_default();
    if turn.scaled {
        status.last_scale_time = Some(now_rfc3339());
        status.last_scale_reason = Some(decision.reason.clone());
    }
    if let Ok(observation) = &turn.observation {
        status.lag = observation.lag as i64;
        status.time_lag_seconds = observation.time_lag_seconds;
        status.arrival_rate = observation.arrival_rate;
        status.per_replica_rate = observation.per_replica_rate;
        status.partitions = observation.partitions as i32;
    }
    status.processing_rate = turn.processing_rate;
    status.stuck_partitions = turn.stuck_partitions.clone();
    status.observed_generation = scaler.meta().generation;
    status.current_replicas = if turn.scaled {
        decision.replicas
    } else {
        turn.current
    } as i32;
    status.desired_replicas = decision.replicas as i32;
    status.conditions = conditions(scaler, turn, &status, conflict);
    keep_transition_times(scaler, &mut status.conditions);
    status
}

fn conditions(
    scaler: &ChannelScaler,
    turn: &Turn,
    status: &ChannelScalerStatus,
    conflict: Option<&str>,
) -> Vec<Condition> {
    let decision = &turn.decision;
    let target = &scaler.spec.scale_target_ref;
    let reachable = turn.observation.is_ok();
    vec![
        condition(
            "KafkaReachable",
            reachable,
            if reachable {
                "Measured"
            } else {
                "MeasurementFailed"
            },
            match &turn.observation {
                Ok(_) => format!("lag {}", status.lag),
                Err(error) => error.to_string(),
            },
        ),
        condition(
            "Active",
            status.current_replicas > 0,
            "Replicas",
            format!("{} replicas", status.current_replicas),
        ),
        match conflict {
            Some(hpa) => condition(
                "ScalingLimited",
                true,
                "HorizontalPodAutoscalerConflict",
                format!(
                    "HorizontalPodAutoscaler {hpa} also scales {}/{}: not scaling",
                    target.kind, target.name
                ),
            ),
            None => condition(
                "ScalingLimited",
                decision.limited_by.is_some(),
                &decision.limited_by.map_or_else(
                    || "NotLimited".to_owned(),
                    |l| l.to_string().replace(' ', ""),
                ),
                decision.reason.clone(),
            ),
        },
        condition("Ready", reachable, "Reconciled", decision.reason.clone()),
    ]
}

/// A condition's transition time is when its status last changed.
fn keep_transition_times(scaler: &ChannelScaler, conditions: &mut [Condition]) {
    let previous = scaler.status.as_ref().map(|s| s.conditions.as_slice());
    for condition in conditions {
        if let Some(before) = previous
            .into_iter()
            .flatten()
            .find(|c| c.r#type == condition.r#type && c.status == condition.status)
        {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        r#type: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now_rfc3339(),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The scaler's gauges and counters after `turn`.
pub(super) fn record_metrics(
    metrics: &Metrics,
    labels: &ScalerLabels,
    scaler: &ChannelScaler,
    turn: &Turn,
    status: &ChannelScalerStatus,
    conflict: bool,
) {
    metrics.measurements.get_or_create(labels).inc();
    // Counters that may stay at zero exist from the first measurement, so
    // that rate() and alerts see 0 rather than no series.
    let _ = metrics.measurement_errors.get_or_create(labels);
    let _ = metrics.surges.get_or_create(labels);
    let _ = metrics.scale_events.get_or_create(labels);
    match &turn.observation {
        Ok(observation) => {
            metrics
                .lag
                .get_or_create(labels)
                .set(observation.lag as i64);
            metrics
                .time_lag_seconds
                .get_or_create(labels)
                .set(observation.time_lag_seconds);
            metrics
                .arrival_rate
                .get_or_create(labels)
                .set(observation.arrival_rate);
        }
        Err(_) => {
            metrics.measurement_errors.get_or_create(labels).inc();
        }
    }
    metrics
        .processing_rate
        .get_or_create(labels)
        .set(turn.processing_rate);
    metrics
        .slow_partitions
        .get_or_create(labels)
        .set(turn.slow_partitions.len() as i64);
    metrics
        .stuck_partitions
        .get_or_create(labels)
        .set(turn.stuck_partitions.len() as i64);
    metrics
        .desired_replicas
        .get_or_create(labels)
        .set(i64::from(turn.decision.replicas));
    metrics
        .current_replicas
        .get_or_create(labels)
        .set(i64::from(status.current_replicas));
    metrics
        .max_replicas
        .get_or_create(labels)
        .set(i64::from(scaler.spec.max_replicas));
    match scaler.spec.max_time_lag_seconds {
        Some(slo) => {
            metrics
                .max_time_lag_seconds
                .get_or_create(labels)
                .set(slo as f64);
        }
        None => {
            metrics.max_time_lag_seconds.remove(labels);
        }
    }
    metrics
        .hpa_conflict
        .get_or_create(labels)
        .set(i64::from(conflict));
}

/// Writes `status` with server-side apply, under the controller's field
/// manager.
pub(super) async fn write_status(
    ctx: &Context,
    scaler: &ChannelScaler,
    namespace: &str,
    status: ChannelScalerStatus,
) -> Result<(), Error> {
    let scalers: Api<ChannelScaler> = Api::namespaced(ctx.client.clone(), namespace);
    let apply = json!({
        "apiVersion": ChannelScaler::api_version(&()),
        "kind": ChannelScaler::kind(&()),
        "status": status,
    });
    scalers
        .patch_status(
            &scaler.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&apply),
        )
        .await?;
    Ok(())
}

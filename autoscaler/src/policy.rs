//! The scaling policy: pure arithmetic from an [`Observation`] of a channel
//! and a [`ScalerSpec`] to a replica count, with the reason in numbers.
//! No I/O and no clock: time is a number the caller passes in, so the same
//! code runs in the controller, the local process pool and the simulation.
//!
//! The order of the rules:
//! 1. No observation (a failed measurement) or a rebalancing group: hold.
//! 2. Raw demand is the largest of *backlog* (`ceil(lag / lagPerReplica)`,
//!    KEDA's meaning), *gradient* (`ceil((arrival + lag / drain) /
//!    perReplicaRate)`) and the *time-lag SLO* (scale up while the oldest
//!    message is older than `maxTimeLagSeconds`). Lag of stuck partitions is
//!    left out: more replicas cannot drain a partition nobody makes progress
//!    on. (Slow partitions, held by a live member, count like any other.)
//! 3. Scale to zero after `idleSeconds` without lag, stuck lag or arrivals;
//!    from zero only when the lag passes `activationLag`. A group with a
//!    backlog — stuck or not — keeps at least one replica.
//! 4. Partition-aware quantisation: at most one replica per partition
//!    (unless allowed), rounded up to the next count that actually lowers
//!    the most partitions one replica holds; that reaches the partition
//!    count exactly when the demand needs it.
//! 5. `minReplicas`/`maxReplicas`. On the first observation after a
//!    measurement gap, no scale-down: hold rather than act on it.
//! 6. HPA-v2-style behaviour: per-direction stabilisation windows (a fresh
//!    memory counts the replicas it found as recommended within them) and
//!    rate policies.
//!
//! This file holds rules 1 to 5 and [`decide`]; the types the policy takes
//! and returns are in `types`, rule 6 in `behavior`.

mod behavior;
mod types;

use behavior::{rate_limit, remember_scale_event, stabilize};
pub use types::{
    Behavior, Decision, Limit, Observation, PolicyState, RatePolicy, ScalerSpec, Select,
};

/// Replica counts that each lower the most partitions one replica holds:
/// for 12 partitions, 1, 2, 3, 4, 6 and 12 (5 replicas would still leave
/// one with 3 partitions, like 4 do).
pub fn efficient_counts(partitions: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = (1..=partitions.max(1))
        .map(|per_replica| partitions.max(1).div_ceil(per_replica))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Rounds `replicas` up to the next efficient count for `partitions`.
pub fn quantize(replicas: u32, partitions: u32) -> u32 {
    if replicas == 0 {
        return 0;
    }
    efficient_counts(partitions)
        .into_iter()
        .find(|count| *count >= replicas)
        .unwrap_or(partitions.max(1))
}

/// Decides the replica count at time `now` (seconds) for `current` replicas.
/// `observation` is `None` when the measurement failed. Each step is one
/// rule of the module doc, in its order.
pub fn decide(
    spec: &ScalerSpec,
    observation: Option<&Observation>,
    state: &mut PolicyState,
    current: u32,
    now: f64,
) -> Decision {
    let Some(observation) = observation else {
        return hold(current, "measurement failed: holding the last decision");
    };
    if observation.rebalancing {
        return hold(current, "consumer group rebalancing: holding");
    }
    let (demand, mut reason) = raw_demand(spec, observation, current);
    let demand = idle_or_activation(spec, observation, state, current, now, demand, &mut reason);
    let mut limited_by = None;
    let demand = fit_partitions(spec, observation.partitions, demand, &mut limited_by);
    let desired = bound(spec, demand, &mut limited_by);
    if observation.after_gap && desired < current {
        return hold(
            current,
            &format!("{reason}: first measurement after a gap: not scaling down on it"),
        );
    }
    let stabilized = stabilize(spec, state, current, desired, now);
    if stabilized != desired {
        limited_by = Some(Limit::Stabilization);
    }
    let limited = rate_limit(spec, state, current, stabilized, now);
    if limited != stabilized {
        limited_by = Some(Limit::RatePolicy);
    }
    remember_scale_event(spec, state, current, limited, now);
    let reason = if limited == current {
        format!("{reason}: stays at {current}")
    } else {
        format!("{reason}: {current} → {limited}")
    };
    Decision {
        replicas: limited,
        reason,
        limited_by,
    }
}

/// Rule 2: the largest of backlog, gradient and time-lag demand, with the
/// numbers of the one that wins.
fn raw_demand(spec: &ScalerSpec, observation: &Observation, current: u32) -> (u32, String) {
    let lag = observation.lag;
    let backlog = lag.div_ceil(spec.lag_per_replica.max(1)) as u32;
    let gradient = match observation.per_replica_rate {
        Some(rate) if rate > 0.0 => {
            let needed = observation.arrival_rate + lag as f64 / spec.target_drain_seconds.max(1.0);
            let usable = rate * spec.target_utilization.clamp(0.1, 1.0);
            (needed / usable).ceil() as u32
        }
        _ => 0,
    };
    let slo = match spec.max_time_lag_seconds {
        Some(max) if max > 0.0 && observation.time_lag_seconds > max && lag > 0 => {
            let ratio = observation.time_lag_seconds / max;
            ((f64::from(current.max(1)) * ratio).ceil() as u32).max(current + 1)
        }
        _ => 0,
    };
    let demand = backlog.max(gradient).max(slo);
    let mut reason = if demand == slo && slo > 0 {
        format!(
            "time lag {:.1}s > {:.1}s",
            observation.time_lag_seconds,
            spec.max_time_lag_seconds.unwrap_or_default()
        )
    } else if demand == gradient && gradient > backlog {
        format!(
            "arrivals {:.1}/s + lag {lag} / {:.0}s over {:.1}/s per replica",
            observation.arrival_rate,
            spec.target_drain_seconds,
            observation.per_replica_rate.unwrap_or_default()
        )
    } else {
        format!("lag {lag} / {} per replica", spec.lag_per_replica)
    };
    if observation.stuck_lag > 0 {
        reason.push_str(&format!(
            " (stuck partitions' lag {} left out)",
            observation.stuck_lag
        ));
    }
    (demand, reason)
}

/// Rule 3: zero replicas stay at zero until the lag passes the activation
/// threshold (then `reason` says so); an active or recently active channel
/// keeps at least one.
fn idle_or_activation(
    spec: &ScalerSpec,
    observation: &Observation,
    state: &mut PolicyState,
    current: u32,
    now: f64,
    demand: u32,
    reason: &mut String,
) -> u32 {
    let lag = observation.lag;
    // Stuck lag is a backlog too: never idle while it waits.
    let active = lag > 0 || observation.stuck_lag > 0 || observation.arrival_rate > 0.0;
    if active {
        state.last_active = Some(now);
    }
    // The idle countdown starts with the first decision, not before it.
    let idle_for = now - *state.last_active.get_or_insert(now);
    if current == 0 && lag <= spec.activation_lag {
        // Not activated: stay at zero unless the minimum says otherwise.
        *reason = format!("lag {lag} ≤ activation {}", spec.activation_lag);
        0
    } else if idle_for < spec.idle_seconds || active {
        demand.max(1)
    } else {
        demand
    }
}

/// Rule 4: at most one replica per partition (unless allowed), rounded up
/// to the next efficient count.
fn fit_partitions(
    spec: &ScalerSpec,
    partitions: u32,
    demand: u32,
    limited_by: &mut Option<Limit>,
) -> u32 {
    let partitions = partitions.max(1);
    if spec.allow_more_replicas_than_partitions || demand == 0 {
        return demand;
    }
    if demand > partitions {
        *limited_by = Some(Limit::Partitions);
    }
    quantize(demand.min(partitions), partitions)
}

/// Rule 5: `minReplicas` and `maxReplicas`.
fn bound(spec: &ScalerSpec, demand: u32, limited_by: &mut Option<Limit>) -> u32 {
    let mut desired = demand;
    if desired > spec.max_replicas {
        desired = spec.max_replicas;
        *limited_by = Some(Limit::MaxReplicas);
    }
    if desired < spec.min_replicas {
        desired = spec.min_replicas;
        *limited_by = limited_by.or(Some(Limit::MinReplicas));
    }
    desired
}

fn hold(current: u32, reason: &str) -> Decision {
    Decision {
        replicas: current,
        reason: reason.to_owned(),
        limited_by: Some(Limit::Held),
    }
}

#[cfg(test)]
mod tests;

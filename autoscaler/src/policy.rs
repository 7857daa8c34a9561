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
//!    left out: more replicas cannot drain a partition nobody makes progress on.
//! 3. Scale to zero after `idleSeconds` without lag or arrivals; from zero
//!    only when the lag passes `activationLag`.
//! 4. Partition-aware quantisation: at most one replica per partition
//!    (unless allowed), rounded up to the next count that actually lowers
//!    the most partitions one replica holds; that reaches the partition
//!    count exactly when the demand needs it.
//! 5. `minReplicas`/`maxReplicas`.
//! 6. HPA-v2-style behaviour: per-direction stabilisation windows and rate
//!    policies.

mod behavior;

use std::collections::VecDeque;
use std::fmt;

pub use behavior::{Behavior, RatePolicy, Select};
use behavior::{rate_limit, remember_scale_event, stabilize};

/// What a `ChannelScaler` asks for, as numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerSpec {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Messages one replica is expected to hold in its backlog.
    pub lag_per_replica: u64,
    /// From zero replicas, scale up only when the lag exceeds this.
    pub activation_lag: u64,
    /// Time in which the backlog should be drained.
    pub target_drain_seconds: f64,
    /// Share of a replica's measured capacity the gradient plans to use:
    /// headroom, so that a replica count exactly at capacity does not flap
    /// on every rebalance pause.
    pub target_utilization: f64,
    /// Scale up while the oldest unprocessed message is older than this.
    pub max_time_lag_seconds: Option<f64>,
    /// Without lag and arrivals for this long, go down to `min_replicas`
    /// (which may be 0).
    pub idle_seconds: f64,
    /// Allow more replicas than partitions (they would stay idle).
    pub allow_more_replicas_than_partitions: bool,
    pub scale_up: Behavior,
    pub scale_down: Behavior,
}

impl Default for ScalerSpec {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: 10,
            lag_per_replica: 100,
            activation_lag: 0,
            target_drain_seconds: 30.0,
            target_utilization: 0.9,
            max_time_lag_seconds: None,
            idle_seconds: 60.0,
            allow_more_replicas_than_partitions: false,
            scale_up: Behavior {
                stabilization_seconds: 0.0,
                policies: Vec::new(),
                select: Select::Max,
            },
            scale_down: Behavior {
                stabilization_seconds: 60.0,
                policies: vec![RatePolicy::Percent {
                    value: 50,
                    period_seconds: 30.0,
                }],
                select: Select::Max,
            },
        }
    }
}

/// One measurement of the channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Messages not yet processed, stuck partitions excluded.
    pub lag: u64,
    /// Lag of partitions whose committed offset does not move.
    pub stuck_lag: u64,
    /// Messages entering the channel per second.
    pub arrival_rate: f64,
    /// What one replica processes per second when busy; `None` until known.
    pub per_replica_rate: Option<f64>,
    /// Age of the oldest unprocessed message.
    pub time_lag_seconds: f64,
    pub partitions: u32,
    /// The consumer group is rebalancing: rates and lag are in flux.
    pub rebalancing: bool,
}

/// What the policy remembers between decisions.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    /// (time, recommendation) within the longest stabilisation window.
    recommendations: VecDeque<(f64, u32)>,
    /// (time, replicas after the change, change) within the longest period.
    scale_events: VecDeque<(f64, i64)>,
    /// Last time the channel had lag or arrivals.
    last_active: Option<f64>,
}

/// Why the decision is not the raw demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    MaxReplicas,
    MinReplicas,
    Partitions,
    Stabilization,
    RatePolicy,
    Held,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::MaxReplicas => "maxReplicas",
            Limit::MinReplicas => "minReplicas",
            Limit::Partitions => "partitions",
            Limit::Stabilization => "stabilization window",
            Limit::RatePolicy => "rate policy",
            Limit::Held => "held",
        })
    }
}

/// The outcome of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    /// The numbers behind it, e.g. `lag 12000 > 4 × 2500: 2 → 5`.
    pub reason: String,
    /// What kept the decision from the raw demand, if anything.
    pub limited_by: Option<Limit>,
}

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
    let active = lag > 0 || observation.arrival_rate > 0.0;
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

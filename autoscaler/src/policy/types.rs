//! The policy's vocabulary: what a scaler asks for ([`ScalerSpec`], with
//! its per-direction [`Behavior`]), what it observes ([`Observation`]),
//! what the policy remembers between decisions ([`PolicyState`]) and what
//! it decides ([`Decision`], [`Limit`]). Plain data; the rules that use it
//! are the policy's and its behaviour's.

use std::collections::VecDeque;
use std::fmt;

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
    /// Messages not yet processed, stuck partitions excluded (slow ones,
    /// held by a live member, included).
    pub lag: u64,
    /// Lag of partitions whose committed offset does not move and that no
    /// live member of the group holds.
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
    /// The first observation after failed measurements: rates restart and
    /// nothing is known of the gap, so it never scales down.
    pub after_gap: bool,
}

/// What the policy remembers between decisions.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    /// (time, recommendation) within the longest stabilisation window.
    pub(super) recommendations: VecDeque<(f64, u32)>,
    /// (time, replicas after the change, change) within the longest period.
    pub(super) scale_events: VecDeque<(f64, i64)>,
    /// Last time the channel had lag or arrivals.
    pub(super) last_active: Option<f64>,
    /// Time of the first decision on an observation: before it, this
    /// memory saw nothing of the stabilisation windows (a new leader, a
    /// restarted autoscaler), whatever the one before it had seen.
    pub(super) started: Option<f64>,
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

/// How fast replicas may be added or removed, as in HPA v2 `behavior`.
#[derive(Clone, Debug, PartialEq)]
pub struct Behavior {
    /// Recommendations of this window are combined before acting: the
    /// lowest for scale-up, the highest for scale-down (no flapping).
    pub stabilization_seconds: f64,
    /// Limits per period; empty means no limit.
    pub policies: Vec<RatePolicy>,
    /// Which policy applies when several do.
    pub select: Select,
}

/// One rate limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RatePolicy {
    /// At most `value` replicas per `period_seconds`.
    Pods { value: u32, period_seconds: f64 },
    /// At most `value` percent of the replicas at the period's start.
    Percent { value: u32, period_seconds: f64 },
}

/// Which of several rate policies wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The one allowing the largest change.
    Max,
    /// The one allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

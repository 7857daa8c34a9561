//! Whether each partition makes progress, and what the worker says about
//! it: a partition has several messages in process at once (handlers and
//! unacknowledged replies are pipelined); it is *slow* while one of them
//! stays in its handler (or waits for a handler slot) beyond a bound and
//! *stuck* while what one of them must send — the reply, the dead letter —
//! is not acknowledged beyond a bound. Slow is work, stuck is a wedge: `/healthz` stays 200 with
//! the reason for a slow partition and answers 503 for a stuck one;
//! `/metrics` has the time each partition's message has been in process
//! and the count of slow and stuck partitions; a log line marks each
//! change.
//!
//! This module only watches: the partition pipelines (`pipeline`) and a
//! message's processing (`process`) tell it where each message is through
//! its [`Watch`]; it never touches a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osmosis_support::ops::{Health, Liveness};
use rdkafka::error::KafkaError;

use crate::metrics::{Metrics, PartitionLabels, StallLabels};

/// Where a message in process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Taken from the queue; waiting for a handler slot.
    Waiting,
    /// The handler runs (or waits for its retry).
    Handling,
    /// Its reply or dead letter is being sent.
    Delivering,
}

/// A message in process.
#[derive(Clone, Debug)]
struct Current {
    /// When its handler was due to start (it may wait for a slot).
    taken_at: Instant,
    stage: Stage,
    /// When `stage` began.
    stage_since: Instant,
    /// The latest produce error of this message, for the reason.
    last_error: Option<String>,
}

/// What a partition is doing, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    Progressing,
    /// A handler has had its message longer than the bound.
    Slow {
        busy: Duration,
    },
    /// A reply or dead letter has been unacknowledged longer than the bound.
    Stuck {
        delivering: Duration,
        last_error: Option<String>,
    },
}

impl Condition {
    fn label(&self) -> Option<&'static str> {
        match self {
            Condition::Progressing => None,
            Condition::Slow { .. } => Some("slow"),
            Condition::Stuck { .. } => Some("stuck"),
        }
    }
}

/// The bounds beyond which a partition is reported.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// A message in process longer than this (not delivering) is slow.
    pub(crate) slow_after: Duration,
    /// A reply or dead letter unacknowledged longer than this is stuck.
    pub(crate) stuck_after: Duration,
}

/// Every message in process, shared by the partition pipelines and the
/// operational endpoints.
pub(crate) struct Progress {
    bounds: Bounds,
    metrics: Arc<Metrics>,
    /// By partition, then by watch; a partition without a message in
    /// process is absent.
    current: Mutex<BTreeMap<(i32, u64), Current>>,
    /// Numbers the watches, so two messages of a partition never collide.
    next_watch: AtomicU64,
    /// The condition last logged per partition, so each change logs once.
    logged: Mutex<BTreeMap<i32, &'static str>>,
    /// Partitions with a busy-time gauge, set back to 0 when idle.
    gauged: Mutex<BTreeSet<i32>>,
}

impl Progress {
    pub(crate) fn new(bounds: Bounds, metrics: Arc<Metrics>) -> Self {
        Self {
            bounds,
            metrics,
            current: Mutex::new(BTreeMap::new()),
            next_watch: AtomicU64::new(0),
            logged: Mutex::new(BTreeMap::new()),
            gauged: Mutex::new(BTreeSet::new()),
        }
    }

    /// A message of `partition` is due to start its handler: the handle
    /// through which its processing reports where it is, until it is
    /// finished (or the handle dropped).
    pub(crate) fn taken(self: &Arc<Self>, partition: i32) -> Watch {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.current.lock().unwrap().insert(
            (partition, id),
            Current {
                taken_at: now,
                stage: Stage::Waiting,
                stage_since: now,
                last_error: None,
            },
        );
        Watch {
            progress: Arc::clone(self),
            key: (partition, id),
        }
    }

    fn update(&self, key: (i32, u64), change: impl FnOnce(&mut Current)) {
        if let Some(current) = self.current.lock().unwrap().get_mut(&key) {
            change(current);
        }
    }

    /// Each partition with a message in process, how long its oldest
    /// message has been, and its condition at `now`: stuck when one of its
    /// messages is, else slow when one is, else progressing.
    fn conditions(&self, now: Instant) -> Vec<(i32, Duration, Condition)> {
        let current = self.current.lock().unwrap();
        let mut conditions: Vec<(i32, Duration, Condition)> = Vec::new();
        for (&(partition, _), message) in current.iter() {
            let busy = now.saturating_duration_since(message.taken_at);
            let condition = self.condition(message, now);
            match conditions.last_mut() {
                Some((last, oldest, worst)) if *last == partition => {
                    *oldest = (*oldest).max(busy);
                    if severity(&condition) > severity(worst) {
                        *worst = condition;
                    }
                }
                _ => conditions.push((partition, busy, condition)),
            }
        }
        conditions
    }

    fn condition(&self, current: &Current, now: Instant) -> Condition {
        let in_stage = now.saturating_duration_since(current.stage_since);
        let busy = now.saturating_duration_since(current.taken_at);
        match current.stage {
            Stage::Delivering if in_stage >= self.bounds.stuck_after => Condition::Stuck {
                delivering: in_stage,
                last_error: current.last_error.clone(),
            },
            Stage::Waiting | Stage::Handling if busy >= self.bounds.slow_after => {
                Condition::Slow { busy }
            }
            _ => Condition::Progressing,
        }
    }

    /// Logs each partition whose condition changed since the last call.
    pub(crate) fn log_changes(&self) {
        let conditions = self.conditions(Instant::now());
        let mut logged = self.logged.lock().unwrap();
        for (partition, _, condition) in &conditions {
            let label = condition.label();
            if logged.get(partition).copied() == label {
                continue;
            }
            match condition {
                Condition::Slow { busy } => tracing::warn!(
                    partition,
                    busy_seconds = busy.as_secs(),
                    "partition slow: its handler has had the message beyond the bound"
                ),
                Condition::Stuck {
                    delivering,
                    last_error,
                } => tracing::error!(
                    partition,
                    delivering_seconds = delivering.as_secs(),
                    last_error = last_error.as_deref().unwrap_or("none"),
                    "partition stuck: its reply or dead letter is not acknowledged"
                ),
                Condition::Progressing => {
                    tracing::info!(partition, "partition progressing again")
                }
            }
            match label {
                Some(label) => logged.insert(*partition, label),
                None => logged.remove(partition),
            };
        }
        // A partition whose stalled message finished progresses again.
        logged.retain(|partition, _| {
            let busy = conditions.iter().any(|(p, _, _)| p == partition);
            if !busy {
                tracing::info!(partition, "partition progressing again");
            }
            busy
        });
    }

    /// Logs condition changes every `period` until the process ends.
    pub(crate) fn spawn_logger(self: &Arc<Self>, period: Duration) {
        let progress = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match progress.upgrade() {
                    Some(progress) => progress.log_changes(),
                    None => return,
                }
            }
        });
    }

    /// Brings the progress gauges to `now`.
    fn refresh_metrics(&self, now: Instant) {
        let conditions = self.conditions(now);
        let mut gauged = self.gauged.lock().unwrap();
        for partition in gauged.iter() {
            self.metrics
                .partition_busy_seconds
                .get_or_create(&PartitionLabels {
                    partition: i64::from(*partition),
                })
                .set(0.0);
        }
        let (mut slow, mut stuck) = (0, 0);
        for (partition, busy, condition) in &conditions {
            gauged.insert(*partition);
            self.metrics
                .partition_busy_seconds
                .get_or_create(&PartitionLabels {
                    partition: i64::from(*partition),
                })
                .set(busy.as_secs_f64());
            match condition {
                Condition::Slow { .. } => slow += 1,
                Condition::Stuck { .. } => stuck += 1,
                Condition::Progressing => {}
            }
        }
        for (state, count) in [("slow", slow), ("stuck", stuck)] {
            self.metrics
                .partitions_stalled
                .get_or_create(&StallLabels { state })
                .set(count);
        }
    }

    /// The worker's liveness: failing while a partition is stuck, degraded
    /// while one is slow.
    fn assess(&self, now: Instant) -> Liveness {
        let conditions = self.conditions(now);
        let stuck: Vec<String> = conditions
            .iter()
            .filter_map(|(partition, _, condition)| match condition {
                Condition::Stuck {
                    delivering,
                    last_error,
                } => Some(format!(
                    "partition {partition} stuck: its reply or dead letter unacknowledged for {} s (last error: {})",
                    delivering.as_secs(),
                    last_error.as_deref().unwrap_or("none")
                )),
                _ => None,
            })
            .collect();
        if !stuck.is_empty() {
            return Liveness::Failing(stuck.join("; "));
        }
        let slow: Vec<String> = conditions
            .iter()
            .filter(|(_, _, condition)| matches!(condition, Condition::Slow { .. }))
            .map(|(partition, busy, _)| {
                format!(
                    "partition {partition} slow: message in process for {} s",
                    busy.as_secs()
                )
            })
            .collect();
        if slow.is_empty() {
            Liveness::Ok
        } else {
            Liveness::Degraded(slow.join("; "))
        }
    }
}

impl Health for Progress {
    fn metrics(&self) -> String {
        self.refresh_metrics(Instant::now());
        self.metrics.render()
    }

    fn liveness(&self) -> Liveness {
        self.assess(Instant::now())
    }
}

/// How bad a condition is, to report a partition's worst message; among
/// stuck messages the longest unacknowledged, among slow ones the longest.
fn severity(condition: &Condition) -> (u8, Duration) {
    match condition {
        Condition::Progressing => (0, Duration::ZERO),
        Condition::Slow { busy } => (1, *busy),
        Condition::Stuck { delivering, .. } => (2, *delivering),
    }
}

/// One message's reports about where it is.
pub(crate) struct Watch {
    progress: Arc<Progress>,
    /// Its partition and the watch's number.
    key: (i32, u64),
}

impl Watch {
    /// The handler starts on the message.
    pub(crate) fn handling(&self) {
        self.stage(Stage::Handling);
    }

    /// The message's reply or dead letter is being sent.
    pub(crate) fn delivering(&self) {
        self.stage(Stage::Delivering);
    }

    fn stage(&self, stage: Stage) {
        self.progress.update(self.key, |current| {
            if current.stage != stage {
                current.stage = stage;
                current.stage_since = Instant::now();
            }
        });
    }

    /// A produce of the message's reply or dead letter failed.
    pub(crate) fn produce_failed(&self, error: &KafkaError) {
        let error = error.to_string();
        self.progress.update(self.key, |current| {
            current.last_error = Some(error);
        });
    }

    /// The message is finished: its reply or dead letter is acknowledged.
    pub(crate) fn finished(&self) {
        self.progress.current.lock().unwrap().remove(&self.key);
    }
}

impl Drop for Watch {
    /// A message abandoned (drained, revoked, aborted) is no longer in process.
    fn drop(&mut self) {
        self.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Arc<Progress> {
        Arc::new(Progress::new(
            Bounds {
                slow_after: Duration::from_secs(60),
                stuck_after: Duration::from_secs(30),
            },
            Arc::new(Metrics::default()),
        ))
    }

    #[test]
    fn a_long_handler_is_slow_and_the_worker_stays_live() {
        let progress = progress();
        let watch = progress.taken(3);
        watch.handling();
        let later = Instant::now() + Duration::from_secs(61);
        match progress.assess(later) {
            Liveness::Degraded(reason) => assert!(reason.contains("partition 3 slow"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(progress.assess(Instant::now()), Liveness::Ok);
    }

    #[test]
    fn an_unacknowledged_reply_is_stuck_and_fails_the_worker_with_its_last_error() {
        let progress = progress();
        let watch = progress.taken(1);
        watch.delivering();
        watch.produce_failed(&KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
        ));
        let later = Instant::now() + Duration::from_secs(31);
        match progress.assess(later) {
            Liveness::Failing(reason) => {
                assert!(reason.contains("partition 1 stuck"), "{reason}");
                assert!(reason.contains("timed out"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        watch.finished();
        assert_eq!(progress.assess(later), Liveness::Ok);
    }

    #[test]
    fn the_gauges_show_busy_time_and_stalled_partitions() {
        let progress = progress();
        let watch = progress.taken(0);
        watch.handling();
        progress.refresh_metrics(Instant::now() + Duration::from_secs(90));
        let text = progress.metrics.render();
        assert!(
            text.contains("osmosis_worker_partitions_stalled{state=\"slow\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("osmosis_worker_partition_busy_seconds{partition=\"0\"} 9"),
            "{text}"
        );
        drop(watch);
        progress.refresh_metrics(Instant::now());
        let text = progress.metrics.render();
        assert!(
            text.contains("osmosis_worker_partition_busy_seconds{partition=\"0\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_partition_with_a_handler_running_and_a_reply_stuck_is_reported_once_as_stuck() {
        let progress = progress();
        let stuck = progress.taken(2);
        stuck.delivering();
        let handling = progress.taken(2);
        handling.handling();
        let later = Instant::now() + Duration::from_secs(61);
        let conditions = progress.conditions(later);
        assert_eq!(conditions.len(), 1, "{conditions:?}");
        assert!(matches!(conditions[0].2, Condition::Stuck { .. }));
        match progress.assess(later) {
            Liveness::Failing(reason) => assert!(reason.contains("partition 2 stuck"), "{reason}"),
            other => panic!("{other:?}"),
        }
        drop(stuck);
        match progress.assess(later) {
            Liveness::Degraded(reason) => assert!(reason.contains("partition 2 slow"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replies_acknowledged_in_time_keep_a_pipelined_partition_progressing() {
        let progress = progress();
        let watches: Vec<Watch> = (0..8).map(|_| progress.taken(4)).collect();
        for watch in &watches {
            watch.delivering();
        }
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(progress.assess(soon), Liveness::Ok);
        for watch in &watches {
            watch.finished();
        }
        assert!(progress.conditions(soon).is_empty());
    }
}

//! From raw Kafka samples to an [`Observation`]: lag per partition with
//! explicit semantics, arrival rate (rises at once, falls smoothed) and a
//! smoothed processing rate, per-replica
//! capacity learnt only while the group is busy, time lag by interpolation,
//! and slow and stuck partitions. Pure: the samples come from
//! [`crate::measure`].
//!
//! Slow or stuck: a partition with lag whose consumers' position has not
//! moved for `stuck_after_seconds` while the group has members is *slow*
//! when a live member holds it (the group's assignment names it: the member
//! heartbeats, its handler may run a long job) and *stuck* when none does.
//! A slow partition's lag is demand like any other; a stuck one's is kept
//! apart (more replicas would not drain it). A measurement gap — failed
//! measurements since the last sample — restarts every partition's
//! no-progress clock and the rates: what happened during the gap is unknown
//! (workers cannot commit while Kafka is away), and the observation after
//! it says so ([`Observation::after_gap`]).
//!
//! Lag semantics, per partition (log start `s`, high watermark `h`,
//! committed offset `c`):
//! - `c` present: `h − max(c, s)`. An offset below the log start means
//!   retention deleted messages nobody processed; they cannot be processed
//!   any more, so they are not backlog (KEDA counts them: kedacore/keda#4910).
//! - no `c` (nothing ever committed): with `OffsetReset::Earliest` (what the
//!   Osmosis worker runtime uses) workers will start at `s`, so the backlog
//!   is `h − s`; with `OffsetReset::Latest` they start at the end: 0
//!   (KEDA's undefined middle ground: kedacore/keda#2612).

use std::collections::{BTreeMap, VecDeque};

use crate::policy::Observation;

/// Where workers without a committed offset start reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OffsetReset {
    #[default]
    Earliest,
    Latest,
}

/// One partition in one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionSample {
    pub partition: i32,
    pub log_start: i64,
    pub high_watermark: i64,
    pub committed: Option<i64>,
}

/// One poll of the channel and its consumer group.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds on the caller's clock.
    pub at: f64,
    pub partitions: Vec<PartitionSample>,
    /// The group is between generations (joining, syncing).
    pub rebalancing: bool,
    /// Consumers in the group.
    pub members: u32,
    /// The channel's partitions the group's members hold, from its
    /// assignment; `None` when it could not be read (then every partition
    /// counts as held while the group has members).
    pub held: Option<Vec<i32>>,
}

/// Settings of the estimator.
#[derive(Clone, Copy, Debug)]
pub struct EstimatorConfig {
    pub offset_reset: OffsetReset,
    /// Weight of the newest rate in the moving averages (0..1].
    pub smoothing: f64,
    /// Seconds without progress, with lag, after which a partition is stuck
    /// (time, not polls: a surge brings polls forward).
    pub stuck_after_seconds: f64,
    /// Backlog per group member above which the members count as busy: a
    /// rate measured while they keep up is their load, not their capacity.
    pub busy_lag_per_member: u64,
    /// Arrivals this many times the known arrival rate (and beyond the
    /// replicas' capacity) make a surge: measure now, not at the next poll.
    pub surge_factor: f64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        Self {
            offset_reset: OffsetReset::Earliest,
            smoothing: 0.5,
            stuck_after_seconds: 60.0,
            busy_lag_per_member: 10,
            surge_factor: 1.5,
        }
    }
}

/// What the estimator remembers about a partition.
#[derive(Clone, Debug, Default)]
struct PartitionHistory {
    /// (time, high watermark) points, oldest first, for time lag.
    arrivals: VecDeque<(f64, i64)>,
    last_committed: Option<i64>,
    /// When the consumers' position last moved, or the lag was last zero.
    progress_at: f64,
}

/// One sample's backlog, summed over its partitions.
#[derive(Default)]
struct Backlog {
    /// Messages not yet processed, stuck partitions excluded.
    lag: u64,
    /// Lag of the stuck partitions.
    stuck_lag: u64,
    /// Age of the oldest unprocessed message, seconds.
    oldest_age: f64,
    /// Partitions without progress that a live member holds.
    slow: Vec<i32>,
    /// Partitions without progress that no live member holds.
    stuck: Vec<i32>,
}

/// Turns successive samples into observations.
#[derive(Clone, Debug)]
pub struct Estimator {
    config: EstimatorConfig,
    previous: Option<Sample>,
    /// The surge watch's last two readings since `previous`, oldest first:
    /// (time, sum of the high watermarks).
    readings: VecDeque<(f64, i64)>,
    partitions: BTreeMap<i32, PartitionHistory>,
    arrival_rate: Option<f64>,
    processing_rate: Option<f64>,
    per_replica_rate: Option<f64>,
    /// A measurement failed since the last sample.
    gap: bool,
    /// Slow partitions at the last observation.
    slow: Vec<i32>,
    /// Stuck partitions at the last observation.
    stuck: Vec<i32>,
}

/// The shortest span a recent arrival rate is taken over, seconds: shorter
/// ones are mostly the producers' batching.
const MIN_RECENT_SPAN: f64 = 0.5;

/// Arrival points kept per partition (at a 5 s poll, an hour).
const HISTORY: usize = 720;

impl Estimator {
    pub fn new(config: EstimatorConfig) -> Self {
        Self {
            config,
            previous: None,
            readings: VecDeque::new(),
            partitions: BTreeMap::new(),
            arrival_rate: None,
            processing_rate: None,
            per_replica_rate: None,
            gap: false,
            slow: Vec::new(),
            stuck: Vec::new(),
        }
    }

    /// A measurement failed: the next sample comes after a gap.
    pub fn measurement_failed(&mut self) {
        self.gap = true;
    }

    /// The effective position of a partition's consumers.
    fn position(&self, p: &PartitionSample) -> i64 {
        match (p.committed, self.config.offset_reset) {
            (Some(committed), _) => committed.max(p.log_start),
            (None, OffsetReset::Earliest) => p.log_start,
            (None, OffsetReset::Latest) => p.high_watermark,
        }
    }

    /// The observation after `sample`.
    pub fn observe(&mut self, sample: Sample) -> Observation {
        let after_gap = std::mem::take(&mut self.gap);
        if after_gap {
            // Nothing is known of the gap: no partition is without progress
            // because of it, and no rate spans it.
            for history in self.partitions.values_mut() {
                history.progress_at = sample.at;
            }
            self.previous = None;
            self.readings.clear();
        }
        let backlog = self.track_partitions(&sample);
        if let Some(previous) = self.previous.take() {
            self.update_rates(&previous, &sample, backlog.lag);
        }
        self.slow = backlog.slow;
        self.stuck = backlog.stuck;
        let observation = Observation {
            lag: backlog.lag,
            stuck_lag: backlog.stuck_lag,
            arrival_rate: self.arrival_rate.unwrap_or(0.0),
            per_replica_rate: self.per_replica_rate,
            time_lag_seconds: backlog.oldest_age,
            partitions: sample.partitions.len() as u32,
            rebalancing: sample.rebalancing,
            after_gap,
        };
        self.previous = Some(sample);
        self.readings.clear();
        observation
    }

    /// Records each partition's watermark and progress, and sums the
    /// backlog: lag, the lag of stuck partitions apart, and the age of the
    /// oldest unprocessed message.
    fn track_partitions(&mut self, sample: &Sample) -> Backlog {
        let mut backlog = Backlog::default();
        for p in &sample.partitions {
            let position = self.position(p);
            let partition_lag = (p.high_watermark - position).max(0) as u64;
            let stuck_after = self.config.stuck_after_seconds;
            let history = self
                .partitions
                .entry(p.partition)
                .or_insert_with(|| PartitionHistory {
                    progress_at: sample.at,
                    ..PartitionHistory::default()
                });
            history.arrivals.push_back((sample.at, p.high_watermark));
            while history.arrivals.len() > HISTORY {
                history.arrivals.pop_front();
            }
            let progressed = history.last_committed != Some(position);
            if progressed || partition_lag == 0 {
                history.progress_at = sample.at;
            }
            history.last_committed = Some(position);
            let stalled = sample.members > 0 && sample.at - history.progress_at >= stuck_after;
            let held = sample
                .held
                .as_ref()
                .is_none_or(|held| held.contains(&p.partition));
            if stalled && !held {
                backlog.stuck.push(p.partition);
                backlog.stuck_lag += partition_lag;
                continue;
            }
            if stalled {
                backlog.slow.push(p.partition);
            }
            backlog.lag += partition_lag;
            if partition_lag > 0 {
                let arrived = arrival_time(&history.arrivals, position);
                backlog.oldest_age = backlog.oldest_age.max(sample.at - arrived);
            }
        }
        backlog
    }

    /// Arrival and processing rates between `previous` and `sample`, and
    /// what they teach about one replica's capacity.
    fn update_rates(&mut self, previous: &Sample, sample: &Sample, lag: u64) {
        let elapsed = sample.at - previous.at;
        if elapsed <= 0.0 {
            return;
        }
        let sum = |s: &Sample, f: &dyn Fn(&PartitionSample) -> i64| -> i64 {
            s.partitions.iter().map(f).sum()
        };
        let arrived = sum(sample, &|p| p.high_watermark) - sum(previous, &|p| p.high_watermark);
        let processed = sum(sample, &|p| self.position(p)) - sum(previous, &|p| self.position(p));
        let arrival = arrived.max(0) as f64 / elapsed;
        // A surge's onset hides in the average over the whole interval; the
        // rate since the watch's last reading shows it.
        let now: i64 = sample.partitions.iter().map(|p| p.high_watermark).sum();
        let recent = recent_rate(&self.readings, sample.at, now);
        let rising = recent.map_or(arrival, |recent| recent.max(arrival));
        let processing = processed.max(0) as f64 / elapsed;
        // Fast attack, slow decay: a surge is acted on at the poll that sees
        // it; a lull must last before it counts.
        self.arrival_rate = Some(match self.arrival_rate {
            Some(known) if rising < known => smooth(Some(known), arrival, self.config.smoothing),
            _ => rising,
        });
        self.processing_rate = Some(smooth(
            self.processing_rate,
            processing,
            self.config.smoothing,
        ));
        self.learn_capacity(previous, sample, lag, processing);
    }

    /// Capacity shows only while there is more work than workers do: learn
    /// it from busy, stable intervals, remember it otherwise. While the
    /// backlog shrinks, some workers may already be idle, so such a rate
    /// only bounds it from below.
    fn learn_capacity(&mut self, previous: &Sample, sample: &Sample, lag: u64, processing: f64) {
        let previous_lag: i64 = previous
            .partitions
            .iter()
            .map(|p| p.high_watermark - self.position(p))
            .sum();
        let busy_floor =
            i64::from(sample.members.max(1)) * self.config.busy_lag_per_member.max(1) as i64;
        let busy = lag as i64 >= busy_floor
            && previous_lag >= busy_floor
            && !sample.rebalancing
            && !previous.rebalancing;
        if !busy
            && self.per_replica_rate.is_none()
            && lag > 0
            && sample.members > 0
            && processing > 0.0
        {
            // Nothing learnt yet: what the members do now is at least what
            // they can, a start for the gradient.
            self.per_replica_rate = Some(processing / f64::from(sample.members));
        }
        if busy && sample.members > 0 && processing > 0.0 {
            let per_replica = processing / f64::from(sample.members);
            self.per_replica_rate = Some(if lag as i64 >= previous_lag {
                smooth(self.per_replica_rate, per_replica, self.config.smoothing)
            } else {
                self.per_replica_rate
                    .map_or(per_replica, |known| known.max(per_replica))
            });
        }
    }

    /// Messages processed per second, smoothed.
    pub fn processing_rate(&self) -> f64 {
        self.processing_rate.unwrap_or(0.0)
    }

    /// Partitions reported stuck at the last observation: without
    /// progress, and no live member holds them.
    pub fn stuck_partitions(&self) -> Vec<i32> {
        self.stuck.clone()
    }

    /// Partitions reported slow at the last observation: without progress,
    /// but a live member holds them (a long job, not a wedge).
    pub fn slow_partitions(&self) -> Vec<i32> {
        self.slow.clone()
    }

    /// Whether the channel's arrivals since the last sample, `arrived` being
    /// the sum of its high watermarks at `at`, make a surge: faster than
    /// `surge_factor` × the known arrival rate and than `replicas` can
    /// process. Then measuring now, rather than at the next poll, lets the
    /// policy act seconds earlier. Each surge raises the known rate, so a
    /// steady stream does not keep triggering.
    pub fn surging(&mut self, at: f64, arrived: i64, replicas: u32) -> bool {
        let Some(previous) = &self.previous else {
            return false;
        };
        let recent = recent_rate(&self.readings, at, arrived);
        self.readings.push_back((at, arrived));
        if self.readings.len() > 2 {
            self.readings.pop_front();
        }
        let elapsed = at - previous.at;
        if elapsed <= 0.0 {
            return false;
        }
        let before: i64 = previous.partitions.iter().map(|p| p.high_watermark).sum();
        let rate = (arrived - before).max(0) as f64 / elapsed;
        // The newest second counts too: a surge that began just now.
        let rate = recent.map_or(rate, |recent| recent.max(rate));
        let known = self.arrival_rate.unwrap_or(0.0);
        let capacity = self
            .per_replica_rate
            .map_or(0.0, |per_replica| per_replica * f64::from(replicas));
        rate > 0.0 && rate > known * self.config.surge_factor && rate > capacity
    }
}

/// Arrivals per second since the newest reading at least
/// [`MIN_RECENT_SPAN`] before `at`, when `arrived` had arrived by `at`.
fn recent_rate(readings: &VecDeque<(f64, i64)>, at: f64, arrived: i64) -> Option<f64> {
    readings
        .iter()
        .rev()
        .find(|(then, _)| at - then >= MIN_RECENT_SPAN)
        .map(|(then, before)| (arrived - before).max(0) as f64 / (at - then))
}

fn smooth(previous: Option<f64>, newest: f64, weight: f64) -> f64 {
    match previous {
        Some(previous) => previous + weight * (newest - previous),
        None => newest,
    }
}

/// When the message at `offset` arrived: the time the high watermark passed
/// it, interpolated between recorded points (no message is read).
fn arrival_time(points: &VecDeque<(f64, i64)>, offset: i64) -> f64 {
    let target = offset + 1;
    let mut before: Option<(f64, i64)> = None;
    for &(at, high) in points {
        if high >= target {
            return match before {
                Some((t0, h0)) if high > h0 => {
                    t0 + (at - t0) * (target - h0) as f64 / (high - h0) as f64
                }
                Some((t0, _)) => t0,
                // Older than our history: as old as the history goes.
                None => at,
            };
        }
        before = Some((at, high));
    }
    before.map_or(0.0, |(at, _)| at)
}

#[cfg(test)]
mod tests;

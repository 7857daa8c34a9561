//! The estimator's unit tests: lag semantics, rates, capacity, time lag,
//! slow and stuck partitions, measurement gaps and surges, from hand-built
//! samples.

use super::*;

fn partition(partition: i32, log_start: i64, high: i64, committed: Option<i64>) -> PartitionSample {
    PartitionSample {
        partition,
        log_start,
        high_watermark: high,
        committed,
    }
}

fn sample(at: f64, members: u32, partitions: Vec<PartitionSample>) -> Sample {
    Sample {
        at,
        partitions,
        rebalancing: false,
        members,
        held: None,
    }
}

/// A sample whose members hold only the partitions `held`.
fn holding(held: &[i32], sample: Sample) -> Sample {
    Sample {
        held: Some(held.to_vec()),
        ..sample
    }
}

#[test]
fn lag_is_counted_from_the_committed_offset() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    let observation = estimator.observe(sample(
        0.0,
        1,
        vec![
            partition(0, 0, 100, Some(40)),
            partition(1, 0, 10, Some(10)),
        ],
    ));
    assert_eq!(observation.lag, 60);
    assert_eq!(observation.partitions, 2);
}

#[test]
fn without_a_committed_offset_the_reset_policy_decides() {
    let uncommitted = vec![partition(0, 20, 100, None)];
    let mut earliest = Estimator::new(EstimatorConfig::default());
    assert_eq!(
        earliest.observe(sample(0.0, 0, uncommitted.clone())).lag,
        80
    );
    let mut latest = Estimator::new(EstimatorConfig {
        offset_reset: OffsetReset::Latest,
        ..EstimatorConfig::default()
    });
    assert_eq!(latest.observe(sample(0.0, 0, uncommitted)).lag, 0);
}

#[test]
fn messages_deleted_by_retention_are_not_backlog() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    let observation = estimator.observe(sample(0.0, 1, vec![partition(0, 500, 600, Some(100))]));
    assert_eq!(observation.lag, 100, "only what still exists: 600 − 500");
}

#[test]
fn rates_come_from_watermark_and_commit_movement() {
    let mut estimator = Estimator::new(EstimatorConfig {
        smoothing: 1.0,
        ..EstimatorConfig::default()
    });
    estimator.observe(sample(0.0, 2, vec![partition(0, 0, 1000, Some(0))]));
    let observation = estimator.observe(sample(10.0, 2, vec![partition(0, 0, 2000, Some(400))]));
    assert_eq!(observation.arrival_rate, 100.0);
    assert_eq!(estimator.processing_rate(), 40.0);
    assert_eq!(
        observation.per_replica_rate,
        Some(20.0),
        "busy: 40/s over 2 members"
    );
    // Drained to zero within an interval: the workers may have idled
    // part of it, so the rate is no measure of capacity; it is kept.
    let observation = estimator.observe(sample(20.0, 2, vec![partition(0, 0, 2000, Some(2000))]));
    assert_eq!(observation.lag, 0);
    assert_eq!(observation.per_replica_rate, Some(20.0));
    let observation = estimator.observe(sample(30.0, 2, vec![partition(0, 0, 2000, Some(2000))]));
    assert_eq!(
        observation.per_replica_rate,
        Some(20.0),
        "idle: remembered, not diluted"
    );
    assert_eq!(observation.arrival_rate, 0.0);
}

#[test]
fn without_a_busy_interval_the_current_rate_starts_the_capacity() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    estimator.observe(sample(0.0, 2, vec![partition(0, 0, 100, Some(95))]));
    let observation = estimator.observe(sample(10.0, 2, vec![partition(0, 0, 300, Some(295))]));
    assert_eq!(
        observation.per_replica_rate,
        Some(10.0),
        "200 in 10 s by 2 members"
    );
}

#[test]
fn arrivals_rise_at_once_and_fall_smoothed() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    let at = |t: f64, high: i64| sample(t, 1, vec![partition(0, 0, high, Some(high))]);
    estimator.observe(at(0.0, 0));
    assert_eq!(estimator.observe(at(10.0, 100)).arrival_rate, 10.0);
    assert_eq!(
        estimator.observe(at(20.0, 1100)).arrival_rate,
        100.0,
        "a surge at once"
    );
    assert_eq!(
        estimator.observe(at(30.0, 1100)).arrival_rate,
        50.0,
        "a lull by halves"
    );
}

#[test]
fn time_lag_interpolates_when_the_oldest_message_arrived() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    estimator.observe(sample(0.0, 1, vec![partition(0, 0, 0, Some(0))]));
    estimator.observe(sample(10.0, 1, vec![partition(0, 0, 100, Some(0))]));
    let observation = estimator.observe(sample(20.0, 1, vec![partition(0, 0, 100, Some(50))]));
    // Offset 50 arrived when the watermark passed 51: at 5.1 s.
    assert!(
        (observation.time_lag_seconds - 14.9).abs() < 1e-9,
        "{}",
        observation.time_lag_seconds
    );
}

#[test]
fn a_partition_without_progress_that_no_member_holds_becomes_stuck_and_leaves_the_lag() {
    let mut estimator = Estimator::new(EstimatorConfig {
        stuck_after_seconds: 3.0,
        ..EstimatorConfig::default()
    });
    let mut observation = None;
    for poll in 0..5 {
        let at = f64::from(poll);
        observation = Some(estimator.observe(holding(
            &[1],
            sample(
                at,
                1,
                vec![
                    partition(0, 0, 100, Some(10)),
                    partition(
                        1,
                        0,
                        100 + i64::from(poll) * 10,
                        Some(100 + i64::from(poll) * 10 - 5),
                    ),
                ],
            ),
        )));
    }
    let observation = observation.unwrap();
    assert_eq!(estimator.stuck_partitions(), [0]);
    assert!(estimator.slow_partitions().is_empty());
    assert_eq!(observation.stuck_lag, 90);
    assert_eq!(observation.lag, 5);
}

/// A member that heartbeats and holds the partition is working on a long
/// job: its partition is slow, and its lag stays demand.
#[test]
fn a_partition_without_progress_that_a_live_member_holds_is_slow_and_its_lag_counts() {
    let mut estimator = Estimator::new(EstimatorConfig {
        stuck_after_seconds: 3.0,
        ..EstimatorConfig::default()
    });
    let mut observation = None;
    for poll in 0..5 {
        observation = Some(estimator.observe(holding(
            &[0],
            sample(f64::from(poll), 1, vec![partition(0, 0, 100, Some(10))]),
        )));
    }
    let observation = observation.unwrap();
    assert_eq!(estimator.slow_partitions(), [0]);
    assert!(estimator.stuck_partitions().is_empty());
    assert_eq!(observation.lag, 90);
    assert_eq!(observation.stuck_lag, 0);
    // An unreadable assignment counts as held while the group has members.
    let mut unknown = Estimator::new(EstimatorConfig {
        stuck_after_seconds: 3.0,
        ..EstimatorConfig::default()
    });
    for poll in 0..5 {
        unknown.observe(sample(
            f64::from(poll),
            1,
            vec![partition(0, 0, 100, Some(10))],
        ));
    }
    assert_eq!(unknown.slow_partitions(), [0]);
}

/// Kafka away for longer than the stuck bound: the workers could not
/// commit, which says nothing about them. The first sample after the gap
/// says it follows one, no partition is stuck because of it, and no rate
/// spans it.
#[test]
fn a_measurement_gap_restarts_the_no_progress_clocks_and_the_rates() {
    let mut estimator = Estimator::new(EstimatorConfig {
        stuck_after_seconds: 60.0,
        ..EstimatorConfig::default()
    });
    let before = estimator.observe(holding(
        &[],
        sample(0.0, 1, vec![partition(0, 0, 100, Some(10))]),
    ));
    assert!(!before.after_gap);
    for _ in 0..20 {
        estimator.measurement_failed();
    }
    let after = estimator.observe(holding(
        &[],
        sample(120.0, 1, vec![partition(0, 0, 100, Some(10))]),
    ));
    assert!(after.after_gap);
    assert!(estimator.stuck_partitions().is_empty());
    assert_eq!(after.lag, 90);
    assert_eq!(estimator.processing_rate(), 0.0, "no rate across the gap");
    let next = estimator.observe(holding(
        &[],
        sample(125.0, 1, vec![partition(0, 0, 100, Some(10))]),
    ));
    assert!(!next.after_gap, "only the first observation after the gap");
}

#[test]
fn quick_polls_do_not_make_a_partition_stuck_sooner() {
    let mut estimator = Estimator::new(EstimatorConfig {
        stuck_after_seconds: 60.0,
        ..EstimatorConfig::default()
    });
    for poll in 0..30 {
        estimator.observe(holding(
            &[],
            sample(f64::from(poll), 1, vec![partition(0, 0, 100, Some(10))]),
        ));
    }
    assert!(estimator.stuck_partitions().is_empty(), "30 polls in 29 s");
    estimator.observe(holding(
        &[],
        sample(60.0, 1, vec![partition(0, 0, 100, Some(10))]),
    ));
    assert_eq!(estimator.stuck_partitions(), [0], "60 s without progress");
}

#[test]
fn a_surge_shows_in_the_end_offsets_before_the_next_poll() {
    let mut estimator = Estimator::new(EstimatorConfig::default());
    // 50/s arrive; two members process 25/s each with a steady backlog.
    let busy = |t: f64, high: i64, committed: i64| {
        sample(
            t,
            2,
            vec![
                partition(0, 0, high / 2, Some(committed / 2)),
                partition(1, 0, high / 2, Some(committed / 2)),
            ],
        )
    };
    estimator.observe(busy(0.0, 0, 0));
    estimator.observe(busy(5.0, 250, 150));
    let known = estimator.observe(busy(10.0, 500, 400));
    assert_eq!(known.arrival_rate, 50.0);
    assert_eq!(known.per_replica_rate, Some(20.0));
    assert!(
        !estimator.clone().surging(11.0, 580, 6),
        "80/s: more than known, but 6 replicas process 120/s"
    );
    assert!(
        estimator.clone().surging(11.0, 580, 2),
        "80/s: beyond 1.5 × 50/s and beyond 2 × 20/s"
    );
    assert!(
        !estimator.surging(11.0, 550, 2),
        "50/s: the rate already known"
    );
    assert!(
        estimator.surging(12.0, 1050, 2),
        "500/s in the last second, though 275/s since the poll"
    );
    let surge = estimator.observe(busy(12.5, 1300, 440));
    assert_eq!(
        surge.arrival_rate, 500.0,
        "taken at once, and from the end: 750 since the 11 s reading"
    );
    assert!(
        !estimator.surging(13.5, 1800, 2),
        "the same 500/s again is no new surge"
    );
    assert!(
        !Estimator::new(EstimatorConfig::default()).surging(1.0, 1000, 0),
        "no sample yet: the first poll measures"
    );
}

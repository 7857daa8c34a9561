//! The scaling loop's own rules, without Kafka: a channel that cannot be
//! measured holds its target, and a failed measurement silences the surge
//! check until one works. Samples go to the loop's decision step directly;
//! the probe is measured end to end (`tests/tests/autoscale_local.rs`).

use std::convert::Infallible;

use super::*;
use crate::estimate::PartitionSample;

/// A target that runs what it is told and remembers each request.
#[derive(Default)]
struct Recorded {
    running: u32,
    requests: Vec<u32>,
}

impl Target for Recorded {
    type Error = Infallible;

    fn replicas(&mut self) -> u32 {
        self.running
    }

    async fn scale_to(&mut self, replicas: u32) -> Result<(), Infallible> {
        self.requests.push(replicas);
        self.running = replicas;
        Ok(())
    }
}

/// A loop whose Kafka client could not be created.
fn unmeasurable() -> ScalingLoop {
    ScalingLoop::new(
        None,
        Err(MeasureError::NoTopic("orders".into())),
        EstimatorConfig::default(),
    )
}

/// One partition: `high` messages arrived, `committed` processed.
fn sample(at: f64, high: i64, committed: i64) -> Sample {
    Sample {
        at,
        partitions: vec![PartitionSample {
            partition: 0,
            log_start: 0,
            high_watermark: high,
            committed: Some(committed),
        }],
        rebalancing: false,
        members: 2,
        held: None,
    }
}

#[tokio::test]
async fn a_channel_that_cannot_be_measured_holds_its_target() {
    let scaling = unmeasurable();
    assert!(!scaling.can_measure());
    let mut target = Recorded {
        running: 3,
        ..Recorded::default()
    };
    let spec = ScalerSpec {
        min_replicas: 5,
        ..ScalerSpec::default()
    };
    let turn = scaling.turn(&mut target, &spec, 0.0, true).await.unwrap();
    let error = turn.observation.unwrap_err().to_string();
    assert_eq!(
        error,
        "cannot create the Kafka client: topic \"orders\" not found"
    );
    assert_eq!(turn.current, 3);
    assert_eq!(turn.decision.replicas, 3, "{:?}", turn.decision);
    assert!(!turn.scaled);
    assert!(target.requests.is_empty(), "even below minReplicas");
}

#[test]
fn a_failed_measurement_silences_the_surge_check_until_one_works() {
    let scaling = unmeasurable();
    let spec = ScalerSpec::default();
    scaling.decide(&spec, Ok(sample(0.0, 0, 0)), 1, 0.0);
    scaling.decide(&spec, Ok(sample(10.0, 500, 500)), 1, 10.0);
    assert!(
        scaling.surging(11.0, 1000, 1),
        "500/s after 50/s, nothing known of the capacity"
    );
    let failed = MeasurementError::Sample(MeasureError::NoOffset(0));
    scaling.decide(&spec, Err(failed), 1, 12.0);
    assert!(
        !scaling.surging(13.0, 2000, 1),
        "surges wait for a measurement that works"
    );
    scaling.decide(&spec, Ok(sample(14.0, 2000, 2000)), 1, 14.0);
    assert!(scaling.surging(15.0, 4000, 1), "2000/s after 375/s");
}

/// A Kafka outage longer than the stuck bound: the loop holds through the
/// failed measurements and on the first one after them, even though the
/// committed offset has not moved for longer than the bound; the next
/// measurement decides as usual.
#[test]
fn after_an_outage_the_loop_holds_before_it_decides_again() {
    let scaling = unmeasurable();
    let spec = ScalerSpec {
        min_replicas: 0,
        idle_seconds: 0.0,
        allow_more_replicas_than_partitions: true,
        scale_down: crate::policy::Behavior {
            stabilization_seconds: 0.0,
            policies: Vec::new(),
            select: crate::policy::Select::Max,
        },
        ..ScalerSpec::default()
    };
    let busy = scaling.decide(&spec, Ok(sample(0.0, 1_000, 100)), 4, 0.0);
    assert_eq!(busy.decision.replicas, 9, "{:?}", busy.decision);
    for at in [30.0, 60.0, 90.0] {
        let failed = MeasurementError::Sample(MeasureError::NoOffset(0));
        let turn = scaling.decide(&spec, Err(failed), 9, at);
        assert_eq!(turn.decision.replicas, 9);
    }
    // Back after 120 s; nothing committed meanwhile, and the backlog is gone
    // elsewhere (say, retention): no scale-down on this one observation.
    let after = scaling.decide(&spec, Ok(sample(120.0, 1_000, 1_000)), 9, 120.0);
    assert_eq!(after.decision.replicas, 9, "{:?}", after.decision);
    assert!(after.stuck_partitions.is_empty() && after.slow_partitions.is_empty());
    let next = scaling.decide(&spec, Ok(sample(125.0, 1_000, 1_000)), 9, 125.0);
    assert!(next.decision.replicas < 9, "{:?}", next.decision);
}

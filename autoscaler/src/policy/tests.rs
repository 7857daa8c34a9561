//! The policy's unit tests, roughly in the order of its rules: demand,
//! partitions, bounds, holds, idle and activation, behaviour.

use super::*;

fn observed(lag: u64) -> Observation {
    Observation {
        lag,
        stuck_lag: 0,
        arrival_rate: 0.0,
        per_replica_rate: None,
        time_lag_seconds: 0.0,
        partitions: 64,
        rebalancing: false,
        after_gap: false,
    }
}

fn spec() -> ScalerSpec {
    ScalerSpec {
        max_replicas: 100,
        lag_per_replica: 2500,
        scale_down: Behavior {
            stabilization_seconds: 0.0,
            policies: Vec::new(),
            select: Select::Max,
        },
        ..ScalerSpec::default()
    }
}

fn once(spec: &ScalerSpec, observation: &Observation, current: u32) -> Decision {
    decide(
        spec,
        Some(observation),
        &mut PolicyState::default(),
        current,
        0.0,
    )
}

#[test]
fn backlog_sizes_like_keda_lag_threshold() {
    let twelve = Observation {
        partitions: 12,
        ..observed(12_000)
    };
    let decision = once(&spec(), &twelve, 2);
    // ceil(12000 / 2500) = 5, but 5 replicas of 12 partitions leave one
    // with 3, like 4 do: 6 is the next count that helps.
    assert_eq!(decision.replicas, 6);
    assert_eq!(decision.reason, "lag 12000 / 2500 per replica: 2 → 6");
    let spread = ScalerSpec {
        allow_more_replicas_than_partitions: true,
        ..spec()
    };
    assert_eq!(once(&spread, &twelve, 2).replicas, 5);
}

#[test]
fn the_gradient_sizes_from_arrivals_drain_time_and_capacity() {
    let observation = Observation {
        arrival_rate: 100.0,
        per_replica_rate: Some(50.0),
        ..observed(3_000)
    };
    let spec = ScalerSpec {
        target_drain_seconds: 30.0,
        target_utilization: 1.0,
        allow_more_replicas_than_partitions: true,
        ..spec()
    };
    // (100/s + 3000 / 30s) / 50/s = 4, more than the backlog's 2.
    let decision = once(&spec, &observation, 1);
    assert_eq!(decision.replicas, 4);
    assert!(
        decision.reason.starts_with("arrivals 100.0/s + lag 3000"),
        "{}",
        decision.reason
    );
    // Planning 90 % of the capacity: 200 / 45 → 5.
    let headroom = ScalerSpec {
        target_utilization: 0.9,
        ..spec
    };
    assert_eq!(once(&headroom, &observation, 1).replicas, 5);
}

#[test]
fn an_unknown_capacity_leaves_the_backlog_in_charge() {
    let observation = Observation {
        arrival_rate: 1_000.0,
        ..observed(5_000)
    };
    let spec = ScalerSpec {
        allow_more_replicas_than_partitions: true,
        ..spec()
    };
    assert_eq!(once(&spec, &observation, 1).replicas, 2);
}

#[test]
fn an_old_backlog_scales_up_by_the_time_lag() {
    let spec = ScalerSpec {
        max_time_lag_seconds: Some(10.0),
        allow_more_replicas_than_partitions: true,
        ..spec()
    };
    let observation = Observation {
        time_lag_seconds: 30.0,
        ..observed(100)
    };
    let decision = once(&spec, &observation, 2);
    assert_eq!(decision.replicas, 6, "2 replicas × 30s/10s");
    assert!(decision.reason.starts_with("time lag 30.0s > 10.0s"));
    let fresh = Observation {
        time_lag_seconds: 5.0,
        ..observed(100)
    };
    assert_eq!(
        once(&spec, &fresh, 2).replicas,
        1,
        "young backlog: backlog rule"
    );
}

#[test]
fn efficient_counts_lower_the_partitions_per_replica() {
    assert_eq!(efficient_counts(12), [1, 2, 3, 4, 6, 12]);
    assert_eq!(efficient_counts(7), [1, 2, 3, 4, 7]);
    assert_eq!(efficient_counts(1), [1]);
    assert_eq!(quantize(5, 12), 6);
    assert_eq!(quantize(7, 12), 12);
    assert_eq!(quantize(0, 12), 0);
}

#[test]
fn demand_near_the_partition_count_reaches_it_exactly() {
    let twelve = Observation {
        partitions: 12,
        ..observed(0)
    };
    for (lag, expected) in [
        (11 * 2500, 12),
        (12 * 2500, 12),
        (7 * 2500, 12),
        (6 * 2500, 6),
    ] {
        let observation = Observation {
            lag,
            ..twelve.clone()
        };
        assert_eq!(
            once(&spec(), &observation, 1).replicas,
            expected,
            "lag {lag}"
        );
    }
    let beyond = Observation {
        lag: 40 * 2500,
        ..twelve
    };
    let decision = once(&spec(), &beyond, 1);
    assert_eq!(decision.replicas, 12);
    assert_eq!(decision.limited_by, Some(Limit::Partitions));
}

#[test]
fn min_and_max_bound_the_demand() {
    let bounded = ScalerSpec {
        min_replicas: 2,
        max_replicas: 4,
        ..spec()
    };
    let decision = once(&bounded, &observed(100 * 2500), 3);
    assert_eq!(
        (decision.replicas, decision.limited_by),
        (4, Some(Limit::MaxReplicas))
    );
    let decision = once(&bounded, &observed(0), 3);
    assert_eq!(decision.replicas, 2);
}

#[test]
fn a_failed_measurement_or_a_rebalance_holds() {
    let mut state = PolicyState::default();
    let decision = decide(&spec(), None, &mut state, 5, 0.0);
    assert_eq!(
        (decision.replicas, decision.limited_by),
        (5, Some(Limit::Held))
    );
    let rebalancing = Observation {
        rebalancing: true,
        ..observed(0)
    };
    let decision = decide(&spec(), Some(&rebalancing), &mut state, 5, 1.0);
    assert_eq!(
        decision.replicas, 5,
        "no scale-down from mid-rebalance samples"
    );
}

#[test]
fn stuck_partitions_are_reported_not_chased() {
    let observation = Observation {
        stuck_lag: 50_000,
        ..observed(2_500)
    };
    let decision = once(&spec(), &observation, 1);
    assert_eq!(decision.replicas, 1);
    assert!(
        decision
            .reason
            .contains("stuck partitions' lag 50000 left out")
    );
}

/// Every partition stuck leaves no lag to scale on, yet the backlog is
/// there: idle time never takes the group to zero.
#[test]
fn a_backlog_of_stuck_partitions_is_never_scaled_to_zero() {
    let spec = ScalerSpec {
        min_replicas: 0,
        idle_seconds: 10.0,
        scale_down: Behavior {
            stabilization_seconds: 0.0,
            policies: Vec::new(),
            select: Select::Max,
        },
        ..spec()
    };
    let all_stuck = Observation {
        stuck_lag: 500,
        ..observed(0)
    };
    let mut state = PolicyState::default();
    let mut replicas = 3;
    for now in 0..100 {
        replicas = decide(
            &spec,
            Some(&all_stuck),
            &mut state,
            replicas,
            f64::from(now),
        )
        .replicas;
        assert!(
            replicas >= 1,
            "scaled to zero at {now} s with a stuck backlog"
        );
    }
    assert_eq!(replicas, 1, "down to one replica, not below");
}

/// The first observation after failed measurements never scales down; it
/// may scale up, and the next one decides as usual.
#[test]
fn no_scale_down_on_the_first_observation_after_a_measurement_gap() {
    let spec = ScalerSpec {
        idle_seconds: 0.0,
        scale_down: Behavior {
            stabilization_seconds: 0.0,
            policies: Vec::new(),
            select: Select::Max,
        },
        ..spec()
    };
    let mut state = PolicyState::default();
    let gap = Observation {
        after_gap: true,
        ..observed(0)
    };
    let decision = decide(&spec, Some(&gap), &mut state, 4, 100.0);
    assert_eq!(decision.replicas, 4, "{}", decision.reason);
    assert_eq!(decision.limited_by, Some(Limit::Held));
    assert!(
        decision.reason.contains("after a gap"),
        "{}",
        decision.reason
    );
    let busy_after_gap = Observation {
        after_gap: true,
        ..observed(20_000)
    };
    let up = decide(&spec, Some(&busy_after_gap), &mut state, 4, 101.0);
    assert!(up.replicas > 4, "scale-up stays allowed: {}", up.reason);
    let next = decide(&spec, Some(&observed(0)), &mut state, 4, 102.0);
    assert!(next.replicas < 4, "{}", next.reason);
}

#[test]
fn scale_to_zero_waits_for_idle_and_activation_waits_for_lag() {
    let spec = ScalerSpec {
        idle_seconds: 60.0,
        activation_lag: 10,
        ..spec()
    };
    let mut state = PolicyState::default();
    let busy = observed(100);
    assert_eq!(decide(&spec, Some(&busy), &mut state, 1, 0.0).replicas, 1);
    let idle = observed(0);
    assert_eq!(
        decide(&spec, Some(&idle), &mut state, 1, 30.0).replicas,
        1,
        "not idle long enough"
    );
    assert_eq!(
        decide(&spec, Some(&idle), &mut state, 1, 61.0).replicas,
        0,
        "idle: to zero"
    );
    assert_eq!(
        decide(&spec, Some(&observed(10)), &mut state, 0, 62.0).replicas,
        0,
        "below activation"
    );
    let decision = decide(&spec, Some(&observed(11)), &mut state, 0, 63.0);
    assert_eq!(decision.replicas, 1, "activated");
    assert_eq!(decision.reason, "lag 11 / 2500 per replica: 0 → 1");
}

#[test]
fn scale_down_waits_for_its_stabilization_window() {
    let spec = ScalerSpec {
        allow_more_replicas_than_partitions: true,
        scale_down: Behavior {
            stabilization_seconds: 60.0,
            policies: Vec::new(),
            select: Select::Max,
        },
        ..spec()
    };
    let mut state = PolicyState::default();
    assert_eq!(
        decide(&spec, Some(&observed(10 * 2500)), &mut state, 1, 0.0).replicas,
        10
    );
    let drained = observed(2500);
    let decision = decide(&spec, Some(&drained), &mut state, 10, 30.0);
    assert_eq!(
        (decision.replicas, decision.limited_by),
        (10, Some(Limit::Stabilization))
    );
    assert_eq!(
        decide(&spec, Some(&drained), &mut state, 10, 61.0).replicas,
        1
    );
    // Scale-up is not held back by the scale-down window.
    assert_eq!(
        decide(&spec, Some(&observed(5 * 2500)), &mut state, 1, 62.0).replicas,
        5
    );
}

/// A new memory (a new leader's, after a takeover) has not seen the
/// window its predecessor was holding a scale-down in: the replicas it
/// finds count as recommended within it, so it scales down only once a
/// whole window has passed since its first decision. Without an up window
/// a scale-up is not held.
#[test]
fn a_fresh_memory_scales_down_only_after_a_whole_window() {
    let spec = ScalerSpec {
        scale_down: Behavior {
            stabilization_seconds: 60.0,
            ..spec().scale_down
        },
        ..spec()
    };
    let mut state = PolicyState::default();
    // Taken over at 1000 s, with 8 replicas running and a backlog for 1.
    for (now, expected) in [(1000.0, 8), (1059.0, 8), (1061.0, 1)] {
        let decision = decide(&spec, Some(&observed(2500)), &mut state, 8, now);
        assert_eq!(
            decision.replicas, expected,
            "at {now} s: {}",
            decision.reason
        );
    }
    let fresh = decide(
        &spec,
        Some(&observed(16 * 2500)),
        &mut PolicyState::default(),
        8,
        0.0,
    );
    assert_eq!(fresh.replicas, 16, "{}", fresh.reason);
}

#[test]
fn rate_policies_limit_each_period_from_its_start() {
    let spec = ScalerSpec {
        allow_more_replicas_than_partitions: true,
        scale_up: Behavior {
            stabilization_seconds: 0.0,
            policies: vec![
                RatePolicy::Pods {
                    value: 4,
                    period_seconds: 15.0,
                },
                RatePolicy::Percent {
                    value: 100,
                    period_seconds: 15.0,
                },
            ],
            select: Select::Max,
        },
        ..spec()
    };
    let mut state = PolicyState::default();
    let spike = observed(24 * 2500);
    let first = decide(&spec, Some(&spike), &mut state, 1, 0.0);
    assert_eq!(
        (first.replicas, first.limited_by),
        (5, Some(Limit::RatePolicy)),
        "max(1+4, 1×2)"
    );
    let same_period = decide(&spec, Some(&spike), &mut state, 5, 5.0);
    assert_eq!(same_period.replicas, 5, "the period's allowance is used up");
    let next_period = decide(&spec, Some(&spike), &mut state, 5, 16.0);
    assert_eq!(next_period.replicas, 10, "max(5+4, 5×2)");
    let disabled = ScalerSpec {
        scale_down: Behavior {
            select: Select::Disabled,
            ..spec.scale_down.clone()
        },
        ..spec.clone()
    };
    assert_eq!(once(&disabled, &observed(0), 10).replicas, 10);
}

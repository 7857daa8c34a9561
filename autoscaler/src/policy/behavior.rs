//! Rule 6 of the policy, HPA-v2-style behaviour, as rules over a
//! [`Behavior`](super::types::Behavior) per direction: a stabilisation
//! window (recommendations of the window are combined before acting) and
//! rate policies (limits per period), with what they remember in
//! [`PolicyState`]. Pure, like the rest of the policy.

use super::types::{PolicyState, RatePolicy, ScalerSpec, Select};

/// Rule 6, stabilisation: a scale-up goes only as high as the lowest
/// recommendation of its window, a scale-down only as low as the highest
/// of its window. A memory younger than a window has not seen all of it:
/// as the HPA controller does, it counts the replicas it found as a
/// recommendation of that window, so that a new leader does not undo what
/// the last one held back (scale down at once after a takeover, and up
/// again on the next backlog).
pub(super) fn stabilize(
    spec: &ScalerSpec,
    state: &mut PolicyState,
    current: u32,
    desired: u32,
    now: f64,
) -> u32 {
    let started = *state.started.get_or_insert(now);
    let unseen = |seconds: f64| (now - started < seconds).then_some(current);
    let window = spec
        .scale_up
        .stabilization_seconds
        .max(spec.scale_down.stabilization_seconds);
    state.recommendations.push_back((now, desired));
    while state
        .recommendations
        .front()
        .is_some_and(|(t, _)| now - t > window)
    {
        state.recommendations.pop_front();
    }
    // The recommendations within a direction's stabilization window.
    let within = |seconds: f64| {
        state
            .recommendations
            .iter()
            .filter(move |(t, _)| now - t <= seconds)
            .map(|(_, r)| *r)
    };
    if desired > current {
        let seconds = spec.scale_up.stabilization_seconds;
        let lowest = within(seconds).chain(unseen(seconds)).min();
        lowest.unwrap_or(desired).max(current)
    } else if desired < current {
        let seconds = spec.scale_down.stabilization_seconds;
        let highest = within(seconds).chain(unseen(seconds)).max();
        highest.unwrap_or(desired).min(current)
    } else {
        desired
    }
}

/// Rule 6, rate policies' memory: a change from `current` to `replicas` is
/// counted against the periods it falls in; older ones are forgotten.
pub(super) fn remember_scale_event(
    spec: &ScalerSpec,
    state: &mut PolicyState,
    current: u32,
    replicas: u32,
    now: f64,
) {
    if replicas != current {
        state
            .scale_events
            .push_back((now, i64::from(replicas) - i64::from(current)));
    }
    let longest_period = spec
        .scale_up
        .policies
        .iter()
        .chain(&spec.scale_down.policies)
        .map(|p| match p {
            RatePolicy::Pods { period_seconds, .. }
            | RatePolicy::Percent { period_seconds, .. } => *period_seconds,
        })
        .fold(0.0, f64::max);
    while state
        .scale_events
        .front()
        .is_some_and(|(t, _)| now - t > longest_period)
    {
        state.scale_events.pop_front();
    }
}

/// A rate policy's allowance per period.
enum Step {
    Pods(u32),
    Percent(u32),
}

/// Applies the rate policies of the direction of change (HPA v2: limits
/// count from the replicas at the start of each policy's period).
pub(super) fn rate_limit(
    spec: &ScalerSpec,
    state: &PolicyState,
    current: u32,
    target: u32,
    now: f64,
) -> u32 {
    let up = target > current;
    let behavior = if up { &spec.scale_up } else { &spec.scale_down };
    if target == current {
        return current;
    }
    if behavior.select == Select::Disabled {
        return current;
    }
    if behavior.policies.is_empty() {
        return target;
    }
    let bounds = behavior.policies.iter().map(|policy| {
        let (period, step_of) = match *policy {
            RatePolicy::Pods {
                value,
                period_seconds,
            } => (period_seconds, Step::Pods(value)),
            RatePolicy::Percent {
                value,
                period_seconds,
            } => (period_seconds, Step::Percent(value)),
        };
        let changed_in_period: i64 = state
            .scale_events
            .iter()
            .filter(|(t, _)| now - t < period)
            .map(|(_, delta)| *delta)
            .sum();
        let start = (i64::from(current) - changed_in_period).max(0) as f64;
        let step = match step_of {
            Step::Pods(value) => f64::from(value),
            Step::Percent(value) => (start * f64::from(value) / 100.0).ceil(),
        };
        if up {
            // From zero a percentage allows nothing: allow one replica.
            (start + step.max(1.0)) as u32
        } else {
            (start - step).max(0.0) as u32
        }
    });
    let bound = match (behavior.select, up) {
        (Select::Max, true) | (Select::Min, false) => bounds.max(),
        (Select::Min, true) | (Select::Max, false) => bounds.min(),
        (Select::Disabled, _) => unreachable!("handled above"),
    }
    .unwrap_or(target);
    if up {
        target.min(bound)
    } else {
        target.max(bound)
    }
}

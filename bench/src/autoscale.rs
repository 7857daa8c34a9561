//! Autoscaling policy simulation: a deterministic discrete-time model of a
//! channel (per-partition arrivals, per-replica capacity, pod start delay,
//! rebalance pauses of the partitions that move) driven by three scalers:
//!
//! - **Osmosis**: the same estimator and policy code the autoscaler runs,
//!   fed with simulated watermarks and commits every 5 s poll, and its
//!   surge watch reading the end offsets every second in between (also
//!   shown without it, "polls only");
//! - **KEDA + HPA** with their default constants: 30 s polling, 15 s HPA
//!   sync, 10 % tolerance, scale-up of at most max(2×, +4) per 15 s, 300 s
//!   scale-down stabilisation, 300 s cooldown to zero, `lagThreshold` 10,
//!   capped at the partition count;
//! - **CPU HPA**: 80 % utilisation target with the same HPA constants;
//!   utilisation saturates at 100 % while a backlog waits, and it never
//!   scales to zero.
//!
//! Time steps are one second. Nothing here is random: the same build prints
//! the same table.

use std::collections::VecDeque;

use clap::Parser;
use osmosis_autoscaler::estimate::{Estimator, EstimatorConfig, PartitionSample, Sample};
use osmosis_autoscaler::policy::{self, PolicyState, ScalerSpec};

#[derive(Parser)]
pub struct AutoscaleArgs {
    /// Partitions of the channel.
    #[arg(long, default_value_t = 24)]
    partitions: u32,
    /// Messages per second one replica processes.
    #[arg(long, default_value_t = 50.0)]
    replica_rate: f64,
    /// Seconds from a scale-up decision to a consuming replica.
    #[arg(long, default_value_t = 10)]
    start_delay: u32,
    /// Seconds a moved partition pauses on a rebalance (cooperative).
    #[arg(long, default_value_t = 3)]
    rebalance_pause: u32,
    /// The time-lag objective, seconds.
    #[arg(long, default_value_t = 30.0)]
    slo_seconds: f64,
}

/// Arrivals (messages/s, spread over the partitions) at second `t`.
struct Trace {
    name: &'static str,
    seconds: u32,
    rate: Box<dyn Fn(u32) -> f64>,
    /// Second from which partition 0 stops being processed (a poison message).
    poison_from: Option<u32>,
    /// When the load changes, for time to capacity.
    change_at: Option<u32>,
}

/// 50 → 500/s at `at`.
fn step(at: u32) -> Trace {
    Trace {
        name: "step 50→500/s",
        seconds: 900,
        rate: Box::new(move |t| if t < at { 50.0 } else { 500.0 }),
        poison_from: None,
        change_at: Some(at),
    }
}

/// 120/s, 1200/s for two minutes from `at`, 120/s again.
fn spike(at: u32) -> Trace {
    Trace {
        name: "10× spike 120→1200/s",
        seconds: 900,
        rate: Box::new(move |t| {
            if (at..at + 120).contains(&t) {
                1200.0
            } else {
                120.0
            }
        }),
        poison_from: None,
        change_at: Some(at),
    }
}

fn traces() -> Vec<Trace> {
    vec![
        step(67),
        Trace {
            name: "ramp 50→600/s",
            seconds: 900,
            rate: Box::new(|t| 50.0 + 550.0 * (f64::from(t.min(600)) / 600.0)),
            poison_from: None,
            change_at: Some(0),
        },
        spike(127),
        Trace {
            name: "diurnal",
            seconds: 1800,
            rate: Box::new(|t| {
                275.0 - 225.0 * (f64::from(t) * std::f64::consts::TAU / 900.0).cos()
            }),
            poison_from: None,
            change_at: None,
        },
        Trace {
            name: "poison partition (its own lag left out)",
            seconds: 900,
            rate: Box::new(|_| 200.0),
            poison_from: Some(60),
            change_at: None,
        },
    ]
}

/// One partition's backlog: (arrival second, messages) chunks, oldest first.
#[derive(Default, Clone)]
struct Partition {
    backlog: VecDeque<(u32, f64)>,
    arrived: f64,
    processed: f64,
    paused_until: u32,
}

impl Partition {
    fn lag(&self) -> f64 {
        self.backlog.iter().map(|(_, n)| n).sum()
    }

    fn take(&mut self, mut budget: f64) -> f64 {
        let mut taken = 0.0;
        while budget > 1e-9 {
            let Some(front) = self.backlog.front_mut() else {
                break;
            };
            let n = front.1.min(budget);
            front.1 -= n;
            budget -= n;
            taken += n;
            if front.1 <= 1e-9 {
                self.backlog.pop_front();
            }
        }
        self.processed += taken;
        taken
    }
}

/// What a scaler sees and decides.
trait Scaler {
    /// Called every second; returns the desired replica count.
    fn tick(&mut self, t: u32, world: &World) -> u32;
}

/// The simulated channel and its workers.
struct World {
    partitions: Vec<Partition>,
    /// Seconds at which each requested replica becomes active.
    starting: Vec<u32>,
    active: u32,
    replica_rate: f64,
    rebalance_pause: u32,
    rebalances: u32,
    /// Arrivals per second at the last step.
    rate: f64,
}

impl World {
    fn new(partitions: u32, replica_rate: f64, rebalance_pause: u32) -> Self {
        Self {
            partitions: vec![Partition::default(); partitions as usize],
            starting: Vec::new(),
            active: 0,
            replica_rate,
            rebalance_pause,
            rebalances: 0,
            rate: 0.0,
        }
    }

    fn lag(&self) -> f64 {
        self.partitions.iter().map(Partition::lag).sum()
    }

    /// Age of the oldest waiting message, the poisoned partition left out:
    /// no scaler can help it, and it would hide what they do for the rest.
    fn time_lag(&self, t: u32, poisoned: bool) -> f64 {
        self.partitions
            .iter()
            .skip(usize::from(poisoned))
            .filter_map(|p| p.backlog.front().map(|(at, _)| f64::from(t - at)))
            .fold(0.0, f64::max)
    }

    /// Replicas asked for: active plus starting.
    fn requested(&self) -> u32 {
        self.active + self.starting.len() as u32
    }

    fn set_desired(&mut self, t: u32, desired: u32, start_delay: u32) {
        let requested = self.requested();
        if desired > requested {
            self.starting.extend(std::iter::repeat_n(
                t + start_delay,
                (desired - requested) as usize,
            ));
        } else if desired < requested {
            let mut remove = requested - desired;
            while remove > 0 && !self.starting.is_empty() {
                self.starting.pop();
                remove -= 1;
            }
            if remove > 0 {
                let before = self.active;
                self.active -= remove.min(self.active);
                self.rebalance(t, before);
            }
        }
    }

    /// Partitions whose owner changes pause (cooperative rebalancing).
    fn rebalance(&mut self, t: u32, before: u32) {
        if before == self.active {
            return;
        }
        self.rebalances += 1;
        for (p, partition) in self.partitions.iter_mut().enumerate() {
            let owner = |n: u32| if n == 0 { u32::MAX } else { p as u32 % n };
            if owner(before) != owner(self.active) {
                partition.paused_until = t + self.rebalance_pause;
            }
        }
    }

    fn step(&mut self, t: u32, rate: f64, poison_from: Option<u32>) {
        self.rate = rate;
        // Replicas whose pods are ready join the group.
        let ready = self.starting.iter().filter(|at| **at <= t).count() as u32;
        if ready > 0 {
            self.starting.retain(|at| *at > t);
            let before = self.active;
            self.active += ready;
            self.rebalance(t, before);
        }
        let count = self.partitions.len();
        for partition in &mut self.partitions {
            let n = rate / count as f64;
            partition.arrived += n;
            partition.backlog.push_back((t, n));
        }
        if self.active == 0 {
            return;
        }
        // Each replica spends its capacity on its partitions with work.
        for replica in 0..self.active {
            let mut budget = self.replica_rate;
            let mine: Vec<usize> = (0..count)
                .filter(|p| *p as u32 % self.active == replica)
                .filter(|p| self.partitions[*p].paused_until <= t)
                .filter(|p| !(poison_from.is_some_and(|from| t >= from) && *p == 0))
                .collect();
            for _ in 0..3 {
                let with_work: Vec<usize> = mine
                    .iter()
                    .copied()
                    .filter(|p| self.partitions[*p].lag() > 1e-9)
                    .collect();
                if with_work.is_empty() || budget <= 1e-9 {
                    break;
                }
                let share = budget / with_work.len() as f64;
                for p in with_work {
                    budget -= self.partitions[p].take(share);
                }
            }
        }
    }

    /// The sum of the high watermarks, as the surge watch reads it.
    fn arrived(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.arrived.floor() as i64)
            .sum()
    }

    fn sample(&self, t: u32) -> Sample {
        Sample {
            at: f64::from(t),
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionSample {
                    partition: i as i32,
                    log_start: 0,
                    high_watermark: p.arrived.floor() as i64,
                    committed: Some(p.processed.floor() as i64),
                })
                .collect(),
            rebalancing: self.partitions.iter().any(|p| p.paused_until > t),
            members: self.active,
            // The simulation has no assignment: every partition counts as held.
            held: None,
        }
    }
}

/// Osmosis: the estimator and policy of `osmosis-autoscaler`.
struct Osmosis {
    spec: ScalerSpec,
    estimator: Estimator,
    state: PolicyState,
    poll: u32,
    surge_watch: bool,
    desired: u32,
}

impl Scaler for Osmosis {
    fn tick(&mut self, t: u32, world: &World) -> u32 {
        // The surge watch: the end offsets every second between polls.
        let surge = self.surge_watch
            && self
                .estimator
                .surging(f64::from(t), world.arrived(), world.requested());
        if t.is_multiple_of(self.poll) || surge {
            let observation = self.estimator.observe(world.sample(t));
            let decision = policy::decide(
                &self.spec,
                Some(&observation),
                &mut self.state,
                world.requested(),
                f64::from(t),
            );
            self.desired = decision.replicas;
        }
        self.desired
    }
}

/// The HPA's part shared by the KEDA and CPU models.
struct Hpa {
    desired: u32,
    /// (second, recommendation) for the 300 s scale-down window.
    recommendations: VecDeque<(u32, u32)>,
    min: u32,
    max: u32,
}

impl Hpa {
    /// One HPA sync: `ratio` = metric / target (per replica).
    fn sync(&mut self, t: u32, current: u32, ratio: f64) -> u32 {
        let mut recommendation = if (ratio - 1.0).abs() <= 0.1 {
            current
        } else {
            (f64::from(current) * ratio).ceil() as u32
        };
        recommendation = recommendation.clamp(self.min, self.max);
        self.recommendations.push_back((t, recommendation));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| t - at > 300)
        {
            self.recommendations.pop_front();
        }
        let desired = if recommendation > current {
            recommendation.min((current * 2).max(current + 4))
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommendation);
            highest.min(current)
        };
        self.desired = desired;
        desired
    }
}

/// KEDA's Kafka scaler (lag, 30 s polls) behind the HPA (15 s syncs).
struct Keda {
    hpa: Hpa,
    lag_threshold: f64,
    metric: f64,
    last_active: u32,
    cooldown: u32,
}

impl Scaler for Keda {
    fn tick(&mut self, t: u32, world: &World) -> u32 {
        if t.is_multiple_of(30) {
            self.metric = world.lag();
            if self.metric > 0.0 {
                self.last_active = t;
            }
        }
        let current = world.requested();
        if current == 0 {
            // KEDA itself activates 0 → 1 at a poll with lag.
            if t.is_multiple_of(30) && self.metric > 0.0 {
                self.hpa.desired = 1;
            }
            return self.hpa.desired;
        }
        if t.is_multiple_of(30) && t - self.last_active >= self.cooldown {
            self.hpa.desired = 0;
            return 0;
        }
        if t.is_multiple_of(15) {
            let per_replica = self.metric / f64::from(current);
            self.hpa.sync(t, current, per_replica / self.lag_threshold);
        }
        self.hpa.desired
    }
}

/// CPU-utilisation HPA: 80 % target, utilisation saturating at 100 %.
struct CpuHpa {
    hpa: Hpa,
    replica_rate: f64,
}

impl Scaler for CpuHpa {
    fn tick(&mut self, t: u32, world: &World) -> u32 {
        if t.is_multiple_of(15) && world.active > 0 {
            let demand = if world.lag() > 1.0 {
                f64::from(world.active) * self.replica_rate
            } else {
                world.rate
            };
            let utilisation = (demand / (f64::from(world.active) * self.replica_rate)).min(1.0);
            self.hpa.sync(t, world.requested(), utilisation / 0.8);
        }
        self.hpa.desired.max(1)
    }
}

/// What one scaler did on one trace.
struct Outcome {
    time_to_capacity: Option<u32>,
    p50: f64,
    p99: f64,
    slo_violation: u32,
    replica_seconds: u64,
    scale_events: u32,
    direction_changes: u32,
    rebalances: u32,
}

fn simulate(args: &AutoscaleArgs, trace: &Trace, scaler: &mut dyn Scaler, initial: u32) -> Outcome {
    let mut world = World::new(args.partitions, args.replica_rate, args.rebalance_pause);
    world.active = initial;
    let mut time_lags = Vec::with_capacity(trace.seconds as usize);
    let mut slo_violation = 0;
    let mut replica_seconds = 0u64;
    let mut scale_events = 0;
    let mut direction_changes = 0;
    let mut last_direction = 0i8;
    let mut previous = world.requested();
    let mut time_to_capacity = None;
    for t in 0..trace.seconds {
        let rate = (trace.rate)(t);
        world.step(t, rate, trace.poison_from);
        let desired = scaler.tick(t, &world);
        if desired != previous {
            scale_events += 1;
            let direction = if desired > previous { 1 } else { -1 };
            if last_direction != 0 && direction != last_direction {
                direction_changes += 1;
            }
            last_direction = direction;
        }
        world.set_desired(t, desired, args.start_delay);
        previous = world.requested();
        replica_seconds += u64::from(world.requested());
        let time_lag = world.time_lag(t, trace.poison_from.is_some());
        time_lags.push(time_lag);
        if time_lag > args.slo_seconds {
            slo_violation += 1;
        }
        if let (Some(change), None) = (trace.change_at, time_to_capacity) {
            let peak = (0..trace.seconds)
                .map(|s| (trace.rate)(s))
                .fold(0.0, f64::max);
            let needed = ((peak / args.replica_rate).ceil() as u32).min(args.partitions);
            if t >= change && world.active >= needed {
                time_to_capacity = Some(t - change);
            }
        }
    }
    time_lags.sort_by(f64::total_cmp);
    let at = |q: f64| time_lags[((time_lags.len() - 1) as f64 * q) as usize];
    Outcome {
        time_to_capacity,
        p50: at(0.5),
        p99: at(0.99),
        slo_violation,
        replica_seconds,
        scale_events,
        direction_changes,
        rebalances: world.rebalances,
    }
}

fn osmosis(args: &AutoscaleArgs, surge_watch: bool) -> Osmosis {
    let drain = args.slo_seconds;
    Osmosis {
        spec: ScalerSpec {
            min_replicas: 0,
            max_replicas: args.partitions,
            lag_per_replica: (drain * args.replica_rate) as u64,
            activation_lag: 0,
            target_drain_seconds: drain / 2.0,
            max_time_lag_seconds: Some(args.slo_seconds / 2.0),
            idle_seconds: 120.0,
            // The autoscaler's own defaults for utilisation and behaviour.
            ..ScalerSpec::default()
        },
        estimator: Estimator::new(EstimatorConfig::default()),
        state: PolicyState::default(),
        poll: 5,
        surge_watch,
        desired: 0,
    }
}

fn hpa(min: u32, max: u32) -> Hpa {
    Hpa {
        desired: min,
        recommendations: VecDeque::new(),
        min,
        max,
    }
}

/// Replicas when a trace starts.
const INITIAL_REPLICAS: u32 = 1;

/// The scalers compared, fresh.
fn scalers(args: &AutoscaleArgs) -> Vec<(&'static str, Box<dyn Scaler>)> {
    vec![
        ("Osmosis", Box::new(osmosis(args, true))),
        ("Osmosis, polls only", Box::new(osmosis(args, false))),
        (
            "KEDA + HPA",
            Box::new(Keda {
                hpa: hpa(1, args.partitions),
                lag_threshold: 10.0,
                metric: 0.0,
                last_active: 0,
                cooldown: 300,
            }),
        ),
        (
            "CPU HPA",
            Box::new(CpuHpa {
                hpa: hpa(1, args.partitions),
                replica_rate: args.replica_rate,
            }),
        ),
    ]
}

pub fn run(args: AutoscaleArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!(
        "## Autoscaling simulation: {} partitions, {}/s per replica, {} s pod start, {} s rebalance pause, SLO: time lag ≤ {} s\n",
        args.partitions,
        args.replica_rate,
        args.start_delay,
        args.rebalance_pause,
        args.slo_seconds
    );
    println!("`{command}`\n");
    println!(
        "| trace | scaler | time to capacity s | p50 time lag s | p99 time lag s | SLO violation s | replica-seconds | scale events | direction changes | rebalances |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for trace in traces() {
        for (name, mut scaler) in scalers(&args) {
            let outcome = simulate(&args, &trace, scaler.as_mut(), INITIAL_REPLICAS);
            println!(
                "| {} | {name} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                trace.name,
                outcome
                    .time_to_capacity
                    .map_or_else(|| "—".to_owned(), |s| s.to_string()),
                outcome.p50,
                outcome.p99,
                outcome.slo_violation,
                outcome.replica_seconds,
                outcome.scale_events,
                outcome.direction_changes,
                outcome.rebalances,
            );
        }
    }
    phase_sweep(&args);
    Ok(())
}

/// Time to capacity depends on where a change falls in each scaler's poll
/// and sync cycles: the same change shifted over 30 s (KEDA's poll period,
/// two HPA syncs, six Osmosis polls), one second at a time.
fn phase_sweep(args: &AutoscaleArgs) {
    println!("\n### Time to capacity over the phase of the change (shifted 0–29 s)\n");
    println!("| trace | scaler | min s | mean s | max s | mean ÷ KEDA's mean |");
    println!("|---|---|---:|---:|---:|---:|");
    for (trace, first) in [(step as fn(u32) -> Trace, 60), (spike, 120)] {
        let names: Vec<&str> = scalers(args).iter().map(|(name, _)| *name).collect();
        let mut times: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
        for at in first..first + 30 {
            let shifted = trace(at);
            for (i, (_, mut scaler)) in scalers(args).into_iter().enumerate() {
                let outcome = simulate(args, &shifted, scaler.as_mut(), INITIAL_REPLICAS);
                times[i].push(outcome.time_to_capacity.unwrap_or(shifted.seconds));
            }
        }
        let mean = |t: &[u32]| f64::from(t.iter().sum::<u32>()) / t.len() as f64;
        let keda = names
            .iter()
            .position(|n| *n == "KEDA + HPA")
            .map_or(f64::NAN, |i| mean(&times[i]));
        for (name, t) in names.iter().zip(&times) {
            println!(
                "| {} | {name} | {} | {:.1} | {} | {:.3} |",
                trace(first).name,
                t.iter().min().unwrap_or(&0),
                mean(t),
                t.iter().max().unwrap_or(&0),
                mean(t) / keda,
            );
        }
    }
}

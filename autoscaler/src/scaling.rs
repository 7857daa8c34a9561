//! The scaling loop, written once for every target: measure the channel
//! (the [`Probe`], in a blocking task), estimate, decide, and scale a
//! [`Target`] — the Kubernetes `/scale` subresource or the local
//! [`ProcessPool`](crate::pool::ProcessPool). Between polls, the surge
//! check reads the channel's end offsets and says whether the next turn
//! should come at once.
//!
//! Owns what a scaler remembers between turns: the estimator, the
//! policy's windows, whether the last measurement worked. Does not own
//! when a turn runs (the controller's reconciles, or [`ScalingLoop::run`]
//! for a target without a controller), nor how a target reports (status,
//! Events and metrics belong to the controller).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::estimate::{Estimator, EstimatorConfig, Sample};
use crate::measure::{MeasureError, Probe};
use crate::policy::{self, Decision, Observation, PolicyState, ScalerSpec};

/// What the loop scales: something that runs a number of replicas.
pub trait Target {
    type Error: std::error::Error;

    /// The replicas the target runs now. The Kubernetes target reads them
    /// once per reconcile, when it is resolved; the process pool counts its
    /// live processes.
    fn replicas(&mut self) -> u32;

    /// Starts or stops replicas until `replicas` run.
    fn scale_to(&mut self, replicas: u32) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a turn has no observation; the policy then holds the last decision.
#[derive(Debug, thiserror::Error)]
pub enum MeasurementError {
    /// The Kafka client could not be created (say, properties this build
    /// cannot honour): reported like any failed measurement, every turn.
    #[error("cannot create the Kafka client: {0}")]
    Client(#[source] MeasureError),
    #[error(transparent)]
    Sample(#[from] MeasureError),
}

/// What one turn saw, decided and did.
#[derive(Debug)]
pub struct Turn {
    /// The target's replicas before the turn.
    pub current: u32,
    /// The channel as measured, or why it could not be.
    pub observation: Result<Observation, MeasurementError>,
    pub decision: Decision,
    /// Partitions whose consumers make no progress and that no live
    /// member holds, for the status.
    pub stuck_partitions: Vec<i32>,
    /// Partitions without progress that a live member holds (a long job),
    /// for the log and the metrics.
    pub slow_partitions: Vec<i32>,
    /// Messages processed per second, smoothed, for the status.
    pub processing_rate: f64,
    /// The target was scaled to `decision.replicas`.
    pub scaled: bool,
}

/// What the loop learns from one measurement to the next.
struct Memory {
    estimator: Estimator,
    policy: PolicyState,
    /// The last measurement failed: surges wait for one that works, or the
    /// watch would bring a failing measurement forward every second.
    measurement_failed: bool,
    /// The slow and stuck partitions last logged, so each change logs once.
    stalls_logged: (Vec<i32>, Vec<i32>),
}

/// One channel's scaling loop: its probe and its memory. Shared between a
/// turn and the surge check, which may run at the same time (in the
/// controller, a reconcile and the scaler's surge watch task).
pub struct ScalingLoop {
    /// Names the scaler in log lines when one process runs several.
    name: Option<String>,
    /// The channel's probe, or why its Kafka client could not be created.
    probe: Result<Arc<Probe>, MeasureError>,
    /// Locked only for arithmetic, never across a measurement.
    memory: Mutex<Memory>,
}

/// When a target without a controller takes its turns.
#[derive(Clone, Copy, Debug)]
pub struct Polls {
    /// Time between turns.
    pub interval: Duration,
    /// Between turns, read the end offsets this often and take a turn at
    /// once on a surge ([`Estimator::surging`]); `None`: polls only.
    pub surge_watch: Option<Duration>,
}

impl ScalingLoop {
    pub fn new(
        name: Option<String>,
        probe: Result<Probe, MeasureError>,
        estimator: EstimatorConfig,
    ) -> Self {
        Self {
            name,
            probe: probe.map(Arc::new),
            memory: Mutex::new(Memory {
                estimator: Estimator::new(estimator),
                policy: PolicyState::default(),
                measurement_failed: false,
                stalls_logged: (Vec::new(), Vec::new()),
            }),
        }
    }

    /// Whether the channel can be measured at all (its Kafka client exists).
    pub fn can_measure(&self) -> bool {
        self.probe.is_ok()
    }

    /// The probe, for a blocking task.
    fn probe(&self) -> Result<Arc<Probe>, MeasurementError> {
        match &self.probe {
            Ok(probe) => Ok(Arc::clone(probe)),
            Err(error) => Err(MeasurementError::Client(error.clone())),
        }
    }

    /// One turn at `now` seconds: measure, estimate, decide and, when the
    /// decision differs and `act` allows it, scale `target`. Without `act`
    /// (paused, or another autoscaler scales the target) the decision is
    /// only reported.
    pub async fn turn<T: Target>(
        &self,
        target: &mut T,
        spec: &ScalerSpec,
        now: f64,
        act: bool,
    ) -> Result<Turn, T::Error> {
        let sample = self.sample(now).await;
        let current = target.replicas();
        let mut turn = self.decide(spec, sample, current, now);
        let scaler = self.name.as_deref().map(tracing::field::display);
        if let Ok(observation) = &turn.observation {
            tracing::debug!(
                scaler,
                lag = observation.lag,
                arrival_rate = observation.arrival_rate,
                current,
                "observed"
            );
        }
        let decision = &turn.decision;
        if act && decision.replicas != current {
            tracing::info!(
                scaler,
                from = current,
                to = decision.replicas,
                reason = %decision.reason,
                limited_by = ?decision.limited_by.map(|l| l.to_string()),
                "scaling"
            );
            target.scale_to(decision.replicas).await?;
            turn.scaled = true;
        }
        Ok(turn)
    }

    /// One sample of the channel; librdkafka blocks, so off the async workers.
    async fn sample(&self, now: f64) -> Result<Sample, MeasurementError> {
        let probe = self.probe()?;
        tokio::task::spawn_blocking(move || probe.sample(now))
            .await
            .expect("measurement task panicked")
            .map_err(MeasurementError::from)
    }

    /// Estimate and decide on `sample`, for `current` replicas.
    fn decide(
        &self,
        spec: &ScalerSpec,
        sample: Result<Sample, MeasurementError>,
        current: u32,
        now: f64,
    ) -> Turn {
        let mut memory = self.memory.lock().unwrap();
        let memory = &mut *memory;
        let observation = sample.map(|sample| memory.estimator.observe(sample));
        memory.measurement_failed = observation.is_err();
        if memory.measurement_failed {
            memory.estimator.measurement_failed();
        }
        let decision = policy::decide(
            spec,
            observation.as_ref().ok(),
            &mut memory.policy,
            current,
            now,
        );
        let stalls = (
            memory.estimator.slow_partitions(),
            memory.estimator.stuck_partitions(),
        );
        if observation.is_ok() && stalls != memory.stalls_logged {
            tracing::info!(
                scaler = self.name.as_deref(),
                slow = ?stalls.0,
                stuck = ?stalls.1,
                "partitions without progress changed"
            );
            memory.stalls_logged = stalls;
        }
        Turn {
            current,
            observation,
            decision,
            stuck_partitions: memory.estimator.stuck_partitions(),
            slow_partitions: memory.estimator.slow_partitions(),
            processing_rate: memory.estimator.processing_rate(),
            scaled: false,
        }
    }

    /// The sum of the channel's end offsets: all it ever received. One
    /// ListOffsets request, in a blocking task; what the surge check reads.
    pub async fn read_arrivals(&self) -> Result<i64, MeasurementError> {
        let probe = self.probe()?;
        tokio::task::spawn_blocking(move || probe.arrived())
            .await
            .expect("surge watch task panicked")
            .map_err(MeasurementError::from)
    }

    /// Whether `arrived` (from [`Self::read_arrivals`], at `now`) makes a
    /// surge for `replicas`: see [`Estimator::surging`]. Never after a
    /// failed measurement: surges wait for the poll then.
    pub fn surging(&self, now: f64, arrived: i64, replicas: u32) -> bool {
        let mut memory = self.memory.lock().unwrap();
        !memory.measurement_failed && memory.estimator.surging(now, arrived, replicas)
    }

    /// Takes a turn every poll, and at once on a surge, until `shutdown`
    /// resolves: the loop of a target without a controller.
    pub async fn run<T: Target>(
        &self,
        target: &mut T,
        spec: &ScalerSpec,
        polls: Polls,
        shutdown: impl Future<Output = ()>,
    ) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(polls.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(polls.surge_watch.unwrap_or(polls.interval));
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {}
                _ = watch.tick(), if polls.surge_watch.is_some() => {
                    if !self.surge_seen(target, started).await {
                        continue;
                    }
                    tick.reset();
                }
            }
            let now = started.elapsed().as_secs_f64();
            match self.turn(target, spec, now, true).await {
                Ok(turn) => {
                    if let Err(error) = &turn.observation {
                        tracing::warn!(%error, "measurement failed; holding");
                    }
                }
                Err(error) => tracing::error!(%error, "cannot scale the target"),
            }
        }
    }

    /// One surge check of [`Self::run`]: read the end offsets, and say
    /// whether they make a surge.
    async fn surge_seen<T: Target>(&self, target: &mut T, started: Instant) -> bool {
        let arrived = self.read_arrivals().await;
        let now = started.elapsed().as_secs_f64();
        match arrived {
            Ok(arrived) if self.surging(now, arrived, target.replicas()) => {
                tracing::info!("arrivals surge: measuring before the next poll");
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::debug!(%error, "surge watch read failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;

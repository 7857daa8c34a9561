//! The control loop for the local target: measure, estimate, decide, scale
//! a [`ProcessPool`], and say why; between polls, watch the end offsets for
//! a surge that should not wait for the next poll. The same policy and estimator as the
//! Kubernetes controller; only the actuation differs.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::estimate::{Estimator, EstimatorConfig};
use crate::local::ProcessPool;
use crate::measure::{MeasureError, Probe};
use crate::policy::{self, PolicyState, ScalerSpec};

/// What the local loop needs.
pub struct LocalConfig {
    pub brokers: String,
    pub kafka_properties: Vec<(String, String)>,
    pub topic: String,
    pub group: String,
    pub spec: ScalerSpec,
    pub estimator: EstimatorConfig,
    pub poll_interval: Duration,
    /// Between polls, read the end offsets this often and poll at once on a
    /// surge ([`Estimator::surging`]); `None`: polls only.
    pub surge_watch: Option<Duration>,
    /// Worker command; `{replica}` is replaced by the replica's number.
    pub command: Vec<String>,
    pub drain_timeout: Duration,
}

/// Runs until `shutdown` resolves, then drains every worker.
pub async fn run(
    config: LocalConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MeasureError> {
    let probe = std::sync::Arc::new(Probe::new(
        &config.brokers,
        &config.kafka_properties,
        &config.topic,
        &config.group,
    )?);
    let mut estimator = Estimator::new(config.estimator);
    let mut state = PolicyState::default();
    let mut pool = ProcessPool::new(config.command.clone(), config.drain_timeout);
    if let Err(error) = pool.scale_to(config.spec.min_replicas) {
        tracing::error!(%error, "cannot start workers");
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(config.surge_watch.unwrap_or(config.poll_interval));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut measured = false;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
            _ = watch.tick(), if config.surge_watch.is_some() => {
                let reading = std::sync::Arc::clone(&probe);
                let arrived = tokio::task::spawn_blocking(move || reading.arrived())
                    .await
                    .expect("surge watch task panicked");
                let now = started.elapsed().as_secs_f64();
                match arrived {
                    // After a failed measurement, surges wait for the poll.
                    Ok(arrived) if measured && estimator.surging(now, arrived, pool.replicas()) => {
                        tracing::info!("arrivals surge: measuring before the next poll");
                        tick.reset();
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::debug!(%error, "surge watch read failed");
                        continue;
                    }
                }
            }
        }
        let now = started.elapsed().as_secs_f64();
        let sampling = std::sync::Arc::clone(&probe);
        let sample = tokio::task::spawn_blocking(move || sampling.sample(now))
            .await
            .expect("measurement task panicked");
        let observation = match sample {
            Ok(sample) => Some(estimator.observe(sample)),
            Err(error) => {
                tracing::warn!(%error, "measurement failed; holding");
                None
            }
        };
        measured = observation.is_some();
        let current = pool.replicas();
        let decision = policy::decide(&config.spec, observation.as_ref(), &mut state, current, now);
        if let Some(observation) = &observation {
            tracing::debug!(
                lag = observation.lag,
                arrival_rate = observation.arrival_rate,
                current,
                "observed"
            );
        }
        if decision.replicas != current {
            tracing::info!(
                from = current,
                to = decision.replicas,
                reason = %decision.reason,
                limited_by = ?decision.limited_by.map(|l| l.to_string()),
                "scaling"
            );
            if let Err(error) = pool.scale_to(decision.replicas) {
                tracing::error!(%error, "cannot start workers");
            }
        }
    }
    tracing::info!("stopping: draining every worker");
    pool.shutdown().await;
    Ok(())
}

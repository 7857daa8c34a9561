//! What the controller keeps per scaler between reconciles, keyed
//! `namespace/name` in [`Memories`]: the scaling loop (rebuilt when the
//! scaler's Kafka settings change), its surge watch task, and the
//! bookkeeping that keeps status writes from becoming measurements (when
//! a measurement is due), built with the client properties the scaler's
//! Secret gave (see `secret`). Does not decide anything: the [`ScalingLoop`] does.
//! Knows nothing of the controller's context: whoever refreshes a memory
//! starts its surge watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;
use tokio::task::AbortHandle;

use super::secret::SecretProperties;
use crate::crd::ChannelScaler;
use crate::estimate::EstimatorConfig;
use crate::measure::Probe;
use crate::scaling::ScalingLoop;

/// Every scaler's memory, keyed `namespace/name`.
#[derive(Default)]
pub(super) struct Memories(Mutex<HashMap<String, ScalerMemory>>);

/// What the controller keeps per scaler between reconciles.
struct ScalerMemory {
    /// Brokers, topic and group the loop's probe was built for.
    kafka_key: (String, String, String),
    /// Client properties (taken from the Secret) the probe was built with.
    properties: Vec<(String, String)>,
    /// The probe (or why its Kafka client could not be created, reported
    /// as KafkaReachable=False like any failed measurement), the estimator
    /// and the policy's windows.
    scaling: Arc<ScalingLoop>,
    /// Replicas at the last completed reconcile, for the surge check.
    replicas: u32,
    /// Surge watch period from the spec; zero: off.
    surge_watch: Duration,
    poll: Duration,
    /// The scaler's generation at the last measurement.
    generation: Option<i64>,
    measured_at: Instant,
    /// A surge reconcile was triggered and has not run yet.
    surge_pending: bool,
    /// The last measurement was acted on and reported; if not (the API
    /// server refused a write), the retry measures again.
    completed: bool,
    /// Held only to stop the surge watch task when the memory is replaced
    /// or forgotten.
    _surge_watch: Option<AbortOnDrop>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A surge watch's periods, from its scaler's spec.
pub(super) struct WatchPeriods {
    /// Between end-offset reads; zero: the watch is off.
    pub(super) surge_watch: Duration,
    /// The scaler's poll interval.
    pub(super) poll: Duration,
}

impl Memories {
    /// How long until the scaler's next measurement, if it is not due yet.
    /// Every status write comes back as a watch event; measuring on those
    /// would poll as fast as the API server answers. Between polls, only a
    /// new spec or a surge is worth a measurement.
    pub(super) fn not_due(
        &self,
        key: &str,
        scaler: &ChannelScaler,
        poll: Duration,
    ) -> Option<Duration> {
        let scalers = self.0.lock().unwrap();
        let memory = scalers.get(key)?;
        let since = memory.measured_at.elapsed();
        (since < poll
            && memory.completed
            && !memory.surge_pending
            && memory.generation == scaler.meta().generation)
            .then(|| poll - since)
    }

    /// The scaler's scaling loop for this reconcile's measurement: the one
    /// remembered, or a new one when there is none or the Kafka settings
    /// (`properties` from the Secret included) changed. `start_watch`
    /// starts a new loop's surge watch, if it can measure; `replicas`
    /// seeds a new memory's surge check until the first reconcile
    /// completes.
    pub(super) fn refresh(
        &self,
        scaler: &ChannelScaler,
        key: &str,
        properties: SecretProperties,
        poll: Duration,
        replicas: u32,
        start_watch: impl FnOnce(Arc<ScalingLoop>) -> AbortHandle,
    ) -> Arc<ScalingLoop> {
        let kafka_key = (
            scaler.spec.kafka.brokers.clone(),
            scaler.spec.topic.clone(),
            scaler.spec.consumer_group.clone(),
        );
        let mut replaced = None;
        let scaling = {
            let mut scalers = self.0.lock().unwrap();
            let stale = scalers
                .get(key)
                .is_none_or(|m| m.kafka_key != kafka_key || m.properties != properties.taken);
            if stale {
                for ignored in &properties.ignored {
                    // The key's name only: its value is someone's secret.
                    tracing::warn!(
                        scaler = %key,
                        key = %ignored,
                        "ignoring a key of the Kafka properties Secret: not a connection or authentication property"
                    );
                }
                let memory = ScalerMemory::new(
                    key,
                    kafka_key,
                    properties.taken,
                    poll,
                    replicas,
                    start_watch,
                );
                replaced = scalers.insert(key.to_owned(), memory);
            }
            let memory = scalers.get_mut(key).expect("inserted above");
            memory.surge_watch = Duration::from_secs(scaler.spec.surge_watch_seconds.max(0) as u64);
            memory.poll = poll;
            memory.generation = scaler.meta().generation;
            memory.measured_at = Instant::now();
            memory.surge_pending = false;
            memory.completed = false;
            Arc::clone(&memory.scaling)
        };
        if let Some(old) = replaced {
            // Closing its Kafka client waits for librdkafka's threads.
            tokio::task::spawn_blocking(move || drop(old));
        }
        scaling
    }

    /// The reconcile acted and reported: polls wait again, and surges are
    /// judged against the replicas it left.
    pub(super) fn completed(&self, key: &str, replicas: u32) {
        if let Some(memory) = self.0.lock().unwrap().get_mut(key) {
            memory.completed = true;
            memory.replicas = replicas;
        }
    }

    /// The scaler's surge watch periods, or `None` once the scaler is gone;
    /// a scaler no longer reconciled is forgotten here.
    pub(super) fn watch_periods(&self, key: &str) -> Option<WatchPeriods> {
        let mut scalers = self.0.lock().unwrap();
        let memory = scalers.get(key)?;
        if memory.forgotten() {
            tracing::info!(scaler = %key, "no longer reconciled: forgetting it");
            let forgotten = scalers.remove(key);
            // Its Kafka client closes off the async workers.
            tokio::task::spawn_blocking(move || drop(forgotten));
            return None;
        }
        Some(WatchPeriods {
            surge_watch: memory.surge_watch,
            poll: memory.poll,
        })
    }

    /// Whether `arrived` at `now` makes a surge worth a reconcile (one at a
    /// time), and marks it pending; `None` once the scaler is gone.
    pub(super) fn surge_seen(
        &self,
        key: &str,
        scaling: &ScalingLoop,
        now: f64,
        arrived: i64,
    ) -> Option<bool> {
        let mut scalers = self.0.lock().unwrap();
        let memory = scalers.get_mut(key)?;
        let surge = !memory.surge_watch.is_zero()
            && !memory.surge_pending
            && scaling.surging(now, arrived, memory.replicas);
        memory.surge_pending |= surge;
        Some(surge)
    }
}

impl ScalerMemory {
    /// A fresh memory: a new probe and scaling loop, and its surge watch
    /// when the probe could be created.
    fn new(
        key: &str,
        kafka_key: (String, String, String),
        properties: Vec<(String, String)>,
        poll: Duration,
        replicas: u32,
        start_watch: impl FnOnce(Arc<ScalingLoop>) -> AbortHandle,
    ) -> Self {
        let probe = Probe::new(&kafka_key.0, &properties, &kafka_key.1, &kafka_key.2);
        let scaling = Arc::new(ScalingLoop::new(
            Some(key.to_owned()),
            probe,
            EstimatorConfig::default(),
        ));
        let watch = scaling
            .can_measure()
            .then(|| AbortOnDrop(start_watch(Arc::clone(&scaling))));
        Self {
            kafka_key,
            properties,
            scaling,
            replicas,
            surge_watch: Duration::ZERO,
            poll,
            generation: None,
            measured_at: Instant::now(),
            surge_pending: false,
            completed: false,
            _surge_watch: watch,
        }
    }

    /// No reconcile for this long: the scaler was deleted (reconciles come
    /// at least every poll otherwise).
    fn forgotten(&self) -> bool {
        self.measured_at.elapsed() > self.poll * 3 + Duration::from_secs(60)
    }
}

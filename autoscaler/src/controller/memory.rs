//! What the controller keeps per scaler between reconciles, keyed
//! `namespace/name`: the scaling loop (rebuilt when the scaler's Kafka
//! settings change), its surge watch task, and the bookkeeping that keeps
//! status writes from becoming measurements. Does not decide anything: the
//! [`ScalingLoop`] does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use super::{Context, Error, secret, surge};
use crate::crd::ChannelScaler;
use crate::estimate::EstimatorConfig;
use crate::measure::Probe;
use crate::scaling::ScalingLoop;

/// What the controller keeps per scaler between reconciles.
pub(super) struct ScalerMemory {
    /// Brokers, topic and group the loop's probe was built for.
    kafka_key: (String, String, String),
    /// Client properties (taken from the Secret) the probe was built with.
    properties: Vec<(String, String)>,
    /// The probe (or why its Kafka client could not be created, reported
    /// as KafkaReachable=False like any failed measurement), the estimator
    /// and the policy's windows.
    pub(super) scaling: Arc<ScalingLoop>,
    /// Replicas at the last completed reconcile, for the surge check.
    pub(super) replicas: u32,
    /// Surge watch period from the spec; zero: off.
    pub(super) surge_watch: Duration,
    pub(super) poll: Duration,
    /// The scaler's generation at the last measurement.
    generation: Option<i64>,
    measured_at: Instant,
    /// A surge reconcile was triggered and has not run yet.
    pub(super) surge_pending: bool,
    /// The last measurement was acted on and reported; if not (the API
    /// server refused a write), the retry measures again.
    completed: bool,
    /// Held only to stop the surge watch task when the memory is replaced
    /// or forgotten.
    _surge_watch: Option<AbortOnDrop>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ScalerMemory {
    /// No reconcile for this long: the scaler was deleted (reconciles come
    /// at least every poll otherwise).
    pub(super) fn forgotten(&self) -> bool {
        self.measured_at.elapsed() > self.poll * 3 + Duration::from_secs(60)
    }
}

impl Context {
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
        let scalers = self.scalers.lock().unwrap();
        let memory = scalers.get(key)?;
        let since = memory.measured_at.elapsed();
        (since < poll
            && memory.completed
            && !memory.surge_pending
            && memory.generation == scaler.meta().generation)
            .then(|| poll - since)
    }

    /// The scaler's scaling loop for this reconcile's measurement: the one
    /// remembered, or a new one (with its surge watch) when there is none
    /// or the Kafka settings changed. `replicas` seeds a new memory's surge
    /// check until the first reconcile completes.
    pub(super) async fn refresh_memory(
        self: &Arc<Self>,
        scaler: &ChannelScaler,
        key: &str,
        namespace: &str,
        poll: Duration,
        replicas: u32,
    ) -> Result<Arc<ScalingLoop>, Error> {
        let kafka_key = (
            scaler.spec.kafka.brokers.clone(),
            scaler.spec.topic.clone(),
            scaler.spec.consumer_group.clone(),
        );
        let secret = secret::read(&self.client, namespace, scaler).await?;
        let properties = secret.taken;
        let mut replaced = None;
        let scaling = {
            let mut scalers = self.scalers.lock().unwrap();
            let stale = scalers
                .get(key)
                .is_none_or(|m| m.kafka_key != kafka_key || m.properties != properties);
            if stale {
                for ignored in &secret.ignored {
                    // The key's name only: its value is someone's secret.
                    tracing::warn!(
                        scaler = %key,
                        key = %ignored,
                        "ignoring a key of the Kafka properties Secret: not a connection or authentication property"
                    );
                }
                let memory = self.new_memory(scaler, key, kafka_key, properties, poll, replicas);
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
        Ok(scaling)
    }

    /// A fresh memory: a new probe and scaling loop, and its surge watch
    /// when the probe could be created.
    fn new_memory(
        self: &Arc<Self>,
        scaler: &ChannelScaler,
        key: &str,
        kafka_key: (String, String, String),
        properties: Vec<(String, String)>,
        poll: Duration,
        replicas: u32,
    ) -> ScalerMemory {
        let probe = Probe::new(&kafka_key.0, &properties, &kafka_key.1, &kafka_key.2);
        let scaling = Arc::new(ScalingLoop::new(
            Some(key.to_owned()),
            probe,
            EstimatorConfig::default(),
        ));
        let watch = scaling.can_measure().then(|| {
            let task = tokio::spawn(surge::watch(
                Arc::downgrade(self),
                key.to_owned(),
                ObjectRef::from_obj(scaler),
                Arc::clone(&scaling),
            ));
            AbortOnDrop(task.abort_handle())
        });
        ScalerMemory {
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

    /// The reconcile acted and reported: polls wait again, and surges are
    /// judged against the replicas it left.
    pub(super) fn completed(&self, key: &str, replicas: u32) {
        if let Some(memory) = self.scalers.lock().unwrap().get_mut(key) {
            memory.completed = true;
            memory.replicas = replicas;
        }
    }
}

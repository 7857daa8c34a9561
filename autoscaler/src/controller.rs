//! The Kubernetes controller: for every `ChannelScaler`, measure the channel
//! each poll, run the policy, patch the target's `/scale` subresource, write
//! the status with server-side apply under one field manager, and record a
//! Kubernetes Event with the numbers behind every scaling decision.
//!
//! Per-scaler memory (the Kafka probe, the estimator, the policy's windows)
//! lives in the controller's context, keyed by the scaler and rebuilt when
//! its Kafka settings change.
//!
//! Between polls, each scaler's surge watch reads the topic's end offsets
//! every `surgeWatchSeconds` and, when arrivals outrun what the estimator
//! knows and the replicas can process, triggers a reconcile at once
//! (`Controller::reconcile_on`). It also forgets scalers that stopped being
//! reconciled (deleted), so their Kafka clients do not linger.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    ChannelScaler, ChannelScalerStatus, Condition, PolicyType, ScalingRules, SelectPolicy,
};
use crate::estimate::{Estimator, EstimatorConfig};
use crate::measure::Probe;
use crate::metrics::{Metrics, ScalerLabels};
use crate::policy::{self, Behavior, PolicyState, RatePolicy, ScalerSpec, Select};

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "osmosis-autoscaler";

/// Why a reconcile failed; requeued after a short delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the scale target {0} is not a known resource with a /scale subresource")]
    UnknownTarget(String),
}

/// What the controller keeps per scaler between reconciles.
struct ScalerMemory {
    /// Brokers, topic and group the probe was built for.
    kafka_key: (String, String, String),
    /// Client properties (from the Secret) the probe was built with.
    properties: Vec<(String, String)>,
    /// The probe, or why the Kafka client could not be created (reported
    /// as KafkaReachable=False, like any failed measurement).
    probe: Result<Arc<Probe>, String>,
    estimator: Estimator,
    policy: PolicyState,
    /// Replicas asked for at the last reconcile, for the surge check.
    replicas: u32,
    /// Surge watch period from the spec; zero: off.
    surge_watch: Duration,
    poll: Duration,
    /// The scaler's generation at the last measurement.
    generation: Option<i64>,
    measured_at: Instant,
    /// A surge reconcile was triggered and has not run yet.
    surge_pending: bool,
    /// The last measurement failed: surges wait for one that works, or the
    /// watch would trigger a failing reconcile every second.
    measurement_failed: bool,
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

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    started: Instant,
    scalers: Mutex<HashMap<String, ScalerMemory>>,
    /// Scale targets' API resources by (apiVersion, kind), from discovery.
    resources: Mutex<HashMap<(String, String), ApiResource>>,
    /// Where surge watches ask for a reconcile.
    surges: futures::channel::mpsc::UnboundedSender<ObjectRef<ChannelScaler>>,
}

/// The policy's spec from the resource's spec.
pub fn policy_spec(scaler: &ChannelScaler) -> ScalerSpec {
    let spec = &scaler.spec;
    let defaults = ScalerSpec::default();
    ScalerSpec {
        min_replicas: spec.min_replicas.max(0) as u32,
        max_replicas: spec.max_replicas.max(0) as u32,
        lag_per_replica: spec.lag_per_replica.max(1) as u64,
        activation_lag: spec.activation_lag.max(0) as u64,
        target_drain_seconds: spec.target_drain_seconds.max(1) as f64,
        max_time_lag_seconds: spec.max_time_lag_seconds.map(|s| s as f64),
        idle_seconds: spec.idle_seconds.max(0) as f64,
        scale_up: behavior(spec.behavior.scale_up.as_ref(), defaults.scale_up.clone()),
        scale_down: behavior(
            spec.behavior.scale_down.as_ref(),
            defaults.scale_down.clone(),
        ),
        ..defaults
    }
}

fn behavior(rules: Option<&ScalingRules>, default: Behavior) -> Behavior {
    let Some(rules) = rules else {
        return default;
    };
    Behavior {
        stabilization_seconds: rules.stabilization_window_seconds.max(0) as f64,
        policies: rules
            .policies
            .iter()
            .map(|p| {
                let (value, period_seconds) =
                    (p.value.max(0) as u32, f64::from(p.period_seconds.max(1)));
                match p.r#type {
                    PolicyType::Percent => RatePolicy::Percent {
                        value,
                        period_seconds,
                    },
                    PolicyType::Pods => RatePolicy::Pods {
                        value,
                        period_seconds,
                    },
                }
            })
            .collect(),
        select: match rules.select_policy {
            SelectPolicy::Max => Select::Max,
            SelectPolicy::Min => Select::Min,
            SelectPolicy::Disabled => Select::Disabled,
        },
    }
}

/// librdkafka properties from the scaler's Secret, if it names one.
async fn kafka_properties(
    client: &Client,
    namespace: &str,
    scaler: &ChannelScaler,
) -> Result<Vec<(String, String)>, Error> {
    let Some(secret) = &scaler.spec.kafka.properties_secret_ref else {
        return Ok(Vec::new());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(&secret.name).await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value.0).into_owned()))
        .collect())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        r#type: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: now_rfc3339(),
    }
}

async fn reconcile(scaler: Arc<ChannelScaler>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let outcome = reconcile_scaler(&scaler, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    outcome
}

/// The HPA that also scales `kind/name`, if any: two scalers on one target
/// fight, so the controller reports it and leaves the target alone.
async fn conflicting_hpa(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Option<String> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let list = hpas.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .find(|hpa| {
            hpa.spec
                .as_ref()
                .is_some_and(|s| s.scale_target_ref.kind == kind && s.scale_target_ref.name == name)
        })
        .map(|hpa| hpa.name_any())
}

async fn reconcile_scaler(
    scaler: &Arc<ChannelScaler>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let namespace = scaler.namespace().unwrap_or_else(|| "default".into());
    let name = scaler.name_any();
    let labels = ScalerLabels {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let key = format!("{namespace}/{name}");
    let poll = Duration::from_secs(scaler.spec.poll_interval_seconds.max(1) as u64);

    // Every status write comes back as a watch event; measuring on those
    // would poll as fast as the API server answers. Between polls, only a
    // new spec or a surge is worth a measurement.
    if let Some(memory) = ctx.scalers.lock().unwrap().get(&key) {
        let since = memory.measured_at.elapsed();
        if since < poll
            && memory.completed
            && !memory.surge_pending
            && memory.generation == scaler.meta().generation
        {
            return Ok(Action::requeue(poll - since));
        }
    }

    // The target, through discovery: anything with a /scale subresource.
    let target = &scaler.spec.scale_target_ref;
    let (group, version) = match target.api_version.split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), target.api_version.clone()),
    };
    let type_key = (target.api_version.clone(), target.kind.clone());
    let known = ctx.resources.lock().unwrap().get(&type_key).cloned();
    let resource = match known {
        Some(resource) => resource,
        None => {
            // Discovery once per kind, not once per poll.
            let gvk = GroupVersionKind::gvk(&group, &version, &target.kind);
            let (resource, _) = kube::discovery::pinned_kind(&ctx.client, &gvk)
                .await
                .map_err(|_| Error::UnknownTarget(format!("{}/{}", target.kind, target.name)))?;
            ctx.resources
                .lock()
                .unwrap()
                .insert(type_key, resource.clone());
            resource
        }
    };
    let targets: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let scale = targets.get_scale(&target.name).await?;
    let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;

    // Measure, estimate, decide.
    let kafka_key = (
        scaler.spec.kafka.brokers.clone(),
        scaler.spec.topic.clone(),
        scaler.spec.consumer_group.clone(),
    );
    let properties = kafka_properties(&ctx.client, &namespace, scaler).await?;
    let mut replaced = None;
    let (probe, now) = {
        let mut scalers = ctx.scalers.lock().unwrap();
        let stale = scalers
            .get(&key)
            .is_none_or(|m| m.kafka_key != kafka_key || m.properties != properties);
        if stale {
            let probe = Probe::new(&kafka_key.0, &properties, &kafka_key.1, &kafka_key.2)
                .map(Arc::new)
                .map_err(|error| error.to_string());
            let watch = probe.as_ref().ok().map(|probe| {
                let task = tokio::spawn(surge_watch(
                    Arc::downgrade(ctx),
                    key.clone(),
                    ObjectRef::from_obj(scaler.as_ref()),
                    Arc::clone(probe),
                ));
                AbortOnDrop(task.abort_handle())
            });
            replaced = scalers.insert(
                key.clone(),
                ScalerMemory {
                    kafka_key: kafka_key.clone(),
                    properties: properties.clone(),
                    probe,
                    estimator: Estimator::new(EstimatorConfig::default()),
                    policy: PolicyState::default(),
                    replicas: current,
                    surge_watch: Duration::ZERO,
                    poll,
                    generation: None,
                    measured_at: Instant::now(),
                    surge_pending: false,
                    completed: false,
                    measurement_failed: false,
                    _surge_watch: watch,
                },
            );
        }
        let memory = scalers.get_mut(&key).expect("inserted above");
        memory.surge_watch = Duration::from_secs(scaler.spec.surge_watch_seconds.max(0) as u64);
        memory.poll = poll;
        memory.generation = scaler.meta().generation;
        memory.measured_at = Instant::now();
        memory.surge_pending = false;
        memory.completed = false;
        (memory.probe.clone(), ctx.started.elapsed().as_secs_f64())
    };
    if let Some(old) = replaced {
        // Closing its Kafka client waits for librdkafka's threads.
        tokio::task::spawn_blocking(move || drop(old));
    }
    let sample = match probe {
        Ok(probe) => tokio::task::spawn_blocking(move || probe.sample(now))
            .await
            .expect("measurement task panicked")
            .map_err(|error| error.to_string()),
        Err(error) => Err(format!("cannot create the Kafka client: {error}")),
    };
    let spec = policy_spec(scaler);
    let (observation, decision, stuck, processing_rate, kafka_error) = {
        let mut scalers = ctx.scalers.lock().unwrap();
        let Some(memory) = scalers.get_mut(&key) else {
            // Forgotten while measuring (no reconcile for minutes): start over.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let (observation, kafka_error) = match sample {
            Ok(sample) => (Some(memory.estimator.observe(sample)), None),
            Err(error) => (None, Some(error)),
        };
        memory.measurement_failed = observation.is_none();
        let decision = policy::decide(
            &spec,
            observation.as_ref(),
            &mut memory.policy,
            current,
            now,
        );
        (
            observation,
            decision,
            memory.estimator.stuck_partitions(),
            memory.estimator.processing_rate(),
            kafka_error,
        )
    };

    // Act.
    let mut status = scaler.status.clone().unwrap_or_default();
    let conflict = conflicting_hpa(&ctx.client, &namespace, &target.kind, &target.name).await;
    let scaled = !scaler.spec.paused && conflict.is_none() && decision.replicas != current;
    if scaled {
        targets
            .patch_scale(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": decision.replicas } })),
            )
            .await?;
        status.last_scale_time = Some(now_rfc3339());
        status.last_scale_reason = Some(decision.reason.clone());
        ctx.metrics.scale_events.get_or_create(&labels).inc();
        tracing::info!(scaler = %key, from = current, to = decision.replicas, reason = %decision.reason, "scaled");
        let event = Event {
            type_: EventType::Normal,
            reason: "Scaled".into(),
            note: Some(decision.reason.clone()),
            action: "Scale".into(),
            secondary: None,
        };
        // The target is scaled: a lost Event must not keep the status from
        // saying so.
        if let Err(error) = ctx.recorder.publish(&event, &scaler.object_ref(&())).await {
            tracing::warn!(scaler = %key, %error, "cannot record the scaling Event");
        }
    }

    // Report.
    let m = &ctx.metrics;
    m.measurements.get_or_create(&labels).inc();
    if observation.is_none() {
        m.measurement_errors.get_or_create(&labels).inc();
    }
    if let Some(observation) = &observation {
        m.lag.get_or_create(&labels).set(observation.lag as i64);
        m.time_lag_seconds
            .get_or_create(&labels)
            .set(observation.time_lag_seconds);
        m.arrival_rate
            .get_or_create(&labels)
            .set(observation.arrival_rate);
        status.lag = observation.lag as i64;
        status.time_lag_seconds = observation.time_lag_seconds;
        status.arrival_rate = observation.arrival_rate;
        status.per_replica_rate = observation.per_replica_rate;
        status.partitions = observation.partitions as i32;
    }
    status.processing_rate = processing_rate;
    status.stuck_partitions = stuck;
    status.observed_generation = scaler.meta().generation;
    status.current_replicas = if scaled { decision.replicas } else { current } as i32;
    status.desired_replicas = decision.replicas as i32;
    m.processing_rate
        .get_or_create(&labels)
        .set(processing_rate);
    m.desired_replicas
        .get_or_create(&labels)
        .set(i64::from(decision.replicas));
    m.current_replicas
        .get_or_create(&labels)
        .set(i64::from(status.current_replicas));
    let reachable = kafka_error.is_none();
    status.conditions = vec![
        condition(
            "KafkaReachable",
            reachable,
            if reachable {
                "Measured"
            } else {
                "MeasurementFailed"
            },
            kafka_error.unwrap_or_else(|| format!("lag {}", status.lag)),
        ),
        condition(
            "Active",
            status.current_replicas > 0,
            "Replicas",
            format!("{} replicas", status.current_replicas),
        ),
        match &conflict {
            Some(hpa) => condition(
                "ScalingLimited",
                true,
                "HorizontalPodAutoscalerConflict",
                format!(
                    "HorizontalPodAutoscaler {hpa} also scales {}/{}: not scaling",
                    target.kind, target.name
                ),
            ),
            None => condition(
                "ScalingLimited",
                decision.limited_by.is_some(),
                &decision.limited_by.map_or_else(
                    || "NotLimited".to_owned(),
                    |l| l.to_string().replace(' ', ""),
                ),
                decision.reason.clone(),
            ),
        },
        condition("Ready", reachable, "Reconciled", decision.reason),
    ];
    // A condition's transition time is when its status last changed.
    let previous = scaler.status.as_ref().map(|s| s.conditions.as_slice());
    for condition in &mut status.conditions {
        if let Some(before) = previous
            .into_iter()
            .flatten()
            .find(|c| c.r#type == condition.r#type && c.status == condition.status)
        {
            condition.last_transition_time = before.last_transition_time.clone();
        }
    }
    let replicas = status.current_replicas.max(0) as u32;
    let scalers: Api<ChannelScaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let apply = json!({
        "apiVersion": ChannelScaler::api_version(&()),
        "kind": ChannelScaler::kind(&()),
        "status": ChannelScalerStatus { ..status },
    });
    scalers
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&apply),
        )
        .await?;
    if let Some(memory) = ctx.scalers.lock().unwrap().get_mut(&key) {
        memory.completed = true;
        memory.replicas = replicas;
    }
    Ok(Action::requeue(poll))
}

/// How long a scaler may go without a reconcile before its memory is
/// dropped: it was deleted (reconciles come at least every poll otherwise).
fn forgotten_after(poll: Duration) -> Duration {
    poll * 3 + Duration::from_secs(60)
}

/// One scaler's surge watch: between polls, the topic's end offsets every
/// `surgeWatchSeconds`; a surge triggers a reconcile at once. Ends when the
/// scaler's memory is replaced or forgotten.
async fn surge_watch(
    ctx: Weak<Context>,
    key: String,
    scaler: ObjectRef<ChannelScaler>,
    probe: Arc<Probe>,
) {
    loop {
        let Some(watching) = ctx.upgrade().and_then(|ctx| {
            let mut scalers = ctx.scalers.lock().unwrap();
            let memory = scalers.get(&key)?;
            if memory.measured_at.elapsed() > forgotten_after(memory.poll) {
                tracing::info!(scaler = %key, "no longer reconciled: forgetting it");
                let forgotten = scalers.remove(&key);
                // Its Kafka client closes off the async workers.
                tokio::task::spawn_blocking(move || drop(forgotten));
                return None;
            }
            // Off: only look in once a poll, to forget a deleted scaler.
            Some(if memory.surge_watch.is_zero() {
                Err(memory.poll)
            } else {
                Ok(memory.surge_watch)
            })
        }) else {
            return;
        };
        match watching {
            Ok(period) => tokio::time::sleep(period).await,
            Err(poll) => {
                tokio::time::sleep(poll).await;
                continue;
            }
        }
        let reading = Arc::clone(&probe);
        let arrived = match tokio::task::spawn_blocking(move || reading.arrived()).await {
            Ok(Ok(arrived)) => arrived,
            Ok(Err(error)) => {
                tracing::debug!(scaler = %key, %error, "surge watch read failed");
                continue;
            }
            Err(_) => return,
        };
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        let surge = {
            let mut scalers = ctx.scalers.lock().unwrap();
            let Some(memory) = scalers.get_mut(&key) else {
                return;
            };
            let now = ctx.started.elapsed().as_secs_f64();
            let surge = !memory.surge_watch.is_zero()
                && !memory.surge_pending
                && !memory.measurement_failed
                && memory.estimator.surging(now, arrived, memory.replicas);
            memory.surge_pending |= surge;
            surge
        };
        if surge {
            tracing::info!(scaler = %key, "arrivals surge: reconciling before the next poll");
            ctx.metrics
                .surges
                .get_or_create(&scaler_labels(&scaler))
                .inc();
            if ctx.surges.unbounded_send(scaler.clone()).is_err() {
                return;
            }
        }
    }
}

fn scaler_labels(scaler: &ObjectRef<ChannelScaler>) -> ScalerLabels {
    ScalerLabels {
        namespace: scaler.namespace.clone().unwrap_or_default(),
        name: scaler.name.clone(),
    }
}

fn error_policy(scaler: Arc<ChannelScaler>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(scaler = %scaler.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller over `namespace` (or all namespaces) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (surges, surged) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        metrics: Arc::clone(&metrics),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        started: Instant::now(),
        scalers: Mutex::new(HashMap::new()),
        resources: Mutex::new(HashMap::new()),
        surges,
    });
    let scalers: Api<ChannelScaler> = match &namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("controller started");
    Controller::new(scalers, watcher::Config::default())
        .reconcile_on(surged)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
}

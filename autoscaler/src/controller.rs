//! The Kubernetes controller: for every `ChannelScaler`, each poll a turn
//! of its [`ScalingLoop`](crate::scaling::ScalingLoop) against the target's `/scale` subresource, the
//! status written with server-side apply under one field manager, and a
//! Kubernetes Event with the numbers behind every scaling decision.
//!
//! This file holds the order of a reconcile's steps and [`run`]; each
//! step has its own file:
//! - `context`: the [`Context`] every reconcile shares, the [`Error`] and
//!   the field manager [`MANAGER`].
//! - `target`: the scale target, found by discovery, as a [`Target`]; the
//!   conflicting HPA check.
//! - `memory`: per-scaler memory between reconciles (the scaling loop,
//!   rebuilt when the scaler's Kafka settings change, with the Secret's
//!   client properties) and when a measurement is due.
//! - `surge`: each scaler's surge watch between polls, which triggers a
//!   reconcile at once (`Controller::reconcile_on`) and forgets deleted
//!   scalers.
//! - `report`: the Event, the status and the metrics of one reconcile.
//! - `secret`: the client properties a scaler's Secret may set (connection
//!   and authentication only), read so that no value is ever repeated.
//! - `spec`: the resource's spec as the policy's numbers.
//!
//! Measuring, estimating and deciding are the scaling loop's, shared
//! with the local target; the controller only says when and reports.

mod context;
mod memory;
mod report;
mod secret;
mod spec;
mod surge;
mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::crd::ChannelScaler;
use crate::metrics::{Metrics, ScalerLabels};
use crate::scaling::Target;
pub use context::{Context, Error, MANAGER};
pub use secret::is_connection_property;
pub use spec::policy_spec;
use target::ScaleSubresource;

async fn reconcile(scaler: Arc<ChannelScaler>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let outcome = reconcile_scaler(&scaler, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    outcome
}

/// One reconcile: unless the measurement is not due, resolve the target,
/// refresh the scaler's memory, take a turn of its scaling loop (scaling
/// the target unless paused or contested by an HPA), then report.
async fn reconcile_scaler(
    scaler: &Arc<ChannelScaler>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let namespace = scaler.namespace().unwrap_or_else(|| "default".into());
    let labels = ScalerLabels {
        namespace: namespace.clone(),
        name: scaler.name_any(),
    };
    let key = format!("{namespace}/{}", labels.name);
    let poll = Duration::from_secs(scaler.spec.poll_interval_seconds.max(1) as u64);
    if let Some(wait) = ctx.scalers.not_due(&key, scaler, poll) {
        return Ok(Action::requeue(wait));
    }

    let mut target = ScaleSubresource::resolve(ctx, scaler, &namespace).await?;
    let properties = secret::read(&ctx.client, &namespace, scaler).await?;
    let scaling = ctx.scalers.refresh(
        scaler,
        &key,
        properties,
        poll,
        target.replicas(),
        |scaling| surge::start(ctx, &key, scaler, scaling),
    );
    let conflict =
        target::conflicting_hpa(&ctx.client, &namespace, &scaler.spec.scale_target_ref).await;
    let act = !scaler.spec.paused && conflict.is_none();
    let now = ctx.started.elapsed().as_secs_f64();
    let turn = scaling
        .turn(&mut target, &policy_spec(scaler), now, act)
        .await?;

    if turn.scaled {
        report::scaled(ctx, scaler, &key, &labels, &turn.decision).await;
    }
    let status = report::status(scaler, &turn, conflict.as_deref());
    report::record_metrics(
        &ctx.metrics,
        &labels,
        scaler,
        &turn,
        &status,
        conflict.is_some(),
    );
    let replicas = status.current_replicas.max(0) as u32;
    report::write_status(ctx, scaler, &namespace, status).await?;
    ctx.scalers.completed(&key, replicas);
    Ok(Action::requeue(poll))
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
    let ctx = Arc::new(Context::new(client.clone(), Arc::clone(&metrics), surges));
    let scalers: Api<ChannelScaler> = match &namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    metrics.leader.set(1);
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
    metrics.leader.set(0);
}

//! Each scaler's surge watch: between polls, the topic's end offsets every
//! `surgeWatchSeconds`; when arrivals outrun what the estimator knows and
//! the replicas can process, a reconcile at once
//! (`Controller::reconcile_on`). The watch also forgets scalers that
//! stopped being reconciled (deleted), so their Kafka clients do not
//! linger. What makes a surge is the [`ScalingLoop`]'s to say; what the
//! watch reads and marks of its scaler, its memory's.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::task::AbortHandle;

use super::context::Context;
use crate::crd::ChannelScaler;
use crate::metrics::ScalerLabels;
use crate::scaling::ScalingLoop;

/// What the watch does next.
enum Next {
    /// Read the end offsets after this period.
    Read(Duration),
    /// Off: only look in once a poll, to forget a deleted scaler.
    Idle(Duration),
}

/// Starts the surge watch of the scaler `key` with its new scaling loop.
pub(super) fn start(
    ctx: &Arc<Context>,
    key: &str,
    scaler: &ChannelScaler,
    scaling: Arc<ScalingLoop>,
) -> AbortHandle {
    let task = tokio::spawn(watch(
        Arc::downgrade(ctx),
        key.to_owned(),
        ObjectRef::from_obj(scaler),
        scaling,
    ));
    task.abort_handle()
}

/// One scaler's surge watch. Ends when the scaler's memory is replaced or
/// forgotten, or the controller stops.
async fn watch(
    ctx: Weak<Context>,
    key: String,
    scaler: ObjectRef<ChannelScaler>,
    scaling: Arc<ScalingLoop>,
) {
    loop {
        let Some(next) = ctx.upgrade().and_then(|ctx| next(&ctx, &key)) else {
            return;
        };
        match next {
            Next::Read(period) => tokio::time::sleep(period).await,
            Next::Idle(poll) => {
                tokio::time::sleep(poll).await;
                continue;
            }
        }
        let arrived = match scaling.read_arrivals().await {
            Ok(arrived) => arrived,
            Err(error) => {
                tracing::debug!(scaler = %key, %error, "surge watch read failed");
                continue;
            }
        };
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        let Some(surge) = surge_seen(&ctx, &key, &scaling, arrived) else {
            return;
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

/// The watch's next step, or `None` once the scaler is gone (or
/// forgotten by its memory, no longer reconciled).
fn next(ctx: &Context, key: &str) -> Option<Next> {
    let periods = ctx.scalers.watch_periods(key)?;
    Some(if periods.surge_watch.is_zero() {
        Next::Idle(periods.poll)
    } else {
        Next::Read(periods.surge_watch)
    })
}

/// Whether `arrived` makes a surge worth a reconcile (one at a time), and
/// marks it pending; `None` once the scaler is gone.
fn surge_seen(ctx: &Context, key: &str, scaling: &ScalingLoop, arrived: i64) -> Option<bool> {
    let now = ctx.started.elapsed().as_secs_f64();
    ctx.scalers.surge_seen(key, scaling, now, arrived)
}

fn scaler_labels(scaler: &ObjectRef<ChannelScaler>) -> ScalerLabels {
    ScalerLabels {
        namespace: scaler.namespace.clone().unwrap_or_default(),
        name: scaler.name.clone(),
    }
}

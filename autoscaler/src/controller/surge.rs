//! Each scaler's surge watch: between polls, the topic's end offsets every
//! `surgeWatchSeconds`; when arrivals outrun what the estimator knows and
//! the replicas can process, a reconcile at once
//! (`Controller::reconcile_on`). The watch also forgets scalers that
//! stopped being reconciled (deleted), so their Kafka clients do not
//! linger. What makes a surge is the [`ScalingLoop`]'s to say.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use super::Context;
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

/// One scaler's surge watch. Ends when the scaler's memory is replaced or
/// forgotten, or the controller stops.
pub(super) async fn watch(
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

/// The watch's next step, or `None` once the scaler is gone; a scaler no
/// longer reconciled is forgotten here.
fn next(ctx: &Context, key: &str) -> Option<Next> {
    let mut scalers = ctx.scalers.lock().unwrap();
    let memory = scalers.get(key)?;
    if memory.forgotten() {
        tracing::info!(scaler = %key, "no longer reconciled: forgetting it");
        let forgotten = scalers.remove(key);
        // Its Kafka client closes off the async workers.
        tokio::task::spawn_blocking(move || drop(forgotten));
        return None;
    }
    Some(if memory.surge_watch.is_zero() {
        Next::Idle(memory.poll)
    } else {
        Next::Read(memory.surge_watch)
    })
}

/// Whether `arrived` makes a surge worth a reconcile (one at a time), and
/// marks it pending; `None` once the scaler is gone.
fn surge_seen(ctx: &Context, key: &str, scaling: &ScalingLoop, arrived: i64) -> Option<bool> {
    let mut scalers = ctx.scalers.lock().unwrap();
    let memory = scalers.get_mut(key)?;
    let now = ctx.started.elapsed().as_secs_f64();
    let surge = !memory.surge_watch.is_zero()
        && !memory.surge_pending
        && scaling.surging(now, arrived, memory.replicas);
    memory.surge_pending |= surge;
    Some(surge)
}

fn scaler_labels(scaler: &ObjectRef<ChannelScaler>) -> ScalerLabels {
    ScalerLabels {
        namespace: scaler.namespace.clone().unwrap_or_default(),
        name: scaler.name.clone(),
    }
}

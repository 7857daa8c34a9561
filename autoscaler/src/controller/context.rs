//! What every reconcile shares: the [`Context`] (API client, metrics,
//! Event recorder, clock, the scalers' memories, discovered scale
//! targets, the surge channel), the controller's [`Error`] and its field
//! manager [`MANAGER`]. Imports none of the steps that use it; the
//! memories are a leaf of their own (`memory`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::channel::mpsc::UnboundedSender;
use kube::Client;
use kube::api::ApiResource;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use super::memory::Memories;
use crate::crd::ChannelScaler;
use crate::metrics::Metrics;

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

/// Shared by every reconcile.
pub struct Context {
    pub(super) client: Client,
    pub(super) metrics: Arc<Metrics>,
    pub(super) recorder: Recorder,
    /// The clock of every scaler's estimator and policy.
    pub(super) started: Instant,
    pub(super) scalers: Memories,
    /// Scale targets' API resources by (apiVersion, kind), from discovery.
    pub(super) resources: Mutex<HashMap<(String, String), ApiResource>>,
    /// Where surge watches ask for a reconcile.
    pub(super) surges: UnboundedSender<ObjectRef<ChannelScaler>>,
}

impl Context {
    /// A context with no scaler remembered yet; Events are recorded as
    /// [`MANAGER`], from this pod (`POD_NAME`) when known.
    pub(super) fn new(
        client: Client,
        metrics: Arc<Metrics>,
        surges: UnboundedSender<ObjectRef<ChannelScaler>>,
    ) -> Self {
        Self {
            metrics,
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            client,
            started: Instant::now(),
            scalers: Memories::default(),
            resources: Mutex::new(HashMap::new()),
            surges,
        }
    }
}

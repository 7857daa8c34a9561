//! The scale target: anything with a `/scale` subresource, found through
//! discovery (once per kind), read once per reconcile and scaled as a
//! [`Target`]; and the HorizontalPodAutoscaler that may already scale it.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::context::{Context, Error};
use crate::crd::{ChannelScaler, ScaleTargetRef};
use crate::scaling::Target;

/// A scaler's target through its `/scale` subresource.
pub(super) struct ScaleSubresource {
    /// The target's kind in its scaler's namespace.
    api: Api<DynamicObject>,
    name: String,
    /// `spec.replicas` as read when resolved: one read per reconcile.
    replicas: u32,
}

impl ScaleSubresource {
    /// Finds the scaler's target and reads its replicas.
    pub(super) async fn resolve(
        ctx: &Context,
        scaler: &ChannelScaler,
        namespace: &str,
    ) -> Result<Self, Error> {
        let target = &scaler.spec.scale_target_ref;
        let resource = api_resource(ctx, target).await?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &resource);
        let scale = api.get_scale(&target.name).await?;
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
        Ok(Self {
            api,
            name: target.name.clone(),
            replicas,
        })
    }
}

impl Target for ScaleSubresource {
    type Error = kube::Error;

    fn replicas(&mut self) -> u32 {
        self.replicas
    }

    async fn scale_to(&mut self, replicas: u32) -> Result<(), kube::Error> {
        self.api
            .patch_scale(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": replicas } })),
            )
            .await?;
        self.replicas = replicas;
        Ok(())
    }
}

/// The target's API resource, by discovery the first time its kind is
/// seen: discovery once per kind, not once per poll.
async fn api_resource(ctx: &Context, target: &ScaleTargetRef) -> Result<ApiResource, Error> {
    let type_key = (target.api_version.clone(), target.kind.clone());
    let known = ctx.resources.lock().unwrap().get(&type_key).cloned();
    if let Some(resource) = known {
        return Ok(resource);
    }
    let (group, version) = match target.api_version.split_once('/') {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (String::new(), target.api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &target.kind);
    let (resource, _) = kube::discovery::pinned_kind(&ctx.client, &gvk)
        .await
        .map_err(|_| Error::UnknownTarget(format!("{}/{}", target.kind, target.name)))?;
    ctx.resources
        .lock()
        .unwrap()
        .insert(type_key, resource.clone());
    Ok(resource)
}

/// The HPA that also scales `target`, if any: two scalers on one target
/// fight, so the controller reports it and leaves the target alone.
pub(super) async fn conflicting_hpa(
    client: &Client,
    namespace: &str,
    target: &ScaleTargetRef,
) -> Option<String> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let list = hpas.list(&ListParams::default()).await.ok()?;
    list.items
        .into_iter()
        .find(|hpa| {
            hpa.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == target.kind && s.scale_target_ref.name == target.name
            })
        })
        .map(|hpa| hpa.name_any())
}

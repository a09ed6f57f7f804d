//! The ramdisk side of `iscsi` deploys for tests: a node waiting for `pass_deploy_info`
//! "boots" the simulated iSCSI ramdisk ([`sim::SimIscsiRamdisk`]) with the credentials of
//! its token file, which exports its disk and calls back through the same rule the API's
//! vendor passthru applies ([`deploy::iscsi::accept_callback`]), followed by the event the
//! API publishes.

use std::time::Duration;

use deploy::iscsi::{DeployInfo, IscsiSession, accept_callback};
use deploy::{NodeId, PowerState, ProvisionState, PublicError};
use sim::SimIscsiRamdisk;
use store::{DataStore, NodeListQuery};
use tokio_util::sync::CancellationToken;

/// Call back `pass_deploy_info` for `node` with `key` and `info` as the API does: the
/// refusals are the API's ([`deploy::iscsi::CallbackError`] as a [`PublicError`]).
///
/// # Errors
/// The refusal, or database and bus errors.
pub async fn pass_deploy_info(
    store: &DataStore,
    bus: &bus::DynBus,
    node: NodeId,
    key: &str,
    info: &DeployInfo,
) -> Result<(), PublicError> {
    let (n, ()) = store
        .node_modify(node, |n| accept_callback(n, key, info).map_err(PublicError::from))
        .await?
        .into_result(node)?;
    super::publish_heartbeat(bus, node, &n.provision_state.to_string()).await
}

/// Boot the iSCSI ramdisk of `node` if it waits for one, powered on: export and call back.
/// Returns whether it did.
///
/// # Errors
/// The ramdisk could not export, or the callback was refused.
pub async fn boot_ramdisk(
    store: &DataStore,
    bus: &bus::DynBus,
    ramdisk: &SimIscsiRamdisk,
    node: NodeId,
) -> Result<bool, PublicError> {
    let n = store.node_fetch(node).await?;
    if n.provision_state != ProvisionState::WaitCallBack
        || n.power_state != Some(PowerState::On)
        || n.reservation.is_some()
    {
        return Ok(false);
    }
    let Some(creds) = IscsiSession::export_credentials(&n) else { return Ok(false) };
    let info = ramdisk.boot(node, &creds).await.map_err(|e| {
        PublicError::unavailable(format!("the simulated ramdisk cannot export: {e}"))
    })?;
    pass_deploy_info(store, bus, node, &creds.deploy_key, &info).await?;
    Ok(true)
}

/// Boot the iSCSI ramdisk of every node that waits for one, every `period`, until `token`.
pub async fn run_ramdisks(
    store: DataStore,
    bus: bus::DynBus,
    ramdisk: SimIscsiRamdisk,
    period: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let q = NodeListQuery {
            provision_states: vec![ProvisionState::WaitCallBack],
            ..Default::default()
        };
        let Ok(nodes) = crate::periodic::list_all_store(&store, q).await else { continue };
        for n in nodes.into_iter().filter(|n| IscsiSession::of(n).key_pending) {
            if let Err(e) = boot_ramdisk(&store, &bus, &ramdisk, n.uuid).await {
                tracing::warn!(node = %n.uuid, error = %e, "simulated iSCSI ramdisk failed");
            }
        }
    }
}

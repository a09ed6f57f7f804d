//! Periodic tasks (reference §5.4): liveness heartbeat, takeover of dead conductors' nodes
//! and stale-lock cleanup, the sweep that heals lost wake-ups, callback timeouts and the
//! power-state sync. The allocations' sweep is [`crate::allocation::sweep`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use deploy::{Node, NodeId, PowerState, ProvisionState as S};
use proto::events::event::Payload;
use store::NodeListQuery;

use crate::Ctx;
use crate::task::{LockGuard, Task};
use crate::worker::wake_owned;
use crate::workflows::{agent_called_back, fail_current, work_for};

/// Run `f` every `period` until shutdown (first run after one period).
pub async fn every<F, Fut>(ctx: Arc<Ctx>, name: &'static str, period: Duration, mut f: F)
where
    F: FnMut(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if period.is_zero() {
        tracing::info!(task = name, "periodic task disabled");
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = ctx.token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let span = tracing::debug_span!("periodic", task = name);
        tracing::Instrument::instrument(f(ctx.clone()), span).await;
    }
}

/// Touch this conductor's row.
pub async fn heartbeat(ctx: Arc<Ctx>) {
    if let Err(e) = ctx.store.conductor_heartbeat(&ctx.cfg.hostname, ctx.clock.now()).await {
        tracing::warn!(error = %common::ErrorChain(&e), "conductor heartbeat failed");
        // Re-register in case the row was removed.
        let _ = ctx.store.conductor_register(&ctx.registration(), ctx.clock.now()).await;
    }
}

/// Declare conductors dead whose heartbeat is older than the liveness timeout, release
/// their locks and any lock whose holder is not a live conductor, then sweep so their
/// nodes are driven again.
pub async fn takeover(ctx: Arc<Ctx>) {
    let timeout =
        chrono::Duration::from_std(ctx.cfg.liveness_timeout()).unwrap_or(chrono::Duration::MAX);
    let before = ctx.clock.now() - timeout;
    let mut released_any = false;
    match ctx.store.conductor_list_stale(before).await {
        Ok(dead) => {
            for c in dead.iter().filter(|c| c.hostname != ctx.cfg.hostname) {
                match ctx.store.node_release_all_held_by(&c.hostname).await {
                    Ok(n) => {
                        if n > 0 || c.online {
                            tracing::warn!(conductor = %c.hostname, released = n, "conductor is dead; took over its nodes");
                        }
                        released_any |= n > 0;
                    }
                    Err(e) => {
                        tracing::error!(conductor = %c.hostname, error = %common::ErrorChain(&e), "cannot release locks")
                    }
                }
                if c.online {
                    let _ = ctx.store.conductor_unregister(&c.hostname).await;
                }
            }
        }
        Err(e) => tracing::warn!(error = %common::ErrorChain(&e), "cannot list stale conductors"),
    }
    // Locks held by names that are not live conductors at all (stale-lock cleanup).
    if let Ok(all) = ctx.store.conductor_list().await {
        let live: HashSet<String> = all
            .into_iter()
            .filter(|c| c.online && c.last_heartbeat >= before)
            .map(|c| c.hostname)
            .collect();
        let q = NodeListQuery { reserved: Some(true), ..Default::default() };
        if let Ok(nodes) = list_all(&ctx, q).await {
            let holders: HashSet<String> = nodes
                .into_iter()
                .filter_map(|n| n.reservation)
                .filter(|h| !live.contains(h) && *h != ctx.cfg.hostname)
                .collect();
            for h in holders {
                if let Ok(n) = ctx.store.node_release_all_held_by(&h).await {
                    tracing::warn!(holder = %h, released = n, "released stale locks");
                    released_any |= n > 0;
                }
            }
        }
    }
    if released_any {
        sweep(ctx).await;
    }
}

/// Every page of a node listing.
pub async fn list_all(ctx: &Ctx, q: NodeListQuery) -> Result<Vec<Node>, deploy::PublicError> {
    list_all_store(&ctx.store, q).await
}

/// Every page of a node listing, from a store.
pub async fn list_all_store(
    store: &store::DataStore,
    mut q: NodeListQuery,
) -> Result<Vec<Node>, deploy::PublicError> {
    let mut out = Vec::new();
    loop {
        let page = store.node_list(&q).await?;
        let full = page.len() >= q.limit as usize;
        q.marker = page.last().map(|n| n.uuid);
        out.extend(page);
        if !full || q.marker.is_none() {
            return Ok(out);
        }
    }
}

/// Find unlocked nodes that need a conductor (working states, wait states whose agent
/// called back, pending power requests) and wake them.
pub async fn sweep(ctx: Arc<Ctx>) {
    let q = NodeListQuery {
        reserved: Some(false),
        provision_states: vec![
            S::Verifying,
            S::Deploying,
            S::Cleaning,
            S::Deleting,
            S::WaitCallBack,
            S::CleanWait,
        ],
        ..Default::default()
    };
    let nodes = match list_all(&ctx, q).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %common::ErrorChain(&e), "sweep cannot list nodes");
            return;
        }
    };
    let due: Vec<NodeId> = nodes.iter().filter(|n| work_for(n).is_some()).map(|n| n.uuid).collect();
    if !due.is_empty() {
        tracing::info!(nodes = due.len(), "sweep found nodes to drive");
    }
    for id in due {
        ctx.tracker.spawn(wake_owned(ctx.clone(), id));
    }
}

/// Fail nodes that waited for their agent longer than the callback timeout.
pub async fn callback_timeouts(ctx: Arc<Ctx>) {
    let q = NodeListQuery {
        reserved: Some(false),
        maintenance: Some(false),
        provision_states: vec![S::WaitCallBack, S::CleanWait],
        ..Default::default()
    };
    let Ok(nodes) = list_all(&ctx, q).await else { return };
    let limit = ctx.cfg.callback_timeout();
    let cutoff =
        ctx.clock.now() - chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
    for n in nodes {
        let expired = n.provision_updated_at.is_none_or(|t| t < cutoff);
        if !expired || agent_called_back(&n) {
            continue;
        }
        let Ok((guard, node)) = LockGuard::acquire(&ctx, n.uuid).await else { continue };
        // Re-check under the lock: the agent may have called back meanwhile.
        let still = node.provision_state == n.provision_state
            && !agent_called_back(&node)
            && node.provision_updated_at.is_none_or(|t| t < cutoff);
        if still {
            let what = match node.provision_state {
                S::WaitCallBack => "the deploy ramdisk's agent to call back (wait call-back)",
                _ => "the cleaning ramdisk's agent to call back (clean wait)",
            };
            let msg = format!(
                "Timeout reached while waiting for callback for node {}: no heartbeat from {what} within {}s",
                node.uuid,
                limit.as_secs()
            );
            let mut task = Task { ctx: ctx.clone(), node };
            if let Err(e) = fail_current(&mut task, &msg).await {
                tracing::error!(node = %n.uuid, error = %common::ErrorChain(&e), "could not fail timed-out node");
            }
        }
        guard.release().await;
    }
}

/// Read every eligible node's power state from its BMC; record out-of-band changes and
/// put a node into maintenance after repeated BMC failures.
pub async fn power_sync(ctx: Arc<Ctx>) {
    let q = NodeListQuery { maintenance: Some(false), reserved: Some(false), ..Default::default() };
    let Ok(nodes) = list_all(&ctx, q).await else { return };
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for n in nodes {
        if n.target_power_state.is_some() && !n.provision_state.is_transient_working() {
            // A pending request whose message was lost: drive it.
            set.spawn(wake_owned(ctx.clone(), n.uuid));
            continue;
        }
        if n.provision_state.skips_power_sync() || n.provision_state.is_transient_working() {
            continue;
        }
        set.spawn(sync_one(ctx.clone(), sem.clone(), n));
    }
    while set.join_next().await.is_some() {}
}

fn sync_one(
    ctx: Arc<Ctx>,
    sem: Arc<tokio::sync::Semaphore>,
    n: Node,
) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let _permit = sem.acquire().await;
        sync_one_inner(&ctx, n).await;
    })
}

async fn sync_one_inner(ctx: &Arc<Ctx>, n: Node) {
    let Ok(d) = ctx.drivers.for_node(&n) else { return };
    match d.power.get_power_state(&n).await {
        Ok(actual) => {
            ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&n.uuid);
            if n.power_state == Some(actual) {
                return;
            }
            let Ok((guard, node)) = LockGuard::acquire(ctx, n.uuid).await else { return };
            let mut task = Task { ctx: ctx.clone(), node };
            let before = task.node.power_state;
            let res = task
                .update(|x| {
                    x.power_state = Some(actual);
                    Ok(())
                })
                .await;
            if res.is_ok() {
                let text = format!(
                    "power state changed out of band: {} -> {actual}",
                    before.map_or_else(|| "None".to_owned(), |p| p.to_string())
                );
                tracing::warn!(node = %n.uuid, %actual, "power state changed out of band");
                task.record_history("INFO", "power", &text, None, None).await;
            }
            guard.release().await;
        }
        Err(e) => {
            let count = {
                let mut m = ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner());
                let c = m.entry(n.uuid).or_insert(0);
                *c += 1;
                *c
            };
            tracing::warn!(node = %n.uuid, failures = count, error = %e, "power sync failed");
            if count < ctx.cfg.power_sync_max_failures {
                return;
            }
            let Ok((guard, node)) = LockGuard::acquire(ctx, n.uuid).await else { return };
            let mut task = Task { ctx: ctx.clone(), node };
            let reason =
                format!("During sync_power_state, max retries exceeded for node {}: {e}", n.uuid);
            let r = reason.clone();
            let res = task
                .update(|x| {
                    x.maintenance = true;
                    x.maintenance_reason = Some(r.clone());
                    x.fault = Some("power failure".into());
                    x.power_state = Some(PowerState::Error);
                    Ok(())
                })
                .await;
            if res.is_ok() {
                ctx.power_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&n.uuid);
                task.record_history("ERROR", "maintenance", &reason, None, None).await;
                ctx.publish(
                    n.uuid,
                    Payload::MaintenanceChanged(proto::events::MaintenanceChanged {
                        maintenance: true,
                        reason: reason.clone(),
                    }),
                )
                .await;
                tracing::error!(node = %n.uuid, "node put into maintenance after power sync failures");
            }
            guard.release().await;
        }
    }
}

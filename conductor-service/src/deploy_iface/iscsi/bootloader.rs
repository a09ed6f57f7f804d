//! The `install_bootloader` step of a partition image written over iSCSI: the conductor
//! asks the ramdisk, on its notification listener ([`iscsi::notify::ask`]), to format the
//! ephemeral partition and install the bootloader ([`BootloaderInstall`], recorded by the
//! write), and waits for its report ([`BootloaderReport`], the fields of Ironic's
//! `pass_bootloader_install_info`). The ramdisk keeps exporting meanwhile: on a failure the
//! conductor logs in again and wipes the partition tables, so the node is left with nothing
//! bootable, and the ramdisk's error becomes `last_error`. Either way the ramdisk is told
//! the outcome (`done` or `stop`) last.

use std::time::Duration;

use deploy::iscsi::{BootloaderReport, IscsiSession};
use iscsi::notify::{self, Outcome};

use super::{NET_TIMEOUT, initiator_config, resolve, wipe_edges};
use crate::task::{Task, WorkflowError};

/// How long `grub-install`, `efibootmgr` and `mkfs` may take on the node.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Ask, wait, and wipe the tables on failure. The caller forgets the session.
pub(super) async fn install(task: &mut Task) -> Result<(), WorkflowError> {
    let node = task.node.clone();
    let fail = |m: String| WorkflowError::Failed(m);
    let req = IscsiSession::bootloader(&node).ok_or_else(|| {
        fail("No bootloader install was recorded: the image was not written over iSCSI".into())
    })?;
    let cb = IscsiSession::of(&node).callback.ok_or_else(|| {
        fail("The deploy ramdisk has not called back with pass_deploy_info".into())
    })?;
    let portal = resolve(&cb.address, cb.iscsi_port()).await.map_err(fail)?;
    let notify_at = std::net::SocketAddr::new(portal.ip(), cb.done_port());
    let body = serde_json::to_string(&req)
        .map_err(|e| fail(format!("Encoding the bootloader install request failed: {e}")))?;
    tracing::info!(node = %task.id(), root_uuid = %req.root_uuid, boot_mode = %req.boot_mode,
        ephemeral = req.ephemeral.is_some(), "asking the ramdisk to install the bootloader");
    let asked = tokio::select! {
        // Shutdown first: the node stays in `deploying`; a takeover asks again (the step is
        // idempotent and the ramdisk still exports).
        biased;
        () = task.ctx.token.cancelled() => return Err(WorkflowError::Shutdown),
        r = notify::ask(notify_at, &body, INSTALL_TIMEOUT) => r,
    };
    let result = match asked {
        Ok(line) => match serde_json::from_str::<BootloaderReport>(&line) {
            Ok(report) => report
                .result()
                .map_err(|e| format!("The deploy ramdisk failed to install the bootloader: {e}")),
            Err(_) => Err("The deploy ramdisk answered the bootloader install with an \
                           unreadable report"
                .to_owned()),
        },
        Err(e) => Err(format!(
            "Asking the deploy ramdisk to install the bootloader failed: {}",
            common::ErrorChain(&e)
        )),
    };
    let result = match result {
        Ok(()) => {
            tracing::info!(node = %task.id(), "the ramdisk installed the bootloader");
            Ok(())
        }
        Err(msg) => {
            // The table and the root filesystem are on the disk: take the table away.
            let cfg = initiator_config(task, &node)?;
            Err(match wipe_edges(portal, &cb.iqn, &cfg).await {
                Ok(()) => msg,
                Err(e) => {
                    format!("{msg}. Additionally, wiping the disk's partition tables failed: {e}")
                }
            })
        }
    };
    let outcome = if result.is_ok() { Outcome::Done } else { Outcome::Stop };
    if let Err(e) = notify::notify(notify_at, outcome, NET_TIMEOUT).await {
        tracing::warn!(node = %task.id(), error = %common::ErrorChain(&e), "the ramdisk was not told to stop exporting");
    }
    result.map_err(fail)
}

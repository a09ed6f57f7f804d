//! The ramdisk's logs, collected as Ironic collects them (`[agent] deploy_logs_collect`):
//! when a deploy or a cleaning fails, or at the end of every one with `always`, the conductor
//! asks ironic-python-agent for `log.collect_system_logs` (a base64 gzipped tar of its
//! journal, dmesg, command outputs) and stores it under `deploy_logs_local_path` as
//! `<node uuid>[_<node name>][_<instance uuid>][_<label>]_<YYYY-mm-dd-HH-MM-SS>.tar.gz`.
//!
//! Collecting never changes the outcome: an agent that cannot send its logs, or a directory
//! that cannot be written, is logged and the operation goes on. Ferric's own agent streams
//! its progress and errors to the conductor and has no log archive to send.

use base64::Engine as _;
use deploy::internal_info::AgentSession;

use crate::config::DeployLogsCollect;
use crate::task::Task;

/// Collect the logs of the node's ironic-python-agent if the configuration asks for them
/// (`failed`: the operation failed). `label` names the operation or step.
pub(crate) async fn collect(task: &Task, failed: bool, label: Option<&str>) {
    let want = match task.ctx.cfg.agent.deploy_logs_collect {
        DeployLogsCollect::Never => false,
        DeployLogsCollect::OnFailure => failed,
        DeployLogsCollect::Always => true,
    };
    let session = AgentSession::of(&task.node);
    if !want || !session.called_back() || !crate::ipa_ops::is_ipa(&task.node) {
        return;
    }
    let logs = match crate::ipa_ops::system_logs(task).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(node = %task.id(), error = %e, "failed to collect the ramdisk's logs");
            return;
        }
    };
    let bytes = match base64::engine::general_purpose::STANDARD.decode(logs.trim()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(node = %task.id(), error = %e, "the ramdisk's logs are not base64");
            return;
        }
    };
    let dir = task.ctx.cfg.agent.deploy_logs_local_path.clone();
    let path = dir.join(file_name(task, label));
    let written = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes))
    })
    .await;
    match written {
        Ok(Ok(())) => {
            tracing::info!(node = %task.id(), path = %path.display(), "stored the ramdisk's logs");
        }
        Ok(Err(e)) => {
            tracing::error!(node = %task.id(), path = %path.display(), error = %e, "failed to store the ramdisk's logs");
        }
        Err(e) => {
            tracing::error!(node = %task.id(), error = %e, "storing the ramdisk's logs stopped")
        }
    }
}

/// Ironic's file name for a node's logs, stamped now.
fn file_name(task: &Task, label: Option<&str>) -> String {
    let n = &task.node;
    let mut fields = vec![n.uuid.to_string()];
    fields.extend(n.name.clone());
    fields.extend(n.instance_uuid.clone());
    fields.extend(label.map(str::to_owned));
    fields.push(task.ctx.clock.now().format("%Y-%m-%d-%H-%M-%S").to_string());
    // A name or label never leaves the directory.
    let name = fields.join("_").replace(['/', '\0'], "-");
    format!("{name}.tar.gz")
}

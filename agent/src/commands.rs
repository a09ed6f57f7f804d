//! Command bookkeeping: one command at a time, a bounded history that survives client
//! reconnects, and a progress broadcast per running command.

use std::collections::VecDeque;
use std::sync::Mutex;

use proto::agent::{CommandState, CommandStatus, Progress};
use tokio::sync::broadcast;

const HISTORY: usize = 100;

#[derive(Debug, Clone)]
struct Record {
    status: CommandStatus,
}

#[derive(Default)]
struct Inner {
    running: Option<String>,
    records: VecDeque<Record>,
    progress_tx: Option<broadcast::Sender<Progress>>,
}

/// Why a command could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginError {
    /// Another command is running.
    Busy {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
    },
    /// The command id was used before.
    Duplicate,
}

/// The command table.
#[derive(Default)]
pub struct Commands {
    inner: Mutex<Inner>,
}

impl Commands {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the data (plain
        // records) is still consistent enough to report.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start a command; returns its id and the progress sender.
    ///
    /// # Errors
    /// [`BeginError::Busy`] while another command runs.
    pub fn begin(
        &self,
        name: &str,
        id: Option<&str>,
    ) -> Result<(String, broadcast::Sender<Progress>), BeginError> {
        let mut g = self.lock();
        if let Some(r) = &g.running {
            let name = g
                .records
                .iter()
                .find(|x| &x.status.command_id == r)
                .map(|x| x.status.name.clone())
                .unwrap_or_default();
            return Err(BeginError::Busy { id: r.clone(), name });
        }
        let id = id
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if g.records.iter().any(|r| r.status.command_id == id) {
            return Err(BeginError::Duplicate);
        }
        let (tx, _) = broadcast::channel(64);
        g.running = Some(id.clone());
        g.progress_tx = Some(tx.clone());
        if g.records.len() >= HISTORY {
            g.records.pop_front();
        }
        g.records.push_back(Record {
            status: CommandStatus {
                command_id: id.clone(),
                name: name.to_owned(),
                state: CommandState::Running as i32,
                ..CommandStatus::default()
            },
        });
        Ok((id, tx))
    }

    /// Record the latest progress of a command.
    pub fn set_progress(&self, id: &str, p: &Progress) {
        let mut g = self.lock();
        if let Some(r) = g.records.iter_mut().find(|r| r.status.command_id == id) {
            r.status.progress = Some(p.clone());
        }
    }

    /// Subscribe to the running command's progress (if `id` is the running command).
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<Progress>> {
        let g = self.lock();
        if g.running.as_deref() == Some(id) {
            g.progress_tx.as_ref().map(broadcast::Sender::subscribe)
        } else {
            None
        }
    }

    /// Finish a command with its result JSON or an error message.
    pub fn finish(&self, id: &str, result: Result<serde_json::Value, String>) -> CommandStatus {
        let mut g = self.lock();
        if g.running.as_deref() == Some(id) {
            g.running = None;
            g.progress_tx = None;
        }
        let Some(r) = g.records.iter_mut().find(|r| r.status.command_id == id) else {
            return CommandStatus::default();
        };
        match result {
            Ok(v) => {
                r.status.state = CommandState::Succeeded as i32;
                r.status.result_json = v.to_string();
            }
            Err(e) => {
                r.status.state = CommandState::Failed as i32;
                r.status.error = e;
            }
        }
        r.status.clone()
    }

    /// Status of a command, or of the last one when `id` is empty.
    pub fn status(&self, id: &str) -> Option<CommandStatus> {
        let g = self.lock();
        if id.is_empty() {
            g.records.back().map(|r| r.status.clone())
        } else {
            g.records.iter().find(|r| r.status.command_id == id).map(|r| r.status.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_one_command_at_a_time() {
        let c = Commands::default();
        let (a, _) = c.begin("sync", None).unwrap();
        assert!(matches!(c.begin("erase", None), Err(BeginError::Busy { .. })));
        c.finish(&a, Ok(serde_json::json!({})));
        let (b, _) = c.begin("erase", Some("x1")).unwrap();
        assert_eq!(b, "x1");
        c.finish(&b, Err("boom".into()));
        assert_eq!(c.status("").unwrap().error, "boom");
        assert_eq!(c.status(&a).unwrap().state, CommandState::Succeeded as i32);
        assert!(matches!(c.begin("again", Some("x1")), Err(BeginError::Duplicate)));
    }
}

//! Live progress per node, fed by gRPC `WatchNode` events: a bar per node (bytes written
//! while the image streams, the provision state otherwise), or one aggregate bar for large
//! fleets. Bars draw on stderr and hide themselves when it is not a terminal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::api::NodeEvent;
use proto::api::node_event::Kind;

/// What is known about one node's deploy.
#[derive(Debug, Clone, Default)]
pub struct NodeTrack {
    /// Last provision state seen.
    pub state: String,
    /// Last error seen.
    pub last_error: String,
    /// Bytes written / total, from progress events.
    pub bytes_written: u64,
    /// Total bytes of the image.
    pub total_bytes: u64,
    /// Write rate the agent reported last.
    pub rate_bytes_per_sec: u64,
    /// When the node reached a final state.
    pub finished: Option<Instant>,
}

/// The display and the per-node tracks.
pub struct Board {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    overall: Option<ProgressBar>,
    /// Tracks by node UUID.
    pub tracks: HashMap<String, NodeTrack>,
    final_states: Vec<&'static str>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("tracks", &self.tracks.len()).finish_non_exhaustive()
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>10} [{bar:30.cyan/blue}] {bytes:>9}/{total_bytes:<9} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Board {
    /// A board for `nodes` (uuid, name); per-node bars when there are at most `max_bars`.
    pub fn new(
        nodes: &[(String, String)],
        max_bars: usize,
        final_states: Vec<&'static str>,
    ) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        let mut bars = HashMap::new();
        let mut overall = None;
        if nodes.len() <= max_bars {
            for (uuid, name) in nodes {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(bar_style());
                b.set_prefix(name.clone());
                b.set_message("waiting");
                bars.insert(uuid.clone(), b);
            }
        } else {
            let b = multi.add(ProgressBar::new(nodes.len() as u64));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40.cyan/blue}] {pos}/{len} nodes done {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix("deploying");
            overall = Some(b);
        }
        let tracks = nodes.iter().map(|(uuid, _)| (uuid.clone(), NodeTrack::default())).collect();
        Board { multi, bars, overall, tracks, final_states }
    }

    /// Applies one `WatchNode` event.
    pub fn apply(&mut self, ev: &NodeEvent) {
        let Some(track) = self.tracks.get_mut(&ev.node_uuid) else { return };
        let bar = self.bars.get(&ev.node_uuid);
        match &ev.kind {
            Some(Kind::State(s)) if !s.provision_state.is_empty() => {
                let was_final = self.final_states.contains(&track.state.as_str());
                track.state.clone_from(&s.provision_state);
                track.last_error.clone_from(&s.last_error);
                // `deploy failed` keeps its target (`active`), so the state alone decides.
                let now_final = self.final_states.contains(&track.state.as_str());
                if now_final && track.finished.is_none() {
                    track.finished = Some(Instant::now());
                }
                if let Some(b) = bar {
                    let msg = if s.last_error.is_empty() {
                        s.provision_state.clone()
                    } else {
                        format!("{}: {}", s.provision_state, s.last_error)
                    };
                    b.set_message(msg);
                    if now_final {
                        b.finish();
                    }
                }
                if let Some(o) = &self.overall
                    && now_final
                    && !was_final
                {
                    o.inc(1);
                }
            }
            Some(Kind::State(_)) => {}
            Some(Kind::Progress(p)) => {
                track.bytes_written = p.bytes_written;
                track.total_bytes = p.total_bytes.max(track.total_bytes);
                if p.rate_bytes_per_sec > 0 {
                    track.rate_bytes_per_sec = p.rate_bytes_per_sec;
                }
                if let Some(b) = bar {
                    b.set_length(track.total_bytes);
                    b.set_position(p.bytes_written);
                    let phase = if p.phase.is_empty() { "writing" } else { p.phase.as_str() };
                    b.set_message(format!("{} {phase}", track.state));
                }
            }
            None => {}
        }
    }

    /// Records a state read by polling (when an event may have been missed).
    pub fn apply_polled(&mut self, uuid: &str, state: &str, target: &str, last_error: &str) {
        let ev = NodeEvent {
            node_uuid: uuid.to_owned(),
            node_name: String::new(),
            kind: Some(Kind::State(proto::api::StateChanged {
                provision_state: state.to_owned(),
                target_provision_state: target.to_owned(),
                last_error: last_error.to_owned(),
                ..Default::default()
            })),
            timestamp: String::new(),
        };
        if self.tracks.get(uuid).is_some_and(|t| t.state != state || t.last_error != last_error) {
            self.apply(&ev);
        }
    }

    /// Whether every node reached a final state.
    pub fn all_final(&self) -> bool {
        self.tracks.values().all(|t| t.finished.is_some())
    }

    /// Removes the bars from the screen.
    pub fn clear(&self) {
        for b in self.bars.values() {
            b.finish();
        }
        if let Some(o) = &self.overall {
            o.finish();
        }
        let _ = self.multi.clear();
    }

    /// Sets a message on the aggregate bar (large fleets).
    pub fn set_overall_message(&self, msg: String) {
        if let Some(o) = &self.overall {
            o.set_message(msg);
        }
    }
}

/// MB/s (10^6 bytes) of `bytes` over `d`.
pub fn mb_per_sec(bytes: u64, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "image sizes are far below 2^52 bytes")]
    let b = bytes as f64;
    b / 1e6 / secs
}

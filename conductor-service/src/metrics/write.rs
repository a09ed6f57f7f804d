//! The agent's image writes as its progress stream reports them (`ferric_agent_*`): bytes
//! written, the write's throughput and the time spent in each phase, recorded once per
//! deploy by the conductor that drives it ([`WriteMeter`]), which also hands the deploy its
//! own record of the write ([`WriteSummary`], kept in the node's `driver_internal_info`).
//!
//! Phase times are measured here, between the first progress message of a phase and the
//! first of the next, so they include the stream's latency (milliseconds against phases
//! of seconds to hours); the throughput is the agent's own rate when it reports one.

use std::collections::BTreeMap;
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use proto::agent::{Phase, Progress};

use super::{LONG_BUCKETS, RATE_BUCKETS, register};

/// The `ferric_agent_*` families.
#[derive(Debug, Clone)]
pub(crate) struct WriteFamilies {
    bytes: IntCounter,
    writes: IntCounterVec,
    throughput: Histogram,
    phase: HistogramVec,
    duration: HistogramVec,
}

impl WriteFamilies {
    pub(crate) fn new(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            bytes: register(
                r,
                IntCounter::new(
                    "ferric_agent_write_bytes_total",
                    "Image bytes agents wrote to disks, as their final progress reported",
                )?,
            )?,
            writes: register(
                r,
                IntCounterVec::new(
                    Opts::new("ferric_agent_image_writes_total", "Image writes, by outcome"),
                    &["outcome"],
                )?,
            )?,
            throughput: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ferric_agent_write_throughput_bytes_per_second",
                        "Throughput of each image write (one observation per deploy)",
                    )
                    .buckets(RATE_BUCKETS.to_vec()),
                )?,
            )?,
            phase: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ferric_agent_phase_duration_seconds",
                        "Time image writes spent in each phase (starting, downloading, \
                         verifying, configdrive)",
                    )
                    .buckets(LONG_BUCKETS.to_vec()),
                    &["phase"],
                )?,
            )?,
            duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ferric_agent_write_duration_seconds",
                        "Whole image writes, from the request to the final progress, by outcome",
                    )
                    .buckets(LONG_BUCKETS.to_vec()),
                    &["outcome"],
                )?,
            )?,
        })
    }
}

fn phase_label(phase: i32) -> &'static str {
    match Phase::try_from(phase).unwrap_or(Phase::Unspecified) {
        Phase::Unspecified => "unspecified",
        Phase::Starting => "starting",
        Phase::Downloading => "downloading",
        Phase::Verifying => "verifying",
        Phase::Configdrive => "configdrive",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

/// One image write as the deploy records it: what the metrics count, for this node alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WriteSummary {
    /// `done` or `failed`.
    pub outcome: &'static str,
    /// Bytes written, as the final progress reported.
    pub bytes_written: u64,
    /// From the request to the final progress.
    pub seconds: f64,
    /// The agent's own rate when it reported one, else bytes over the whole time.
    pub rate_bytes_per_sec: f64,
    /// Seconds spent in each phase the stream showed (`starting`, `downloading`, ...).
    pub phases: BTreeMap<&'static str, f64>,
}

/// Follows one image write's progress stream and records it when it ends.
#[derive(Debug)]
pub struct WriteMeter {
    started: Instant,
    phase: Option<(i32, Instant)>,
    phases: BTreeMap<&'static str, f64>,
}

impl Default for WriteMeter {
    fn default() -> Self {
        Self::start()
    }
}

impl WriteMeter {
    /// A write was requested now.
    pub fn start() -> Self {
        Self { started: Instant::now(), phase: None, phases: BTreeMap::new() }
    }

    /// A progress message arrived: a new phase closes the previous one.
    pub fn progress(&mut self, p: &Progress) {
        match self.phase {
            Some((current, _)) if current == p.phase => {}
            previous => {
                if let Some((phase, since)) = previous {
                    self.close_phase(phase, since);
                }
                self.phase = Some((p.phase, Instant::now()));
            }
        }
    }

    /// The write ended with `last` (the final progress, streamed or polled): records it in
    /// the metrics and returns the deploy's own summary.
    pub fn finish(mut self, last: &Progress) -> WriteSummary {
        if let Some((phase, since)) = self.phase.take()
            && phase != last.phase
        {
            self.close_phase(phase, since);
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let ok = Phase::try_from(last.phase) == Ok(Phase::Done);
        let outcome = if ok { "done" } else { "failed" };
        let rate = if last.rate_bytes_per_sec > 0 {
            last.rate_bytes_per_sec as f64
        } else {
            last.bytes_written as f64 / elapsed.max(1e-3)
        };
        if let Some(m) = super::get() {
            let f = &m.write;
            f.writes.with_label_values(&[outcome]).inc();
            f.duration.with_label_values(&[outcome]).observe(elapsed);
            f.bytes.inc_by(last.bytes_written);
            if ok && last.bytes_written > 0 {
                f.throughput.observe(rate);
            }
        }
        WriteSummary {
            outcome,
            bytes_written: last.bytes_written,
            seconds: elapsed,
            rate_bytes_per_sec: rate,
            phases: self.phases,
        }
    }

    /// `phase` lasted from `since` until now.
    fn close_phase(&mut self, phase: i32, since: Instant) {
        let label = phase_label(phase);
        if matches!(label, "done" | "failed" | "unspecified") {
            return;
        }
        let secs = since.elapsed().as_secs_f64();
        *self.phases.entry(label).or_default() += secs;
        if let Some(m) = super::get() {
            m.write.phase.with_label_values(&[label]).observe(secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(phase: Phase, bytes: u64) -> Progress {
        Progress { phase: phase as i32, bytes_written: bytes, ..Progress::default() }
    }

    #[test]
    fn test_a_write_records_bytes_throughput_and_phases() {
        let mut w = WriteMeter::start();
        w.progress(&progress(Phase::Starting, 0));
        w.progress(&progress(Phase::Downloading, 10));
        w.progress(&progress(Phase::Downloading, 1 << 20));
        w.progress(&progress(Phase::Verifying, 2 << 20));
        let summary = w.finish(&progress(Phase::Done, 2 << 20));
        assert_eq!(summary.outcome, "done");
        assert_eq!(summary.bytes_written, 2 << 20);
        assert!(summary.rate_bytes_per_sec > 0.0);
        assert_eq!(
            summary.phases.keys().copied().collect::<Vec<_>>(),
            ["downloading", "starting", "verifying"]
        );
        let text = super::super::render();
        for want in [
            "ferric_agent_phase_duration_seconds_count{phase=\"starting\"}",
            "ferric_agent_phase_duration_seconds_count{phase=\"downloading\"}",
            "ferric_agent_phase_duration_seconds_count{phase=\"verifying\"}",
            "ferric_agent_image_writes_total{outcome=\"done\"}",
            "ferric_agent_write_throughput_bytes_per_second_count",
            "ferric_agent_write_bytes_total",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(!text.contains("phase=\"done\""));
    }
}

//! Streaming the image onto the exported disk: the fetched chunks are hashed and written
//! into a region of the disk (the whole disk, or a partition image's root partition) with
//! several WRITE commands in flight, a qcow2 image converted to its guest's bytes on the
//! way, and the region's first [`EDGE`] bytes held back until the digest verified.

use deploy::steps::Step;
use image::checksum::StreamHasher;
use iscsi::initiator::{InitiatorError, Session};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{EDGE, PROGRESS_EVERY};
use crate::deploy_iface::record_progress;
use crate::task::Task;

/// Why streaming stopped.
pub(super) enum StreamError {
    /// The session failed.
    Iscsi(InitiatorError),
    /// Anything else, as the message for `last_error`.
    Other(String),
}

impl From<InitiatorError> for StreamError {
    fn from(e: InitiatorError) -> Self {
        Self::Iscsi(e)
    }
}

/// What the write goes to, and what it expects.
pub(super) struct Target {
    /// Where the region the image fills starts on the disk, in bytes (block-aligned).
    pub base: u64,
    /// The region's size in bytes: the disk's, or the root partition's.
    pub len: u64,
    /// What the region is, for messages.
    pub what: &'static str,
    /// The disk's block size.
    pub bs: u64,
    /// The checksum's algorithm.
    pub algo: image::checksum::HashAlgo,
    /// The image file's size, when the server said (progress only).
    pub total: u64,
    /// The declared format (`None`: the file's first bytes tell).
    pub declared: Option<image::DiskFormat>,
}

/// Progress of the download and write, recorded on the node every [`PROGRESS_EVERY`].
struct Reporter {
    t0: Instant,
    last: Option<Instant>,
    total: u64,
}

impl Reporter {
    async fn maybe(
        &mut self,
        task: &mut Task,
        len: u64,
        step: &Step,
        index: usize,
        count: usize,
    ) -> Result<(), StreamError> {
        if self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let secs = self.t0.elapsed().as_secs_f64().max(0.001);
        let p = proto::agent::Progress {
            bytes_written: len,
            total_bytes: self.total,
            rate_bytes_per_sec: (len as f64 / secs) as u64,
            phase: proto::agent::Phase::Downloading as i32,
            ..Default::default()
        };
        record_progress(task, &p, step, index, count, true)
            .await
            .map_err(|e| StreamError::Other(format!("Recording progress failed: {e}")))
    }
}

fn too_small(what: &str, len: u64) -> StreamError {
    StreamError::Other(format!("The image is larger than {what} ({len} bytes): disk too small"))
}

/// Consume the fetched chunks: hash everything, keep the disk's first [`EDGE`] bytes back,
/// write the rest from block `EDGE / bs` on (a qcow2 image converted to the guest's bytes
/// first). Returns the head, the digest and the image file's length.
pub(super) async fn stream_to_target(
    task: &mut Task,
    session: &mut Session,
    mut rx: mpsc::Receiver<image::fetch::Chunk>,
    t: &Target,
    step: &Step,
    index: usize,
    count: usize,
) -> Result<(Vec<u8>, String, u64), StreamError> {
    let mut first = rx.recv().await;
    let qcow2 = match t.declared {
        Some(image::DiskFormat::Qcow2) => true,
        Some(image::DiskFormat::Raw) => false,
        None => first.as_ref().is_some_and(|c| c.head(4) == image::qcow2::MAGIC),
    };
    let mut hasher = StreamHasher::new(t.algo);
    let mut reporter = Reporter { t0: Instant::now(), last: None, total: t.total };
    let mut len = 0u64;
    let head = if qcow2 {
        let mut decoder = image::qcow2::Qcow2Decoder::new(image::qcow2::Qcow2Options::default());
        let mut out = GuestWrites::new(t);
        let mut collected = Collected::default();
        while let Some(chunk) = next_chunk(&mut first, &mut rx).await {
            for part in chunk.parts() {
                len += part.len() as u64;
                hasher.update(part);
                decoder.feed(part, &mut collected).map_err(qcow2_failed)?;
                out.drain(session, &mut collected).await?;
            }
            reporter.maybe(task, len, step, index, count).await?;
        }
        let summary = decoder.finish(&mut collected).map_err(qcow2_failed)?;
        out.drain(session, &mut collected).await?;
        out.finish(session, summary.virtual_size).await?
    } else {
        let mut head: Vec<u8> = Vec::with_capacity(EDGE as usize);
        let mut writer = session.writer((t.base + EDGE) / t.bs).await?;
        while let Some(chunk) = next_chunk(&mut first, &mut rx).await {
            for part in chunk.parts() {
                let mut data: &[u8] = part;
                len += data.len() as u64;
                if len > t.len {
                    // Served commands stay in step; the error is what the caller sees.
                    let _ = writer.finish().await;
                    return Err(too_small(t.what, t.len));
                }
                hasher.update(data);
                if (head.len() as u64) < EDGE {
                    let take = (EDGE as usize - head.len()).min(data.len());
                    head.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                if !data.is_empty() {
                    writer.write(data).await?;
                }
            }
            reporter.maybe(task, len, step, index, count).await?;
        }
        // A tail that is not a whole block is padded with zeros (the image's last bytes).
        let tail = (len.max(EDGE) - EDGE) % t.bs;
        if len > EDGE && tail != 0 {
            writer.write(&vec![0u8; (t.bs - tail) as usize]).await?;
        }
        writer.finish().await?;
        head
    };
    Ok((head, hasher.finish_hex(), len))
}

/// The chunk peeked at first, then the rest.
async fn next_chunk(
    first: &mut Option<image::fetch::Chunk>,
    rx: &mut mpsc::Receiver<image::fetch::Chunk>,
) -> Option<image::fetch::Chunk> {
    match first.take() {
        Some(c) => Some(c),
        None => rx.recv().await,
    }
}

fn qcow2_failed(e: image::qcow2::Qcow2Error) -> StreamError {
    StreamError::Other(format!("Converting the qcow2 image failed: {}", common::ErrorChain(&e)))
}

/// The guest writes the qcow2 decoder produced since they were last drained.
#[derive(Default)]
struct Collected {
    virtual_size: Option<u64>,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl image::qcow2::GuestSink for Collected {
    fn begin(&mut self, virtual_size: u64) -> Result<(), image::target::WriteError> {
        self.virtual_size = Some(virtual_size);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), image::target::WriteError> {
        self.pieces.push((offset, data.to_vec()));
        Ok(())
    }
}

/// The largest run of guest bytes sent as one pipelined write.
const RUN_MAX: usize = 8 << 20;

/// A qcow2 image's guest bytes onto the disk: the first [`EDGE`] bytes kept back (the
/// head), the rest coalesced into runs of up to [`RUN_MAX`] and written in order, with the
/// guest's unallocated ranges written as zeros (the disk's old contents must not show
/// through). `[EDGE, filled_to)` is always written or in `run`, which ends at `filled_to`.
struct GuestWrites {
    /// The region's start on the disk; guest offsets are relative to it.
    base: u64,
    /// The region's size.
    len: u64,
    what: &'static str,
    bs: u64,
    head: Vec<u8>,
    run: Vec<u8>,
    filled_to: u64,
    checked_size: bool,
}

impl GuestWrites {
    fn new(t: &Target) -> Self {
        Self {
            base: t.base,
            len: t.len,
            what: t.what,
            bs: t.bs,
            head: Vec::new(),
            run: Vec::new(),
            filled_to: EDGE,
            checked_size: false,
        }
    }

    /// Write out what the decoder produced.
    async fn drain(&mut self, s: &mut Session, c: &mut Collected) -> Result<(), StreamError> {
        if !self.checked_size
            && let Some(vs) = c.virtual_size
        {
            if vs > self.len {
                return Err(too_small(self.what, self.len));
            }
            self.checked_size = true;
        }
        for (off, data) in std::mem::take(&mut c.pieces) {
            self.put(s, off, &data).await?;
        }
        Ok(())
    }

    async fn put(
        &mut self,
        s: &mut Session,
        mut off: u64,
        mut data: &[u8],
    ) -> Result<(), StreamError> {
        if off + data.len() as u64 > self.len {
            return Err(too_small(self.what, self.len));
        }
        if off < EDGE {
            let n = usize::try_from(EDGE - off).unwrap_or(usize::MAX).min(data.len());
            let at = off as usize;
            if self.head.len() < at + n {
                self.head.resize(at + n, 0);
            }
            self.head[at..at + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            off += n as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        if off < self.filled_to {
            // Behind what is already laid down (a decoder may emit out of order): write the
            // part below `filled_to` where it belongs, the rest continues the run.
            self.flush(s, false).await?;
            let below = usize::try_from(self.filled_to - off).unwrap_or(usize::MAX).min(data.len());
            self.write_at(s, off, &data[..below]).await?;
            data = &data[below..];
            off += below as u64;
            if data.is_empty() {
                return Ok(());
            }
        }
        self.zeros_to(s, off).await?;
        self.run.extend_from_slice(data);
        self.filled_to = off + data.len() as u64;
        if self.run.len() >= RUN_MAX {
            self.flush(s, false).await?;
        }
        Ok(())
    }

    /// Extend the run with zeros up to `to`.
    async fn zeros_to(&mut self, s: &mut Session, to: u64) -> Result<(), StreamError> {
        while self.filled_to < to {
            let n = usize::try_from(to - self.filled_to).unwrap_or(usize::MAX).min(RUN_MAX);
            self.run.resize(self.run.len() + n, 0);
            self.filled_to += n as u64;
            if self.run.len() >= RUN_MAX {
                self.flush(s, false).await?;
            }
        }
        Ok(())
    }

    /// Write the run's whole blocks (all of it, padded with zeros, when `last`).
    async fn flush(&mut self, s: &mut Session, last: bool) -> Result<(), StreamError> {
        let start = self.filled_to - self.run.len() as u64;
        let bs = self.bs as usize;
        if last {
            self.run.resize(self.run.len().div_ceil(bs) * bs, 0);
        }
        let whole = self.run.len() / bs * bs;
        if whole > 0 {
            s.write((self.base + start) / self.bs, &self.run[..whole]).await?;
            self.run.drain(..whole);
        }
        Ok(())
    }

    /// Write `data` at guest offset `off` (at or past [`EDGE`]), widened to whole blocks
    /// with the disk's bytes (written by this deploy) around it.
    async fn write_at(
        &mut self,
        s: &mut Session,
        off: u64,
        data: &[u8],
    ) -> Result<(), StreamError> {
        let (bs, abs) = (self.bs, self.base + off);
        let first = abs / bs;
        let end = (abs + data.len() as u64).div_ceil(bs);
        let mut buf = s.read(first, end - first).await?;
        let at = usize::try_from(abs - first * bs).unwrap_or(0);
        buf[at..at + data.len()].copy_from_slice(data);
        s.write(first, &buf).await?;
        Ok(())
    }

    /// Zeros up to the guest's size, the last run out; the head (guest bytes below
    /// [`EDGE`], zeros where the guest has none) to be written once the image verified.
    async fn finish(mut self, s: &mut Session, virtual_size: u64) -> Result<Vec<u8>, StreamError> {
        self.zeros_to(s, virtual_size).await?;
        self.flush(s, true).await?;
        self.head.resize(usize::try_from(EDGE.min(virtual_size)).unwrap_or(0), 0);
        Ok(self.head)
    }
}

//! The learned state on disk: one JSON file under the state directory, replaced atomically.
//!
//! A file rather than a compacted topic: the state and the offsets it reflects are one
//! document, so a single `rename` publishes both together and a crash leaves either the old
//! checkpoint or the new one, never a mix; restoring reads one file instead of a topic from
//! its start; and nothing depends on the broker's compaction settings. A lost file costs
//! a replay of the feedback topic from its earliest retained record, not correctness.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::state::{Checkpoint, CHECKPOINT_FORMAT};

pub const FILE_NAME: &str = "online-state.json";

/// The checkpoint path of a feedback topic under `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes through a temporary file: written, synced, renamed over the old one, and the
/// directory synced so the rename itself survives a power cut. Returns the bytes written.
pub fn write(path: &Path, checkpoint: &Checkpoint) -> anyhow::Result<u64> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(checkpoint).context("encoding the checkpoint")?;
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = File::open(dir) {
        // Not every filesystem lets a directory be synced; the rename is done either way.
        let _ = d.sync_all();
    }
    Ok(bytes.len() as u64)
}

/// Reads the checkpoint at `path`: `None` if there is none yet; an error if it cannot be
/// trusted (unreadable, another format, another topic), so that the service refuses to
/// start rather than silently replay from the start or from the wrong offsets.
pub fn read(path: &Path, topic: &str) -> anyhow::Result<Option<Checkpoint>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a streamscore checkpoint", path.display()))?;
    if checkpoint.format != CHECKPOINT_FORMAT {
        bail!(
            "{} has checkpoint format {}, this build reads {CHECKPOINT_FORMAT}",
            path.display(),
            checkpoint.format
        );
    }
    if checkpoint.topic != topic {
        bail!(
            "{} holds the state of feedback topic {:?}, not {topic:?}: use another --state-dir",
            path.display(),
            checkpoint.topic
        );
    }
    Ok(Some(checkpoint))
}

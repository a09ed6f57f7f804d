//! A Python virtualenv under `target/` with pinned packages from PyPI, reused across runs once
//! complete: only after `pip install` succeeded and the marker holding the pin list was
//! written, so an interrupted install (or a changed pin list) is redone. Creation holds a file
//! lock, so tests (threads or processes) that need the same venv at once wait for one
//! install instead of removing each other's half-made venv.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::openstack::target_dir;
use crate::run;

const MARKER: &str = ".ferric-complete";

/// A virtualenv with a fixed set of packages.
#[derive(Debug, Clone)]
pub struct PyVenv {
    dir: PathBuf,
}

impl PyVenv {
    /// Create (or reuse) `target/<name>` with `pins` installed.
    ///
    /// # Errors
    /// When python3, venv or pip fail.
    pub fn ensure(name: &str, pins: &[&str]) -> anyhow::Result<Self> {
        let root = target_dir();
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join(format!("{name}.lock"));
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        // Released when `lock` is dropped, at the end of this function.
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        let dir = root.join(name);
        let marker = dir.join(MARKER);
        let wanted = pins.join("\n");
        if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
            && dir.join("bin/python").exists()
        {
            return Ok(Self { dir });
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing incomplete {}", dir.display()))?;
        }
        run(Command::new("python3").arg("-m").arg("venv").arg(&dir), "python3 -m venv")?;
        run(
            Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(pins),
            "pip install",
        )?;
        std::fs::write(&marker, wanted).context("writing the venv marker")?;
        Ok(Self { dir })
    }

    /// The venv's `python`.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// The venv's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

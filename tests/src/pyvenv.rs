//! A Python virtualenv under `target/` with pinned packages from PyPI, reused across runs once
//! complete (the same rule as [`crate::openstack`]: complete only after `pip install`
//! succeeded and the marker holding the pin list was written).

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
        let dir = target_dir().join(name);
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
}

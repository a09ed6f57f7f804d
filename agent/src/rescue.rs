//! Rescue mode (IPA's `rescue.finalize_rescue`): the conductor sends the crypt(3) hash of
//! the rescue password; the agent writes it where IPA's rescue ramdisks read it
//! (`/etc/ipa-rescue-config/ipa-rescue-password`) and sets the rescue user's entry in
//! `/etc/passwd` and `/etc/shadow`, then stops so that the ramdisk becomes the rescue
//! system (the deploy ramdisk's `/init` sees the file and starts a login on the console
//! instead of powering off). Under a fake machine root every path is below that root.

use std::io::Write as _;
use std::path::Path;

/// Where IPA's rescue ramdisks find the password hash, relative to the root.
pub const PASSWORD_FILE: &str = "etc/ipa-rescue-config/ipa-rescue-password";
/// The rescue user (IPA's `rescue` user; here with the ramdisk's full rights, as IPA's has
/// unrestricted sudo).
pub const USER: &str = "rescue";

/// Why the rescue could not be finalized.
#[derive(Debug, thiserror::Error)]
pub enum RescueError {
    /// The hash is not a SHA-crypt string a shadow file can hold.
    #[error("the rescue password hash is not a crypt(3) SHA-256/SHA-512 hash")]
    BadHash,
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Whether `hash` looks like `$5$…` or `$6$…` and holds nothing a passwd-style file would
/// split on.
pub fn valid(hash: &str) -> bool {
    (hash.starts_with("$5$") || hash.starts_with("$6$"))
        && hash.len() <= 256
        && hash.chars().all(|c| c.is_ascii_graphic() && c != ':')
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), RescueError> {
    let err = |source| RescueError::Write { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("ferric-tmp");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(contents.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// `lines` with the entry of [`USER`] replaced by `entry` (or appended).
fn with_entry(existing: &str, entry: &str) -> String {
    let prefix = format!("{USER}:");
    let mut out: Vec<&str> = existing.lines().filter(|l| !l.starts_with(&prefix)).collect();
    out.push(entry);
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Set the rescue password under `root` from `hash`.
///
/// # Errors
/// [`RescueError`] for a malformed hash or a file that cannot be written.
pub fn finalize(root: &Path, hash: &str) -> Result<(), RescueError> {
    if !valid(hash) {
        return Err(RescueError::BadHash);
    }
    write_file(&root.join(PASSWORD_FILE), &format!("{hash}\n"), 0o600)?;
    let passwd = root.join("etc/passwd");
    let current = std::fs::read_to_string(&passwd).unwrap_or_default();
    let entry = format!("{USER}:x:0:0:rescue user:/root:/bin/sh");
    write_file(&passwd, &with_entry(&current, &entry), 0o644)?;
    let shadow = root.join("etc/shadow");
    let current = std::fs::read_to_string(&shadow).unwrap_or_default();
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    write_file(&shadow, &with_entry(&current, &format!("{USER}:{hash}:{days}:0:99999:7:::")), 0o600)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn test_finalize_sets_the_user_and_keeps_other_entries() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/shadow"),
            "root:*:1:0:99999:7:::\nrescue:old:1::::::\n",
        )
        .unwrap();
        let hash = "$5$saltsalt$abcdefghijklmnopqrstuvwxyz0123456789ABCDEF/";
        finalize(root.path(), hash).unwrap();
        let shadow = std::fs::read_to_string(root.path().join("etc/shadow")).unwrap();
        assert!(shadow.starts_with("root:*:1:0:99999:7:::\n"), "{shadow}");
        assert_eq!(shadow.matches("rescue:").count(), 1, "{shadow}");
        assert!(shadow.contains(&format!("rescue:{hash}:")), "{shadow}");
        let file = std::fs::read_to_string(root.path().join(PASSWORD_FILE)).unwrap();
        assert_eq!(file.trim(), hash);
        let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
        assert!(passwd.contains("rescue:x:0:0:"), "{passwd}");
    }

    #[test]
    fn test_malformed_hashes_change_nothing() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["plain-password", "$1$md5$x", "$5$a:b$c", "$6$a\nroot::0:0", ""] {
            assert!(matches!(finalize(root.path(), bad), Err(RescueError::BadHash)), "{bad}");
        }
        assert!(!root.path().join("etc").exists());
    }
}

//! The real ironic-python-agent (IPA, pinned, from PyPI) on this machine without letting it
//! touch the machine: a venv under `target/` with IPA and the test hardware manager shipped
//! in `tests/ipa/ferric_test_hwm`, a network namespace joined to the host by a veth pair
//! (IPA's only network), and a mount namespace inside it where the host's block devices are
//! hidden (`/sys/block`, `/sys/class/block`, `/sys/dev/block`, `/proc/partitions`, a `/dev`
//! with only `null`, `zero`, `full`, `random` and `urandom`), `/proc/cmdline` holds no
//! `ipa-*` parameters of the host, and `/etc` is a copy in the test's directory.
//!
//! The hardware manager outranks IPA's generic one and reports exactly one disk, a file the
//! test made; hiding the host's devices covers what IPA still runs through the generic
//! manager (its `initialize`, the virtual-media probe with `lsblk` at start), and failing
//! stubs stand in for the commands of that `initialize` that would reach the host's kernel
//! ([`STUBBED`]). Never send the agent deploy, write or erase commands for a file disk: it
//! runs as root on the host's kernel. The exceptions are steps the test hardware manager
//! implements itself, which touch only the test's disk: `erase_devices_metadata` (the
//! manager refuses the generic manager's other erase, RAID, NVRAM, pstore and burn-in steps,
//! so the agent cannot fall through to them) and `ferric_record_args`, which writes nothing
//! but [`Ipa::steps_run`]'s log.
//!
//! To deploy, the agent gets a [`LoopDisk`] instead: a loop device over a file the test
//! made (with partition scanning), the only device node in the agent's `/dev` besides the
//! harmless ones. IPA's own `write_image` (download, `qemu-img convert` to the device,
//! partitioning with `parted` for partition images, partition-table checks with `parted`,
//! `sgdisk`, `blkid`) then writes to that file and nothing else. No udev runs here, so the
//! namespace mirrors what udev would show of that one disk: its partitions' device nodes and
//! sysfs links as the kernel makes them, and their udev database entries (from `blkid`) in a
//! private `/run`, refreshed whenever the agent runs `udevadm` or `lsblk` ([`MIRROR_SH`]).
//!
//! Everything started here goes away on drop: the agent's process group is killed, the
//! namespace (and with it the veth pair) deleted.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use rand::Rng as _;

use crate::netns::ip;
use crate::openstack::target_dir;
use crate::pyvenv::PyVenv;

/// The agent release the test runs (what `pip install` serves for Python 3.11 here).
pub const IPA_PIN: &str = "ironic-python-agent==13.0.0";

/// The port the agent's own API listens on inside the namespace (IPA's default).
pub const AGENT_PORT: u16 = 9999;

/// The test hardware manager's sources, relative to this crate.
const HWM_FILES: &[&str] = &["pyproject.toml", "ferric_test_hwm.py"];

/// Commands the agent's generic hardware manager runs at start whose effect would reach
/// past the namespaces (kernel modules, a multipath daemon, RAID assembly, iSCSI sessions,
/// containers, the clocks, the BMC): found first on its `PATH` as stubs that fail, which IPA
/// handles as "not available here".
const STUBBED: &[&str] = &[
    "modprobe",
    "mdadm",
    "multipath",
    "multipathd",
    "mpathconf",
    "iscsistart",
    "podman",
    "docker",
    "ipmitool",
    "hwclock",
    "ntpdate",
    "chronyc",
    "chronyd",
    "shutdown",
    "halt",
];

/// The ramdisk powering its machine off or rebooting it (IPA's `standby.power_off` runs
/// `poweroff`, `standby.reboot` runs `reboot`): found first on the agent's `PATH`, they ask
/// the test's machine instead ([`IpaMachine`] does it as the machine would), and succeed so
/// that IPA never falls back to `/proc/sysrq-trigger` (which the namespace hides anyway).
const POWER_SH: &str = r#"#!/bin/sh
echo "${0##*/}" > "$FERRIC_IPA_DIR/power-request"
"#;

/// Run inside the namespaces before the agent: hide the host's block devices, give it a
/// harmless kernel command line and a minimal `/dev`, then exec the agent. `$1…` is the
/// agent's command line; `FERRIC_IPA_DIR` holds `empty`, `cmdline` and room for `dev/`.
const HIDE_HOST_SH: &str = r#"set -eu
t=$FERRIC_IPA_DIR
for d in /sys/block /sys/class/block /sys/dev/block; do
    mount -t tmpfs -o mode=0755,size=64k ferric-ipa-empty "$d"
done
# The test's loop device, if it gave one, is the only block device sysfs shows.
if [ -n "${FERRIC_IPA_DISK_DEV:-}" ]; then
    name=${FERRIC_IPA_DISK_DEV#/dev/}
    majmin=$(cat "/sys/devices/virtual/block/$name/dev")
    ln -s "../devices/virtual/block/$name" "/sys/block/$name"
    ln -s "../../devices/virtual/block/$name" "/sys/class/block/$name"
    ln -s "../../devices/virtual/block/$name" "/sys/dev/block/$majmin"
fi
# A copy of /etc, with the directory a rescue ramdisk has for the rescue password: what the
# agent writes there (rescue) stays in the test's directory.
cp -a /etc "$t/etc"
mkdir -p "$t/etc/ipa-rescue-config"
mount --bind "$t/etc" /etc
mount --bind "$t/empty" /proc/partitions
mount --bind "$t/cmdline" /proc/cmdline
# What would power off or reboot the host at once goes to a file of the test's.
if [ -e /proc/sysrq-trigger ]; then
    : > "$t/sysrq-trigger"
    mount --bind "$t/sysrq-trigger" /proc/sysrq-trigger
fi
mkdir -p "$t/dev"
mount -t tmpfs -o mode=0755,size=64k ferric-ipa-dev "$t/dev"
# Device nodes (not bind mounts), so that a bind of this /dev (as into a chroot) has them.
for n in null:3 zero:5 full:7 random:8 urandom:9; do
    mknod -m 0666 "$t/dev/${n%%:*}" c 1 "${n##*:}"
done
if [ -n "${FERRIC_IPA_DISK_DEV:-}" ]; then
    mknod -m 0660 "$t/dev/$name" b "${majmin%%:*}" "${majmin##*:}"
fi
mkdir "$t/dev/pts" "$t/dev/shm"
ln -s /proc/self/fd "$t/dev/fd"
mount --move "$t/dev" /dev
# The partitions of the test's loop device (attached with partition scanning) come and go
# as the agent partitions it: mirror them (and their udev database entries, which lsblk
# reads) into this /dev, the hidden sysfs directories and a private /run, as udev would, for
# as long as the agent runs. `udevadm` and `lsblk` on the agent's PATH refresh it first.
mount -t tmpfs -o mode=0755,size=1m ferric-ipa-run /run
mkdir -p /run/udev/data /run/lock
if [ -n "${FERRIC_IPA_DISK_DEV:-}" ]; then
    mkdir -p "$t/parts"
    sh "$t/mirror.sh" refresh
    (
        set +e
        n=0
        while kill -0 $$ 2>/dev/null; do
            n=$((n + 1))
            if [ $((n % 20)) -eq 0 ]; then sh "$t/mirror.sh" refresh; else sh "$t/mirror.sh"; fi
            sleep 0.05
        done
    ) &
fi
exec "$@"
"#;

/// One pass of the partition mirror of [`HIDE_HOST_SH`], under a lock: device nodes and
/// sysfs links for the loop device's partitions that appeared (removed for those that went);
/// with `refresh`, or when a partition appeared, also the udev database entries of the disk
/// and its partitions from `blkid -p -o udev` (UUIDs, labels, partition table).
const MIRROR_SH: &str = r#"set +e
t=$FERRIC_IPA_DIR
name=${FERRIC_IPA_DISK_DEV#/dev/}
sys=/sys/devices/virtual/block/$name
exec 9>"$t/mirror.lock"
flock 9
made=
for p in "$sys/${name}p"*; do
    [ -r "$p/dev" ] || continue
    pn=${p##*/}
    mm=$(cat "$p/dev" 2>/dev/null) || continue
    if [ "$(cat "$t/parts/$pn" 2>/dev/null)" != "$mm" ]; then
        rm -f "/dev/$pn"
        mknod "/dev/$pn" b "${mm%%:*}" "${mm##*:}"
        ln -sfn "../../devices/virtual/block/$name/$pn" "/sys/class/block/$pn"
        ln -sfn "../../devices/virtual/block/$name/$pn" "/sys/dev/block/$mm"
        echo "$mm" > "$t/parts/$pn"
        made=1
    fi
done
for f in "$t/parts/"*; do
    [ -e "$f" ] || continue
    pn=${f##*/}
    if [ ! -e "$sys/$pn" ]; then
        mm=$(cat "$f")
        rm -f "/dev/$pn" "/sys/class/block/$pn" "/sys/dev/block/$mm" "/run/udev/data/b$mm" "$f"
    fi
done
if [ "${1:-}" = refresh ] || [ -n "$made" ]; then
    for d in "$name" $(ls "$t/parts"); do
        mm=$(cat "/sys/class/block/$d/dev" 2>/dev/null) || continue
        blkid -p -o udev "/dev/$d" 2>/dev/null | sed 's/^/E:/' > "/run/udev/data/b$mm.new"
        mv "/run/udev/data/b$mm.new" "/run/udev/data/b$mm"
    done
fi
"#;

/// Commands that read what udev knows, as the agent finds them ([`MIRROR_FIRST_SH`]).
const MIRROR_FIRST: &[&str] = &["udevadm", "lsblk"];

/// `udevadm` and `lsblk` as the agent finds them: the mirror brought up to date first (as
/// `udevadm settle` waits for udev, and as udev's watch on a written disk has updated its
/// database by the time anyone reads it), then the real command.
const MIRROR_FIRST_SH: &str = r#"#!/bin/sh
if [ -n "${FERRIC_IPA_DISK_DEV:-}" ]; then sh "$FERRIC_IPA_DIR/mirror.sh" refresh; fi
PATH=${PATH#*:} exec "${0##*/}" "$@"
"#;

/// The venv with [`IPA_PIN`] and the test hardware manager.
#[derive(Debug, Clone)]
pub struct IpaVenv {
    venv: PyVenv,
}

impl IpaVenv {
    /// Create (or reuse) `target/ipa-venv`. The hardware manager is installed from a copy
    /// under `target/ipa-hwm/<hash of its sources>`, so the repository stays clean and an
    /// edited manager makes a new venv.
    ///
    /// # Errors
    /// When the sources cannot be copied or python3, venv or pip fail.
    pub fn ensure() -> anyhow::Result<Self> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("ipa/ferric_test_hwm");
        let mut hasher = DefaultHasher::new();
        let mut files = Vec::new();
        for name in HWM_FILES {
            let path = src.join(name);
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            (name, &text).hash(&mut hasher);
            files.push((name, text));
        }
        let copy = target_dir().join("ipa-hwm").join(format!("{:016x}", hasher.finish()));
        if !copy.join(HWM_FILES[1]).exists() {
            // Written aside and renamed, so a concurrent run (another process, or another
            // test of this one) never installs half a copy.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = copy.with_extension(format!("tmp{}-{n}", std::process::id()));
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            for (name, text) in &files {
                std::fs::write(tmp.join(name), text).context("copying the hardware manager")?;
            }
            if std::fs::rename(&tmp, &copy).is_err() {
                // Another run made the same copy first.
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        let copy = copy.to_str().context("target dir is not UTF-8")?.to_owned();
        let venv = PyVenv::ensure("ipa-venv", &[IPA_PIN, &copy])?;
        if !venv.dir().join("bin/ironic-python-agent").exists() {
            bail!(
                "{} has no bin/ironic-python-agent after installing {IPA_PIN}",
                venv.dir().display()
            );
        }
        Ok(Self { venv })
    }

    /// The `ironic-python-agent` entry point.
    pub fn agent(&self) -> PathBuf {
        self.venv.dir().join("bin/ironic-python-agent")
    }
}

/// What running the agent needs besides the venv: root, `ip netns`, `unshare`, `mount`.
///
/// # Errors
/// Says which is missing.
pub fn namespace_tools() -> Result<(), String> {
    crate::netns::check_tools(&[(
        "unshare",
        &["--mount", "true"],
        "`unshare --mount true` failed (util-linux missing?)",
    )])
}

/// A network namespace joined to the host by a veth pair on a random /30 of 10.231.0.0/16
/// (host end `.1`, namespace end `.2`), with random names, so parallel runs never share
/// them. Dropping it deletes the namespace (and the veth pair with it).
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// The veth end on the host.
    pub host_if: String,
    /// The veth end inside the namespace.
    pub ns_if: String,
    /// The host end's address.
    pub host_ip: String,
    /// The namespace end's address.
    pub ns_ip: String,
    /// The namespace end's MAC address (what the agent looks up with).
    pub ns_mac: String,
}

impl Netns {
    /// Create the namespace and the veth pair, both ends up.
    ///
    /// # Errors
    /// When an `ip` command fails (what was made so far is deleted).
    pub fn create() -> anyhow::Result<Self> {
        let mut rng = rand::rng();
        let tag: u32 = rng.random_range(0..0x00ff_ffff);
        let used = ip(&["-4", "-o", "addr", "show"])?;
        let base = (0..64)
            .map(|_| rng.random_range(0..16384u32) * 4)
            .find(|b| !used.contains(&format!("10.231.{}.{} ", b / 256, b % 256 + 1)))
            .context("no free /30 in 10.231.0.0/16")?;
        let mut ns = Self {
            name: format!("ferric-ipa-{tag:06x}"),
            host_if: format!("fi{tag:06x}h"),
            ns_if: format!("fi{tag:06x}n"),
            host_ip: format!("10.231.{}.{}", base / 256, base % 256 + 1),
            ns_ip: format!("10.231.{}.{}", base / 256, base % 256 + 2),
            ns_mac: String::new(),
        };
        // From here on, Drop cleans up whatever exists.
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns.ns_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        let link = ip(&["-n", &ns.name, "-o", "link", "show", &ns.ns_if])?;
        ns.ns_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .context("no MAC address on the namespace's veth end")?
            .to_owned();
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// How an agent starts, beyond its disk ([`Ipa::start_on_with`], [`IpaMachine::next_boot`]).
#[derive(Debug, Clone, Default)]
pub struct IpaOptions {
    /// IPA's auto-TLS: the agent makes itself a certificate, serves HTTPS and sends the
    /// certificate in its heartbeats (`agent_verify_ca`).
    pub auto_tls: bool,
    /// Inspect first: post the inventory to `/v1/continue_inspection` before the lookup.
    pub inspect: bool,
    /// A token the agent starts with (IPA's `agent_token`, the `ipa-agent-token` kernel
    /// parameter): a lookup that hands out a token replaces it, one that answers `******`
    /// leaves it.
    pub agent_token: Option<String>,
    /// The agent lists its deploy steps without `write_image`, as agents from before deploy
    /// steps did (the test hardware manager drops it from the generic manager's list).
    pub without_write_image: bool,
    /// The test hardware manager waits this long in `write_image` before writing.
    pub hold_write_secs: u64,
    /// [`IpaMachine`] only: do not release the agent after checking its disks; the test
    /// calls [`IpaMachine::release`].
    pub hold: bool,
    /// The ramdisk booted in legacy BIOS mode (the test hardware manager says so), and the
    /// agent may install BIOS bootloaders (`enable_bios_bootloader_install`, off by default
    /// in IPA since CVE-2026-43003: a site that deploys legacy partition images turns it on).
    pub bios: bool,
}

/// The agent running in a [`Netns`], in its own process group, killed with that group on
/// drop. Its files (config, log, the disk it reports, the hardware manager's report) live
/// in a temporary directory that goes with it.
#[derive(Debug)]
pub struct Ipa {
    child: Child,
    dir: tempfile::TempDir,
    /// The one block device the hardware manager reports.
    pub disk: PathBuf,
    /// Size of [`Self::disk`] in bytes.
    pub disk_size: u64,
}

impl Ipa {
    /// Start the agent in `ns` against `api_url` (reachable from the namespace), with
    /// inspection and auto-TLS off, no disk waits, and the test hardware manager.
    ///
    /// # Errors
    /// When the files cannot be written or the process cannot start.
    pub fn start(venv: &IpaVenv, ns: &Netns, api_url: &str) -> anyhow::Result<Self> {
        Self::start_with(venv, ns, api_url, false)
    }

    /// [`Self::start`], with IPA's auto-TLS on when `auto_tls`: the agent makes itself a
    /// certificate, serves its API over HTTPS and sends the certificate in its heartbeats
    /// (`agent_verify_ca`).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with(
        venv: &IpaVenv,
        ns: &Netns,
        api_url: &str,
        auto_tls: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn(venv, ns, api_url, None, &IpaOptions { auto_tls, ..IpaOptions::default() })
    }

    /// [`Self::start`] with `disk` as the one disk: the agent may write images to it.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_on(
        venv: &IpaVenv,
        ns: &Netns,
        api_url: &str,
        disk: &LoopDisk,
    ) -> anyhow::Result<Self> {
        Self::spawn(venv, ns, api_url, Some(disk), &IpaOptions::default())
    }

    /// [`Self::start_on`] with `opts`.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_on_with(
        venv: &IpaVenv,
        ns: &Netns,
        api_url: &str,
        disk: &LoopDisk,
        opts: &IpaOptions,
    ) -> anyhow::Result<Self> {
        Self::spawn(venv, ns, api_url, Some(disk), opts)
    }

    /// The agent's process id (the Python process itself: `ip netns exec`, `unshare` and
    /// the script before it all exec).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// [`Self::start_on`], and the agent inspects first: it posts its inventory (from the
    /// test hardware manager) to the API's `/v1/continue_inspection`, as IPA's in-band
    /// inspection does, before its lookup.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_inspecting(
        venv: &IpaVenv,
        ns: &Netns,
        api_url: &str,
        disk: &LoopDisk,
    ) -> anyhow::Result<Self> {
        Self::spawn(
            venv,
            ns,
            api_url,
            Some(disk),
            &IpaOptions { inspect: true, ..IpaOptions::default() },
        )
    }

    fn spawn(
        venv: &IpaVenv,
        ns: &Netns,
        api_url: &str,
        loop_disk: Option<&LoopDisk>,
        opts: &IpaOptions,
    ) -> anyhow::Result<Self> {
        let (auto_tls, inspect) = (opts.auto_tls, opts.inspect);
        let dir = tempfile::Builder::new().prefix("ferric-ipa-").tempdir()?;
        let d = dir.path();
        let (disk, disk_size) = match loop_disk {
            Some(l) => (l.device.clone(), l.size),
            None => {
                let disk = d.join("disk.img");
                let disk_size: u64 = 1 << 30;
                // Sparse: only the test hardware manager's own steps ever write to it.
                std::fs::File::create(&disk)?.set_len(disk_size)?;
                (disk, disk_size)
            }
        };
        std::fs::write(d.join("empty"), "")?;
        std::fs::write(d.join("cmdline"), "ferric-test-ipa\n")?;
        std::fs::write(d.join("hide-host.sh"), HIDE_HOST_SH)?;
        std::fs::write(d.join("mirror.sh"), MIRROR_SH)?;
        let stubs = d.join("stub-bin");
        std::fs::create_dir(&stubs)?;
        for name in STUBBED {
            let stub = stubs.join(name);
            std::fs::write(&stub, "#!/bin/sh\necho \"$0: not run under the test\" >&2\nexit 1\n")?;
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
        }
        // `fuser` would walk the host's processes (and fail on those it may not read): no
        // process of a ramdisk holds the test's disk, which is fuser's silent exit 1.
        let fuser = stubs.join("fuser");
        std::fs::write(&fuser, "#!/bin/sh\nexit 1\n")?;
        std::fs::set_permissions(&fuser, std::fs::Permissions::from_mode(0o755))?;
        for name in ["poweroff", "reboot"] {
            let stub = stubs.join(name);
            std::fs::write(&stub, POWER_SH)?;
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))?;
        }
        for name in MIRROR_FIRST {
            let wrapper = stubs.join(name);
            std::fs::write(&wrapper, MIRROR_FIRST_SH)?;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let path = format!("{}:{path}", stubs.display());
        let hwm = serde_json::json!({
            "device": disk, "size": disk_size, "interface": ns.ns_if, "mac": ns.ns_mac,
            "ipv4": ns.ns_ip, "report": d.join("hwm-report.json"), "gate": d.join("released"),
            "gate_timeout": 120, "steps_log": d.join("steps.jsonl"),
            "loop_device": loop_disk.is_some(),
            "hold_write_secs": opts.hold_write_secs,
            "without_write_image": opts.without_write_image,
            "boot_mode": if opts.bios { "bios" } else { "uefi" },
        });
        std::fs::write(d.join("hwm.json"), hwm.to_string())?;
        let conf_dir = d.join("conf.d");
        std::fs::create_dir(&conf_dir)?;
        let conf = format!(
            "[DEFAULT]\n\
             api_url = {api_url}\n\
             listen_port = {AGENT_PORT}\n\
             enable_auto_tls = {}\n\
             inspection_callback_url = {}\n\
             inspection_collectors = {}\n\
             disk_wait_attempts = 0\n\
             hardware_initialization_delay = 0\n\
             lookup_timeout = 120\n\
             lookup_interval = 1\n\
             ip_lookup_attempts = 3\n\
             ip_lookup_sleep = 1\n\
             http_request_timeout = 10\n\
             image_download_connection_retries = 1\n\
             image_download_connection_retry_interval = 1\n\
             debug = True\n\
             log_file = {}\n\
             {}",
            if auto_tls { "True" } else { "False" },
            if inspect { format!("{api_url}/v1/continue_inspection") } else { String::new() },
            if inspect { "default" } else { "" },
            d.join("ipa.log").display(),
            opts.agent_token.as_ref().map(|t| format!("agent_token = {t}\n")).unwrap_or_default()
                + if opts.bios { "enable_bios_bootloader_install = True\n" } else { "" },
        );
        // A download that fails is retried once, a second later (IPA's defaults retry for
        // about a quarter of an hour, which a failing deploy in a test would wait out).
        std::fs::write(d.join("ipa.conf"), conf)?;
        let out = std::fs::File::create(d.join("ipa.out"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "unshare", "--mount", "--propagation", "private"])
            .arg("--")
            .arg("sh")
            .arg(d.join("hide-host.sh"))
            .arg(venv.agent())
            .arg("--config-file")
            .arg(d.join("ipa.conf"))
            .arg("--config-dir")
            .arg(&conf_dir)
            .env("FERRIC_IPA_DIR", d)
            .env("PATH", path)
            // stevedore caches its entry-point scan there, instead of in root's home.
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("FERRIC_TEST_HWM_CONFIG", d.join("hwm.json"))
            .env("FERRIC_IPA_DISK_DEV", loop_disk.map(|l| l.device.as_os_str()).unwrap_or_default())
            // Only the veth: no proxy may sit between the agent and the API.
            .env("no_proxy", "*")
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        for var in ["http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            cmd.env_remove(var);
        }
        cmd.env_remove("ALL_PROXY");
        let child = cmd.spawn().context("starting ironic-python-agent in the namespace")?;
        Ok(Self { child, dir, disk, disk_size })
    }

    /// The hardware manager's last report (`managers`, `block_devices`), once written: the
    /// first one before the agent sends anything.
    pub fn hwm_report(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("hwm-report.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The steps the test hardware manager ran, in order: `{"step", "node", "args"}` each.
    pub fn steps_run(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("steps.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Let the agent go on past its hardware managers' initialization, where the test
    /// hardware manager holds it until the test has read [`Self::hwm_report`]; nothing is
    /// sent to the API before.
    ///
    /// # Errors
    /// When the gate file cannot be written.
    pub fn release(&self) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join("released"), "").context("releasing the agent")
    }

    /// Whether the agent process has exited (and how).
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The agent's log and its stdout/stderr, the last `max` bytes of each, for a failure
    /// message.
    pub fn logs(&self, max: usize) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(max);
            let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            format!("--- {name} ---\n{}", &text[start..])
        };
        format!("{}\n{}", tail("ipa.log"), tail("ipa.out"))
    }

    /// The rescue password hash the agent wrote (`rescue.finalize_rescue`), if it did.
    pub fn rescue_password_hash(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("etc/ipa-rescue-config/ipa-rescue-password"))
            .ok()
    }

    /// The agent's whole log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipa.log")).unwrap_or_default()
    }
}

impl Ipa {
    /// Kill the agent and everything it ran, as a power-off would; its files stay until
    /// drop.
    pub fn stop(&mut self) {
        // The group holds the agent and anything it ran (ip, lsblk, …).
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Ipa {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loop device over a sparse file of the test's: the disk an agent that deploys may
/// write. Detached (and the file removed) on drop.
#[derive(Debug)]
pub struct LoopDisk {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    file: tempfile::NamedTempFile,
}

impl LoopDisk {
    /// Attach a new sparse file of `size` bytes to a free loop device (`losetup`).
    ///
    /// # Errors
    /// When the file cannot be made or `losetup` fails (no loop devices here).
    pub fn create(size: u64) -> anyhow::Result<Self> {
        let file = tempfile::Builder::new().prefix("ferric-ipa-disk-").tempfile()?;
        file.as_file().set_len(size)?;
        // With partition scanning: the kernel makes the partitions an agent creates.
        let out = Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(file.path())
            .output()
            .context("running losetup")?;
        if !out.status.success() {
            bail!("losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(Self { device, size, file })
    }

    /// The first `n` bytes of what the device holds (read from its file).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn read_prefix(&self, n: usize) -> anyhow::Result<Vec<u8>> {
        self.read_at(0, n)
    }

    /// `n` bytes of what the device holds from byte `offset` (read from its file).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn read_at(&self, offset: u64, n: usize) -> anyhow::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; n];
        std::fs::File::open(self.file.path())?.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("--detach")
            .arg(&self.device)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A machine behind the simulated Redfish BMC (`sim::bmc`) whose deploy ramdisk is the real
/// agent: powering it on with a network boot starts a fresh [`Ipa`] on `disk` in `ns` (as
/// the ramdisk booting), powering it off kills it; a boot from the disk boots no agent (the
/// instance). Before letting each agent go on, it checks what the agent was told about its
/// disks: exactly `disk`; a boot that saw anything else is recorded and its agent never
/// released.
pub struct IpaMachine {
    venv: IpaVenv,
    ns: std::sync::Arc<Netns>,
    disk: std::sync::Arc<LoopDisk>,
    api_url: String,
    state: std::sync::Mutex<MachineState>,
}

#[derive(Default)]
struct MachineState {
    /// How the next network boot's agent starts.
    next: IpaOptions,
    on: bool,
    boot: sim::bmc::BootOverride,
    agent: Option<Ipa>,
    /// Agents of earlier boots, stopped, kept for their logs.
    past: Vec<Ipa>,
    boots: Vec<sim::bmc::BootTarget>,
    refused: Vec<String>,
    /// What running agents asked of the machine themselves (`poweroff`, `reboot`), in order.
    agent_requests: Vec<String>,
}

impl IpaMachine {
    /// A machine that is off.
    pub fn new(
        venv: IpaVenv,
        ns: std::sync::Arc<Netns>,
        disk: std::sync::Arc<LoopDisk>,
        api_url: &str,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            venv,
            ns,
            disk,
            api_url: api_url.to_owned(),
            state: std::sync::Mutex::new(MachineState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MachineState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Let the agent of the next network boot inspect (post its inventory) before its lookup.
    pub fn inspect_on_next_boot(&self) {
        self.state().next.inspect = true;
    }

    /// Start the agent of the next network boot with `opts` (once; later boots start
    /// plainly again).
    pub fn next_boot(&self, opts: IpaOptions) {
        self.state().next = opts;
    }

    /// Release the running agent that [`IpaOptions::hold`] held after its disk check.
    ///
    /// # Errors
    /// When no agent runs or the gate file cannot be written.
    pub fn release(&self) -> anyhow::Result<()> {
        let s = self.state();
        let agent = s.agent.as_ref().context("no agent is running")?;
        agent.release()
    }

    /// Kill the running agent while the machine stays on, as a crashed ramdisk.
    pub fn kill_agent(&self) {
        let mut s = self.state();
        if let Some(mut a) = s.agent.take() {
            a.stop();
            s.past.push(a);
        }
    }

    /// What each power-on booted, in order.
    pub fn boots(&self) -> Vec<sim::bmc::BootTarget> {
        self.state().boots.clone()
    }

    /// What the agents asked of the machine themselves (`poweroff`, `reboot`), in order.
    pub fn agent_requests(&self) -> Vec<String> {
        self.state().agent_requests.clone()
    }

    /// Boots whose agent reported other disks than the test's (never released).
    pub fn refused(&self) -> Vec<String> {
        self.state().refused.clone()
    }

    /// The steps the test hardware manager ran in every agent this machine ran, in order.
    pub fn steps_run(&self) -> Vec<serde_json::Value> {
        let s = self.state();
        s.past.iter().chain(s.agent.as_ref()).flat_map(Ipa::steps_run).collect()
    }

    /// The rescue password hash the last agent that wrote one wrote.
    pub fn rescue_password_hash(&self) -> Option<String> {
        let s = self.state();
        s.past.iter().chain(s.agent.as_ref()).rev().find_map(Ipa::rescue_password_hash)
    }

    /// The logs of every agent this machine ran, oldest first.
    pub fn agent_logs(&self) -> Vec<String> {
        let s = self.state();
        s.past.iter().chain(s.agent.as_ref()).map(Ipa::log).collect()
    }

    /// The running agent's log tail, else the last stopped one's, for a failure message.
    pub fn current_logs(&self, max: usize) -> String {
        let mut s = self.state();
        match s.agent.as_mut() {
            Some(a) => match a.exited() {
                Ok(Some(status)) => format!("the agent exited ({status}):\n{}", a.logs(max)),
                _ => a.logs(max),
            },
            None => match s.past.last() {
                Some(a) => format!("no agent is running; the last one's logs:\n{}", a.logs(max)),
                None => "no agent has run".into(),
            },
        }
    }

    /// Do what the running agent `pid` asks of the machine through [`POWER_SH`], for as long
    /// as it is the running one.
    fn watch_agent_requests(self: &std::sync::Arc<Self>, pid: u32, request: PathBuf) {
        let me = std::sync::Arc::clone(self);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let asked = std::fs::read_to_string(&request).ok();
                let mut s = me.state();
                if s.agent.as_ref().map(Ipa::pid) != Some(pid) {
                    return;
                }
                let Some(asked) = asked else { continue };
                let asked = asked.trim().to_owned();
                s.agent_requests.push(asked.clone());
                Self::power_off(&mut s);
                if asked == "reboot" {
                    let _ = me.power_on(&mut s);
                }
                return;
            }
        });
    }

    fn power_off(s: &mut MachineState) {
        if let Some(mut a) = s.agent.take() {
            a.stop();
            s.past.push(a);
        }
        s.on = false;
    }

    fn power_on(
        self: &std::sync::Arc<Self>,
        s: &mut MachineState,
    ) -> Result<(), sim::bmc::BmcError> {
        use sim::bmc::{BmcError, BootEnabled, BootTarget};
        s.on = true;
        let target = s.boot.effective_target();
        if s.boot.enabled == BootEnabled::Once {
            s.boot.enabled = BootEnabled::Disabled;
        }
        s.boots.push(target);
        if target != BootTarget::Pxe {
            return Ok(());
        }
        let opts = std::mem::take(&mut s.next);
        let agent = Ipa::start_on_with(&self.venv, &self.ns, &self.api_url, &self.disk, &opts)
            .map_err(|e| BmcError::Failed(format!("the ramdisk did not start: {e:#}")))?;
        let report = agent.dir.path().join("hwm-report.json");
        let gate = agent.dir.path().join("released");
        let hold = opts.hold;
        self.watch_agent_requests(agent.pid(), agent.dir.path().join("power-request"));
        s.agent = Some(agent);
        let me = std::sync::Arc::clone(self);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                let read = std::fs::read_to_string(&report).ok();
                if let Some(r) =
                    read.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                {
                    let disks = r["block_devices"].as_array().cloned().unwrap_or_default();
                    let ok =
                        disks.len() == 1 && disks[0]["name"].as_str() == me.disk.device.to_str();
                    if !ok {
                        me.state().refused.push(r.to_string());
                    } else if !hold {
                        let _ = std::fs::write(&gate, "");
                    }
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            me.state().refused.push("no report from the hardware manager within 60 s".into());
        });
        Ok(())
    }
}

/// The machine behind a BMC, as `sim::bmc` serves it; shared with the BMC.
pub struct IpaMachineBackend(pub std::sync::Arc<IpaMachine>);

#[async_trait::async_trait]
impl sim::bmc::MachineBackend for IpaMachineBackend {
    async fn power_state(&self) -> Result<sim::bmc::PowerStatus, sim::bmc::BmcError> {
        Ok(if self.0.state().on { sim::bmc::PowerStatus::On } else { sim::bmc::PowerStatus::Off })
    }

    async fn reset(&self, kind: sim::bmc::ResetKind) -> Result<(), sim::bmc::BmcError> {
        use sim::bmc::ResetKind as K;
        let m = &self.0;
        let mut s = m.state();
        match kind {
            K::On | K::ForceOn if s.on => Ok(()),
            K::On | K::ForceOn => m.power_on(&mut s),
            K::ForceOff | K::GracefulShutdown => {
                IpaMachine::power_off(&mut s);
                Ok(())
            }
            K::ForceRestart | K::GracefulRestart | K::PowerCycle => {
                IpaMachine::power_off(&mut s);
                m.power_on(&mut s)
            }
            other => Err(sim::bmc::BmcError::Unsupported(format!("{other:?}"))),
        }
    }

    async fn boot_override(&self) -> Result<sim::bmc::BootOverride, sim::bmc::BmcError> {
        Ok(self.0.state().boot)
    }

    async fn set_boot_override(&self, o: sim::bmc::BootOverride) -> Result<(), sim::bmc::BmcError> {
        self.0.state().boot = o;
        Ok(())
    }
}

/// A TLS server that takes over an agent's address in a [`Netns`] with a certificate of its
/// own (what a machine that steals the agent's IP would serve). It completes no request
/// without the client accepting its certificate, and records what happened to each
/// connection: `handshake failed: …` when the client refused the certificate, `request: …`
/// with the first bytes of a request a client sent anyway. Killed on drop.
pub struct TlsImpostor {
    child: Child,
    dir: tempfile::TempDir,
}

/// The impostor's server, run with the namespace's Python: `ip port cert key log`.
const IMPOSTOR_PY: &str = r#"
import socket, ssl, sys
ip, port, cert, key, log = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, int(port)))
srv.listen(16)
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
note("listening")
while True:
    conn, _ = srv.accept()
    conn.settimeout(10)
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
        data = tls.recv(4096)
        note("request: %r" % data[:120])
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        tls.close()
    except Exception as e:
        note("handshake failed: %s" % e)
    finally:
        conn.close()
"#;

impl TlsImpostor {
    /// Serve TLS on `ns`'s agent address ([`Netns::ns_ip`], [`AGENT_PORT`]) with a fresh
    /// self-signed certificate for that address; returns once it listens.
    ///
    /// # Errors
    /// When the certificate cannot be made or the server does not come up within 30 s.
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferric-impostor-").tempdir()?;
        let d = dir.path();
        let made = rcgen::generate_simple_self_signed(vec![ns.ns_ip.clone()])?;
        std::fs::write(d.join("cert.pem"), made.cert.pem())?;
        std::fs::write(d.join("key.pem"), made.signing_key.serialize_pem())?;
        std::fs::write(d.join("impostor.py"), IMPOSTOR_PY)?;
        let out = std::fs::File::create(d.join("impostor.out"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3"])
            .arg(d.join("impostor.py"))
            .arg(&ns.ns_ip)
            .arg(AGENT_PORT.to_string())
            .arg(d.join("cert.pem"))
            .arg(d.join("key.pem"))
            .arg(d.join("impostor.log"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("starting the impostor")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let me = loop {
            if let Some(status) = child.try_wait()? {
                let out = std::fs::read_to_string(d.join("impostor.out")).unwrap_or_default();
                bail!("the impostor exited ({status}): {out}");
            }
            if std::fs::read_to_string(d.join("impostor.log"))
                .is_ok_and(|l| l.contains("listening"))
            {
                break Self { child, dir };
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("the impostor did not listen within 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Ok(me)
    }

    /// What happened to each connection, in order (after the `listening` line).
    pub fn log(&self) -> Vec<String> {
        let text =
            std::fs::read_to_string(self.dir.path().join("impostor.log")).unwrap_or_default();
        text.lines().skip(1).map(str::to_owned).collect()
    }
}

impl Drop for TlsImpostor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

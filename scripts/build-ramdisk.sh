#!/usr/bin/env bash
# Build Ferric's deploy ramdisk: the Debian kernel plus an initramfs holding busybox, the
# virtio modules and the Ferric agent (static, x86_64-unknown-linux-musl). /init brings the
# network up with DHCP and starts the agent with the API URL from the kernel command line
# (`ferric.api_url=` or Ironic's `ipa-api-url=`), exactly what pxe-service renders.
#
# Output (cached; rebuilt only when an input changed):
#   <out>/deploy_kernel   the kernel (vmlinuz)
#   <out>/deploy_ramdisk  the initramfs (newc cpio, gzip)
#
# Usage: scripts/build-ramdisk.sh [--out DIR] [--agent BIN | --no-agent] [--release]
#   --out DIR    output directory (default target/ramdisk)
#   --agent BIN  use this agent binary instead of building it
#   --no-agent   a ramdisk without the agent (for the callback-timeout failure test)
#   --release    build the agent with the release profile (default: dev profile, stripped)
# Needs: busybox-static, gzip, apt-get (for `apt-get download`), the rust target
# x86_64-unknown-linux-musl (rustup target add x86_64-unknown-linux-musl) and musl-gcc
# (apt-get install musl-tools: the agent's TLS library, aws-lc, is C).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib-kernel.sh
source "$REPO_ROOT/scripts/lib-kernel.sh"

OUT="$REPO_ROOT/target/ramdisk"
AGENT_BIN=""
WITH_AGENT=1
PROFILE=dev
AGENT_TARGET_DIR="${FERRIC_AGENT_TARGET_DIR:-$REPO_ROOT/target/ramdisk/cargo}"
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --agent) AGENT_BIN="$2"; shift 2 ;;
        --no-agent) WITH_AGENT=0; shift ;;
        --release) PROFILE=release; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Modules the deploy ramdisk loads, dependencies resolved from the kernel's modules.dep.
# sr_mod and isofs read a virtual-media config drive (label config-2).
MODULES=(virtio_pci virtio_net virtio_blk virtio_scsi sd_mod ahci ata_piix e1000 qemu_fw_cfg sr_mod isofs)

build_agent() {
    local target=x86_64-unknown-linux-musl
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        log "adding rust target $target"
        rustup target add "$target" >&2
    fi
    if ! command -v musl-gcc >/dev/null && ! command -v x86_64-linux-musl-gcc >/dev/null; then
        die "musl-gcc not found: apt-get install musl-tools (the agent's TLS library is C)"
    fi
    log "building the agent for $target ($PROFILE profile)"
    # Strip only the musl artifacts: keeps the ramdisk small without touching host builds.
    # Its own target dir: this build never waits for (or blocks) the workspace's build lock,
    # so it can run from inside `cargo test`.
    CARGO_TARGET_DIR="$AGENT_TARGET_DIR" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C strip=debuginfo -C target-feature=+crt-static" \
        cargo build --manifest-path "$REPO_ROOT/Cargo.toml" -p agent --bin agent \
        --target "$target" --profile "$PROFILE" >&2
    local dir="$PROFILE"; [[ "$PROFILE" == dev ]] && dir=debug
    AGENT_BIN="$AGENT_TARGET_DIR/$target/$dir/agent"
    [[ -x "$AGENT_BIN" ]] || die "agent build produced no $AGENT_BIN"
}

if ((WITH_AGENT)); then
    [[ -n "$AGENT_BIN" ]] || build_agent
    [[ -x "$AGENT_BIN" ]] || die "agent binary $AGENT_BIN is not executable"
    if file "$AGENT_BIN" 2>/dev/null | grep -q 'dynamically linked'; then
        die "agent binary $AGENT_BIN is dynamically linked; the ramdisk needs a static binary"
    fi
fi

ferric_kernel_fetch

# Cache key: this script, the shared library, the kernel package, busybox and the agent.
stamp_input() {
    sha256sum "$REPO_ROOT/scripts/build-ramdisk.sh" "$REPO_ROOT/scripts/lib-kernel.sh" "$(command -v busybox)"
    echo "$KERNEL_DEB"
    if ((WITH_AGENT)); then sha256sum "$AGENT_BIN"; else echo no-agent; fi
}
STAMP="$(stamp_input | sha256sum | cut -d' ' -f1)"
if [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" && -f "$OUT/deploy_kernel" && -f "$OUT/deploy_ramdisk" ]]; then
    log "up to date: $OUT/deploy_kernel $OUT/deploy_ramdisk"
    exit 0
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/ferric-ramdisk.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS"/{bin,sbin,etc/ferric,proc,sys,dev,run,tmp,var/lib/ferric,usr/share/udhcpc,usr/bin,usr/sbin}
cp "$(command -v busybox)" "$ROOTFS/bin/busybox"
for applet in $(busybox --list); do
    [[ -e "$ROOTFS/bin/$applet" ]] || ln -s busybox "$ROOTFS/bin/$applet"
done
ferric_copy_modules "$ROOTFS" "${MODULES[@]}" >"$ROOTFS/etc/ferric/modules"
# insmod needs paths: record each module's path relative to the modules dir, in load order.
: >"$ROOTFS/etc/ferric/modules.paths"
while read -r m; do
    (cd "$ROOTFS/lib/modules/$KERNEL_VERSION" && find kernel -name "$m.ko*" | head -1) >>"$ROOTFS/etc/ferric/modules.paths"
done <"$ROOTFS/etc/ferric/modules"

# CA certificates: HTTPS image sources, and the agent's TLS client refuses to start without
# any trust roots.
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -f "$ca" ]]; then
        mkdir -p "$ROOTFS/etc/ssl/certs"
        cp "$ca" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
        break
    fi
done
if ((WITH_AGENT)); then
    cp "$AGENT_BIN" "$ROOTFS/bin/ferric-agent"
    chmod 0755 "$ROOTFS/bin/ferric-agent"
fi

cat >"$ROOTFS/usr/share/udhcpc/default.script" <<'SCRIPT'
#!/bin/sh
# udhcpc hook: configure the interface from the lease.
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip -4 route replace default via "$r" dev "$interface"; break; done
        : >/etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
        echo "ferric-ramdisk: $interface has $ip/${mask:-24} via ${router:-none}" >/dev/console
        ;;
esac
exit 0
SCRIPT
chmod 0755 "$ROOTFS/usr/share/udhcpc/default.script"

cat >"$ROOTFS/init" <<'INIT'
#!/bin/sh
# Ferric deploy ramdisk: bring up the boot NIC, then run the agent against the API URL
# named on the kernel command line.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
say() { echo "ferric-ramdisk[$(cut -d" " -f1 /proc/uptime)]: $*"; }
say "starting (kernel $(uname -r))"

KVER="$(uname -r)"
while read -r rel; do
    [ -n "$rel" ] || continue
    insmod "/lib/modules/$KVER/$rel" 2>/dev/null
done </etc/ferric/modules.paths
ip link set lo up

API_URL=""
BOOTIF_MAC=""
STATIC_IP=""
STATIC_GW=""
STATIC_DNS=""
STATIC_FROM="the boot media"
CONFIG_DRIVE=""
for word in $(cat /proc/cmdline); do
    case "$word" in
        ferric.api_url=*) API_URL="${word#*=}" ;;
        ipa-api-url=*) [ -n "$API_URL" ] || API_URL="${word#*=}" ;;
        BOOTIF=*) BOOTIF_MAC="$(echo "${word#*=}" | sed 's/^01-//; s/-/:/g' | tr 'A-F' 'a-f')" ;;
        # Static addressing (virtual-media boots, from the node's network_data): no DHCP.
        ferric.ip=*) STATIC_IP="${word#*=}" ;;
        ferric.gateway=*) STATIC_GW="${word#*=}" ;;
        ferric.dns=*) STATIC_DNS="${word#*=}" ;;
        ferric.config_drive=1) CONFIG_DRIVE=1 ;;
    esac
done

# Virtual media with a second device: the node's settings come on a config drive (an ISO
# labelled config-2); ferric/network holds its static addressing as key=value lines.
if [ "$CONFIG_DRIVE" = 1 ]; then
    # The CD drives appear as their driver probes them: look for up to 10 s. The config
    # drive is the CD holding openstack/latest/meta_data.json and ferric/network.
    dev=""
    i=0
    mkdir -p /run/config-drive
    while [ -z "$dev" ] && [ "$i" -lt 50 ]; do
        for d in /dev/sr*; do
            [ -b "$d" ] || continue
            mount -t iso9660 -o ro "$d" /run/config-drive 2>/dev/null || continue
            if [ -f /run/config-drive/openstack/latest/meta_data.json ] && [ -f /run/config-drive/ferric/network ]; then
                dev="$d"
                break
            fi
            umount /run/config-drive
        done
        [ -n "$dev" ] || { sleep 0.2; i=$((i + 1)); }
    done
    if [ -n "$dev" ]; then
        net=/run/config-drive/ferric/network
        STATIC_IP="$(sed -n 's/^ip=//p' "$net" 2>/dev/null | head -n 1)"
        STATIC_GW="$(sed -n 's/^gateway=//p' "$net" 2>/dev/null | head -n 1)"
        STATIC_DNS="$(sed -n 's/^dns=//p' "$net" 2>/dev/null | head -n 1)"
        STATIC_FROM="the config drive $dev"
        say "config drive $dev mounted"
    else
        say "no config drive found (a CD with openstack/latest/meta_data.json and ferric/network)"
    fi
fi

# The boot NIC: the one named by BOOTIF, else the first Ethernet device that appears.
IFACE=""
i=0
while [ -z "$IFACE" ] && [ "$i" -lt 100 ]; do
    for dev in /sys/class/net/*; do
        name="${dev##*/}"
        [ "$name" = lo ] && continue
        mac="$(cat "$dev/address" 2>/dev/null)"
        if [ -z "$BOOTIF_MAC" ] || [ "$mac" = "$BOOTIF_MAC" ]; then IFACE="$name"; break; fi
    done
    [ -n "$IFACE" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -z "$IFACE" ]; then
    say "no network interface found (BOOTIF=${BOOTIF_MAC:-unset})"
else
    ip link set "$IFACE" up
    if [ -n "$STATIC_IP" ]; then
        ip -4 addr add "$STATIC_IP" dev "$IFACE"
        [ -n "$STATIC_GW" ] && ip -4 route replace default via "$STATIC_GW" dev "$IFACE"
        : >/etc/resolv.conf
        for d in $(echo "$STATIC_DNS" | tr ',' ' '); do echo "nameserver $d" >>/etc/resolv.conf; done
        say "$IFACE has $STATIC_IP via ${STATIC_GW:-none} (static, from $STATIC_FROM)"
    else
        say "DHCP on $IFACE"
        udhcpc -i "$IFACE" -s /usr/share/udhcpc/default.script -t 20 -T 2 -A 3 -n -q \
            || say "DHCP on $IFACE failed"
    fi
fi

# How the conductor reaches this agent when the node sits behind NAT (a QEMU VM with
# user networking): the host side of a port forward, handed over through QEMU fw_cfg.
ADVERTISE=""
FWCFG=/sys/firmware/qemu_fw_cfg/by_name/opt/ferric/agent_advertise/raw
[ -r "$FWCFG" ] && ADVERTISE="$(cat "$FWCFG")"

say "api_url=${API_URL:-unset} advertise=${ADVERTISE:-default}"
if [ -x /bin/ferric-agent ]; then
    set -- /bin/ferric-agent
    [ -n "$API_URL" ] && set -- "$@" --api-url "$API_URL"
    say "exec $*"
    "$@"
    say "agent exited with status $?"
    # Rescue: the agent set the rescue user's password (finalize_rescue) and stopped; this
    # ramdisk is the rescue system now, with a password login on the console.
    if [ -s /etc/ipa-rescue-config/ipa-rescue-password ]; then
        say "rescue mode: log in as user rescue on the console"
        mkdir -p /root
        while :; do setsid getty 115200 console || sleep 1; done
    fi
    sleep 2
    poweroff -f
else
    say "this ramdisk has no agent; idling"
    # Still prove the path to the API works (shows up in the API's access log).
    # (busybox nc, not wget: the static busybox's wget crashes in glibc's NSS.)
    case "$API_URL" in
        http://*)
            hp="${API_URL#http://}"; hp="${hp%%/*}"; path="/${API_URL#http://*/}"
            [ "$path" = "/$API_URL" ] && path=/
            host="${hp%:*}"; port="${hp##*:}"; [ "$port" = "$hp" ] && port=80
            status="$(printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hp" | timeout 5 nc "$host" "$port" | head -n 1)"
            say "API at $API_URL answered: ${status:-nothing}"
            ;;
    esac
fi
while :; do sleep 3600; done
INIT
chmod 0755 "$ROOTFS/init"

cp "$KERNEL_VMLINUZ" "$OUT/deploy_kernel.tmp" && mv "$OUT/deploy_kernel.tmp" "$OUT/deploy_kernel"
ferric_cpio "$ROOTFS" "$OUT/deploy_ramdisk"
echo "$STAMP" >"$OUT/.stamp"
log "built $OUT/deploy_kernel ($(stat -c %s "$OUT/deploy_kernel") bytes) and $OUT/deploy_ramdisk ($(stat -c %s "$OUT/deploy_ramdisk") bytes), kernel $KERNEL_VERSION"

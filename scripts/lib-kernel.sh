# shellcheck shell=bash
# Shared by build-ramdisk.sh and build-test-image.sh: fetch the Debian kernel package once
# (apt-get download, no installation) and extract it under target/ramdisk/cache/.
#
# After `ferric_kernel_fetch`, these are set:
#   KERNEL_DEB      the .deb file
#   KERNEL_ROOT     the extracted tree (boot/vmlinuz-*, lib/modules/<ver>/)
#   KERNEL_VERSION  e.g. 6.1.0-56-amd64
#   KERNEL_VMLINUZ  path to the kernel image
# Override the package with FERRIC_KERNEL_PKG=linux-image-6.1.0-NN-amd64.

set -euo pipefail

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CACHE_DIR="${FERRIC_RAMDISK_CACHE:-$REPO_ROOT/target/ramdisk/cache}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
    local missing=()
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    if ((${#missing[@]})); then
        die "missing tools: ${missing[*]} (apt-get install -y --no-install-recommends busybox-static syslinux syslinux-common mtools dosfstools qemu-utils)"
    fi
}

ferric_kernel_fetch() {
    need apt-get apt-cache dpkg-deb busybox gzip
    mkdir -p "$CACHE_DIR"
    local pkg="${FERRIC_KERNEL_PKG:-}"
    if [[ -z "$pkg" ]]; then
        # Reuse a cached package when there is one, so repeated builds need no package index.
        KERNEL_DEB="$(ls -1 "$CACHE_DIR"/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)"
        if [[ -z "$KERNEL_DEB" ]]; then
            pkg="$(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -1 || true)"
            [[ -n "$pkg" ]] || die "no linux-image-6.1.0-*-amd64 package known to apt (run apt-get update)"
        fi
    else
        KERNEL_DEB="$(ls -1 "$CACHE_DIR/${pkg}"_*.deb 2>/dev/null | sort -V | tail -1 || true)"
    fi
    if [[ -z "${KERNEL_DEB:-}" ]]; then
        log "downloading $pkg with apt-get download"
        (cd "$CACHE_DIR" && apt-get download "$pkg" 2>&1 | grep -v 'unsandboxed' >&2) \
            || die "apt-get download $pkg failed"
        KERNEL_DEB="$(ls -1 "$CACHE_DIR/${pkg}"_*.deb | sort -V | tail -1)"
    fi
    local stem
    stem="$(basename "$KERNEL_DEB" .deb)"
    KERNEL_ROOT="$CACHE_DIR/$stem"
    if [[ ! -f "$KERNEL_ROOT/.extracted" ]]; then
        log "extracting $(basename "$KERNEL_DEB")"
        rm -rf "$KERNEL_ROOT"
        mkdir -p "$KERNEL_ROOT"
        dpkg-deb -x "$KERNEL_DEB" "$KERNEL_ROOT"
        # The package ships no modules.dep (it is made at install time): make it here.
        local ver
        ver="$(basename "$(ls -d "$KERNEL_ROOT"/lib/modules/*/ | head -1)")"
        busybox depmod -b "$KERNEL_ROOT" "$ver"
        touch "$KERNEL_ROOT/.extracted"
    fi
    KERNEL_VMLINUZ="$(ls -1 "$KERNEL_ROOT"/boot/vmlinuz-* | head -1)"
    KERNEL_VERSION="$(basename "$KERNEL_VMLINUZ")"
    KERNEL_VERSION="${KERNEL_VERSION#vmlinuz-}"
    [[ -d "$KERNEL_ROOT/lib/modules/$KERNEL_VERSION" ]] || die "no modules for $KERNEL_VERSION in $KERNEL_DEB"
}

# ferric_copy_modules <rootfs> <module>... : copy the named modules and every dependency
# (read from the package's modules.dep) into <rootfs>/lib/modules/<ver>/, then run depmod.
# Prints the load order (dependencies first) on stdout.
ferric_copy_modules() {
    local rootfs="$1"; shift
    local src="$KERNEL_ROOT/lib/modules/$KERNEL_VERSION"
    local dst="$rootfs/lib/modules/$KERNEL_VERSION"
    mkdir -p "$dst"
    local -A seen=()
    local order=()
    _visit() {
        local name="$1" rel deps d
        [[ -n "${seen[$name]:-}" ]] && return 0
        seen[$name]=1
        rel="$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$src/modules.dep" | head -1 | cut -d: -f1 || true)"
        if [[ -z "$rel" ]]; then
            # built into the kernel: nothing to load
            grep -qE "(^|/)${name}\.ko$" "$src/modules.builtin" \
                || die "module $name is neither a module nor built in"
            return 0
        fi
        deps="$(grep -E "^${rel}:" "$src/modules.dep" | cut -d: -f2-)"
        for d in $deps; do
            d="$(basename "$d")"; d="${d%%.ko*}"
            _visit "$d"
        done
        mkdir -p "$dst/$(dirname "$rel")"
        cp "$src/$rel" "$dst/$rel"
        order+=("$name")
    }
    local m
    for m in "$@"; do _visit "${m//-/_}"; done
    cp "$src/modules.builtin" "$src/modules.order" "$dst/" 2>/dev/null || true
    [[ -f "$src/modules.builtin.modinfo" ]] && cp "$src/modules.builtin.modinfo" "$dst/"
    busybox depmod -b "$rootfs" "$KERNEL_VERSION" 2>/dev/null || log "warning: busybox depmod failed; /init uses insmod order"
    printf '%s\n' "${order[@]}"
}

# ferric_cpio <rootfs> <out.img> : newc cpio archive, gzip-compressed, reproducible order.
ferric_cpio() {
    local rootfs="$1" out="$2"
    (cd "$rootfs" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) \
        | gzip -9 -n >"$out.tmp"
    mv "$out.tmp" "$out"
}

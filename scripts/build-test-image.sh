#!/usr/bin/env bash
# Build the test OS image that Ferric deploys to QEMU machines: a whole-disk image that boots
# on its own (MBR + one FAT partition made bootable with syslinux), holding the Debian kernel
# and a tiny initramfs (for BIOS through syslinux, for UEFI as a unified kernel image at
# \EFI\BOOT\BOOTX64.EFI) whose /init prints a marker with the machine's identity to the serial
# console and powers off:
#
#   FERRIC-TEST-OS booted serial=<DMI product serial> uuid=<DMI product uuid> disk=<label>
#
# No loop mounts: the FAT file system is made in a file with mkfs.vfat, filled with mcopy,
# made bootable with `syslinux --install`, then placed behind syslinux's mbr.bin and an MBR
# partition table written by sfdisk.
#
# Output (cached; rebuilt only when an input changed):
#   <out>/test-os.raw     the raw disk image
#   <out>/test-os.qcow2   the same image as qcow2
#   <out>/test-os.raw.sha256, <out>/test-os.qcow2.sha256
#
# Usage: scripts/build-test-image.sh [--out DIR] [--size-mib N]
# Needs: busybox-static syslinux syslinux-common mtools dosfstools fdisk qemu-utils gzip;
# systemd-boot-efi and binutils (objcopy) for the UEFI boot path (optional).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib-kernel.sh
source "$REPO_ROOT/scripts/lib-kernel.sh"

OUT="$REPO_ROOT/target/test-image"
SIZE_MIB=32
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --size-mib) SIZE_MIB="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
need busybox mkfs.vfat mcopy mmd syslinux sfdisk qemu-img gzip sha256sum
MBR_BIN=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
    [[ -f "$f" ]] && { MBR_BIN="$f"; break; }
done
[[ -n "$MBR_BIN" ]] || die "syslinux mbr.bin not found (apt-get install -y syslinux syslinux-common)"
EFI_STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

ferric_kernel_fetch

STAMP="$( { sha256sum "$REPO_ROOT/scripts/build-test-image.sh" "$REPO_ROOT/scripts/lib-kernel.sh" \
    "$(command -v busybox)" "$MBR_BIN"; ls -l "$EFI_STUB" 2>/dev/null; echo "$KERNEL_DEB $SIZE_MIB"; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" && -f "$OUT/test-os.raw" && -f "$OUT/test-os.qcow2" ]]; then
    log "up to date: $OUT/test-os.raw $OUT/test-os.qcow2"
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferric-test-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- the tiny OS: busybox + /init that prints the marker and powers off
ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"/{bin,proc,sys,dev}
cp "$(command -v busybox)" "$ROOTFS/bin/busybox"
for applet in sh cat echo mount poweroff sleep sync tr; do ln -s busybox "$ROOTFS/bin/$applet"; done
cat >"$ROOTFS/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
read_id() { [ -r "$1" ] && tr -d '\n' <"$1" || echo unknown; }
SERIAL="$(read_id /sys/class/dmi/id/product_serial)"
UUID="$(read_id /sys/class/dmi/id/product_uuid)"
LABEL=unknown
for word in $(cat /proc/cmdline); do
    case "$word" in ferric.test_os=*) LABEL="${word#*=}" ;; esac
done
echo "FERRIC-TEST-OS booted serial=$SERIAL uuid=$UUID disk=$LABEL"
sync
poweroff -f
sleep 10
INIT
chmod 0755 "$ROOTFS/init"
ferric_cpio "$ROOTFS" "$WORK/initrd.img"

# --- the FAT partition: 1 MiB aligned, filling the rest of the disk
PART_START_SECTOR=2048
PART_SECTORS=$(( (SIZE_MIB - 1) * 2048 ))
truncate -s $((PART_SECTORS * 512)) "$WORK/part.img"
mkfs.vfat -n FERRICTEST -i 46455252 "$WORK/part.img" >/dev/null
cat >"$WORK/syslinux.cfg" <<'CFG'
SERIAL 0 115200
DEFAULT ferric
PROMPT 0
TIMEOUT 0
LABEL ferric
    KERNEL /vmlinuz
    INITRD /initrd.img
    APPEND console=ttyS0,115200 panic=1 quiet ferric.test_os=ferric-test-os
CFG
mcopy -i "$WORK/part.img" "$KERNEL_VMLINUZ" ::/vmlinuz
# UEFI: a unified kernel image (systemd's EFI stub + kernel + initrd + command line) at the
# removable-media path, so OVMF boots the same OS from the same disk.
if [[ -f "$EFI_STUB" ]]; then
    printf 'console=ttyS0,115200 panic=1 quiet ferric.test_os=ferric-test-os-uefi' >"$WORK/cmdline.txt"
    printf 'NAME="Ferric test OS"\nID=ferric-test-os\n' >"$WORK/os-release"
    objcopy \
        --add-section .osrel="$WORK/os-release" --change-section-vma .osrel=0x20000 \
        --add-section .cmdline="$WORK/cmdline.txt" --change-section-vma .cmdline=0x30000 \
        --add-section .linux="$KERNEL_VMLINUZ" --change-section-vma .linux=0x2000000 \
        --add-section .initrd="$WORK/initrd.img" --change-section-vma .initrd=0x3000000 \
        "$EFI_STUB" "$WORK/BOOTX64.EFI"
    mmd -i "$WORK/part.img" ::/EFI ::/EFI/BOOT
    mcopy -i "$WORK/part.img" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
else
    log "warning: $EFI_STUB missing (apt-get install systemd-boot-efi): the image boots with BIOS only"
fi
mcopy -i "$WORK/part.img" "$WORK/initrd.img" ::/initrd.img
mcopy -i "$WORK/part.img" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$WORK/part.img"

# --- the whole disk: syslinux's MBR code + one active FAT16 (LBA) partition
truncate -s "${SIZE_MIB}M" "$WORK/disk.raw"
printf 'label: dos\nlabel-id: 0x46455252\n%s,%s,e,*\n' "$PART_START_SECTOR" "$PART_SECTORS" \
    | sfdisk --quiet --no-reread --no-tell-kernel "$WORK/disk.raw"
dd if="$MBR_BIN" of="$WORK/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/part.img" of="$WORK/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none

mv "$WORK/disk.raw" "$OUT/test-os.raw"
qemu-img convert -f raw -O qcow2 "$OUT/test-os.raw" "$OUT/test-os.qcow2.tmp"
mv "$OUT/test-os.qcow2.tmp" "$OUT/test-os.qcow2"
(cd "$OUT" && sha256sum test-os.raw >test-os.raw.sha256 && sha256sum test-os.qcow2 >test-os.qcow2.sha256)
echo "$STAMP" >"$OUT/.stamp"
log "built $OUT/test-os.raw ($(stat -c %s "$OUT/test-os.raw") bytes) and $OUT/test-os.qcow2 ($(stat -c %s "$OUT/test-os.qcow2") bytes)"

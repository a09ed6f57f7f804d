#!/usr/bin/env bash
# What CI runs for the real-machine (QEMU, TCG) deploy test: install the Debian packages,
# build the deploy ramdisk and the test OS image (both cached under target/), then run
# tests/tests/qemu_deploy.rs with QEMU and the services required (a missing piece fails
# instead of skipping). PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) must be up.
#
# Usage: scripts/qemu-ci.sh [--no-install] [extra cargo test filter/args...]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

INSTALL=1
if [[ "${1:-}" == "--no-install" ]]; then INSTALL=0; shift; fi

if ((INSTALL)); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # The preinstalled newer qemu-utils blocks qemu-system-x86 unless downgraded in the same command.
    apt-get install -y --no-install-recommends --allow-downgrades \
        qemu-system-x86 qemu-utils=1:7.2+dfsg-7+deb12u18+b3 ipxe busybox-static ovmf dnsmasq-base \
        syslinux syslinux-common mtools dosfstools fdisk systemd-boot-efi binutils iproute2 \
        ca-certificates
    rustup target add x86_64-unknown-linux-musl
fi

scripts/build-test-image.sh
scripts/build-ramdisk.sh
scripts/build-ramdisk.sh --no-agent --out target/ramdisk/no-agent

FERRIC_REQUIRE_QEMU=1 FERRIC_REQUIRE_SERVICES=1 \
    cargo test -p tests --test qemu_deploy -- --nocapture --test-threads=1 "$@"

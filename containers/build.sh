#!/usr/bin/env bash
# Build Ferric's container images FROM scratch: api-service, conductor-service, pxe-service,
# ferric (migrations, admin commands, `helm test`) and ramdisk (deploy kernel + initramfs and a
# static busybox, for pxe-service's init container). Each holds a static
# x86_64-unknown-linux-musl binary, the CA bundle and a passwd entry for user 65532; no base
# image and no registry are needed, so this works offline.
#
# Usage: containers/build.sh [--tag TAG] [--profile release|dev] [--target-dir DIR]
#                            [--bin-dir DIR] [--ramdisk-dir DIR] [--only NAME[,NAME…]]
#   --tag TAG          image tag (default: the workspace version); images are
#                      localhost/ferric/<name>:TAG
#   --profile P        cargo profile of the static binaries (default release)
#   --target-dir DIR   cargo target dir of the musl build (default target/images/cargo; the
#                      test suite shares the static agent's, FERRIC_AGENT_TARGET_DIR)
#   --bin-dir DIR      use the binaries in DIR instead of building them
#   --ramdisk-dir DIR  deploy_kernel and deploy_ramdisk to put in the ramdisk image (default:
#                      built with scripts/build-ramdisk.sh from the static agent)
#   --only NAMES       build only these images (comma separated)
# Prints one line per image: `image <name> <reference> <bytes>`.
# Needs: podman or buildah (Debian's), rustup target x86_64-unknown-linux-musl, musl-tools,
# busybox-static (ramdisk image), ipxe (optional: iPXE binaries in the pxe-service image).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$REPO_ROOT/containers"
TARGET=x86_64-unknown-linux-musl

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'containers/build.sh: %s\n' "$*" >&2; exit 1; }

TAG=""
PROFILE=release
TARGET_DIR="${FERRIC_IMAGE_TARGET_DIR:-$REPO_ROOT/target/images/cargo}"
BIN_DIR=""
RAMDISK_DIR=""
ONLY="api-service,conductor-service,pxe-service,ferric,ramdisk"
while (($#)); do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --profile) PROFILE="$2"; shift 2 ;;
        --target-dir) TARGET_DIR="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --ramdisk-dir) RAMDISK_DIR="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml" | head -n1)
TAG=${TAG:-$VERSION}
IFS=, read -r -a IMAGES <<<"$ONLY"
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

if command -v podman >/dev/null; then BUILD=(podman build); INSPECT=(podman image inspect)
elif command -v buildah >/dev/null; then BUILD=(buildah bud); INSPECT=(buildah inspect --type image)
else die "neither podman nor buildah found: apt-get install podman (or buildah)"; fi

# --- the static binaries -------------------------------------------------------------------
BINS=()
for img in "${IMAGES[@]}"; do
    case "$img" in
        api-service|conductor-service|pxe-service|ferric) BINS+=("$img") ;;
        ramdisk) ;;
        *) die "unknown image $img" ;;
    esac
done
if [[ -z "$BIN_DIR" && ${#BINS[@]} -gt 0 ]]; then
    rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >&2
    command -v musl-gcc >/dev/null || die "musl-gcc not found: apt-get install musl-tools"
    args=()
    for b in "${BINS[@]}"; do
        case "$b" in
            ferric) args+=(-p cli --bin ferric) ;;
            *) args+=(-p "$b" --bin "$b") ;;
        esac
    done
    log "building ${BINS[*]} for $TARGET ($PROFILE profile) in $TARGET_DIR"
    # Same flags as the static agent (scripts/build-ramdisk.sh), so the two share a build.
    CARGO_TARGET_DIR="$TARGET_DIR" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C strip=debuginfo -C target-feature=+crt-static" \
        cargo build --manifest-path "$REPO_ROOT/Cargo.toml" --target "$TARGET" \
        --profile "$PROFILE" "${args[@]}" >&2
    dir="$PROFILE"; [[ "$PROFILE" == dev ]] && dir=debug
    BIN_DIR="$TARGET_DIR/$TARGET/$dir"
fi

# --- one staged context, shared by every Containerfile ------------------------------------
CTX=$(mktemp -d "${TMPDIR:-/tmp}/ferric-images.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/etc" "$CTX/ipxe" "$CTX/ramdisk"
cp "$HERE/rootfs/etc/passwd" "$HERE/rootfs/etc/group" "$CTX/etc/"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$CTX/ca-certificates.crt"
else
    log "no /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates): empty bundle"
    : >"$CTX/ca-certificates.crt"
fi
for b in "${BINS[@]}"; do
    src="$BIN_DIR/$b"
    [[ -x "$src" ]] || die "$src missing or not executable"
    if file "$src" | grep -q 'dynamically linked'; then die "$src is dynamically linked"; fi
    cp "$src" "$CTX/bin/$b"
done
if wants pxe-service; then
    for f in undionly.kpxe ipxe.efi snponly.efi; do
        [[ -f "/usr/lib/ipxe/$f" ]] && cp "/usr/lib/ipxe/$f" "$CTX/ipxe/"
    done
    [[ -n "$(ls -A "$CTX/ipxe")" ]] || log "no iPXE binaries in /usr/lib/ipxe (apt-get install ipxe): pxe-service image without them"
fi
if wants ramdisk; then
    busybox=$(command -v busybox || true)
    [[ -n "$busybox" ]] && file -L "$busybox" | grep -q 'statically linked' \
        || die "a static busybox is needed for the ramdisk image: apt-get install busybox-static"
    cp -L "$busybox" "$CTX/busybox"
    if [[ -z "$RAMDISK_DIR" ]]; then
        RAMDISK_DIR="$REPO_ROOT/target/ramdisk"
        log "building the deploy ramdisk into $RAMDISK_DIR"
        "$REPO_ROOT/scripts/build-ramdisk.sh" --out "$RAMDISK_DIR" >&2
    fi
    for f in deploy_kernel deploy_ramdisk; do
        [[ -f "$RAMDISK_DIR/$f" ]] || die "$RAMDISK_DIR/$f missing"
        cp "$RAMDISK_DIR/$f" "$CTX/ramdisk/"
    done
fi

# --- the images --------------------------------------------------------------------------
for img in "${IMAGES[@]}"; do
    ref="localhost/ferric/$img:$TAG"
    log "building $ref"
    "${BUILD[@]}" --quiet --layers=false --build-arg "VERSION=$VERSION" -f "$HERE/$img.Containerfile" -t "$ref" "$CTX" >/dev/null
    size=$("${INSPECT[@]}" --format '{{.Size}}' "$ref" 2>/dev/null || echo "?")
    echo "image $img $ref $size"
done

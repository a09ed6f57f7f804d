#!/bin/sh
# Build the agent as a fully static x86_64-unknown-linux-musl binary for the deploy ramdisk
# and check that it really is static. TLS is rustls (no OpenSSL).
# Needs: rustup, musl-tools (musl-gcc, for the C parts of the crypto backend), file.
set -eu
cd "$(dirname "$0")/../.."
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
# Same target dir, profile and flags as scripts/build-ramdisk.sh, so the two share one build
# (and this never waits for the workspace's build lock when run from `cargo test`).
AGENT_TARGET_DIR="${FERRIC_AGENT_TARGET_DIR:-$PWD/target/ramdisk/cargo}"
CARGO_TARGET_DIR="$AGENT_TARGET_DIR" \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C strip=debuginfo -C target-feature=+crt-static" \
    cargo build -p agent --bin agent --target x86_64-unknown-linux-musl --profile dev
BIN="$AGENT_TARGET_DIR/x86_64-unknown-linux-musl/debug/agent"
# The ramdisk agent carries no test fixtures: the agent's `fixture` feature must stay off here.
if cargo tree -p agent --target x86_64-unknown-linux-musl -e normal,build,features -i agent \
    | grep -q 'feature "fixture"'; then
  echo "FAIL: the ramdisk build of the agent enables its fixture feature" >&2
  exit 1
fi
info=$(file "$BIN")
echo "$info"
case "$info" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "FAIL: $BIN is not statically linked" >&2; exit 1 ;;
esac
if ldd "$BIN" 2>&1 | grep -q '=>'; then
  echo "FAIL: $BIN has dynamic dependencies" >&2
  exit 1
fi
"$BIN" --version
echo "OK: static agent at $BIN ($(du -h "$BIN" | cut -f1))"

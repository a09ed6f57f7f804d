#!/bin/sh
# Installs the real BMC peers the conductor's driver tests talk to on 127.0.0.1:
# sushy-tools (Redfish emulator) and pyghmi (fake IPMI BMC) into a venv under target/,
# and ipmitool from apt when it is missing.
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/conductor-peers/venv"
if ! command -v ipmitool >/dev/null 2>&1; then
    apt-get install -y ipmitool
fi
if [ ! -x "$venv/bin/sushy-emulator" ] || [ ! -x "$venv/bin/fakebmc" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q sushy-tools==2.2.0 pyghmi==1.6.19
fi
echo "test peers ready in $venv"

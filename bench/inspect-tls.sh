#!/usr/bin/env bash
# Intercepted TLS handshakes a second, leaf-certificate cache on (the
# default) against a forced miss (a leaf signed per handshake), in process
# (crates/sluice-net/examples/intercept_tls.rs). Run it alone: other work on
# the machine lowers both figures.
#
#   bench/inspect-tls.sh [SECONDS]     # default 5 s per case
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo run --quiet --release -p sluice-net --example intercept_tls -- "${1:-5}"

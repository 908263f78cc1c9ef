# Sourced by bench/proxy.sh and bench/transparent.sh after they define `root`
# and `log`: records how busy the machine is, then builds (or takes) the two
# binaries every bench runs.
#
#   SLUICE_BIN=path   use that sluice binary instead of a release build
#   LOADGEN_BIN=path  use that sluice-loadgen binary instead of a release build

# Other work on the machine (e.g. compilers) skews every rate; it is recorded.
busy() { ps -eo comm= | grep -cxE 'rustc|cargo|cc|cc1|c\+\+|cc1plus|ld|ld\.lld|mold' || true; }
busy_start=$(busy)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
target_dir() {
    cd "$root" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}
if [[ -z ${SLUICE_BIN:-} ]]; then
    log "building sluice (release)"
    (cd "$root" && cargo build --release -p sluice -q)
    SLUICE_BIN=$(target_dir)/release/sluice
fi
[[ -x $SLUICE_BIN ]] || { echo "error: $SLUICE_BIN is not executable" >&2; exit 2; }
# The tunnel client and the echo origin: compiled, one current_thread tokio
# process each (crates/sluice-loadgen), so that the client costs less CPU per
# tunnel than the proxies it measures.
if [[ -z ${LOADGEN_BIN:-} ]]; then
    log "building sluice-loadgen (release)"
    (cd "$root" && cargo build --release -p sluice-loadgen -q)
    LOADGEN_BIN=$(target_dir)/release/sluice-loadgen
fi
[[ -x $LOADGEN_BIN ]] || { echo "error: $LOADGEN_BIN is not executable" >&2; exit 2; }

#!/usr/bin/env bash
# Runs the power-loss test (tests/powerloss.rs, feature `powerloss`): devreg
# on LossyFs, an in-memory FUSE filesystem that drops what was not fsynced
# at each simulated power cut. Installs fuse3 first if missing (needs root).
#
#   scripts/powerloss.sh          # CI: 60 cuts dropping unsynced data and
#                                 # 40 keeping torn subsets (about a minute)
#   scripts/powerloss.sh 500      # long: 500 cuts in each mode
#   DEVREG_POWERLOSS_STRICT=1 scripts/powerloss.sh   # the known torn-group
#                                 # bug (Corrupt on the log) fails too
#   DEVREG_POWERLOSS_SEED=S scripts/powerloss.sh     # replay a workload
#
# Each test prints a summary line (cuts by where they were aimed, cuts
# inside checkpoints and segment changes, acknowledged writes verified) and
# the torn mode a KNOWN BUG count. A failure keeps the state the cut left and
# prints where it is.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-ci-deps.sh"
if [ -n "${1:-}" ]; then
    export DEVREG_POWERLOSS_CRASHES="$1"
fi
cd "$root"
cargo test --features powerloss --test powerloss -- --nocapture

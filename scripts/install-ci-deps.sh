#!/usr/bin/env bash
# Installs the system packages CI needs beyond the Rust toolchain; safe to
# run again (skips what is present). Needs root (CI runs as root).
#
#   fuse3: fusermount3 and /etc/fuse.conf for the power-loss test
#          (tests/powerloss.rs, `cargo test --features powerloss`). As root
#          the test mounts with mount(2) directly; fusermount3 is the
#          fallback fuser uses when that fails. The test needs /dev/fuse.
#   strace: the I/O fault sweep injects errors into sled's own syscalls.
#   etcd-server: the 3-member cluster the etcd backend's tests run against
#          (tests/etcd.rs, `cargo test --features etcd --test etcd`;
#          scripts/etcd-cluster.sh starts one by hand).
#   protobuf-compiler: protoc, which the etcd-client crate's build runs
#          (feature `etcd`).
set -euo pipefail

packages=(fuse3 strace etcd-server protobuf-compiler)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-ci-deps: already installed: ${packages[*]}"
else
    echo "install-ci-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# /dev/fuse is a device node of the kernel's fuse module: a container may
# lack it even with the package installed. Load the module if we can.
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
if [ -e /dev/fuse ]; then
    echo "install-ci-deps: /dev/fuse present"
else
    echo "install-ci-deps: WARNING: /dev/fuse is missing; the power-loss test will say it was skipped" >&2
fi

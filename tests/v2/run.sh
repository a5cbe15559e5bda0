#!/usr/bin/env bash
# Run corral's cgroup integration tests inside a pure cgroup v2 guest.
#
#   tests/v2/run.sh [PYTEST-ARG...]
#
# The development and CI machines have hybrid cgroups, so the v2 code paths
# (one tree, cgroup.subtree_control, memory.max, cpu.max, memory.events) are
# exercised in a throwaway Debian kernel guest booted by
# ../shared/tools/cgroup2-vm, found beside this checkout. The guest sees this
# machine's files read-only (writes go to a discarded overlay) and runs as
# root, so these tests run there with root and without skips.
#
# Without arguments it runs the cgroup, isolation and exec tests, the OOM and
# pressure tests and the daemon's limit tests (memory, pids, cpus); arguments
# replace that selection (paths relative to the repository, or -k/-x...).
# pytest writes no cache and keeps its temporary dirs on a tmpfs of the guest's.
#
# Needs: root (qemu's 9p export of /), .venv with the test dependencies.
# Takes about 10 s to boot plus the tests, which run ~10x slower than on the
# host (software emulation). CORRAL_V2_TIMEOUT_S bounds the whole run
# (default 300 s).
#
# Exit status: pytest's inside the guest; 124 if the guest timed out; 125 if
# it failed to start. When qemu-system-x86_64 is not installed it prints
# "skipped: qemu not available" and exits 0.
set -euo pipefail

if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "skipped: qemu not available (qemu-system-x86_64 is not on PATH)"
  exit 0
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tool=$repo/../shared/tools/cgroup2-vm
if [[ ! -x $tool ]]; then
  echo "tests/v2/run.sh: $tool not found; check out ../shared beside the repository" >&2
  exit 2
fi

cd "$repo"
if (($#)); then
  selection=("$@")
else
  selection=(
    tests/integration/test_cgroups_host.py
    tests/integration/test_isolation.py
    tests/integration/test_exec_runtime.py
    tests/integration/test_oom_pressure.py
    "tests/integration/test_containers.py::test_memory_limit_lands_in_the_cgroup_and_a_hog_is_oom_killed"
    "tests/integration/test_containers.py::test_an_automatic_restart_keeps_the_limits_and_starts_the_peak_again"
    "tests/integration/test_containers.py::test_pids_limit_contains_a_fork_bomb_and_the_container_still_stops"
    "tests/integration/test_containers.py::test_pids_limit_lands_in_the_cgroup"
    "tests/integration/test_containers.py::test_cpus_lands_in_the_cgroup_as_quota_over_period"
  )
fi

# The guest's root is itself an overlay, which overlayfs refuses as an upper
# layer, so the containers' state goes on a tmpfs of its own. Not on /tmp:
# a checkout below /tmp would disappear under it.
guest_tmp=/var/tmp/corral-v2
exec "$tool" --timeout "${CORRAL_V2_TIMEOUT_S:-300}" -- \
  sh -c 'mkdir -p "$0" && mount -t tmpfs -o size=1g tmpfs "$0" && exec "$@"' \
  "$guest_tmp" env PYTHONDONTWRITEBYTECODE=1 TMPDIR="$guest_tmp" \
  .venv/bin/python -m pytest -q -p no:cacheprovider -rs --color=no "${selection[@]}"

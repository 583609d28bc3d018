#!/bin/sh
# Runs libnetio's C and C++ test programs (tests/c/) under valgrind memcheck:
# any invalid access, and any definitely, indirectly or possibly lost block, fails the run.
# (The registrar's lazily created global state is "still reachable", which is fine.)
#
# Usage: crates/netio/tests/run-valgrind.sh [extra cargo test args, e.g. --release]
set -eu
cd "$(dirname "$0")/../../.."
if ! command -v valgrind >/dev/null 2>&1; then
    echo "run-valgrind.sh: valgrind is not installed" >&2
    exit 1
fi
NETIO_VALGRIND=1 exec cargo test -p netio --test c_programs "$@"

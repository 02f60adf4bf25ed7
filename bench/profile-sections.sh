#!/bin/bash
# Where the kernel programs' time goes, per state transition and per part
# of the work: an ad hoc measurement, not a benchmark command (BENCHMARKS.md
# says how its figures were made). The instrumented build comes from
# bench/profile-sections.patch, which times each part with two clock reads
# (about 38 ns of its own per timed part: see the `sk_err` row, a single
# load).
#
#   git worktree add /tmp/prof <commit> && cd /tmp/prof
#   git apply /path/to/bench/profile-sections.patch
#   cargo build --release -p governor -p xtask
#   bash /path/to/bench/profile-sections.sh target/release/governor target/release/xtask 8
#
# Runs as root: a namespace of its own, the loop of `xtask loadgen` in it
# for SECONDS, then the per-CPU timing map summed.
set -eu
BIN=$1 XTASK=$2 SECS=${3:-8}
NS=govprof-$$ PORT=19977
ip netns add "$NS"
trap 'kill -INT "$G" 2>/dev/null; wait "$G" 2>/dev/null; ip netns del "$NS"' EXIT
ip -n "$NS" link set lo up
"$BIN" run --metrics-addr 127.0.0.1:$PORT --log warn >/dev/null 2>&1 &
G=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
ip netns exec "$NS" "$XTASK" loadgen --seconds "$SECS"
bpftool map dump name PROF -j | python3 -c '
import json, sys
total = [0] * 1024
for e in json.load(sys.stdin):
    k = e["key"] if isinstance(e["key"], int) else int.from_bytes(bytes(int(x, 16) for x in e["key"]), "little")
    for v in e["values"]:
        x = v["value"]
        total[k] += x if isinstance(x, int) else int.from_bytes(bytes(int(b, 16) for b in x), "little")
states = ["0", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
          "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "13", "14", "15"]
def row(name, slot):
    ns, calls = total[slot], total[slot + 1]
    if calls > 1000:
        print(f"{name:>28} {calls:>9} calls {ns / calls:7.1f} ns")
for i in range(256):
    row(f"{states[i // 16]}->{states[i % 16]}", 2 * i)
parts = ["owner", "insert_active", "listener_of", "srtt", "insert_passive", "observe_hs", "Flow::of",
         "lookup_est", "count_endpoint", "change_announce", "lookup_close", "flow_sample", "observe_dur",
         "remove_passive", "remove_active", "sk_err"]
for j, name in enumerate(parts):
    row("part " + name, 600 + 2 * j)
row("gov_rst_sent", 512)
row("gov_rst_recv", 516)
'

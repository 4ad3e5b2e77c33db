#!/bin/sh
# raopd against shairport-sync, same stream, same machine, same minutes.
#
# Runs benchmarks/stream_cost.py against raopd and then against a fresh shairport-sync
# (Debian's package, stdout backend, volume ignored so its output can be checked, "basic"
# interpolation: with its default soxr it resamples all the time and costs ~3x more), `runs`
# times alternately, prints each JSON line and then the ratio of the median CPU per audio
# minute. Absolute CPU times on a shared 2-core VM move by +-15 % between runs; the ratio of
# interleaved runs is what to compare against shairport-sync's figure.
#
# Needs root and: apt-get install shairport-sync avahi-daemon dbus
# Everything runs in a private network namespace with only a loopback interface, so Avahi
# (which shairport-sync cannot run without) announces nothing on the real network.
#
#   sudo benchmarks/shairport_reference.sh [runs] [seconds] [file|alsa-null]
#
# Defaults: 3 runs of 60 s, `file`: raopd --output to a WAV file (what stream_cost.py
# measures) against shairport-sync's stdout backend. `alsa-null`: both play in real time to
# ALSA's null device (raopd --device null, shairport-sync -o alsa), the timed path a Pi runs.
set -eu

runs=${1:-3}
seconds=${2:-60}
mode=${3:-file}
case "$mode" in
    file | alsa-null) ;;
    *) echo "shairport_reference: mode must be file or alsa-null, not $mode" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
ns=raopd-sps-$$
work=$(mktemp -d)
dbus_pid=""
avahi_pid=""
sps_pid=""

say() { echo "shairport_reference: $*" >&2; }

stop_sps() {
    if [ -n "$sps_pid" ]; then
        kill "$sps_pid" 2>/dev/null || true
        wait "$sps_pid" 2>/dev/null || true
        sps_pid=""
    fi
}

cleanup() {
    stop_sps
    if [ -n "$avahi_pid" ]; then
        kill "$avahi_pid" 2>/dev/null || true
        wait "$avahi_pid" 2>/dev/null || true
    fi
    if [ -n "$dbus_pid" ]; then
        # Not our child (it forked): wait until it is gone, or the next run may find it
        # still alive, rely on it, and lose it a moment later.
        kill "$dbus_pid" 2>/dev/null || true
        tries=0
        while kill -0 "$dbus_pid" 2>/dev/null && [ "$tries" -lt 50 ]; do
            tries=$((tries + 1))
            sleep 0.1
        done
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

for tool in shairport-sync avahi-daemon dbus-daemon ip; do
    command -v "$tool" >/dev/null || { say "needs $tool (apt-get install shairport-sync avahi-daemon dbus iproute2)"; exit 2; }
done
if pgrep -x avahi-daemon >/dev/null; then
    # shairport-sync registers through D-Bus with whichever Avahi runs: one outside the
    # namespace would announce the test receiver on the real network.
    say "an avahi-daemon is already running; stop it first"
    exit 2
fi

ip netns add "$ns"
ip -n "$ns" link set lo up
if ! { [ -f /run/dbus/pid ] && kill -0 "$(cat /run/dbus/pid)" 2>/dev/null; }; then
    # No system bus (a container): start one for the run, clearing what a dead one left.
    mkdir -p /run/dbus
    rm -f /run/dbus/pid /run/dbus/system_bus_socket
    dbus_pid=$(dbus-daemon --system --fork --print-pid)
fi
mkdir -p /run/avahi-daemon
ip netns exec "$ns" avahi-daemon --no-drop-root --no-chroot >"$work/avahi.log" 2>&1 &
avahi_pid=$!
# shairport-sync gives up at once if Avahi is not answering yet.
tries=0
until grep -q "Server startup complete" "$work/avahi.log"; do
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ] || ! kill -0 "$avahi_pid" 2>/dev/null; then
        say "avahi-daemon did not start:"
        cat "$work/avahi.log" >&2
        exit 1
    fi
    sleep 0.1
done

cat >"$work/sps.conf" <<'EOF'
general = {
  name = "shairport-reference";
  port = 5000;
  mdns_backend = "avahi";
  ignore_volume_control = "yes";
  interpolation = "basic";
};
alsa = {
  output_device = "null";
};
EOF
sps_backend=stdout
[ "$mode" = alsa-null ] && sps_backend=alsa

start_sps() {
    : >"$work/out.raw"
    ip netns exec "$ns" shairport-sync -c "$work/sps.conf" -o "$sps_backend" >"$work/out.raw" 2>"$work/sps.log" &
    sps_pid=$!
    wait_for_port 5000 "$sps_pid" "$work/sps.log"
}

wait_for_port() {
    tries=0
    until ip netns exec "$ns" ss -ltn | grep -q ":$1 "; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ] || ! kill -0 "$2" 2>/dev/null; then
            say "the receiver did not start:"
            cat "$3" >&2
            exit 1
        fi
        sleep 0.1
    done
}

raopd_alsa_null() {
    ip netns exec "$ns" "$python" -m raopd --device null --port 5001 --http-port 0 \
        --name raopd-reference --state-dir "$work/state" 2>"$work/raopd.log" &
    raopd_pid=$!
    wait_for_port 5001 "$raopd_pid" "$work/raopd.log"
    ip netns exec "$ns" "$python" benchmarks/stream_cost.py --seconds "$seconds" \
        --against 127.0.0.1:5001 --pid "$raopd_pid" | sed 's/"receiver": "[^"]*"/"receiver": "raopd"/'
    kill "$raopd_pid"
    wait "$raopd_pid" || true
}

cd "$root"
i=0
while [ "$i" -lt "$runs" ]; do
    i=$((i + 1))
    if [ "$mode" = file ]; then
        ip netns exec "$ns" "$python" benchmarks/stream_cost.py --seconds "$seconds" | tee -a "$work/lines"
    else
        raopd_alsa_null | tee -a "$work/lines"
    fi
    start_sps
    check=""
    [ "$mode" = file ] && check="--raw-output $work/out.raw"
    # shellcheck disable=SC2086 # $check is empty or two words
    ip netns exec "$ns" "$python" benchmarks/stream_cost.py --seconds "$seconds" \
        --against 127.0.0.1:5000 --pid "$sps_pid" $check | tee -a "$work/lines"
    stop_sps
done

"$python" - "$work/lines" "$mode" <<'EOF'
import json, statistics, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
cpu = {}
for line in lines:
    cpu.setdefault(line["receiver"], []).append(line["cpu_s_per_audio_min"])
raopd, sps = statistics.median(cpu["raopd"]), statistics.median(cpu["shairport-sync"])
print(json.dumps({
    "mode": sys.argv[2],
    "runs": len(cpu["raopd"]),
    "raopd_cpu_s_per_audio_min": cpu["raopd"],
    "shairport_sync_cpu_s_per_audio_min": cpu["shairport-sync"],
    "cpu_ratio_raopd_to_shairport_sync": round(raopd / sps, 2),
}))
EOF

#!/usr/bin/env bash
# Smoke-test the arm64 image archive written by container/build-arm64.sh on an
# x86_64 machine: unpack it the way a runtime would (index.json -> manifest ->
# config + layer) and run its raopd under qemu-user in a chroot of the layer.
#
# Checks, each of which fails the run:
#   1. image config: arm64/linux, entrypoint [raopd], numeric non-root user
#      10001:29, the ports; the docker-archive manifest.json names the same
#      config (so `ctr images import` / `docker load` see the same image);
#   2. the layer holds no compiler, assembler or linker;
#   3. as user 10001 (group audio): the native extensions load, i.e. numpy,
#      PyAV's bundled FFmpeg (ALAC decoder present), cryptography, zeroconf and
#      alsaaudio, which also opens and writes ALSA's `null` PCM (no /dev/snd
#      here; this proves libasound2 and its config files are in the image);
#   4. `raopd --version` prints the version of this checkout;
#   5. `raopd replay` of a recorded session copied into the image gives audio
#      bit-identical to the source WAV once leading/trailing digital silence is
#      dropped from both (container/compare_wav.py).
#
# Usage: container/smoke-test.sh [ARCHIVE]   (default out/raopd-arm64.tar)
# Env: QEMU (default: qemu-aarch64-static), CAPTURE, EXPECTED_WAV.
# Needs root (chroot) and qemu-user-static; no binfmt registration.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

ARCHIVE=${1:-${ARCHIVE:-out/raopd-arm64.tar}}
WORK=${WORK:-out/smoke}
PYTHON=${PYTHON:-python3}
QEMU=${QEMU:-$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)}
CAPTURE=${CAPTURE:-tests/captures/cliraop-alac-plain.pcap}
EXPECTED_WAV=${EXPECTED_WAV:-tests/captures/test30.wav}

fail() { echo "smoke-test: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke-test: ok: $*" >&2; }

[ -f "$ARCHIVE" ] || fail "$ARCHIVE not found (run: make image)"
[ -n "$QEMU" ] && [ -x "$QEMU" ] || fail "qemu-aarch64-static not found (run: make deps-packaging)"
[ "$(id -u)" = 0 ] || fail "needs root for chroot"
[ -f "$CAPTURE" ] || fail "capture $CAPTURE missing"
[ -f "$EXPECTED_WAV" ] || fail "expected audio $EXPECTED_WAV missing"

rm -rf "$WORK"
mkdir -p "$WORK/archive" "$WORK/rootfs"
tar -xf "$ARCHIVE" -C "$WORK/archive"
rootfs=$WORK/rootfs

# 1. Follow the OCI index like a runtime; cross-check the docker manifest.
layer=$("$PYTHON" - "$WORK/archive" "$repo/pyproject.toml" <<'EOF'
import hashlib, json, pathlib, sys, tomllib
root = pathlib.Path(sys.argv[1])
version = tomllib.load(open(sys.argv[2], "rb"))["project"]["version"]

def blob(digest: str) -> bytes:
    data = (root / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"digest mismatch {digest}"
    return data

assert json.loads((root / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
index = json.loads((root / "index.json").read_text())
(entry,) = index["manifests"]
name = entry["annotations"]["io.containerd.image.name"]
assert name.endswith(":" + version), f"image name {name} does not carry version {version}"
manifest = json.loads(blob(entry["digest"]))
config = json.loads(blob(manifest["config"]["digest"]))
(layer,) = manifest["layers"]
blob(layer["digest"])  # verifies the layer digest
c = config["config"]
checks = {
    "architecture": (config["architecture"], "arm64"),
    "os": (config["os"], "linux"),
    "entrypoint": (c["Entrypoint"], ["raopd"]),
    "user": (c["User"], "10001:29"),
    "ports": (sorted(c["ExposedPorts"]), ["5000/tcp", "6001/udp", "6002/udp", "6003/udp", "9798/tcp"]),
    "version label": (c["Labels"]["org.opencontainers.image.version"], version),
}
for what, (got, want) in checks.items():
    assert got == want, f"{what}: {got!r} != {want!r}"
(docker,) = json.loads((root / "manifest.json").read_text())
assert docker["RepoTags"] == [name], docker["RepoTags"]
assert docker["Config"].endswith(manifest["config"]["digest"].split(":")[1])
assert docker["Layers"] == ["blobs/sha256/" + layer["digest"].split(":")[1]]
print("blobs/sha256/" + layer["digest"].split(":", 1)[1])
EOF
) || fail "image metadata"
ok "config: arm64, entrypoint raopd, user 10001:29, ports, docker manifest consistent"

# 2. No toolchain in the layer (look at the layer listing, not the unpacked
#    tree, so nothing the test adds can hide or fake a result).
tar -tzf "$WORK/archive/$layer" >"$WORK/layer.list"
if grep -E '(^|/)(s?bin)/([a-z0-9_]+-linux-gnu-)?(gcc|cc|c\+\+|g\+\+|cpp|clang|ld|ld\.bfd|ld\.gold|as)(-[0-9.]+)?$' \
    "$WORK/layer.list"; then
    fail "compiler/linker in the runtime layer (listed above)"
fi
grep -q '^usr/bin/python3.11$' "$WORK/layer.list" || fail "layer has no usr/bin/python3.11"
ok "no compiler/assembler/linker in the layer ($(wc -l <"$WORK/layer.list") entries)"

tar -xzf "$WORK/archive/$layer" -C "$rootfs"
grep -q '^raopd:x:10001:29:' "$rootfs/etc/passwd" || fail "no raopd user in /etc/passwd"
grep -q '^audio:x:29:' "$rootfs/etc/group" || fail "no audio group (29) in /etc/group"
head -1 "$rootfs/usr/local/bin/raopd" | grep -qx '#!/usr/bin/python3' || fail "raopd launcher shebang"

# Run as the image's user inside a chroot of the layer. qemu is copied in
# because binfmt_misc is not registered (nothing on the host is changed).
cp "$QEMU" "$rootfs/.qemu-aarch64"
# What every container runtime provides in /dev (the layer has none of it).
mkdir -p "$rootfs/dev"
for node in null:1:3 zero:1:5 urandom:1:9 random:1:8; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 0666 "$rootfs/dev/$name" c "$major" "$minor"
done
mkdir -p "$rootfs/tmp/smoke"
chmod 0777 "$rootfs/tmp/smoke"
run() {
    env -i PATH=/usr/local/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 HOME=/nonexistent \
        /usr/sbin/chroot --userspec=10001:29 "$rootfs" /.qemu-aarch64 "$@"
}
[ "$(run /usr/bin/python3 -c 'import platform; print(platform.machine())')" = aarch64 ] \
    || fail "python in the image is not aarch64"

# 3. Native libraries.
run /usr/bin/python3 - <<'EOF' || fail "imports / native libraries"
import importlib.metadata as md
import alsaaudio, av, cryptography, numpy, zeroconf, raopd
import aiohttp, aiomqtt, multidict, yarl
import raopd.daemon  # every module the daemon loads, the web server and MQTT client among them
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
assert av.codec.Codec("alac", "r").name == "alac"
# The ALSA `null` PCM exercises libasound2 and /usr/share/alsa/alsa.conf.
pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="null", channels=2, rate=44100,
                    format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=352)
pcm.write(numpy.zeros((352, 2), dtype=numpy.int16).tobytes())
pcm.close()
enc = Cipher(algorithms.AES(bytes(16)), modes.CBC(bytes(16))).encryptor()
assert len(enc.update(bytes(32)) + enc.finalize()) == 32
print("numpy", numpy.__version__, "av", av.__version__, "cryptography", cryptography.__version__,
      "zeroconf", zeroconf.__version__, "pyalsaaudio", md.version("pyalsaaudio"), "raopd", raopd.__version__)
EOF
ok "numpy, av (ALAC), cryptography, zeroconf, aiohttp, aiomqtt, alsaaudio (null PCM), raopd.daemon load as uid 10001"

# 4. The console script.
version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
got=$(run /usr/bin/python3 /usr/local/bin/raopd --version) || fail "raopd --version exited $?"
case "$got" in *"$version"*) ;; *) fail "raopd --version printed '$got', expected $version" ;; esac
ok "raopd --version: $got"

# 5. Offline replay of a recorded session, bit-exact.
cp "$CAPTURE" "$rootfs/tmp/smoke/capture.pcap"
chmod 0644 "$rootfs/tmp/smoke/capture.pcap"
run /usr/bin/python3 /usr/local/bin/raopd replay /tmp/smoke/capture.pcap --output /tmp/smoke/out.wav \
    || fail "raopd replay exited $?"
"$PYTHON" container/compare_wav.py "$rootfs/tmp/smoke/out.wav" "$EXPECTED_WAV" \
    || fail "replayed audio differs from $EXPECTED_WAV"
ok "raopd replay $(basename "$CAPTURE") under arm64 emulation is bit-exact"
echo "smoke-test: PASS" >&2

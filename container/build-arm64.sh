#!/usr/bin/env bash
# Build the arm64 raopd image without a container daemon and without running
# any arm64 code:
#   1. mmdebstrap --variant=extract unpacks Debian bookworm's python3 and
#      libasound2 for arm64 (no maintainer scripts, so no emulation needed);
#   2. pip installs the pinned aarch64 manylinux wheels with --platform;
#   3. pyalsaaudio (sdist only) is cross-compiled with gcc-aarch64-linux-gnu
#      against a second, throwaway arm64 sysroot holding the -dev headers, so
#      no compiler or header ever lands in the runtime tree;
#   4. raopd itself is a pure-Python wheel built on the host;
#   5. /etc/passwd and /etc/group (which extract does not create) get a raopd
#      user (uid 10001) whose primary group is audio (gid 29, as on Debian and
#      Raspberry Pi OS), the stdlib and site-packages are byte-compiled on the
#      host (.pyc is architecture independent);
#   6. container/ocitar.py writes one deterministic tar that is both an OCI
#      layout and a docker-archive (see that file for why not umoci/skopeo).
#
# Output: out/raopd-arm64.tar (+ out/raopd-arm64.json summary).
# Needs (see `make deps-packaging`): mmdebstrap, gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, a Python 3.11 with pip, root (or unshare) for mmdebstrap.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

PYTHON=${PYTHON:-python3}
OUT=${OUT:-out}
WORK=${WORK:-$OUT/arm64-build}
ARCHIVE=${ARCHIVE:-$OUT/raopd-arm64.tar}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
MMDEBSTRAP_MODE=${MMDEBSTRAP_MODE:-auto}
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
RUNTIME_UID=10001
AUDIO_GID=29

version=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE_REF=${IMAGE_REF:-localhost/raopd:$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Reproducibility: all mtimes in the image are clamped to the last commit.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH

"$PYTHON" - <<'EOF'
import sys
# Debian bookworm's python3 is 3.11: the host must be 3.11 too so the .pyc we
# write carry the magic number the image's interpreter accepts, and pip picks
# cp311 wheels.
if sys.version_info[:2] != (3, 11):
    sys.exit(f"build-arm64.sh needs a Python 3.11 host interpreter, got {sys.version}")
EOF

t0=$(date +%s)
step() { printf '[build-arm64 +%ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }

rm -rf "$WORK"
mkdir -p "$WORK"
rootfs=$WORK/rootfs
sysroot=$WORK/sysroot
site=$rootfs/usr/local/lib/python3.11/dist-packages

sources=(
    "deb $MIRROR $SUITE main"
    "deb $MIRROR $SUITE-updates main"
    "deb $SECURITY_MIRROR $SUITE-security main"
)
slim=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
)

step "runtime rootfs (mmdebstrap extract, arm64)"
# libstdc++6/libgcc-s1: loaded by the FFmpeg libraries bundled in the av wheel.
# libasound2 pulls libasound2-data (alsa.conf and the card profiles).
mmdebstrap --quiet --mode="$MMDEBSTRAP_MODE" --arch=arm64 --variant=extract \
    --include=python3,libpython3.11-stdlib,libasound2,libstdc++6,libgcc-s1 \
    "${slim[@]}" "$SUITE" "$rootfs" "${sources[@]}"

step "build sysroot (headers for the cross compile; never shipped)"
mmdebstrap --quiet --mode="$MMDEBSTRAP_MODE" --arch=arm64 --variant=extract \
    --include=libasound2-dev,libpython3.11-dev \
    "${slim[@]}" "$SUITE" "$sysroot" "${sources[@]}"

step "aarch64 wheels from PyPI (pinned, --no-deps: container/requirements.txt is the full closure)"
mkdir -p "$site"
grep -v -i '^pyalsaaudio' container/requirements.txt >"$WORK/wheels.txt"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
    --target "$site" --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
    -r "$WORK/wheels.txt"
rm -rf "$site/bin"  # no console scripts among the dependencies we run

step "cross-compile pyalsaaudio against the arm64 sysroot"
alsa_pin=$(grep -i '^pyalsaaudio==' container/requirements.txt)
alsa_version=${alsa_pin#*==}
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
    -d "$WORK/sdist" "$alsa_pin"
tar -xzf "$WORK/sdist/pyalsaaudio-$alsa_version.tar.gz" -C "$WORK/sdist"
# -idirafter: the cross toolchain's own libc headers win, the sysroot only adds
# alsa/ and python3.11/. libasound.so.2 is passed by path because -L into the
# sysroot would pick up its libc.so linker script with absolute host paths.
"$CROSS_CC" -shared -fPIC -O2 -g0 -Wall -DNDEBUG -fno-strict-aliasing \
    -idirafter "$sysroot/usr/include" -I"$sysroot/usr/include/python3.11" \
    "$WORK/sdist/pyalsaaudio-$alsa_version/alsaaudio.c" \
    "$sysroot/usr/lib/aarch64-linux-gnu/libasound.so.2" \
    -o "$site/alsaaudio.cpython-311-aarch64-linux-gnu.so"
aarch64-linux-gnu-strip --strip-unneeded "$site/alsaaudio.cpython-311-aarch64-linux-gnu.so" 2>/dev/null || true
# Minimal metadata so importlib.metadata.version("pyalsaaudio") works in the image.
alsa_dist=$site/pyalsaaudio-$alsa_version.dist-info
mkdir -p "$alsa_dist"
printf 'Metadata-Version: 2.1\nName: pyalsaaudio\nVersion: %s\nLicense: PSF\n' "$alsa_version" >"$alsa_dist/METADATA"
printf 'raopd-build-arm64\n' >"$alsa_dist/INSTALLER"
printf 'alsaaudio\n' >"$alsa_dist/top_level.txt"
: >"$alsa_dist/RECORD"

step "raopd wheel (pure Python) from this checkout"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/dist" . 2>"$WORK/wheel.log" \
    || { cat "$WORK/wheel.log" >&2; exit 1; }
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
    --target "$site" "$WORK"/dist/raopd-*.whl
# Everything was installed with --no-deps: fail here, not on the Pi, if
# pyproject.toml gained a dependency requirements.txt does not pin (or pins
# outside the declared range).
"$PYTHON" - "$site" container/requirements.txt <<'EOF'
import pathlib, sys
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
site, reqs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
pins = {}
for line in reqs.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
(meta,) = site.glob("raopd-*.dist-info/METADATA")
missing = []
for spec in Parser().parsestr(meta.read_text()).get_all("Requires-Dist") or []:
    req = Requirement(spec)
    if req.marker and not req.marker.evaluate({"extra": "", "platform_machine": "aarch64"}):
        continue  # test extras and the like
    pin = pins.get(canonicalize_name(req.name))
    if pin is None or not req.specifier.contains(pin, prereleases=True):
        missing.append(f"{spec} (pinned: {pin})")
if missing:
    sys.exit("container/requirements.txt does not satisfy raopd's dependencies: " + "; ".join(missing))
EOF
# direct_url.json records the host path of the wheel: build-machine detail
# that would also make the layer differ between checkouts.
rm -f "$site"/raopd-*.dist-info/direct_url.json
sed -i '/direct_url\.json/d' "$site"/raopd-*.dist-info/RECORD
# pip --target writes console scripts with the *host* interpreter in the
# shebang; write the launcher for the image's /usr/bin/python3 instead, from
# the wheel's own entry point declaration.
rm -rf "$site/bin"
"$PYTHON" - "$site" "$rootfs/usr/local/bin" <<'EOF'
import configparser, pathlib, sys
site, bindir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
bindir.mkdir(parents=True, exist_ok=True)
(ep_file,) = site.glob("raopd-*.dist-info/entry_points.txt")
eps = configparser.ConfigParser()
eps.read(ep_file)
for name, target in eps["console_scripts"].items():
    module, func = target.split(":")
    script = bindir / name
    script.write_text(
        "#!/usr/bin/python3\n"
        "import sys\n"
        f"from {module} import {func}\n"
        f"sys.exit({func}())\n"
    )
    script.chmod(0o755)
    print(f"launcher /usr/local/bin/{name} -> {target}", file=sys.stderr)
EOF

step "users, directories, trimming"
# extract runs no maintainer scripts, so base-passwd never wrote these.
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
raopd:x:$RUNTIME_UID:$AUDIO_GID:raopd:/nonexistent:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
audio:x:$AUDIO_GID:raopd
nogroup:x:65534:
EOF
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
mkdir -p "$rootfs/etc/raopd" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
# python3 would look for /usr/bin/python3 -> python3.11 (the python3 package's
# symlink is in the .deb, so it exists; check it instead of assuming).
test -x "$rootfs/usr/bin/python3.11" && test -L "$rootfs/usr/bin/python3"
# Package manager state and caches are useless in an image nothing gets
# apt-installed into (no apt/dpkg binaries run here anyway).
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/man/*
find "$site" -name '__pycache__' -type d -prune -exec rm -rf {} +

step "byte-compile stdlib and site-packages on the host"
# unchecked-hash: the interpreter does not stat the sources to validate the
# .pyc, so the clamped mtimes in the layer cannot make it recompile (it could
# not write the cache anyway: the root filesystem is read-only in the pod).
"$PYTHON" -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$rootfs" -p / \
    -x '(lib2to3/tests|test/bad|test/badsyntax)' \
    "$rootfs/usr/lib/python3.11" "$site" >"$WORK/compileall.log" 2>&1 \
    || { tail -20 "$WORK/compileall.log" >&2; exit 1; }

step "no toolchain in the runtime tree"
# Toolchain names, not paths: aarch64-linux-gnu-gcc, cc, ld.bfd, as, ...
bad=$(find "$rootfs/usr/bin" "$rootfs/usr/sbin" "$rootfs/usr/local/bin" \( -type f -o -type l \) \
    \( -name 'gcc*' -o -name 'cc' -o -name 'c++' -o -name 'g++*' -o -name 'cpp*' -o -name 'clang*' \
    -o -name 'ld' -o -name 'ld.*' -o -name 'as' -o -name '*-linux-gnu-*' \) -print)
if [ -n "$bad" ]; then
    echo "compiler/linker binaries in the runtime tree:" >&2
    echo "$bad" >&2
    exit 1
fi
du -sh "$rootfs" >&2

step "write $ARCHIVE"
labels=(
    --label "org.opencontainers.image.title=raopd"
    --label "org.opencontainers.image.description=AirPlay 1 (RAOP) receiver daemon"
    --label "org.opencontainers.image.version=$version"
    --label "org.opencontainers.image.revision=$revision"
    --label "org.opencontainers.image.licenses=MIT"
    --label "org.opencontainers.image.base.name=debian:$SUITE (mmdebstrap extract)"
)
"$PYTHON" container/ocitar.py "$rootfs" "$ARCHIVE" \
    --ref "$IMAGE_REF" --arch arm64 --variant v8 \
    --user "$RUNTIME_UID:$AUDIO_GID" --entrypoint raopd \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
    --expose 5000/tcp --expose 9798/tcp \
    --expose 6001/udp --expose 6002/udp --expose 6003/udp \
    "${labels[@]}" >"${ARCHIVE%.tar}.json"
cat "${ARCHIVE%.tar}.json"
step "done"

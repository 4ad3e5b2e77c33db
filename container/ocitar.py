"""Write a root filesystem directory as a single-layer container image archive.

Used by container/build-arm64.sh instead of umoci/skopeo/buildah because:

* it is deterministic: sorted entries, uid/gid 0, mtimes clamped to
  SOURCE_DATE_EPOCH and a zeroed gzip header give the same digest for the same
  inputs, which umoci (build-time mtimes, random temp names) does not;
* one file is both an OCI image layout (``oci-layout``, ``index.json``,
  ``blobs/``) and a docker-archive (``manifest.json`` with ``RepoTags``), the
  shape ``docker save`` writes since Docker 25. ``ctr images import`` (k3s,
  containerd), ``docker load``, ``podman load`` and ``skopeo`` all accept it;
  containerd reads the OCI index and names the image from the
  ``io.containerd.image.name`` annotation, so the name is the one the
  Kubernetes manifests reference;
* nothing has to be installed and nothing runs as the target architecture.

Usage: ocitar.py ROOTFS OUT.tar --ref localhost/raopd:0.1.0 --arch arm64 ...
(see --help). Prints a JSON summary (digests and sizes) on stdout.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# Directories whose contents belong to the runtime, not the image: the
# container engine mounts /proc, /sys and /dev itself. Keeping device nodes out
# of the layer also means the build needs no special privileges to read them.
RUNTIME_DIRS = ("dev", "proc", "sys", "run")


class Sink(Protocol):
    """What HashingWriter writes into: a file or a GzipFile."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class HashingWriter:
    """A write-only file object that hashes and counts what passes through."""

    def __init__(self, sink: Sink | None) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def walk_sorted(root: Path, directory: Path | None = None) -> Iterator[Path]:
    """Yield every path under root (not root itself), depth first, sorted by name.

    The contents of the top-level RUNTIME_DIRS are left out, the directories
    themselves stay (as mount points).
    """
    here = root if directory is None else directory
    for entry in sorted(os.scandir(here), key=lambda e: e.name):
        path = Path(entry.path)
        yield path
        if not entry.is_dir(follow_symlinks=False):
            continue
        if directory is None and entry.name in RUNTIME_DIRS:
            continue
        yield from walk_sorted(root, path)


def write_layer(rootfs: Path, out: IO[bytes], epoch: int) -> tuple[str, str, int, int]:
    """Tar+gzip rootfs into out; return (diff_id, digest, compressed size, tar size)."""
    compressed = HashingWriter(out)
    # mtime=0 and no file name keep the gzip header free of build-time data.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6)
    uncompressed = HashingWriter(gz)
    with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in walk_sorted(rootfs):
            arcname = path.relative_to(rootfs).as_posix()
            info = tar.gettarinfo(str(path), arcname=arcname)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                continue
            if stat.S_ISSOCK(mode):
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = min(int(info.mtime), epoch)
            # PAX headers would otherwise carry atime/ctime and float mtimes.
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    gz.close()
    return uncompressed.digest, compressed.digest, compressed.size, uncompressed.size


def descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    """An OCI content descriptor for an in-memory blob."""
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def canonical(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    """Add an in-memory file to the outer archive with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = epoch
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar: tarfile.TarFile, name: str, epoch: int) -> None:
    """Add a directory entry to the outer archive with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mtime = epoch
    info.mode = 0o755
    tar.addfile(info)


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the archive described by the parsed command line; return a summary."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryFile(dir=out.parent) as layer_file:
        diff_id, layer_digest, layer_size, tar_size = write_layer(
            Path(args.rootfs), layer_file, epoch
        )

        labels = dict(item.split("=", 1) for item in args.label)
        labels.setdefault("org.opencontainers.image.created", created)
        image_config: dict[str, Any] = {
            "User": args.user,
            "Entrypoint": args.entrypoint,
            "Env": args.env,
            "WorkingDir": args.workdir,
            "ExposedPorts": {port: {} for port in args.expose},
            "Labels": labels,
        }
        if args.cmd:
            image_config["Cmd"] = args.cmd
        config = {
            "architecture": args.arch,
            "os": "linux",
            "created": created,
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "container/build-arm64.sh"}],
        }
        if args.variant:
            config["variant"] = args.variant
        config_blob = canonical(config)
        config_desc = descriptor(OCI_CONFIG, config_blob)

        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
            "annotations": {"org.opencontainers.image.created": created},
        }
        manifest_blob = canonical(manifest)
        manifest_desc = descriptor(OCI_MANIFEST, manifest_blob)
        platform = {"architecture": args.arch, "os": "linux"}
        if args.variant:
            platform["variant"] = args.variant
        tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **manifest_desc,
                    "platform": platform,
                    "annotations": {
                        # containerd (ctr/k3s) names the imported image from this;
                        "io.containerd.image.name": args.ref,
                        # skopeo/podman address the layout by this tag.
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }

        def blob_name(digest: str) -> str:
            return "blobs/sha256/" + digest.split(":", 1)[1]

        docker_manifest = [
            {
                "Config": blob_name(config_desc["digest"]),
                "RepoTags": [args.ref],
                "Layers": [blob_name(layer_digest)],
            }
        ]

        tmp_out = out.with_name(out.name + ".partial")
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}), epoch)
            add_bytes(tar, "index.json", canonical(index), epoch)
            add_bytes(tar, "manifest.json", canonical(docker_manifest), epoch)
            add_dir(tar, "blobs", epoch)
            add_dir(tar, "blobs/sha256", epoch)
            add_bytes(tar, blob_name(config_desc["digest"]), config_blob, epoch)
            add_bytes(tar, blob_name(manifest_desc["digest"]), manifest_blob, epoch)
            layer_file.seek(0)
            info = tarfile.TarInfo(blob_name(layer_digest))
            info.size = layer_size
            info.mtime = epoch
            info.mode = 0o644
            tar.addfile(info, layer_file)
        tmp_out.replace(out)

    return {
        "archive": str(out),
        "archive_bytes": out.stat().st_size,
        "ref": args.ref,
        "manifest_digest": manifest_desc["digest"],
        "config_digest": config_desc["digest"],
        "layer_digest": layer_digest,
        "layer_diff_id": diff_id,
        "layer_compressed_bytes": layer_size,
        "layer_uncompressed_bytes": tar_size,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line of the writer."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rootfs")
    p.add_argument("output")
    p.add_argument("--ref", required=True, help="image name, e.g. localhost/raopd:0.1.0")
    p.add_argument("--arch", required=True)
    p.add_argument("--variant", default="")
    p.add_argument("--user", default="0:0")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir", default="/")
    p.add_argument("--expose", action="append", default=[], help="e.g. 5000/tcp")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: build the archive and print its summary as JSON."""
    summary = build(parse_args(sys.argv[1:] if argv is None else argv))
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

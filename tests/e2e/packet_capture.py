"""tcpdump inside a namespace, writing the classic pcap that `raopd replay` and wire_audio read."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.ns_process import NsProcess


class Tcpdump:
    """Record everything but mDNS on `interface` of `ns` into `path` while in a `with` block."""

    def __init__(self, ns: str, interface: str, path: Path) -> None:
        self.path = path
        # --immediate-mode: hand over each packet at once (by default the kernel ring delivers
        # in blocks, and the last block is lost when tcpdump is stopped); -U: write each packet
        # as it comes, so the file can be read while the session runs; -Z root: keep writing
        # as root (the file lives in a root-owned test directory).
        argv = ["tcpdump", "-i", interface, "-w", str(path), "--immediate-mode", "-U",
                "-Z", "root", "-n", "not port 5353"]  # fmt: skip
        self.process = NsProcess("tcpdump", ns, argv, path.with_suffix(".tcpdump.log"))

    def __enter__(self) -> Tcpdump:
        self.process.start()
        self.process.wait_log(r"listening on")
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop(signal.SIGINT)

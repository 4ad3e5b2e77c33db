"""Daemon life: clean, fast shutdown with mDNS goodbyes; start-up without a sound card."""

from __future__ import annotations

import re
import signal
import threading

import pytest
from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

from tests.e2e.conftest import DEVICE_ID, test_clip, wait_for

SERVICE = "_raop._tcp.local."
INSTANCE = f"{DEVICE_ID}@E2E.{SERVICE}"
SHUTDOWN_BOUND = 2.0  # seconds: a pod's grace period must never be the thing that ends raopd


class Browser:
    """A zeroconf browser for `_raop._tcp` on the sender's side of the private LAN."""

    def __init__(self, lan) -> None:
        # Its sockets are made inside namespace B; zeroconf's threads then just use them.
        self.zc = lan.call_in(lan.b, lambda: Zeroconf([lan.b_ip], ip_version=IPVersion.V4Only))
        self.changes: list[tuple[str, ServiceStateChange]] = []
        self._lock = threading.Lock()
        self.browser = ServiceBrowser(self.zc, SERVICE, handlers=[self._on_change])

    def _on_change(self, zeroconf, service_type, name, state_change) -> None:
        with self._lock:
            self.changes.append((name, state_change))

    def saw(self, change: ServiceStateChange) -> bool:
        with self._lock:
            return (INSTANCE, change) in self.changes

    def close(self) -> None:
        self.browser.cancel()
        self.zc.close()


@pytest.fixture
def browser(lan):
    b = Browser(lan)
    yield b
    b.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_fast_and_says_goodbye(signum, raopd, pyatv_sender, browser, tmp_path):
    daemon = raopd("--output", str(tmp_path / "out.wav"))
    daemon.wait_ready()
    wait_for(lambda: browser.saw(ServiceStateChange.Added), "the browser to find raopd")
    sender = None
    if signum == signal.SIGTERM:  # stop in the middle of a stream: the harder case
        clip, _ = test_clip(tmp_path / "clip.wav", start_s=0.0, seconds=20.0)
        sender = pyatv_sender(clip)
        daemon.wait_log(r"\] playing L16")

    code, seconds = daemon.stop(signum)

    assert code == 0, daemon.log
    assert seconds < SHUTDOWN_BOUND, f"shutdown took {seconds:.2f} s"
    # PTR records live 75 min: only a goodbye (TTL 0) removes the service this soon.
    wait_for(lambda: browser.saw(ServiceStateChange.Removed), "the mDNS goodbye")
    log = daemon.log
    assert "shutting down" in log
    assert "Traceback" not in log and " ERROR " not in log
    if sender is not None:
        assert sender.result()["result"] in ("ok", "error")  # it ends, one way or the other
        # The session ends for the reason that ended it (EndReason): the daemon's shutdown.
        assert "ended: shutdown" in log


ALSA_NO_CARD = """\
# Only what raopd needs: a `default` that cannot open (card 99 never exists) and `null`.
pcm.!default { type hw card 99 device 0 }
pcm.null { type null }
ctl.!default { type hw card 99 }
"""


def test_no_sound_card_plays_to_null_device(lan, raopd, pyatv_sender, tmp_path):
    config = tmp_path / "asound-no-card.conf"
    config.write_text(ALSA_NO_CARD)
    state = tmp_path / "state"
    # Nothing but networking and a state dir: no --output, no --device, no name or id.
    daemon = raopd(
        "--address", lan.a_ip, "--interface", lan.a_if, "--state-dir", str(state),
        env={"ALSA_CONFIG_PATH": str(config)},
        bare=True,
    )  # fmt: skip
    log = daemon.wait_log(r"raopd ready: ")
    assert re.search(r"no sound card found: playing to ALSA's null device", log), log
    assert "playing to ALSA null" in log
    device_id = re.search(r"device id ([0-9A-F]{12})", log)
    assert device_id is not None

    clip, _ = test_clip(tmp_path / "clip.wav", start_s=3.0, seconds=1.0)
    assert pyatv_sender(clip, identifier=device_id.group(1)).result() == {"result": "ok"}
    daemon.wait_log(r"ended: teardown")
    code, seconds = daemon.stop()
    assert code == 0
    assert seconds < SHUTDOWN_BOUND
    log = daemon.log
    assert "] playing L16" in log
    assert "Traceback" not in log and " ERROR " not in log

"""The page in a real browser: Debian's Chromium, driven by Selenium through chromedriver.

raopd runs in namespace A of the private LAN; Chromium and chromedriver run there too (the
test thread enters A, and the processes it starts inherit it), and open the page on A's
address as a phone on the LAN would. Stock pyatv streams a WAV with title, artist, album and
a JPEG cover from namespace B. The page must show what was sent, move its progress bar,
follow the sender's volume, show idle within 1 s of TEARDOWN, and its buttons must work: stop
ends the session, play reaches the sender's DACP server (a test responder in B, with
raopd's own sender, since pyatv runs none).

A screenshot of the page while it plays is kept in out/test-artefacts/ (RAOPD_TEST_ARTEFACTS
names another directory).
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from raopd.tools.sender import RaopSender, SenderOptions
from tests.e2e.conftest import DEVICE_ID, test_clip
from tests.house.dacp_responder import DacpResponder
from tests.house.nsloop import NsLoop

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HTTP_PORT = 8080
DEADLINE = 30.0
COVER_SIZE = (320, 200)  # width, height: not square, so a swapped size would show

# Records every text the status line shows, with the browser's clock and the server time of
# the state document that produced it (both Unix seconds, one machine).
STATUS_LOG = """
window.statusLog = [];
new MutationObserver(() => window.statusLog.push({
  text: document.getElementById("status").textContent,
  now: Date.now() / 1000,
  server: Number(document.body.dataset.serverTime),
})).observe(document.getElementById("status"), {childList: true, characterData: true,
                                                 subtree: true});
"""


def make_jpeg(width: int, height: int) -> bytes:
    """A JPEG of the given size (PyAV's MJPEG encoder): a gradient with a block."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = fractions.Fraction(1, 25)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)
    image[height // 4 : height * 3 // 4, width // 3 : width * 2 // 3, 2] = 200
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(p) for p in packets)


def artefacts() -> Path:
    path = Path(os.environ.get("RAOPD_TEST_ARTEFACTS", REPO / "out" / "test-artefacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium at a phone's width, through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=412,1700",  # a phone's width; tall enough for the whole page
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: str, condition: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_the_page_follows_stock_pyatv_and_its_buttons_work(lan, raopd, pyatv_sender, tmp_path):
    clip, _ = test_clip(tmp_path / "clip.wav", 2.0, 9.0)
    cover_jpeg = make_jpeg(*COVER_SIZE)
    cover = tmp_path / "cover.jpg"
    cover.write_bytes(cover_jpeg)
    daemon = raopd("--output", str(tmp_path / "out.wav"), "--http-port", str(HTTP_PORT))
    daemon.wait_ready()
    page = f"http://{lan.a_ip}:{HTTP_PORT}/"
    with lan.inside(lan.a), chromium(tmp_path / "profile") as driver:
        driver.get(page)
        wait("the page to say idle", lambda: text(driver, "status") == "Idle")
        driver.execute_script(STATUS_LOG)
        # Every control has a name a screen reader can say, and the keyboard reaches it.
        unnamed = driver.execute_script(
            "return [...document.querySelectorAll('button, input')].filter(e => "
            "!(e.getAttribute('aria-label') || (e.labels && e.labels.length) || "
            "e.textContent.trim())).map(e => e.outerHTML);"
        )
        assert unnamed == []
        assert driver.execute_script(
            "return [...document.querySelectorAll('button, input')].every(e => e.tabIndex >= 0);"
        )

        # 1. What pyatv sends shows up.
        sender = pyatv_sender(
            clip,
            metadata={
                "title": "Fast Car",
                "artist": "Tracy Chapman",
                "album": "Tracy Chapman",
                "artwork": str(cover),
                "volume-at": "3:40",
            },
        )
        wait("the title", lambda: text(driver, "title") == "Fast Car")
        assert text(driver, "artist") == "Tracy Chapman"
        assert text(driver, "album") == "Tracy Chapman"
        wait("playing", lambda: text(driver, "status").startswith("Playing from "))
        assert text(driver, "sender") not in ("", "\u2013")  # an en dash: nobody

        image = driver.find_element(By.ID, "cover")
        size = wait(
            "the cover",
            lambda: (
                image.is_displayed()
                and driver.execute_script(
                    "const i = document.getElementById('cover'); return i.complete && "
                    "i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null;"
                )
            ),
        )
        assert tuple(size) == COVER_SIZE
        source = image.get_attribute("src")
        assert source is not None and source.startswith(page + "api/v1/artwork")
        with urllib.request.urlopen(source, timeout=DEADLINE) as reply:
            assert reply.read() == cover_jpeg  # the very bytes pyatv sent
            assert reply.headers["Content-Type"] == "image/jpeg"

        bar = driver.find_element(By.ID, "progress")
        first = float(bar.get_attribute("value") or 0)
        wait("the progress bar to move", lambda: float(bar.get_attribute("value") or 0) > first + 1)
        assert float(bar.get_attribute("max") or 0) == pytest.approx(9.0, abs=0.1)

        wait("the volume pyatv set", lambda: text(driver, "volume-text").startswith("40%"))
        assert driver.find_element(By.ID, "volume").get_attribute("value") == "40"

        wait("sync figures", lambda: text(driver, "h-sync").endswith(" ms"))
        assert text(driver, "h-bitexact") in ("yes", "no")
        assert text(driver, "h-output") == str(tmp_path / "out.wav")
        # pyatv sends a DACP-ID but runs no DACP server: the buttons are enabled, and a click
        # says why nothing happened.
        driver.find_element(By.CSS_SELECTOR, "button[data-command='next']").click()
        wait("the refusal", lambda: "offers no remote control" in text(driver, "control-error"))
        shot = artefacts() / "web-page-playing.png"
        driver.save_screenshot(str(shot))
        shutil.copy(shot, tmp_path / shot.name)

        # 2. TEARDOWN: idle within 1 s of the server's play_end.
        result = sender.result()
        assert result["result"] == "ok", result
        wait("idle", lambda: text(driver, "status") == "Idle")
        log = driver.execute_script("return window.statusLog;")
        idle = next(entry for entry in log if entry["text"] == "Idle")
        assert idle["now"] - idle["server"] < 1.0, idle
        assert text(driver, "title") == "Nothing playing"

        # 3. Stop ends the session.
        long_clip, _ = test_clip(tmp_path / "long.wav", 0.0, 25.0)
        sender = pyatv_sender(long_clip, metadata={"title": "Stop Me"})
        wait("playing", lambda: text(driver, "title") == "Stop Me")
        stop = driver.find_element(By.CSS_SELECTOR, "button[data-command='stop']")
        wait("stop enabled", stop.is_enabled)
        stop.click()
        wait("idle after stop", lambda: text(driver, "status") == "Idle")
        daemon.wait_log(r"stopped by remote control")
        sender.result()  # pyatv ends, one way or another

        # 4. Play reaches the sender's DACP server.
        ns_b = NsLoop(lan, lan.b)
        responder = DacpResponder("14413BE4996FEA4D", "1986535575", address=lan.b_ip)
        options = SenderOptions(
            codec="alac",
            encrypt=True,
            hw_addr=bytes.fromhex(DEVICE_ID),
            client_name="Joe's iPhone",
            dacp_id="14413BE4996FEA4D",
            active_remote="1986535575",
            linger=0.2,
        )
        own = RaopSender(lan.a_ip, 5000, dataclasses.replace(options))
        try:
            ns_b.submit(responder.start()).result(DEADLINE)
            ns_b.submit(own.connect()).result(DEADLINE)
            play = ns_b.submit(own.play(np.zeros((8 * 44100, 2), np.int16)))
            button = driver.find_element(By.CSS_SELECTOR, "button[data-command='play']")
            wait(
                "play enabled",
                lambda: text(driver, "sender") == "Joe's iPhone" and button.is_enabled(),
            )
            button.click()
            wait("the DACP request", lambda: responder.requests)
            request = responder.requests[0]
            assert request.path == "/ctrl-int/1/play"
            assert request.headers["active-remote"] == "1986535575"
            wait("no error shown", lambda: text(driver, "control-error") == "", timeout=5)
            play.result(DEADLINE)
            ns_b.submit(own.close()).result(DEADLINE)
        finally:
            ns_b.submit(responder.close()).result(DEADLINE)
            ns_b.close()
    code, _ = daemon.stop()
    assert code == 0

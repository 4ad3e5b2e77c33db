"""Hooks: commands and webhooks run on play start/end, active start/end, volume and errors.

shairport-sync's `sessioncontrol` set, with its traps removed:

- a command runs without a shell (split like a shell would, `shlex`) unless `hook_shell` is
  set; its environment is raopd's plus a known `PATH` and the `RAOPD_*` variables below, so
  a script that works from a terminal works from the daemon;
- it may run at most `hook_timeout` seconds, then its whole process group is killed;
- what it prints goes to raopd's log, a line at a time, prefixed with the event;
- `run_when_volume_is_set` gets the AirPlay volume as its last argument, as shairport-sync's;
- with `hook_wait_for_completion` the audio waits for the play-start hooks (so an amplifier
  can power up before the first note): the daemon holds the stream's audio back until they
  finish (at most `hook_timeout`), counting what it holds back; the first frame after that
  plays at its own time, so the stream is in sync from its first note.

Environment: `RAOPD_EVENT` (play_start, play_end, active_start, active_end, volume, error),
`RAOPD_STATE` (idle/playing/paused), `RAOPD_TITLE`, `RAOPD_ARTIST`, `RAOPD_ALBUM`,
`RAOPD_GENRE`, `RAOPD_SENDER` (client name, else address), `RAOPD_SENDER_IP`,
`RAOPD_USER_AGENT`, `RAOPD_VOLUME` (AirPlay, -30..0, -144 mute), `RAOPD_VOLUME_DB`,
`RAOPD_REASON` (why play ended, or the error). Unknown values are empty.

Webhooks: the same events as a JSON object (`event_payload`) POSTed to each URL in
`webhook_urls`, with up to `WEBHOOK_ATTEMPTS` attempts per URL (a 2xx answer ends them).
Hooks and webhooks run in the hooks consumer's own task: one that hangs or fails delays only
later hooks (each bounded by its timeout), never audio or another consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shlex
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from raopd.house.state import Change, ChangeKind, PlayerState

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT = 5.0  # seconds per attempt
WEBHOOK_BACKOFF = 0.5  # seconds before the second attempt, doubled after that
MAX_OUTPUT_LINE = 1000  # characters of a hook's output line that reach the log

EVENT_NAMES = {
    ChangeKind.PLAY_BEGIN: "play_start",
    ChangeKind.PLAY_END: "play_end",
    ChangeKind.ACTIVE_BEGIN: "active_start",
    ChangeKind.ACTIVE_END: "active_end",
    ChangeKind.VOLUME: "volume",
    ChangeKind.ERROR: "error",
}


@dataclass(frozen=True, slots=True)
class HookSettings:
    """The hook settings: commands by event name, and how to run them."""

    commands: Mapping[str, str] = field(default_factory=dict)  # event name -> command line
    shell: bool = False
    timeout: float = 10.0
    wait_for_completion: bool = False
    webhook_urls: tuple[str, ...] = ()


@dataclass(slots=True)
class HookCounters:
    """For /metrics and tests."""

    runs: int = 0
    failures: int = 0  # non-zero exit, could not start
    timeouts: int = 0  # killed at the timeout
    webhooks_sent: int = 0
    webhook_failures: int = 0  # every attempt failed


def hook_environment(event: str, change: Change, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a hook runs with (documented in the module docstring)."""
    state = change.state
    track, sender, volume = state.track, state.sender, state.volume
    env = dict(base)
    env["PATH"] = base.get("PATH") or DEFAULT_PATH
    values = {
        "EVENT": event,
        "STATE": state.status.value,
        "TITLE": track.title,
        "ARTIST": track.artist,
        "ALBUM": track.album,
        "GENRE": track.genre,
        "SENDER": sender.display_name if sender else None,
        "SENDER_IP": sender.address if sender else None,
        "USER_AGENT": sender.user_agent if sender else None,
        "VOLUME": f"{volume.airplay:.2f}" if volume else None,
        "VOLUME_DB": _db_text(volume.db) if volume else None,
        "REASON": change.reason,
    }
    for key, value in values.items():
        env[f"RAOPD_{key}"] = value or ""
    return env


def _db_text(db: float) -> str:
    return "-inf" if math.isinf(db) else f"{db:.2f}"


def event_payload(event: str, change: Change) -> dict[str, object]:
    """The webhook's JSON object."""
    state: PlayerState = change.state
    sender, volume, artwork = state.sender, state.volume, state.artwork
    return {
        "event": event,
        "state": state.status.value,
        "active": state.active,
        "reason": change.reason or None,
        "sender": None
        if sender is None
        else {
            "name": sender.name,
            "address": sender.address,
            "user_agent": sender.user_agent,
            "dacp_id": sender.dacp_id,
        },
        "track": {
            "title": state.track.title,
            "artist": state.track.artist,
            "album": state.track.album,
            "genre": state.track.genre,
            "composer": state.track.composer,
        },
        "volume": None
        if volume is None
        else {
            "airplay": volume.airplay,
            "db": None if math.isinf(volume.db) else volume.db,
            "muted": volume.muted,
            "percent": volume.percent,
        },
        "artwork": None
        if artwork is None
        else {"content_type": artwork.content_type, "bytes": len(artwork.data)},
    }


class Hooks:
    """The hooks consumer (`__call__`), and the gate that holds audio for a waited start hook."""

    def __init__(self, settings: HookSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.counters = HookCounters()
        self._environ = dict(os.environ if environ is None else environ)
        self._session: aiohttp.ClientSession | None = None
        # Open = audio may play. Closed (inline, as PLAY_BEGIN is published) while the start
        # hooks run with wait_for_completion; opened when they are done or timed out.
        self.audio_gate = asyncio.Event()
        self.audio_gate.set()
        self._gate_timer: asyncio.TimerHandle | None = None
        self.on_gate_open: list[Callable[[], None]] = []  # the daemon releases held audio

    @property
    def holds_audio(self) -> bool:
        """True when play-start hooks are waited for."""
        return self.settings.wait_for_completion and bool(
            self.settings.commands.get("play_start") or self.settings.commands.get("active_start")
        )

    def observe(self, change: Change) -> None:
        """Inline, as the change is published: close the gate before the first audio."""
        if change.kind is ChangeKind.PLAY_BEGIN and self.holds_audio:
            self.audio_gate.clear()
            loop = asyncio.get_running_loop()
            # Never held longer than the hooks can run, whatever happens to them.
            if self._gate_timer is not None:
                self._gate_timer.cancel()
            self._gate_timer = loop.call_later(2 * self.settings.timeout + 1.0, self._open_gate)

    async def __call__(self, change: Change) -> None:
        event = EVENT_NAMES.get(change.kind)
        if event is None:
            return
        try:
            command = self.settings.commands.get(event)
            volume = change.state.volume
            if command:
                extra = [f"{volume.airplay:.2f}"] if event == "volume" and volume else []
                await self.run(event, command, change, extra)
        finally:
            if change.kind is ChangeKind.PLAY_BEGIN:
                self._open_gate()
        for url in self.settings.webhook_urls:
            await self._post(url, event_payload(event, change))

    def _open_gate(self) -> None:
        if self._gate_timer is not None:
            self._gate_timer.cancel()
            self._gate_timer = None
        if self.audio_gate.is_set():
            return
        self.audio_gate.set()
        for callback in self.on_gate_open:
            try:
                callback()
            except Exception:
                logger.exception("releasing audio held for the hooks failed")

    async def run(self, event: str, command: str, change: Change, extra: list[str]) -> int | None:
        """Run one hook to its end or its timeout; its exit status (None: killed)."""
        self.counters.runs += 1
        env = hook_environment(event, change, self._environ)
        try:
            if self.settings.shell:
                argv = ["/bin/sh", "-c", " ".join([command, *map(shlex.quote, extra)])]
            else:
                argv = [*shlex.split(command), *extra]
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except (OSError, ValueError) as exc:
            self.counters.failures += 1
            logger.warning("hook %s: cannot run %r: %s", event, command, exc)
            return None
        assert process.stdout is not None
        relay = asyncio.create_task(self._relay(event, process.stdout))
        try:
            status = await asyncio.wait_for(process.wait(), self.settings.timeout)
        except TimeoutError:
            self.counters.timeouts += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            logger.warning(
                "hook %s: %r still running after %g s; killed",
                event,
                command,
                self.settings.timeout,
            )
            status = None
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(relay, 1.0)
            relay.cancel()
        if status not in (0, None):
            self.counters.failures += 1
            logger.warning("hook %s: %r exited with status %d", event, command, status)
        return status

    async def _relay(self, event: str, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: skip what is there
                await stream.read(65536)
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            logger.info("hook %s: %s", event, text[:MAX_OUTPUT_LINE])

    async def _post(self, url: str, payload: dict[str, object]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
            )
        delay = WEBHOOK_BACKOFF
        last = ""
        for attempt in range(WEBHOOK_ATTEMPTS):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                async with self._session.post(url, json=payload) as response:
                    if 200 <= response.status < 300:
                        self.counters.webhooks_sent += 1
                        return
                    last = f"answered {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
        self.counters.webhook_failures += 1
        logger.warning(
            "webhook %s: %s failed after %d attempts (%s)",
            payload["event"],
            url,
            WEBHOOK_ATTEMPTS,
            last,
        )

    async def close(self) -> None:
        """Close the webhook client and open the gate."""
        self._open_gate()
        if self._session is not None:
            await self._session.close()
            self._session = None

"""MQTT: shairport-sync's topics, Home Assistant discovery, and remote control, via aiomqtt.

Everything goes under one topic (`mqtt_topic`, by default the speaker's name), as
shairport-sync does it, so existing Home Assistant set-ups keep working unchanged:

- parsed (`publish_parsed`): `artist`, `album`, `title`, `genre`, `format`, `track_id`,
  `volume` ("airplay,dB,lowest,highest"), `client_ip`, `client_name`, `dacp_id`,
  `active_remote_id`, `server_ip`, `cover` (the image bytes, `publish_cover`), `playing` and
  `active` ("1"/"0"), and the events `play_start`, `play_end`, `play_flush`, `play_resume`,
  `active_start`, `active_end` (an empty payload is replaced by `empty_payload`);
- raw (`publish_raw`): every metadata item under `<topic>/<type>/<code>`;
- raopd's own: `state` (idle/playing/paused) and `availability` ("online", and "offline" as
  the Last Will, both retained);
- `<topic>/remote` (`mqtt_remote`): a command (play, pause, playpause, stop, nextitem, …) is
  sent to the sender over DACP; "stop" always works (raopd ends the session);
- Home Assistant discovery (`mqtt_discovery`): one device with sensors (state, title, artist,
  album, sender, volume), binary sensors (playing, active), an `image` for the cover and a
  button per remote command, all with `availability` on the Last Will topic.

The client runs in its own task: while the broker is unreachable raopd keeps playing, the
client retries with exponential backoff (1 s to 30 s), says so once, and on reconnecting
publishes availability, discovery and the current state again. Changes that arrive while it
is disconnected are dropped and counted (the retained state topics are refreshed anyway).
aiomqtt (and paho-mqtt under it, about 4 MB resident) is imported when the client starts, so a
daemon without MQTT, the default, does not carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raopd import __version__
from raopd.house.dacp import COMMANDS
from raopd.house.sps import Item, VolumeRange, items_for
from raopd.house.state import Change, ChangeKind, PlayerState

if TYPE_CHECKING:
    import aiomqtt

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
_PARSED_CORE = {
    "asar": "artist",
    "asal": "album",
    "asfm": "format",
    "asgn": "genre",
    "minm": "title",
}
_PARSED_SSNC = {
    "acre": "active_remote_id",
    "clip": "client_ip",
    "cmod": "client_model",
    "daid": "dacp_id",
    "pfls": "play_flush",
    "pvol": "volume",
    "snam": "client_name",
    "svip": "server_ip",
}
# ssnc code -> (the flag topic and its value, the event topic)
_EVENTS = {
    "abeg": (("active", "1"), "active_start"),
    "aend": (("active", "0"), "active_end"),
    "pbeg": (("playing", "1"), "play_start"),
    "pend": (("playing", "0"), "play_end"),
    "prsm": (("playing", "1"), "play_resume"),
}

Remote = Callable[[str], Awaitable[str | None]]  # command -> None when done, else why not


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The `mqtt_*` settings."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    topic: str = "raopd"
    publish_parsed: bool = True
    publish_raw: bool = False
    publish_cover: bool = True
    retain: bool = False
    empty_payload: str = "--"
    remote: bool = False
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    device_id: str = "000000000000"  # the speaker's 12 hex digits: unique per raopd
    device_name: str = "raopd"
    cover_art: bool = True
    volume_range: VolumeRange = field(default_factory=VolumeRange)


@dataclass(slots=True)
class MqttCounters:
    """For /metrics and tests."""

    connects: int = 0
    published: int = 0
    dropped: int = 0  # changes while disconnected
    commands: int = 0
    commands_refused: int = 0


def parsed_messages(item: Item, settings: MqttSettings) -> list[tuple[str, bytes]]:
    """shairport-sync's parsed topics (without the base topic) for one item."""
    if item.type == "core":
        if item.code in _PARSED_CORE:
            return [(_PARSED_CORE[item.code], item.data)]
        if item.code == "mper":
            return [("track_id", item.data.hex().upper().encode())]
        return []
    if item.code == "PICT":
        return [("cover", item.data)] if settings.publish_cover else []
    if item.code in _PARSED_SSNC:
        return [(_PARSED_SSNC[item.code], item.data)]
    if item.code in _EVENTS:
        (flag, value), event = _EVENTS[item.code]
        return [(flag, value.encode()), (event, item.data)]
    return []


def state_text(state: PlayerState) -> str:
    """The `state` topic: idle, playing or paused."""
    return state.status.value


def discovery_messages(settings: MqttSettings) -> list[tuple[str, dict[str, object]]]:
    """(config topic, payload) for every Home Assistant entity."""
    node = f"raopd_{settings.device_id}"
    base = settings.topic
    device = {
        "identifiers": [node],
        "name": settings.device_name,
        "model": "raopd AirPlay receiver",
        "manufacturer": "raopd",
        "sw_version": __version__,
    }
    common = {"availability_topic": f"{base}/availability", "device": device}

    def entity(
        component: str, key: str, name: str, **extra: object
    ) -> tuple[str, dict[str, object]]:
        payload = {"name": name, "unique_id": f"{node}_{key}", **common, **extra}
        return f"{settings.discovery_prefix}/{component}/{node}/{key}/config", payload

    messages = [
        entity("sensor", "state", "State", state_topic=f"{base}/state", icon="mdi:speaker"),
        entity("sensor", "title", "Title", state_topic=f"{base}/title", icon="mdi:music"),
        entity(
            "sensor", "artist", "Artist", state_topic=f"{base}/artist", icon="mdi:account-music"
        ),
        entity("sensor", "album", "Album", state_topic=f"{base}/album", icon="mdi:album"),
        entity(
            "sensor", "sender", "Sender", state_topic=f"{base}/client_name", icon="mdi:cellphone"
        ),
        entity(
            "sensor",
            "volume",
            "Volume",
            state_topic=f"{base}/volume",
            unit_of_measurement="%",
            # The slider (first field, -30..0; -144 is mute) as a percentage.
            value_template="{% set v = value.split(',')[0] | float %}"
            "{{ 0 if v <= -144 else ((v / 30 + 1) * 100) | round(0) }}",
            icon="mdi:volume-high",
        ),
        entity(
            "binary_sensor",
            "playing",
            "Playing",
            state_topic=f"{base}/playing",
            payload_on="1",
            payload_off="0",
        ),
        entity(
            "binary_sensor",
            "active",
            "Active",
            state_topic=f"{base}/active",
            payload_on="1",
            payload_off="0",
        ),
    ]
    if settings.publish_cover and settings.cover_art:
        messages.append(
            entity(
                "image", "cover", "Cover", image_topic=f"{base}/cover", content_type="image/jpeg"
            )
        )
    if settings.remote:
        for command in COMMANDS:
            messages.append(
                entity(
                    "button",
                    f"remote_{command}",
                    command.replace("_", " ").capitalize(),
                    command_topic=f"{base}/remote",
                    payload_press=command,
                )
            )
    return messages


class MqttClient:
    """The fan-out consumer and the connection it publishes on."""

    def __init__(
        self,
        settings: MqttSettings,
        state: Callable[[], PlayerState],
        remote: Remote | None = None,
    ) -> None:
        self.settings = settings
        self.counters = MqttCounters()
        self.connected = asyncio.Event()
        self._state = state
        self._remote = remote
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ consumer

    async def __call__(self, change: Change) -> None:
        client = self._client
        if client is None:
            self.counters.dropped += 1
            return
        for topic, payload, retain in self.messages_for(change):
            await self._publish(client, topic, payload, retain)

    def messages_for(self, change: Change) -> list[tuple[str, bytes, bool]]:
        """(full topic, payload, retain) for a change."""
        settings = self.settings
        out: list[tuple[str, bytes, bool]] = []
        for item in items_for(
            change, cover_art=settings.cover_art, volume_range=settings.volume_range
        ):
            if settings.publish_raw:
                out.append(
                    (f"{settings.topic}/{item.type}/{item.code}", item.data, settings.retain)
                )
            if settings.publish_parsed:
                for sub, data in parsed_messages(item, settings):
                    out.append((f"{settings.topic}/{sub}", data, settings.retain))
        if change.kind in _STATE_KINDS:
            out.append((f"{settings.topic}/state", state_text(change.state).encode(), True))
        return out

    # ---------------------------------------------------------- connection

    def start(self) -> None:
        """Connect (and keep reconnecting) in a task of its own."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt")

    async def close(self) -> None:
        """Say offline and disconnect."""
        client = self._client
        if client is not None:
            import aiomqtt  # already loaded: a client exists

            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(
                    client.publish(f"{self.settings.topic}/availability", "offline", retain=True),
                    1.0,
                )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import aiomqtt  # here, not at the top: only a daemon with MQTT on needs it

        settings = self.settings
        backoff = BACKOFF_FIRST
        down_since_logged = False
        while True:
            session_up = False  # connected this round (the error then means "lost")
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    username=settings.username,
                    password=settings.password,
                    identifier=f"raopd-{settings.device_id}",
                    will=aiomqtt.Will(f"{settings.topic}/availability", "offline", retain=True),
                    timeout=5.0,
                ) as client:
                    session_up = True
                    await self._connected(client)
                    backoff = BACKOFF_FIRST
                    down_since_logged = False
                    async for message in client.messages:
                        await self._remote_message(message.payload)
            except aiomqtt.MqttError as exc:
                if session_up:
                    logger.warning("MQTT: lost the broker (%s); reconnecting", exc)
                elif not down_since_logged:
                    logger.warning(
                        "MQTT: cannot reach %s:%d (%s); retrying in the background",
                        settings.host,
                        settings.port,
                        exc,
                    )
                down_since_logged = True
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connected(self, client: aiomqtt.Client) -> None:
        settings = self.settings
        self.counters.connects += 1
        logger.info(
            "MQTT: connected to %s:%d, topic %s", settings.host, settings.port, settings.topic
        )
        await client.publish(f"{settings.topic}/availability", "online", retain=True)
        if settings.discovery:
            for topic, payload in discovery_messages(settings):
                await client.publish(topic, json.dumps(payload), retain=True)
        if settings.remote:
            await client.subscribe(f"{settings.topic}/remote")
        # What a newcomer (or a broker that lost its retained messages) should see now.
        state = self._state()
        await self._publish(client, f"{settings.topic}/state", state_text(state).encode(), True)
        self._client = client
        self.connected.set()

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, retain: bool
    ) -> None:
        if not payload:
            payload = self.settings.empty_payload.encode()
        await client.publish(topic, payload, retain=retain)
        self.counters.published += 1

    async def _remote_message(self, payload: object) -> None:
        raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
        command = bytes(raw).decode("utf-8", "replace").strip().lower()
        self.counters.commands += 1
        if command not in COMMANDS:
            self.counters.commands_refused += 1
            logger.warning(
                "MQTT remote: unknown command %r (known: %s)",
                command[:40],
                ", ".join(COMMANDS),
            )
            return
        if self._remote is None:
            self.counters.commands_refused += 1
            logger.warning("MQTT remote: %s refused: remote control is not available", command)
            return
        refusal = await self._remote(command)
        if refusal is not None:
            self.counters.commands_refused += 1
            logger.warning("MQTT remote: %s refused: %s", command, refusal)


_STATE_KINDS = frozenset(
    {
        ChangeKind.PLAY_BEGIN,
        ChangeKind.PLAY_END,
        ChangeKind.FLUSH,
        ChangeKind.RESUME,
        ChangeKind.SENDER,
    }
)

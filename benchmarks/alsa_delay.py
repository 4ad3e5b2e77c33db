"""Which ALSA reading says when a written frame is heard: snd_pcm_delay, htimestamp or buffer-avail.

On the paced output (tests/paced.py: ALSA's `pulse` plugin into a PulseAudio sink that renders
on the monotonic clock and records every frame), a player writes silence with a marker frame
in every fourth period. Just before each such write it takes the three readings; each predicts
when the marker will be heard (now + (queued + offset in block) / rate). The recording says
when it was: the sink renders in chunks, and a chunk rendered at T plays from T on (the sink's
own latency model, what PulseAudio reports as sink latency), so the marker is heard at the
recorded frame's time (`frame_times()`, the write of its chunk to the pipe) plus one chunk,
less its place in the chunk. Prints one JSON line per reading and sink chunk size: the
prediction error's median, p5, p95 and standard deviation in ms.

    python benchmarks/alsa_delay.py [--outputs 1 2 4] [--blocks 200]

`--outputs` sets the sink's channel count (2 per output), and so its chunk: 1 -> 1024 frames
(23 ms), 2 -> 512, 4 -> 256.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raopd.output.alsa import PcmDelay
from tests.paced import RATE, PacedOutput, paced_output


def chunk_frames(paced: PacedOutput) -> float:
    """Frames the sink renders at a time, from the sizes of the pipe reads."""
    stamps = np.array(paced._stamps, dtype=float)
    return float(np.median(np.diff(stamps[:, 1]))) / (2 * paced.channels)


def measure(paced: PacedOutput, blocks: int, period: int = 2048) -> dict[str, np.ndarray]:
    """Prediction errors (s) of each reading, one per marker."""
    import alsaaudio

    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        device=paced.device(0),
        rate=RATE,
        channels=2,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=period,
        periods=4,
    )
    pcm.set_tstamp_mode(alsaaudio.PCM_TSTAMP_ENABLE)
    pcm.set_tstamp_type(alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC)
    buffer = int(pcm.info()["buffer_size"])
    delay = PcmDelay.attach(pcm, paced.device(0))
    if delay is None:
        raise SystemExit("snd_pcm_delay is not reachable through this pyalsaaudio")
    rows = []
    for b in range(blocks):
        data = np.zeros((period, 2), dtype=np.int16)
        marker = b >= 8 and b % 4 == 0
        offset = (b * 37) % period
        if marker:
            data[offset] = (b, -b)
        now = time.monotonic()
        avail = pcm.avail()
        frames = delay()
        sec, nsec, stamped_avail = pcm.htimestamp()
        if marker and frames is not None:
            rows.append((b, offset, now, avail, frames, sec + nsec * 1e-9, stamped_avail))
        pcm.write(data.tobytes())
    pcm.write(np.zeros((3 * buffer, 2), dtype=np.int16).tobytes())
    pcm.close()
    recording = paced.output(0)
    origin, per_frame = paced.frame_times()
    chunk = chunk_frames(paced)
    errors: dict[str, list[float]] = {"snd_pcm_delay": [], "buffer-avail": [], "htimestamp": []}
    for b, offset, now, avail, frames, stamp, stamped_avail in rows:
        found = np.flatnonzero((recording[:, 0] == b) & (recording[:, 1] == -b))
        if len(found) != 1:
            continue
        heard = origin + found[0] * per_frame + chunk / RATE
        errors["snd_pcm_delay"].append(now + (frames + offset) / RATE - heard)
        errors["buffer-avail"].append(now + (buffer - avail + offset) / RATE - heard)
        queued = buffer - stamped_avail
        errors["htimestamp"].append(stamp + (queued + offset) / RATE - heard)
    return {name: np.array(values) for name, values in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--blocks", type=int, default=200)
    args = parser.parse_args()
    for outputs in args.outputs:
        with tempfile.TemporaryDirectory() as tmp, paced_output(Path(tmp), outputs) as paced:
            os.environ.update(paced.env)
            errors = measure(paced, args.blocks)
            chunk = chunk_frames(paced)
        for name, values in errors.items():
            ms = values * 1e3
            print(
                json.dumps(
                    {
                        "reading": name,
                        "sink_chunk_frames": round(chunk),
                        "markers": len(ms),
                        "median_ms": round(float(np.median(ms)), 2),
                        "p5_ms": round(float(np.percentile(ms, 5)), 2),
                        "p95_ms": round(float(np.percentile(ms, 95)), 2),
                        "sd_ms": round(float(ms.std()), 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

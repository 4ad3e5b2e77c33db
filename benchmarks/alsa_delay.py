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

    python benchmarks/alsa_delay.py [--outputs 1 2 4] [--blocks 200] [--pair]

`--outputs` sets the sink's channel count (2 per output), and so its chunk: 1 -> 1024 frames
(23 ms), 2 -> 512, 4 -> 256.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
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


def measure(
    paced: PacedOutput, blocks: int, period: int = 2048, output: int = 0
) -> dict[str, np.ndarray]:
    """Prediction errors (s) of each reading, one per marker, and the markers' write times
    (`"time"`), on output `output`."""
    import alsaaudio

    pcm = alsaaudio.PCM(
        type=alsaaudio.PCM_PLAYBACK,
        device=paced.device(output),
        rate=RATE,
        channels=2,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=period,
        periods=4,
    )
    pcm.set_tstamp_mode(alsaaudio.PCM_TSTAMP_ENABLE)
    pcm.set_tstamp_type(alsaaudio.PCM_TSTAMP_TYPE_MONOTONIC)
    buffer = int(pcm.info()["buffer_size"])
    delay = PcmDelay.attach(pcm, paced.device(output))
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
    recording = paced.output(output)
    origin, per_frame = paced.frame_times()
    chunk = chunk_frames(paced)
    errors: dict[str, list[float]] = {
        "snd_pcm_delay": [],
        "buffer-avail": [],
        "htimestamp": [],
        "time": [],
    }
    for b, offset, now, avail, frames, stamp, stamped_avail in rows:
        found = np.flatnonzero((recording[:, 0] == b) & (recording[:, 1] == -b))
        if len(found) != 1:
            continue
        heard = origin + found[0] * per_frame + chunk / RATE
        errors["time"].append(now)
        errors["snd_pcm_delay"].append(now + (frames + offset) / RATE - heard)
        errors["buffer-avail"].append(now + (buffer - avail + offset) / RATE - heard)
        queued = buffer - stamped_avail
        errors["htimestamp"].append(stamp + (queued + offset) / RATE - heard)
    return {name: np.array(values) for name, values in errors.items()}


def pair(blocks: int) -> None:
    """Two players at once on `paced0` and `paced1` (one sink, one clock), each predicting its
    markers from `snd_pcm_delay`: how far apart two receivers that both trust the reading
    would be. Prints each player's prediction error (median, and its wander: p99 - p1) and the
    difference between the two at the same moments (player 1's error interpolated to player
    0's marker times): median and p99 of its absolute value."""
    with tempfile.TemporaryDirectory() as tmp, paced_output(Path(tmp), 2) as paced:
        os.environ.update(paced.env)
        results: list[dict[str, np.ndarray]] = [{}, {}]

        def run(output: int) -> None:
            results[output] = measure(paced, blocks, output=output)

        threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    first, second = results
    line: dict[str, object] = {"pair": "snd_pcm_delay", "blocks": blocks}
    for k, result in enumerate(results):
        ms = result["snd_pcm_delay"] * 1e3
        line[f"player{k}_median_ms"] = round(float(np.median(ms)), 2)
        line[f"player{k}_wander_ms"] = round(float(np.percentile(ms, 99) - np.percentile(ms, 1)), 2)
    inside = (first["time"] >= second["time"][0]) & (first["time"] <= second["time"][-1])

    def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a[inside] - np.interp(first["time"][inside], second["time"], b)) * 1e3

    diff = difference(first["snd_pcm_delay"], second["snd_pcm_delay"])
    line["difference_median_ms"] = round(float(np.median(diff)), 2)
    line["difference_p99_ms"] = round(float(np.percentile(diff, 99)), 2)

    # raopd acts on a running median of its readings (0.4 s), not on single ones: the same
    # over three markers (0.56 s) of each player takes single odd readings out.
    def running_median(values: np.ndarray) -> np.ndarray:
        windows = np.lib.stride_tricks.sliding_window_view(values, 3)
        return np.concatenate([values[:1], np.median(windows, axis=1), values[-1:]])

    smooth = difference(
        running_median(first["snd_pcm_delay"]), running_median(second["snd_pcm_delay"])
    )
    line["filtered_difference_p99_ms"] = round(float(np.percentile(smooth, 99)), 2)
    line["markers_compared"] = int(inside.sum())
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument(
        "--pair", action="store_true", help="two players at once on one sink (see pair())"
    )
    args = parser.parse_args()
    if args.pair:
        pair(args.blocks)
        return
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

"""What decoding one verbatim ALAC packet costs: FFmpeg (PyAV) against raopd's native reader.

Decodes the same 352-frame stereo packets (test30.wav) three ways and prints one JSON object
with microseconds per packet (the best of `--repeat` rounds, so that other load on the
machine counts as little as possible) and per minute of audio (7517 packets):

- `ffmpeg_us`: FFmpeg through PyAV, frames with the END element (what raopd did before the
  native path; FFmpeg refuses frames without END, so PipeWire's and PulseAudio's never got
  this far);
- `native_us`: raopd's decoder on the same frames (media/alac_verbatim.py);
- `native_noend_us`: raopd's decoder on the frames PipeWire and PulseAudio send (sized,
  no END, 1415 bytes).

Every decode is checked against the source samples once.

    python benchmarks/decode.py [--packets 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raopd.core.sdp import Codec, StreamParams  # noqa: E402
from raopd.media.alac_encode import verbatim_alac_frame  # noqa: E402
from raopd.media.decoder import AlacDecoder, make_decoder  # noqa: E402
from raopd.tools.sender import load_wav  # noqa: E402

FRAMES = 352
PACKETS_PER_MINUTE = 60 * 44100 / FRAMES


def best_us(decode: Callable[[bytes], object], payloads: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for payload in payloads:
            decode(payload)
        best = min(best, time.perf_counter() - start)
    return best / len(payloads) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pcm = load_wav(ROOT / "tests" / "captures" / "test30.wav")
    count = min(args.packets, len(pcm) // FRAMES)
    chunks = [pcm[i * FRAMES : (i + 1) * FRAMES] for i in range(count)]
    with_end = [verbatim_alac_frame(chunk, FRAMES) for chunk in chunks]
    no_end = [verbatim_alac_frame(chunk, FRAMES, pipewire_style=True) for chunk in chunks]
    decoder = make_decoder(StreamParams(codec=Codec.ALAC))
    assert isinstance(decoder, AlacDecoder)
    ffmpeg = decoder._ffmpeg  # the PyAV path alone, as before the native reader
    for chunk, a, b in zip(chunks, with_end, no_end, strict=True):
        assert np.array_equal(ffmpeg(a), chunk)
        assert np.array_equal(decoder.decode(a), chunk)
        assert np.array_equal(decoder.decode(b), chunk)
    result = {
        "packets": count,
        "ffmpeg_us": best_us(ffmpeg, with_end, args.repeat),
        "native_us": best_us(decoder.decode, with_end, args.repeat),
        "native_noend_us": best_us(decoder.decode, no_end, args.repeat),
    }
    for key in ("ffmpeg", "native", "native_noend"):
        result[f"{key}_s_per_audio_min"] = result[f"{key}_us"] * PACKETS_PER_MINUTE / 1e6
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()

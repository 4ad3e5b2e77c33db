"""ALSA fixtures: a private ALSA configuration whose PCMs are real alsa-lib plugins.

`ALSA_CONFIG_PATH` points alsa-lib at a file the test writes, so the default alsa.conf is not
loaded and every PCM used is defined here. `raopdtest` is the `file` plugin over the `null`
plugin: pyalsaaudio, alsa-lib and the plugin chain all run for real, the audio lands in a file,
and `null` consumes it instantly (it has no clock, so the sink paces it to real time).
alsa-lib re-reads the file when it changes, which is how a test makes a PCM disappear.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class AlsaConfig:
    path: Path
    directory: Path

    def write(self, pcms: dict[str, str]) -> None:
        """Define `pcm.<name>` for each entry: value = the `file` setting of a file plugin."""
        lines = ["pcm.nulldev {\n    type null\n}\n"]
        for name, target in pcms.items():
            lines.append(
                f'pcm.{name} {{\n    type file\n    slave.pcm "nulldev"\n'
                f'    file "{target}"\n    format "raw"\n}}\n'
            )
        # A new inode each time: alsa-lib notices the change even within one mtime second.
        temporary = self.path.with_suffix(".new")
        temporary.write_text("".join(lines))
        os.replace(temporary, self.path)


@pytest.fixture
def alsa_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaConfig:
    config = AlsaConfig(tmp_path / "asound.conf", tmp_path)
    config.write({})
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(config.path))
    return config

"""Audio sinks (ALSA, file) and the one audio output thread."""

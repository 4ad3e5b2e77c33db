"""The raopd exception tree: one base class, a flat set of children."""


class RaopError(Exception):
    """Base class of every error raopd raises on purpose."""


class ProtocolError(RaopError):
    """The peer sent something invalid; `status_hint` is the RTSP status to answer with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class ConfigError(RaopError):
    """The configuration is invalid; the CLI prints one line and exits non-zero."""


class OutputError(RaopError):
    """The audio output could not be opened or configured."""


class CaptureError(RaopError):
    """A packet capture file could not be read."""

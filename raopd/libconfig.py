"""A small reader for libconfig syntax, the format of `shairport-sync.conf`.

Only what a configuration file needs: settings `name = value;` (or `name: value,`), groups
`{ ... }`, lists `( ... )`, arrays `[ ... ]`, strings with escapes (adjacent strings are
joined), integers (decimal, hex, with an optional `L`/`LL` suffix), floats and booleans, with
`//`, `/* */` and `#` comments. `@include` is refused: raopd reads one file. Every syntax
error is a `ConfigError` that says where (`line:column`) and what was expected; nothing in
here raises anything else on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from raopd.errors import ConfigError

Value = bool | int | float | str | list["Value"] | dict[str, "Value"]

_NAME = re.compile(r"[A-Za-z*][-A-Za-z0-9_*]*")
_FLOAT = re.compile(
    r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
)
_HEX = re.compile(r"0[xX][0-9A-Fa-f]+(?:LL|L)?")
_INT = re.compile(r"[-+]?[0-9]+(?:LL|L)?")
_BOOL = re.compile(r"(?i:true|false)(?![-A-Za-z0-9_*])")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r", "f": "\f", "a": "\a"}


@dataclass
class Document:
    """A parsed file: nested settings plus the line each leaf setting was written on."""

    settings: dict[str, Value]
    lines: dict[str, int] = field(default_factory=dict)  # "general.name" -> line


def parse_libconfig(text: str, source: str = "<config>") -> Document:
    """Parse libconfig text into nested dicts (groups) and lists (lists and arrays)."""
    return _Parser(text, source).document()


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.pos = 0
        self.lines: dict[str, int] = {}

    # -- position and errors -------------------------------------------------------------
    def where(self, pos: int | None = None) -> tuple[int, int]:
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return line, col

    def error(self, message: str, pos: int | None = None) -> ConfigError:
        line, col = self.where(pos)
        return ConfigError(f"{self.source}:{line}:{col}: {message}")

    def describe_next(self) -> str:
        if self.pos >= len(self.text):
            return "end of file"
        return repr(self.text[self.pos])

    # -- lexing helpers ------------------------------------------------------------------
    def skip_blank(self) -> None:
        """Skip white space and all three kinds of comment."""
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n\f\v":
                self.pos += 1
            elif ch == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("comment '/*' is never closed")
                self.pos = end + 2
            else:
                return

    def peek(self) -> str:
        self.skip_blank()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    # -- grammar -------------------------------------------------------------------------
    def document(self) -> Document:
        settings = self.setting_list(closer="", path="")
        return Document(settings, self.lines)

    def setting_list(self, closer: str, path: str) -> dict[str, Value]:
        result: dict[str, Value] = {}
        while True:
            ch = self.peek()
            if ch == closer:  # "" is end of file for the top level
                return result
            if ch == "":
                raise self.error(f"expected {closer!r} to close the group, got end of file")
            if ch == "@":
                if self.text.startswith("@include", self.pos):
                    raise self.error("@include is not supported: put the settings in one file")
                raise self.error("unexpected '@'")
            match = _NAME.match(self.text, self.pos)
            if not match:
                raise self.error(f"expected a setting name, got {self.describe_next()}")
            name = match.group()
            name_pos = self.pos
            self.pos = match.end()
            if self.peek() not in ("=", ":"):
                raise self.error(f"expected '=' or ':' after {name!r}, got {self.describe_next()}")
            self.pos += 1
            full = f"{path}.{name}" if path else name
            if name in result:
                raise self.error(f"setting {full!r} is given twice", name_pos)
            line, _ = self.where(name_pos)
            result[name] = self.value(full, line)
            if self.peek() in (";", ","):
                self.pos += 1

    def value(self, path: str, line: int) -> Value:
        ch = self.peek()
        if ch == "{":
            self.pos += 1
            group = self.setting_list("}", path)
            self.pos += 1
            return group
        if ch in ("(", "["):
            return self.sequence(path, line)
        self.lines[path] = line
        return self.scalar()

    def sequence(self, path: str, line: int) -> list[Value]:
        closer = ")" if self.text[self.pos] == "(" else "]"
        self.pos += 1
        items: list[Value] = []
        self.lines[path] = line
        while True:
            if self.peek() == closer:
                self.pos += 1
                return items
            if closer == ")":
                items.append(self.value(f"{path}.[{len(items)}]", self.where()[0]))
            else:
                items.append(self.scalar())
            ch = self.peek()
            if ch == ",":
                self.pos += 1
            elif ch != closer:
                raise self.error(
                    f"expected ',' or {closer!r} in the list, got {self.describe_next()}"
                )

    def scalar(self) -> Value:
        self.skip_blank()
        start = self.pos
        text = self.text
        if start >= len(text):
            raise self.error("expected a value, got end of file")
        if text[start] == '"':
            parts = [self.string()]
            while self.peek() == '"':  # "a" "b" is "ab", as in C
                parts.append(self.string())
            return "".join(parts)
        if match := _BOOL.match(text, start):
            self.pos = match.end()
            return match.group().lower() == "true"
        for pattern in (_HEX, _FLOAT, _INT):
            match = pattern.match(text, start)
            if match and not _continues(text, match.end()):
                self.pos = match.end()
                token = match.group().rstrip("L")
                if pattern is _FLOAT:
                    return float(token)
                return int(token, 16) if pattern is _HEX else int(token)
        raise self.error(
            f"expected a value (string, number or true/false), got {self.describe_next()}"
        )

    def string(self) -> str:
        text = self.text
        start = self.pos
        self.pos += 1  # opening quote
        out: list[str] = []
        while True:
            if self.pos >= len(text) or text[self.pos] == "\n":
                raise self.error("string is not closed before the end of the line", start)
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                nxt = text[self.pos + 1 : self.pos + 2]
                if nxt in _ESCAPES:
                    out.append(_ESCAPES[nxt])
                    self.pos += 2
                    continue
                if nxt == "x" and re.fullmatch(
                    r"[0-9A-Fa-f]{2}", text[self.pos + 2 : self.pos + 4]
                ):
                    out.append(chr(int(text[self.pos + 2 : self.pos + 4], 16)))
                    self.pos += 4
                    continue
                raise self.error(f"unknown escape '\\{nxt}' in a string")
            out.append(ch)
            self.pos += 1


def _continues(text: str, end: int) -> bool:
    """True if a number token runs straight into more name-like characters (e.g. `12ab`)."""
    return end < len(text) and (text[end].isalnum() or text[end] in "_.")

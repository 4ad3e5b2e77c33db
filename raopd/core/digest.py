"""RTSP Digest authentication (RFC 2069: MD5, no qop), both sides of it.

The receiver challenges with `challenge(realm, nonce)` and checks answers with `verify()`; a
sender answers with `authorization()`. AirPlay 1 senders use the RFC 2069 form without qop,
cnonce or nc, and some write every hex digest (the inner ones too) in upper case, so `verify()`
accepts either case.
It also insists that the answer is for this request: the `uri` field must be the request's
URI and `realm` ours, so an answer overheard for one request or realm proves nothing for
another.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["authorization", "challenge", "parse_fields", "response_for", "verify"]


def parse_fields(value: str) -> dict[str, str]:
    """`key="value", key=value` pairs (after the scheme word, if any) as a dict.

    Keys are lower-cased; quotes around values are removed. Commas inside quoted values are
    not supported: no field AirPlay uses contains one.
    """
    scheme, _, rest = value.strip().partition(" ")
    if "=" in scheme:  # no scheme word
        rest = value
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key.strip().lower()] = val.strip().strip('"')
    return fields


def _md5_hex(text: str, upper: bool = False) -> str:
    value = hashlib.md5(text.encode("utf-8", "replace")).hexdigest()
    return value.upper() if upper else value


def response_for(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    upper: bool = False,
) -> str:
    """The hex `response` value of RFC 2069 (`upper`: every digest in upper-case hex)."""
    ha1 = _md5_hex(f"{username}:{realm}:{password}", upper)
    ha2 = _md5_hex(f"{method}:{uri}", upper)
    return _md5_hex(f"{ha1}:{nonce}:{ha2}", upper)


def challenge(realm: str, nonce: str) -> str:
    """The `WWW-Authenticate` value a receiver sends."""
    return f'Digest realm="{realm}", nonce="{nonce}"'


def authorization(
    *, username: str, password: str, realm: str, nonce: str, method: str, uri: str
) -> str:
    """The `Authorization` value a sender sends (lower-case hex)."""
    response = response_for(
        username=username, realm=realm, password=password, method=method, uri=uri, nonce=nonce
    )
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}"'
    )


def verify(
    value: str | None, *, password: str, realm: str, nonce: str, method: str, uri: str
) -> bool:
    """True when `value` (an `Authorization` header) proves the password for this request.

    The nonce must be ours, the realm ours, and the `uri` field the request's own URI (a
    missing `uri` is taken as the request's, as RFC 2069 senders that omit it intend).
    """
    if value is None or not value.lstrip().lower().startswith("digest "):
        return False
    fields = parse_fields(value)
    if fields.get("nonce") != nonce or fields.get("realm", realm) != realm:
        return False
    if fields.get("uri", uri) != uri:
        return False
    answer = fields.get("response", "").lower().encode("ascii", "replace")
    ok = False
    for upper in (False, True):
        expected = response_for(
            username=fields.get("username", ""),
            realm=realm,
            password=password,
            method=method,
            uri=uri,
            nonce=nonce,
            upper=upper,
        )
        ok |= hmac.compare_digest(expected.lower().encode(), answer)
    return ok

"""AirPlay 1 cryptography: the AirPort Express key, Apple-Response, rsaaeskey, per-packet AES.

Every AirPlay 1 receiver proves itself with the same published AirPort Express RSA key
(a protocol constant, shipped beside this module as `airport_express.pem`). The sender
wraps a per-session AES-128 key with its public half (RSA-OAEP, SHA-1), and encrypts each
audio payload with AES-128-CBC, restarting from the session IV for every packet and
leaving the `len % 16` tail in clear.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from importlib import resources

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from raopd.errors import ProtocolError
from raopd.media.openssl_rsa import RawSigner

__all__ = [
    "PacketCipher",
    "airport_key",
    "apple_response",
    "unwrap_session_key",
    "warm_up",
]

# Apple senders send 16 bytes; shairport-sync answers nothing to a longer challenge, so a
# longer one is the peer's error, not something to truncate silently.
MAX_CHALLENGE_BYTES = 16
# The message signed for Apple-Response is zero-padded on the right to at least this.
MIN_SIGNED_MESSAGE_BYTES = 32
HW_ADDR_BYTES = 6
AES_KEY_BYTES = 16
AES_BLOCK_BYTES = 16

_OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _airport_pem() -> bytes:
    return resources.files("raopd.media").joinpath("airport_express.pem").read_bytes()


@functools.cache
def airport_key() -> rsa.RSAPrivateKey:
    """The AirPort Express private key packaged with raopd (loaded once, then cached)."""
    key = serialization.load_pem_private_key(_airport_pem(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - the packaged file is RSA
        raise TypeError("airport_express.pem does not hold an RSA private key")
    return key


@functools.cache
def _crt_params() -> tuple[int, int, int, int, int, int]:
    """(p, q, dP, dQ, qInv, modulus bytes) for the raw CRT signature, computed once."""
    numbers = airport_key().private_numbers()
    return (
        numbers.p,
        numbers.q,
        numbers.dmp1,
        numbers.dmq1,
        numbers.iqmp,
        (numbers.public_numbers.n.bit_length() + 7) // 8,
    )


@functools.cache
def _raw_signer() -> RawSigner | None:
    """The key in libcrypto for Apple-Response (None: no OpenSSL 3, use Python's pow)."""
    return RawSigner.load(_airport_pem(), _crt_params()[5])


def warm_up() -> None:
    """Load the key and run each RSA path once, so that no sender waits for it.

    Loading (with the key check `cryptography` does) costs ~200 ms, and PipeWire drops
    what it rendered until RECORD is answered; the daemon calls this at start-up.
    """
    airport_key()
    apple_response("AAAAAAAAAAAAAAAAAAAAAA", "127.0.0.1", bytes(HW_ADDR_BYTES))


def _decode_challenge(challenge_b64: str) -> bytes:
    text = challenge_b64.strip()
    # Apple senders strip the base64 padding; put it back so strict decoding accepts it.
    text += "=" * (-len(text) % 4)
    try:
        challenge = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"Apple-Challenge is not valid base64: {challenge_b64!r}") from exc
    if not challenge:
        raise ProtocolError("Apple-Challenge is empty")
    if len(challenge) > MAX_CHALLENGE_BYTES:
        raise ProtocolError(
            f"Apple-Challenge is {len(challenge)} bytes, more than {MAX_CHALLENGE_BYTES}"
        )
    return challenge


def _ip_bytes(local_ip: str) -> bytes:
    # A link-local IPv6 sockname carries "%scope"; the address bytes are what is signed.
    address = ipaddress.ip_address(local_ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; the sender connected
        # over IPv4 and checks the signature against the 4-byte address.
        address = address.ipv4_mapped
    return address.packed


def apple_response(challenge_b64: str, local_ip: str, hw_addr: bytes) -> str:
    """The `Apple-Response` header value for an `Apple-Challenge` (unpadded base64).

    `local_ip` is the local address of the RTSP connection (getsockname), `hw_addr` the
    6 bytes of the advertised name prefix. Raises `ProtocolError` for a challenge that is
    not base64, empty, or longer than 16 bytes; `ValueError` for a bad local address.
    """
    if len(hw_addr) != HW_ADDR_BYTES:
        raise ValueError(f"hw_addr must be {HW_ADDR_BYTES} bytes, got {len(hw_addr)}")
    message = _decode_challenge(challenge_b64) + _ip_bytes(local_ip) + bytes(hw_addr)
    message = message.ljust(MIN_SIGNED_MESSAGE_BYTES, b"\x00")
    signer = _raw_signer()
    signature = signer.sign(message) if signer is not None else _python_signature(message)
    return base64.b64encode(signature).decode("ascii").rstrip("=")


def _python_signature(message: bytes) -> bytes:
    """The same signature as libcrypto's, in Python (~20x slower; the fallback)."""
    p, q, dmp1, dmq1, iqmp, size = _crt_params()
    # PKCS#1 v1.5 type-1 padding around the raw message: no hashing, no DigestInfo.
    # `cryptography` refuses to sign without a hash, so do the RSA maths directly.
    encoded = b"\x00\x01" + b"\xff" * (size - 3 - len(message)) + b"\x00" + message
    m = int.from_bytes(encoded, "big")
    # CRT: two half-size exponentiations, measured about 3x faster than pow(m, d, n).
    s1 = pow(m, dmp1, p)
    s2 = pow(m, dmq1, q)
    signature = s2 + q * ((iqmp * (s1 - s2)) % p)
    return signature.to_bytes(size, "big")


def unwrap_session_key(rsaaeskey: bytes) -> bytes:
    """The AES-128 session key from the ANNOUNCE's base64-decoded `rsaaeskey`.

    RSA-OAEP with SHA-1 and MGF1-SHA-1 under the AirPort key. Anything that does not
    decrypt to exactly 16 bytes raises `ProtocolError` with status hint 456.
    """
    try:
        key = airport_key().decrypt(bytes(rsaaeskey), _OAEP_SHA1)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("rsaaeskey does not decrypt with the AirPort key", 456) from exc
    if len(key) != AES_KEY_BYTES:
        raise ProtocolError(f"rsaaeskey holds {len(key)} bytes, not {AES_KEY_BYTES}", 456)
    return key


class PacketCipher:
    """AES-128-CBC over one audio payload at a time, restarting from `iv` every packet.

    Only the leading whole blocks are encrypted; the `len % 16` tail travels in clear.

    Decryption is CBC done by hand: every block through one AES-ECB context kept for the
    session, then XORed with the block before it (the IV for the first). A CBC context made
    per packet costs the key schedule and cryptography's checks each time: 4.4 against 3.7 us
    for a 1412-byte payload here, on the path every packet takes.
    """

    __slots__ = ("_blocks", "_cipher", "_iv")

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) != AES_KEY_BYTES:
            raise ValueError(f"AES key must be {AES_KEY_BYTES} bytes, got {len(key)}")
        if len(iv) != AES_BLOCK_BYTES:
            raise ValueError(f"AES IV must be {AES_BLOCK_BYTES} bytes, got {len(iv)}")
        # Encryption (the sender's side) takes a fresh CBC context per packet, which is
        # what restarts the IV; decryption, on every received packet, goes through ECB below.
        self._cipher = Cipher(algorithms.AES(bytes(key)), modes.CBC(bytes(iv)))
        # ECB over whole blocks keeps no state from one update() to the next: one context
        # serves every packet of the session.
        self._blocks = Cipher(algorithms.AES(bytes(key)), modes.ECB()).decryptor()
        self._iv = bytes(iv)

    def decrypt(self, payload: bytes) -> bytes:
        """Plaintext of one payload (same length)."""
        n = len(payload) & ~(AES_BLOCK_BYTES - 1)
        if n == 0:
            return bytes(payload)
        whole = payload[:n]
        plain = np.frombuffer(self._blocks.update(whole), np.uint64)
        chained = np.frombuffer(self._iv + whole[: n - AES_BLOCK_BYTES], np.uint64)
        return (plain ^ chained).tobytes() + payload[n:]

    def encrypt(self, payload: bytes) -> bytes:
        """Ciphertext of one payload (same length), as a sender makes it."""
        n = len(payload) & ~(AES_BLOCK_BYTES - 1)
        if n == 0:
            return bytes(payload)
        return self._cipher.encryptor().update(payload[:n]) + payload[n:]

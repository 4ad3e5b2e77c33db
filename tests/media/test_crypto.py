"""Tests for raopd.media.crypto against published vectors and a real node-airtunes2 session."""

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from raopd.errors import ProtocolError
from raopd.media import crypto
from raopd.media.crypto import PacketCipher, airport_key, apple_response, unwrap_session_key

# protocol.md §3.1
SPKI_SHA256 = "e14bc3d4793ca6f8be156fc07c4d41ef22faa082fb88308f3d8426daa5a39ede"
PKCS1_PUBLIC_SHA256 = "b460c3f481fb9c3128ace8990f01f373219fc3aca106d26dec505a77ee1dbbf3"
PKCS1_PRIVATE_SHA256 = "8959c62b4351cbaa702942f4572d37335a7a3dfdcc6f0d2763a2afb486e3ac8f"
MODULUS_B64 = (
    "59dE8qLieItsH1WgjrcFRKj6eUWqi+bGLOX1HL3U3GhC/j0Qg90u3sG/1CUtwC5vOYvfDmFI6oSFXi5ELabWJmT2dKHz"
    "BJKa3k9ok+8t9ucRqMd6DZHJ2YCCLlDRKSKv6kDqnw4UwPdpOMXziC/AMj3Z/lUVX1G7WSHCAWKf1zNS1eLvqr+boEjX"
    "uBOitnZ/bDzPHrTOZz0Dew0uowxf/+sG+NCK3eQJVxqcaJ/vEHKIVd2M+5qL71yJQ+87X6oV3eaYvt3zWZYD6z5vYTcr"
    "tij2VZ9Zmni/UAaHqn9JdsBWLUEpVviYnhimNVvYFZeCXg/IdTQ+x4IRdiXNv5hEew=="
)

# protocol.md §12 T1
T1_RESPONSE = (
    "TyNVHs6FPOofPSzOm0iDb3us0UNm4UkwmR4f7fNdaTdL4wolLWsAS7B54ECh26KBvviS1ZUg9eKbou3iRcJCnyoBLa0L"
    "NS5xgSRnZgfwER46umZ8nRtTJOc5flyrRt8LFONuc6ZfaW7WA5OeRu6TCj9aXxDqnK6GtGAvKcV002GyHhA+BugRncpI"
    "QZU1Q5VVZlwlzR+2acarSuTYCsWDbzy4wohQ8VzgcdW8gJlOpMzr68a7Pxa6X6bhFh5emKB7SusMM1yAca0n2K6kmMkp"
    "jFeHoZbg7jRUwn+1A90NAFzLlqb9wxKX7m02xwJYW4RnGuzqzp9CYeak5uuh1T+j0w"
)

# The node-airtunes2 session (captures/node-alac-rsa): OPTIONS challenge over 127.0.0.1, the
# reference receiver's answer, and the ANNOUNCE keys.
NODE_CHALLENGE = "SdX9kFJVxgKVMFof/Znj4Q"
NODE_RESPONSE = (
    "2xHDJtaHI7yv0cm9mDlRYPeB+fymdreV8/nUMCuU5FnqyF39UZOsAix/RsqtFlLVH36VvBKR3883S87z8ScOfi0yocGC"
    "aWKxfOXeJdvNT1YrF51bYxM4DUE0t4+OSf4w7EEzduicGL3Zc7IY/mstisYkAKMKFxTqZGVxLSR/AHeiZrGXPN18ckPp"
    "TmdxLKQ9P+lenFuXQwqXG7/GQb6r63sUWqvCi4FePI1Nl4RWHxeSMdae6azS7neqv2ual62ZqG5eYR89l5gL5cNT3RF5"
    "Smyhgp3HTBDO6sk5IovSX0wRKhcJaFTiCFt5ggFUIlOmw44B4k/4ARnEUn3lMlEuCw"
)
# The reference receiver's name prefix, recovered from NODE_RESPONSE (see the test below).
NODE_HW = bytes.fromhex("e8dcc14bf139")
NODE_RSAAESKEY = (
    "VjVbxWcmYgbBbhwBNlCh3K0CMNtWoB844BuiHGUJT51zQS7SDpMnlbBIobsKbfEJ3SCgWHRXjYWf7VQWRYtEcfx7ejA8"
    "xDIk5PSBYTvXP5dU2QoGrSBv0leDS6uxlEWuxBq3lIxCxpWO2YswHYKJBt06Uz9P2Fq2hDUwl3qOQ8oXb0OateTKtfXE"
    "wHJMprkhsJsGDrIc5W5NJFMAo6zCiM9bGSDeH2nvTlyW6bfI/Q0v0cDGUNeY3ut6fsoafRkfpCwYId+bg3diJh+uzw5h"
    "tHDyZ2sN+BFYHzEfo8iv4KDxzeya9llqg6fRNQ8d5YjpvTnoeEQ9ye9ivjkBjcAfVw"
)
NODE_AESIV = "ePRBLI0XN5ArFaaz7ncNZw"

# protocol.md §12 T3/T4
T3_KEY = bytes.fromhex("027d7293d8cc56a91a3b0a086d475996")
T3_IV = bytes.fromhex("cdc666019b6a87bb86704c0f5e4d1078")

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def recover(response: str) -> bytes:
    """The message an Apple-Response signs, recovered with the public key."""
    return (
        airport_key()
        .public_key()
        .recover_data_from_signature(b64(response), padding.PKCS1v15(), None)
    )


# --- the key -------------------------------------------------------------------------------


def test_airport_key_fingerprints_match_protocol_reference():
    key = airport_key()
    public = key.public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pkcs1_public = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    pkcs1_private = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert hashlib.sha256(spki).hexdigest() == SPKI_SHA256
    assert hashlib.sha256(pkcs1_public).hexdigest() == PKCS1_PUBLIC_SHA256
    assert hashlib.sha256(pkcs1_private).hexdigest() == PKCS1_PRIVATE_SHA256
    assert key.key_size == 2048
    assert public.public_numbers().e == 65537
    assert public.public_numbers().n.to_bytes(256, "big") == base64.b64decode(MODULUS_B64)


def test_airport_key_is_cached():
    assert airport_key() is airport_key()


# --- Apple-Response ------------------------------------------------------------------------


def test_t1_apple_response_exact():
    hw = bytes.fromhex("485D607CEE22")
    assert apple_response("OL/y7hDI1kMrsW8Q7oim4Q", "192.168.128.224", hw) == T1_RESPONSE
    assert recover(T1_RESPONSE) == bytes.fromhex(
        "38bff2ee10c8d6432bb16f10ee88a6e1c0a880e0485d607cee22000000000000"
    )


def test_t2_matches_a_real_airport_express():
    # The signature is deterministic, so for the same message ours must be the AirPort's.
    response = apple_response("09KF45soMYmvj6dpsUGiIg", "10.0.1.103", bytes.fromhex("001124004491"))
    assert response.startswith("u+msU8Cc7KBrVPjI/Ir8fOL8+C5D3Jsw1+acaW3MNTndrTQAeb/a")
    assert recover(response) == bytes.fromhex(
        "d3d285e39b283189af8fa769b141a2220a000167001124004491000000000000"
    )


def test_node_capture_response_recovers_challenge_ip_hw():
    message = recover(NODE_RESPONSE)
    assert message == b64(NODE_CHALLENGE) + bytes([127, 0, 0, 1]) + NODE_HW + bytes(6)
    # ...and we answer that session exactly as the reference receiver did.
    assert apple_response(NODE_CHALLENGE, "127.0.0.1", NODE_HW) == NODE_RESPONSE


def test_response_is_unpadded_base64_of_256_bytes():
    response = apple_response(NODE_CHALLENGE, "127.0.0.1", NODE_HW)
    assert "=" not in response
    assert len(b64(response)) == 256


def test_challenge_padding_is_optional():
    assert apple_response(NODE_CHALLENGE + "==", "127.0.0.1", NODE_HW) == NODE_RESPONSE
    assert apple_response(f" {NODE_CHALLENGE} ", "127.0.0.1", NODE_HW) == NODE_RESPONSE


def test_ipv6_address_is_16_bytes_without_padding():
    challenge = b64(NODE_CHALLENGE)
    response = apple_response(NODE_CHALLENGE, "fe80::1:2:3:4%eth0", NODE_HW)
    ip = bytes.fromhex("fe800000000000000001000200030004")
    assert recover(response) == challenge + ip + NODE_HW  # 38 bytes: no zero padding
    assert apple_response(NODE_CHALLENGE, "fe80::1:2:3:4", NODE_HW) == response


def test_ipv4_mapped_ipv6_signs_the_ipv4_address():
    assert apple_response(NODE_CHALLENGE, "::ffff:127.0.0.1", NODE_HW) == NODE_RESPONSE


def test_short_challenge_is_used_as_is():
    # shairport-sync copies a shorter challenge and puts the IP straight after it.
    challenge = bytes(range(1, 9))
    text = base64.b64encode(challenge).decode().rstrip("=")
    message = recover(apple_response(text, "10.0.0.2", NODE_HW))
    assert message == challenge + bytes([10, 0, 0, 2]) + NODE_HW + bytes(14)


@pytest.mark.parametrize(
    "challenge",
    [
        "",
        "   ",
        "not base64!",
        "SdX9kFJVxgKVMFof/Znj4Q=x",
        base64.b64encode(bytes(17)).decode(),  # longer than 16 bytes: SPS sends nothing
        base64.b64encode(bytes(32)).decode(),
    ],
)
def test_bad_challenge_raises_protocol_error(challenge):
    with pytest.raises(ProtocolError):
        apple_response(challenge, "127.0.0.1", NODE_HW)


def test_bad_local_arguments_raise_value_error():
    with pytest.raises(ValueError):
        apple_response(NODE_CHALLENGE, "127.0.0.1", bytes(5))
    with pytest.raises(ValueError):
        apple_response(NODE_CHALLENGE, "not an address", NODE_HW)


@settings(max_examples=20, deadline=None)
@given(challenge=st.binary(min_size=1, max_size=16), hw=st.binary(min_size=6, max_size=6))
def test_crt_signature_verifies_for_any_challenge(challenge, hw):
    text = base64.b64encode(challenge).decode().rstrip("=")
    message = recover(apple_response(text, "192.0.2.7", hw))
    expected = challenge + bytes([192, 0, 2, 7]) + hw
    assert message == expected.ljust(32, b"\x00")


@settings(max_examples=30, deadline=None)
@given(message=st.binary(min_size=32, max_size=64))
def test_libcrypto_and_python_signatures_are_the_same_bytes(message):
    # The daemon signs through libcrypto (fast); Python's pow is the fallback without it.
    signer = crypto._raw_signer()
    assert signer is not None, "libcrypto (OpenSSL 3) should be found on this machine"
    assert signer.sign(message) == crypto._python_signature(message)


# --- rsaaeskey -----------------------------------------------------------------------------


def test_unwrap_round_trip_with_public_key():
    aes_key = bytes(range(16))
    wrapped = airport_key().public_key().encrypt(aes_key, OAEP)
    assert unwrap_session_key(wrapped) == aes_key


def test_unwrap_real_rsaaeskey_from_node_capture(node_first4, test30_first4):
    key = unwrap_session_key(b64(NODE_RSAAESKEY))
    assert len(key) == 16
    # The key opens the first audio payload: a verbatim ALAC channel-pair frame with
    # has-size (1416 bytes), whose samples are the first 352 frames of test30.wav.
    payload = node_first4[0]
    plain = PacketCipher(key, b64(NODE_AESIV)).decrypt(payload)
    assert len(plain) == 1416
    bits = int.from_bytes(plain, "big")
    total = len(plain) * 8

    def field(offset: int, width: int) -> int:
        return (bits >> (total - offset - width)) & ((1 << width) - 1)

    assert field(0, 3) == 1  # channel pair element
    assert field(19, 1) == 1  # has-size
    assert field(22, 1) == 1  # escape: uncompressed samples follow
    assert field(23, 32) == 352  # sample count
    samples = [field(55 + 16 * i, 16) for i in range(352 * 2)]
    signed = [s - 0x10000 if s & 0x8000 else s for s in samples]
    expected = test30_first4[:352].astype("<i2").tobytes()
    assert struct.pack("<704h", *signed) == expected
    assert field(55 + 16 * 704, 3) == 7  # ID_END


@pytest.mark.parametrize(
    "wrapped",
    [
        b"",
        bytes(255),
        bytes(256),
        bytes(257),
        b"\xff" * 256,  # larger than the modulus
    ],
)
def test_unwrap_garbage_is_456(wrapped):
    with pytest.raises(ProtocolError) as info:
        unwrap_session_key(wrapped)
    assert info.value.status_hint == 456


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_unwrap_wrong_key_length_is_456(size):
    wrapped = airport_key().public_key().encrypt(bytes(size), OAEP)
    with pytest.raises(ProtocolError) as info:
        unwrap_session_key(wrapped)
    assert info.value.status_hint == 456


def test_unwrap_rejects_pkcs1v15_wrapping():
    wrapped = airport_key().public_key().encrypt(bytes(16), padding.PKCS1v15())
    with pytest.raises(ProtocolError):
        unwrap_session_key(wrapped)


# --- per-packet AES ------------------------------------------------------------------------


def test_t4_vector():
    plain = bytes(range(40))
    cipher = PacketCipher(T3_KEY, T3_IV)
    expected = bytes.fromhex(
        "453575b2510d8046fc27826937b3669c42273923c21a1ee65735134eb2adc795"
    ) + bytes(range(32, 40))
    assert cipher.encrypt(plain) == expected
    assert cipher.decrypt(expected) == plain


def test_iv_restarts_for_every_packet():
    cipher = PacketCipher(T3_KEY, T3_IV)
    payload = bytes(range(200)) * 7
    first = cipher.encrypt(payload)
    assert cipher.encrypt(payload) == first
    other = cipher.encrypt(b"\x55" * 1408)
    assert cipher.decrypt(first) == payload  # order of packets does not matter
    assert cipher.decrypt(other) == b"\x55" * 1408


def test_short_payload_is_all_clear():
    cipher = PacketCipher(T3_KEY, T3_IV)
    assert cipher.decrypt(b"") == b""
    assert cipher.encrypt(b"0123456789abcde") == b"0123456789abcde"
    assert cipher.decrypt(memoryview(b"xyz")) == b"xyz"


def test_cipher_accepts_bytes_like_payloads():
    cipher = PacketCipher(T3_KEY, T3_IV)
    plain = bytes(range(40))
    encrypted = cipher.encrypt(plain)
    assert cipher.decrypt(bytearray(encrypted)) == plain
    assert cipher.decrypt(memoryview(encrypted)) == plain


@pytest.mark.parametrize(("key", "iv"), [(bytes(15), bytes(16)), (bytes(16), bytes(8))])
def test_cipher_rejects_bad_key_or_iv(key, iv):
    with pytest.raises(ValueError):
        PacketCipher(key, iv)


@settings(max_examples=300)
@given(payload=st.binary(min_size=0, max_size=2000), key=st.binary(min_size=16, max_size=16))
def test_round_trip_and_clear_tail(payload, key):
    cipher = PacketCipher(key, T3_IV)
    encrypted = cipher.encrypt(payload)
    assert len(encrypted) == len(payload)
    assert cipher.decrypt(encrypted) == payload
    tail = len(payload) % 16
    assert encrypted[len(payload) - tail :] == payload[len(payload) - tail :]
    if len(payload) >= 16:
        # Whole blocks really are encrypted (a fixed point of AES-CBC here is negligible).
        assert encrypted[:16] != payload[:16]

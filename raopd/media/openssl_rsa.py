"""Raw PKCS#1 v1.5 type-1 RSA signatures through the system's libcrypto (ctypes).

Apple-Response is the challenge message itself padded and signed: no hash, no DigestInfo.
`cryptography` will not sign without a hash, so the signature used to be computed with
Python's `pow` (CRT): about 16 ms per signature on this machine and far more on a
Raspberry Pi, paid before every answer to OPTIONS, while senders such as PipeWire discard
what they rendered until RECORD is answered. OpenSSL's EVP_PKEY_sign with PKCS#1 padding and
no digest does exactly this signature in well under a millisecond.

`RawSigner.load(pem)` returns None when no usable libcrypto (OpenSSL 3) is found; the caller
then keeps the pure-Python path, which gives the same bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["RawSigner"]

_RSA_PKCS1_PADDING = 1


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        signatures: dict[str, tuple[object, list[object]]] = {
            "BIO_new_mem_buf": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]),
            "BIO_free": (ctypes.c_int, [ctypes.c_void_p]),
            "PEM_read_bio_PrivateKey": (
                ctypes.c_void_p,
                [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p],
            ),
            "EVP_PKEY_CTX_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
            "EVP_PKEY_CTX_free": (None, [ctypes.c_void_p]),
            "EVP_PKEY_sign_init": (ctypes.c_int, [ctypes.c_void_p]),
            # A function in OpenSSL 3 (a macro before): its absence means an old library.
            "EVP_PKEY_CTX_set_rsa_padding": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
            "EVP_PKEY_sign": (
                ctypes.c_int,
                [
                    ctypes.c_void_p,
                    ctypes.c_char_p,
                    ctypes.POINTER(ctypes.c_size_t),
                    ctypes.c_char_p,
                    ctypes.c_size_t,
                ],
            ),
        }
        for function, (restype, argtypes) in signatures.items():
            symbol = getattr(lib, function)
            symbol.restype = restype
            symbol.argtypes = argtypes
    except (OSError, AttributeError):
        return None
    return lib


class RawSigner:
    """One RSA private key held by libcrypto; `sign(message)` is RSA_private_encrypt."""

    __slots__ = ("_key", "_lib", "_size")

    def __init__(self, lib: ctypes.CDLL, key: int, size: int) -> None:
        self._lib = lib
        self._key = key  # EVP_PKEY*, kept for the life of the process (one AirPort key)
        self._size = size

    @classmethod
    def load(cls, pem: bytes, size: int) -> RawSigner | None:
        """The key in `pem` (modulus of `size` bytes) in libcrypto, or None if unavailable."""
        lib = _libcrypto()
        if lib is None:
            return None
        bio = lib.BIO_new_mem_buf(pem, len(pem))
        if not bio:
            return None
        try:
            key = lib.PEM_read_bio_PrivateKey(bio, None, None, None)
        finally:
            lib.BIO_free(bio)
        if not key:
            return None
        signer = cls(lib, key, size)
        try:
            signer.sign(b"\x00" * 32)  # also proves the padding mode works here
        except OSError:
            return None
        return signer

    def sign(self, message: bytes) -> bytes:
        """PKCS#1 v1.5 type-1 padding around `message` (no hash), raised to d mod n."""
        lib = self._lib
        ctx = lib.EVP_PKEY_CTX_new(self._key, None)
        if not ctx:
            raise OSError("EVP_PKEY_CTX_new failed")
        try:
            signature = ctypes.create_string_buffer(self._size)
            length = ctypes.c_size_t(self._size)
            if (
                lib.EVP_PKEY_sign_init(ctx) <= 0
                or lib.EVP_PKEY_CTX_set_rsa_padding(ctx, _RSA_PKCS1_PADDING) <= 0
                or lib.EVP_PKEY_sign(ctx, signature, ctypes.byref(length), message, len(message))
                <= 0
            ):
                raise OSError("EVP_PKEY_sign failed")
            return signature.raw[: length.value]
        finally:
            lib.EVP_PKEY_CTX_free(ctx)

"""Encryption at rest of the watchlist store's values: AES-256-GCM, from the `cryptography` package.

A sealed value is ``MAGIC | key id (8 bytes) | nonce (12 random bytes) | ciphertext | tag (16)``.
The key id (a hash of the key, not the key) says which key sealed a value, so a store opened with
another key is refused by name instead of failing blob by blob. The associated data binds each
value to its place (what it is, the identity id, the template id): a ciphertext copied into
another row fails authentication instead of decrypting as someone else's face. GCM's tag means a
wrong key or a changed byte is an error, never garbage.

The key is 32 random bytes written in base64 (``openssl rand -base64 32``), from the setting
``watchlist.encryption_key`` (the environment: FACEWATCH_WATCHLIST__ENCRYPTION_KEY) or the file
``watchlist.encryption_key_file``; either is registered with worker.secrets so no log shows it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.config import WatchlistConfig
from worker.errors import WatchlistError
from worker.secrets import register_secret

MAGIC = b"FWE1"
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES


def parse_key(text: str, where: str) -> bytes:
    """The 32-byte key written in base64 in ``text``; WatchlistError (never quoting it) otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WatchlistError(f"{where} is not base64 (make a key with: openssl rand -base64 32)") from None
    if len(key) != KEY_BYTES:
        raise WatchlistError(f"{where} holds {len(key)} bytes, AES-256 needs {KEY_BYTES} (openssl rand -base64 32)")
    return key


def read_key_file(path: Path) -> bytes:
    """The key in a file (a mounted Secret), registered as a secret; WatchlistError if unreadable or malformed."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError as exc:
        raise WatchlistError(f"encryption key file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WatchlistError(f"encryption key file {path} is not base64 text (openssl rand -base64 32)") from None
    register_secret(text.strip())
    return parse_key(text, f"encryption key file {path}")


def configured_key(config: WatchlistConfig) -> bytes | None:
    """The store's key from the settings (None: the store is not encrypted)."""
    if config.encryption_key is not None:
        return parse_key(config.encryption_key.get_secret_value(), "watchlist.encryption_key")
    if config.encryption_key_file is not None:
        return read_key_file(config.encryption_key_file)
    return None


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (hex), stored beside its ciphertexts; reveals nothing of the key."""
    return hashlib.sha256(b"facewatch watchlist key id\0" + key).digest()[:KEY_ID_BYTES].hex()


def associated_data(kind: str, identity_id: str, template_id: int | None = None) -> bytes:
    """Where a value lives: its kind (name, metadata, source, embedding), identity and template."""
    row = "" if template_id is None else str(int(template_id))
    return f"facewatch\0{kind}\0{identity_id}\0{row}".encode()


class Sealer:
    """Seals and opens the store's values with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise WatchlistError(f"an AES-256 key has {KEY_BYTES} bytes, not {len(key)}")
        self.key_id = key_id(key)
        self._prefix = MAGIC + bytes.fromhex(self.key_id)
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` encrypted under a fresh random nonce, bound to ``aad``."""
        nonce = os.urandom(NONCE_BYTES)  # 96 random bits: collisions stay negligible far beyond 2**32 values
        return self._prefix + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes, what: str) -> bytes:
        """The plaintext of ``sealed``; WatchlistError naming ``what`` if it is not ours, moved or tampered with."""
        if not isinstance(sealed, bytes) or not sealed.startswith(MAGIC) or len(sealed) < OVERHEAD:
            raise WatchlistError(f"{what} is not encrypted although the store is (written by another program?)")
        if sealed[len(MAGIC) : len(self._prefix)] != self._prefix[len(MAGIC) :]:
            other = sealed[len(MAGIC) : len(self._prefix)].hex()
            raise WatchlistError(f"{what} was encrypted with key id {other}, not the configured key {self.key_id}")
        nonce = sealed[len(self._prefix) : len(self._prefix) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[len(self._prefix) + NONCE_BYTES :], aad)
        except InvalidTag:
            raise WatchlistError(f"{what} fails authentication: tampered with, or moved from another row") from None

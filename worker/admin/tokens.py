"""Bearer tokens of the admin API: stored hashed, each with a name and scopes.

A token is 32 random bytes (``fw_`` + URL-safe base64), so its SHA-256 is enough to store: no
password-style slow hash is needed against guessing 256 bits, and the configuration (a
Kubernetes Secret, an environment variable) never holds a usable credential. A presented token is
hashed and compared with every stored hash by ``hmac.compare_digest`` (constant time, and no early
exit on the first match), so timing tells nothing about how close a guess came.

Scopes nest: ``admin`` includes ``write``, which includes ``read``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from worker.config import AdminConfig
from worker.errors import ConfigError

SCOPES = ("read", "write", "admin")
PREFIX = "fw_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Token:
    """A stored token: its name (the audit log's "who"), its scopes and the SHA-256 of its value."""

    name: str
    scopes: frozenset[str]
    digest: bytes

    def allows(self, scope: str) -> bool:
        """Whether this token may do what ``scope`` guards (a higher scope includes the lower)."""
        return any(SCOPES.index(own) >= SCOPES.index(scope) for own in self.scopes)


def digest(value: str) -> bytes:
    """The SHA-256 of a token's value."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def new_token(name: str, scopes: str) -> tuple[str, str]:
    """A fresh token for ``name``: (its value, shown once; the line to store)."""
    _parse_scopes(scopes, name)
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: 1-64 letters, digits and _ . @ -")
    value = PREFIX + secrets.token_urlsafe(32)
    return value, f"{name}:{scopes}:{digest(value).hex()}"


def _parse_scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(text.split("+"))
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not text:
        raise ConfigError(f"{where}: unknown scope {', '.join(unknown) or '(none)'}; scopes are read, write, admin")
    return scopes


def parse_tokens(text: str, origin: str) -> list[Token]:
    """Lines of 'NAME:SCOPES:SHA256' (blank lines and # comments skipped); ConfigError names the bad line."""
    tokens = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        where = f"{origin} line {number}"
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected NAME:SCOPES:SHA256 (make one with facewatch admin token NAME)")
        name, scopes, hexdigest = parts
        if not _NAME.match(name):
            raise ConfigError(f"{where}: token name {name!r}: 1-64 letters, digits and _ . @ -")
        if not _HASH.match(hexdigest):
            raise ConfigError(f"{where}: the third field must be a SHA-256 in hex (64 characters), never the token")
        tokens.append(Token(name, _parse_scopes(scopes, where), bytes.fromhex(hexdigest)))
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: a token name appears twice")
    return tokens


class TokenSet:
    """The configured tokens; the file is read again when it changes (a rotated Secret)."""

    def __init__(self, config: AdminConfig) -> None:
        self.inline = parse_tokens(config.tokens or "", "admin.tokens")
        self.path = Path(config.tokens_file) if config.tokens_file else None
        self._stamp: tuple[int, int] | None = None
        self._from_file: list[Token] = []
        self._reload()
        if not self.tokens:
            raise ConfigError(
                "the admin API has no tokens: set admin.tokens or admin.tokens_file (facewatch admin token NAME)"
            )

    @property
    def tokens(self) -> list[Token]:
        return [*self.inline, *self._from_file]

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp != self._stamp:
                self._from_file = parse_tokens(self.path.read_text(encoding="utf-8"), str(self.path))
                self._stamp = stamp
        except OSError as exc:
            raise ConfigError(f"admin.tokens_file {self.path}: {exc.strerror}") from None

    def check(self, presented: str) -> Token | None:
        """The token whose hash matches ``presented``, or None; every stored hash is compared."""
        with contextlib.suppress(ConfigError):  # a Secret being swapped: keep the tokens read last
            self._reload()
        wanted = digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.digest, wanted):
                found = token
        return found

"""API keys: create, list, revoke, and check ``Authorization: Bearer KEY`` on requests.

Keys are random (``secrets.token_urlsafe``), shown once by :func:`add_key`, and never stored: the keys
file (``settings.keys_file``, mode 0600, replaced atomically) holds a salted SHA-256 of each key with
its name, the sites it may use, its scopes and when it was made. A key looks like
``rag-<id>-<secret>``; the id finds the record without hashing every stored key, the digest
comparison is constant-time.

Scopes: ``read`` (search, ask, list documents: what every key could do before scopes existed) and
``write`` (add and delete documents over HTTP; it includes ``read``). A key entry without a
``scopes`` field (every key file written before scopes) is read-only, so upgrading never widens what
an existing key may do.

With no keys created, auth is off: :func:`rag_app.server.run.serve` then refuses any non-loopback host.
Once a running server has seen a key, it keeps requiring one even if every key is later revoked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_app.core.errors import InputError, RagError
from rag_app.core.settings import Settings

log = logging.getLogger("rag_app.server.auth")

KEY_PREFIX = "rag-"
_ID_HEX = 12  # characters of the key id (6 random bytes)
ALL_SITES = "*"
#: What a key may do on its sites; ``write`` includes ``read``.
SCOPES = ("read", "write")
#: The scopes of a key entry that names none (key files from before scopes existed): read-only.
LEGACY_SCOPES = ("read",)
_FORMAT_VERSION = 1
_NAME_MAX = 64


class KeyStoreError(RagError):
    """The keys file exists but cannot be read or parsed."""

    exit_code = 7


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key (never the key itself)."""

    name: str
    sites: tuple[str, ...]
    created_at: str
    key_id: str
    scopes: tuple[str, ...] = LEGACY_SCOPES

    def allows(self, site: str) -> bool:
        """May read ``site`` (every key reads its sites)."""
        return ALL_SITES in self.sites or site in self.sites

    def can_write(self, site: str) -> bool:
        """May add and delete documents of ``site``."""
        return "write" in self.scopes and self.allows(site)


@dataclass(frozen=True)
class _Record:
    info: KeyInfo
    salt: bytes
    digest: bytes


def _hash(salt: bytes, key: str) -> bytes:
    return hashlib.sha256(salt + key.encode("utf-8")).digest()


# ------------------------------------------------------------------------------------- the keys file


def _read_raw(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyStoreError(f"{path}: unreadable keys file ({exc}); fix it or move it away") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise KeyStoreError(f"{path}: expected an object with a 'keys' list")
    return keys


def _parse(path: Path, raw: list[dict[str, Any]]) -> list[_Record]:
    records = []
    for n, item in enumerate(raw):
        try:
            info = KeyInfo(
                name=str(item["name"]),
                sites=tuple(item["sites"]),
                created_at=str(item["created_at"]),
                key_id=str(item["key_id"]),
                scopes=_stored_scopes(item.get("scopes", list(LEGACY_SCOPES))),
            )
            records.append(_Record(info, bytes.fromhex(item["salt"]), bytes.fromhex(item["hash"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{path}: key entry {n} is malformed ({type(exc).__name__}: {exc})") from exc
    return records


def _write_raw(path: Path, keys: list[dict[str, Any]]) -> None:
    """Write the keys file atomically (temp file in the same directory, fsync, rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"version": _FORMAT_VERSION, "keys": keys}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".api_keys.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        os.chmod(path, 0o600)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_PROCESS_LOCK = threading.Lock()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the keys file across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _PROCESS_LOCK, open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


def _check_sites(settings: Settings, sites: Sequence[str]) -> tuple[str, ...]:
    sites = tuple(dict.fromkeys(s.strip() for s in sites if s and s.strip()))
    if not sites:
        raise InputError(
            f"a key needs at least one site (or '{ALL_SITES}' for all); known sites: "
            f"{', '.join(sorted(settings.sites))}"
        )
    settings.check_sites(s for s in sites if s != ALL_SITES)
    return sites


def _stored_scopes(value: Any) -> tuple[str, ...]:
    """A key entry's scopes, checked (a hand-edited file with an unknown scope is refused, not widened)."""
    if not isinstance(value, list) or not value or any(s not in SCOPES for s in value):
        raise ValueError(f"scopes must be a non-empty list of {', '.join(SCOPES)}; got {value!r}")
    return tuple(s for s in SCOPES if s in value or (s == "read" and "write" in value))


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """``scopes`` as stored (known ones, in a fixed order; ``write`` brings ``read``); an
    :class:`InputError` naming the unknown ones otherwise."""
    wanted = [s.strip().lower() for s in scopes if s and s.strip()]
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        got = f"unknown scope(s) {', '.join(map(repr, unknown))}" if unknown else "no scope given"
        raise InputError(f"{got}; use a comma-separated list of: {', '.join(SCOPES)} (write includes read)")
    return _stored_scopes(wanted)


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("a key needs a name (who or what uses it)")
    if len(name) > _NAME_MAX or any(not (c.isalnum() or c in "._-@") for c in name):
        raise InputError(f"key name {name!r}: use up to {_NAME_MAX} letters, digits and . _ - @")
    return name


def add_key(
    settings: Settings, name: str, sites: Sequence[str], scopes: Sequence[str] = LEGACY_SCOPES
) -> str:
    """Create a key named ``name`` for ``sites`` (``["*"]`` = all) with ``scopes`` (default read-only);
    return it (shown only once)."""
    name = _check_name(name)
    sites = _check_sites(settings, sites)
    stored_scopes = check_scopes(scopes)
    path = settings.keys_file
    with _locked(path):
        raw = _read_raw(path)
        existing = _parse(path, raw)
        if any(r.info.name == name for r in existing):
            raise InputError(
                f"an API key named {name!r} already exists in {path}; revoke it first "
                "(`rag-app keys revoke`) or choose another name"
            )
        used_ids = {r.info.key_id for r in existing}
        key_id = secrets.token_hex(_ID_HEX // 2)
        while key_id in used_ids:  # pragma: no cover - 48 random bits
            key_id = secrets.token_hex(_ID_HEX // 2)
        key = f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        salt = secrets.token_bytes(16)
        raw.append(
            {
                "name": name,
                "sites": list(sites),
                "scopes": list(stored_scopes),
                "key_id": key_id,
                "salt": salt.hex(),
                "hash": _hash(salt, key).hex(),
                "algorithm": "sha256(salt+key)",
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        _write_raw(path, raw)
    return key


def list_keys(settings: Settings) -> list[KeyInfo]:
    """The stored keys' names, sites and creation times, oldest first."""
    path = settings.keys_file
    return [r.info for r in _parse(path, _read_raw(path))]


def revoke_key(settings: Settings, name: str) -> KeyInfo:
    """Delete the key named ``name``; returns what it was. Unknown names are an InputError."""
    path = settings.keys_file
    with _locked(path):
        raw = _read_raw(path)
        records = _parse(path, raw)
        for n, record in enumerate(records):
            if record.info.name == name:
                del raw[n]
                _write_raw(path, raw)
                return record.info
    known = ", ".join(r.info.name for r in records) or "none"
    raise InputError(f"no API key named {name!r} in {path}; known keys: {known}")


# ------------------------------------------------------------------------------------- verification


class AuthError(Exception):
    """No valid key (401, from :class:`KeyChecker`), or a key without the scope a write needs (403)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class KeyChecker:
    """Checks bearer tokens against the keys file, reloading it when it changes on disk."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.keys_file
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, _Record] = {}
        self._required = False
        self._loaded = False
        self._dummy_salt = secrets.token_bytes(16)
        self._dummy_digest = _hash(self._dummy_salt, secrets.token_urlsafe(32))
        self.refresh()

    @property
    def required(self) -> bool:
        """Whether requests must carry a key (a key existed at some point in this process's life)."""
        self.refresh()
        return self._required

    def refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._loaded and stamp == self._stamp:
                return
            try:
                records = _parse(self.path, _read_raw(self.path)) if stamp is not None else []
            except KeyStoreError:
                if not self._loaded:
                    raise
                log.exception("keys file changed but cannot be read; keeping the keys loaded before")
                self._stamp = stamp
                return
            self._by_id = {r.info.key_id: r for r in records}
            self._stamp = stamp
            self._loaded = True
            self._required = self._required or bool(records)

    def check(self, authorization: str | None) -> KeyInfo | None:
        """The key's info if the header holds a valid key; None when auth is off. Which sites the key
        may use is the route's check (:meth:`KeyInfo.allows`: 403), once it knows the site."""
        self.refresh()
        if not self._required:
            return None
        if not authorization:
            raise AuthError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "unauthorized", "malformed Authorization header: use 'Bearer <key>'")
        record = None
        if token.startswith(KEY_PREFIX) and len(token) > len(KEY_PREFIX) + _ID_HEX + 1:
            record = self._by_id.get(token[len(KEY_PREFIX) : len(KEY_PREFIX) + _ID_HEX])
        salt, digest = (record.salt, record.digest) if record else (self._dummy_salt, self._dummy_digest)
        if not hmac.compare_digest(_hash(salt, token), digest) or record is None:
            raise AuthError(401, "unauthorized", "invalid API key")
        return record.info


def check_write(key: KeyInfo | None, site: str) -> None:
    """Refuse (403) a write to ``site`` by a key without the ``write`` scope for it. ``key`` None means
    auth is off (no keys: the server serves loopback only), where writes are allowed as reads are."""
    if key is None:
        return
    if not key.allows(site):
        raise AuthError(
            403,
            "forbidden",
            f"this API key ({key.name!r}) may not use site {site!r}; it is scoped to: {', '.join(key.sites)}",
        )
    if not key.can_write(site):
        raise AuthError(
            403,
            "forbidden",
            f"this API key ({key.name!r}) is read-only (scopes: {', '.join(key.scopes)}); adding or deleting "
            f"documents of site {site!r} needs a key with the 'write' scope: `rag-app keys add --name NAME "
            f"--sites {site} --scopes read,write`",
        )

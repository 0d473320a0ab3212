"""The keys that sign the audit trail's head and checkpoints (HMAC-SHA256).

The hash chain alone shows that events were not changed *one at a time*: whoever can write
to the database can still rewrite an event and recompute every hash after it, or cut off
the newest events and set the head record back. A MAC made with a key the database does
not hold closes both doors: a rewritten chain no longer matches the signed checkpoints, and
a head record set back carries no valid signature (unless an old one was kept to replay;
the checkpoints mirrored to the log, outside the database, catch that too).

Keys live in the app's configuration, never in the database. The first key signs; every
key verifies, so a key can be rotated by putting the new one first and keeping the old one
behind it for as long as its checkpoints are kept. A key is known by its *id*, a short
fingerprint that is stored next to each signature, so the verifier knows which key to use
and a key is never stored or logged.

Services never read Flask's config: the extension builds a :class:`Signer` and attaches it
to each database engine with :func:`use`; the audit service finds it with :func:`for_session`.
"""

from __future__ import annotations

import hashlib
import hmac
import weakref
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ..models import AuditEvent

#: Messages are prefixed so that a signature made for one purpose never verifies another.
_DOMAIN = "flask-aaa/audit/v1"

#: Deriving the signing key from ``SECRET_KEY`` (when no dedicated key is configured) keeps
#: it apart from every other use of ``SECRET_KEY``.
_DERIVE_LABEL = b"flask-aaa audit signing key v1"


def key_id(key: bytes) -> str:
    """The public fingerprint of ``key``: 16 hex characters, safe to store and show."""
    return hashlib.sha256(b"flask-aaa audit key id|" + key).hexdigest()[:16]


def derive_key(secret_key: str | bytes) -> bytes:
    """The signing key derived from an app's ``SECRET_KEY``."""
    raw = secret_key.encode("utf-8") if isinstance(secret_key, str) else secret_key
    return hmac.new(raw, _DERIVE_LABEL, hashlib.sha256).digest()


class Signer:
    """Signs with the first of ``keys`` and verifies with any of them.

    ``checkpoint_every``: a signed checkpoint is written whenever the trail passes a multiple
    of this many events (0: only on request, ``flask aaa audit checkpoint``)."""

    __slots__ = ("__weakref__", "_keys", "checkpoint_every", "key_id")

    def __init__(self, keys: Sequence[bytes], *, checkpoint_every: int = 1_000) -> None:
        if not keys:
            raise ValueError("a signer needs at least one key")
        if checkpoint_every < 0:
            raise ValueError("checkpoint_every must be 0 or more")
        self._keys = {key_id(key): key for key in keys}
        #: The id of the key that signs.
        self.key_id = key_id(keys[0])
        self.checkpoint_every = checkpoint_every

    def sign(self, kind: str, seq: int, chain_hash: str) -> str:
        """The MAC of "the trail's event ``seq`` has hash ``chain_hash``", for ``kind``
        (``head``, ``checkpoint`` or ``anchor``), made with the signing key."""
        return self._mac(self._keys[self.key_id], kind, seq, chain_hash)

    def verify(
        self, key: str | None, kind: str, seq: int, chain_hash: str, mac: str | None
    ) -> bool:
        """Whether ``mac`` was made by the key with id ``key`` for this statement. False for
        a key this signer does not hold."""
        secret = self._keys.get(key or "")
        if secret is None or not mac:
            return False
        return hmac.compare_digest(self._mac(secret, kind, seq, chain_hash), mac)

    def knows(self, key: str | None) -> bool:
        return (key or "") in self._keys

    @staticmethod
    def _mac(secret: bytes, kind: str, seq: int, chain_hash: str) -> str:
        message = f"{_DOMAIN}|{kind}|{seq}|{chain_hash}".encode("ascii")
        return hmac.new(secret, message, hashlib.sha256).hexdigest()


_signers: weakref.WeakKeyDictionary[Engine, Signer] = weakref.WeakKeyDictionary()


def use(engine: Engine, signer: Signer | None) -> None:
    """Sign the trail written through ``engine`` with ``signer`` (None: stop signing)."""
    if signer is None:
        _signers.pop(engine, None)
    else:
        _signers[engine] = signer


def for_engine(engine: Engine) -> Signer | None:
    return _signers.get(engine)


def for_session(db: Session) -> Signer | None:
    """The signer of the engine ``db`` writes to, if one is attached."""
    bind = db.get_bind(AuditEvent)
    engine = bind if isinstance(bind, Engine) else bind.engine
    return _signers.get(engine)

"""Password hashing and password rules.

Hashing is argon2id through pwdlib. Hashes made by Flask-User (bcrypt, ``$2b$``/``$2a$``)
still verify and are replaced by argon2id at the next successful login. Verification of an
unknown user runs against a dummy hash with the same parameters, so that an unknown login
and a wrong password cost the same time.

Rules follow NIST SP 800-63B: a length range counted in code points after NFKC
normalization, no composition rules, no truncation, and a refusal of common passwords and of
passwords built from the account's own name.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import threading
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from ..config import Settings
from ..errors import InvalidInput, ServiceUnavailable

_log = logging.getLogger("flask_aaa")

#: Largest range answer read (a padded answer is well under 100 KiB).
_BREACH_MAX_BYTES = 1024 * 1024

#: bcrypt only ever looked at the first 72 bytes. Legacy hashes are checked the same way
#: (that is how they were made); every new hash is argon2id over the whole password.
_BCRYPT_MAX_BYTES = 72


def normalize_password(password: str) -> str:
    """NFKC, so that the same password typed on different keyboards hashes the same."""
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (NFKC, casefolded)."""
    text = (
        importlib.resources.files("flask_aaa")
        .joinpath("data/common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(line for line in text.splitlines() if line)


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


class PasswordService:
    """Hashes and verifies passwords, and enforces the password rules, for one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        params = settings.hash_parameters
        self._argon2 = Argon2Hasher(
            time_cost=params["time_cost"],
            memory_cost=params["memory_cost"],
            parallelism=params["parallelism"],
        )
        self._hash = PasswordHash((self._argon2, BcryptHasher()))
        self._slots = threading.BoundedSemaphore(settings.password_hash_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._dummy_hash = self._argon2.hash("dummy password for unknown users")

    # -- rules --

    def check_length(self, password: str) -> None:
        """Refuse a password too long to hash; cheap, so run it before anything else."""
        if len(password) > self.settings.password_max_length:
            raise InvalidInput(
                {"password": f"Use at most {self.settings.password_max_length} characters."}
            )

    def check_policy(
        self,
        password: str,
        *,
        identifiers: Iterable[str | None] = (),
        min_length: int | None = None,
    ) -> str:
        """Validate a *new* password and return its normalized form.

        ``identifiers`` are the account's username and email: a password containing one of
        them (or the app's name) is refused."""
        self.check_length(password)
        password = normalize_password(password)
        minimum = min_length or self.settings.password_min_length
        if _has_control_characters(password):
            raise InvalidInput({"password": "Control characters are not allowed in passwords."})
        if len(password) < minimum:
            raise InvalidInput({"password": f"Use at least {minimum} characters."})
        if len(password) > self.settings.password_max_length:
            raise InvalidInput(
                {"password": f"Use at most {self.settings.password_max_length} characters."}
            )
        folded = password.casefold()
        if self.settings.password_check_common and folded.strip() in common_passwords():
            raise InvalidInput({"password": "This password is too common. Choose another."})
        if self.settings.password_breach_check and self.breached(password):
            raise InvalidInput(
                {"password": "This password appears in known data breaches. Choose another."}
            )
        words = [self.settings.app_name, *identifiers]
        for word in words:
            if not word:
                continue
            key = normalize_password(word).casefold()
            local = key.split("@", 1)[0]
            for part in {key, local}:
                if len(part) >= 4 and part in folded:
                    raise InvalidInput(
                        {"password": "Do not use your name, email or the app's name in it."}
                    )
        return password

    def breached(self, password: str) -> bool:
        """Is ``password`` in the breach corpus? k-anonymity: only the first 5 hex characters
        of its SHA-1 are sent; the answer lists every known suffix with that prefix (padded
        with decoys) and the match is made here. An unreachable service is logged and counts
        as "not breached" (``AAA_PASSWORD_BREACH_FAIL_OPEN``) or is a 503."""
        digest = hashlib.sha1(password.encode("utf-8"), usedforsecurity=False).hexdigest().upper()
        prefix, suffix = digest[:5], digest[5:]
        request = urllib.request.Request(  # noqa: S310 (the URL is the app's own setting)
            self.settings.password_breach_url + prefix,
            headers={"Add-Padding": "true", "User-Agent": "flask-aaa"},
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.settings.password_breach_timeout
            ) as answer:
                body = answer.read(_BREACH_MAX_BYTES + 1)
        except (OSError, urllib.error.URLError) as exc:
            if self.settings.password_breach_fail_open:
                _log.warning("password breach check unavailable (%s): accepted", type(exc).__name__)
                return False
            raise ServiceUnavailable(retry_after=30) from None
        if len(body) > _BREACH_MAX_BYTES:
            _log.warning("password breach check answer too large: ignored")
            return False
        for line in body.decode("ascii", "replace").splitlines():
            found, _, count = line.strip().partition(":")
            if found == suffix and count.strip() not in ("", "0"):
                return True
        return False

    # -- hashing --

    def hash(self, password: str) -> str:
        """argon2id hash of the normalized ``password``."""
        return self._on_pool(self._argon2.hash, normalize_password(password))

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """Check ``password``; return ``(ok, new_hash)`` where ``new_hash`` is set when the
        stored hash is legacy or weaker than the current preset and should be replaced.

        With ``stored_hash=None`` (unknown user, or an account without a password) the
        dummy hash is verified instead, so the cost is the same, and the answer is False."""
        self.check_length(password)
        return self._on_pool(self._verify, password, stored_hash)

    def _verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        raw, password = password, normalize_password(password)
        if stored_hash is None:
            self._argon2.verify(password, self._dummy_hash)
            return False, None
        if BcryptHasher.identify(stored_hash):
            return self._verify_bcrypt(raw, password, stored_hash)
        try:
            return self._hash.verify_and_update(password, stored_hash)
        except UnknownHashError:
            self._argon2.verify(password, self._dummy_hash)
            return False, None

    def _verify_bcrypt(self, raw: str, password: str, stored_hash: str) -> tuple[bool, str | None]:
        # Flask-User hashed the password as typed (no normalization); the argon2id hash that
        # replaces it is made from the normalized form, like every new hash.
        candidate = raw.encode()[:_BCRYPT_MAX_BYTES]
        try:
            ok = BcryptHasher().verify(candidate, stored_hash)
        except ValueError:
            return False, None
        return ok, (self._argon2.hash(password) if ok else None)

    def needs_rehash(self, stored_hash: str) -> bool:
        return not Argon2Hasher.identify(stored_hash) or self._argon2.check_needs_rehash(
            stored_hash
        )

    def _on_pool(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run ``work`` on one of ``AAA_PASSWORD_HASH_CONCURRENCY`` hashing threads, after
        waiting at most ``AAA_PASSWORD_HASH_WAIT`` for a free slot (else 503).

        A fixed set of threads bounds memory, not only time: each argon2 hash allocates
        ``memory_cost`` KiB in its thread's malloc arena, and glibc keeps a freed block in
        that arena for reuse. Hashing on the request threads would leave such a block behind
        in every thread that ever hashed (50 concurrent sign-ins: 50 arenas); on the pool
        there are as many as there are slots."""
        with _Slot(self._slots, self.settings.password_hash_wait):
            return self._executor().submit(work, *args).result()

    def _executor(self) -> ThreadPoolExecutor:
        # One pool per process: a pool inherited through fork (gunicorn's preload) has no
        # threads in the child.
        if self._pool is None or self._pool_pid != os.getpid():
            with _POOL_LOCK:
                if self._pool is None or self._pool_pid != os.getpid():
                    self._pool = ThreadPoolExecutor(
                        max_workers=self.settings.password_hash_concurrency,
                        thread_name_prefix="aaa-hash",
                    )
                    self._pool_pid = os.getpid()
        return self._pool


_T = TypeVar("_T")
_POOL_LOCK = threading.Lock()


class _Slot:
    """A hashing slot: waits briefly, then answers 503 rather than queueing without bound."""

    def __init__(self, semaphore: threading.BoundedSemaphore, wait: float) -> None:
        self._semaphore = semaphore
        self._wait = wait

    def __enter__(self) -> None:
        if not self._semaphore.acquire(timeout=self._wait):
            raise ServiceUnavailable("Too many sign-ins at once. Try again shortly.", retry_after=2)

    def __exit__(self, *exc: object) -> None:
        self._semaphore.release()

"""One-time codes, without state: TOTP secrets, ``otpauth://`` URIs and their QR codes,
matching a typed code to a time step, and the format and keyed hashing of recovery codes.

Nothing here touches the database; :mod:`.mfa` keeps the account's state (the last step
used, the recovery codes, the audit trail) and calls these.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Sequence

import pyotp
import segno

#: Seconds per TOTP time step (what every authenticator app uses).
STEP_SECONDS = 30
#: Digits of a TOTP code.
DIGITS = 6
#: Steps of drift accepted either side of the server's current step.
VALID_WINDOW = 1
#: Characters of a recovery code (Crockford's base32: no i, l, o or u), 5 bits each.
RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
#: Characters per recovery code: 10 x 5 = 50 bits, shown as ``xxxxx-xxxxx``.
RECOVERY_CODE_LENGTH = 10

_TOTP_RE = re.compile(rf"[0-9]{{{DIGITS}}}")
_SECRET_RE = re.compile(r"[A-Z2-7]{32,64}")
_RECOVERY_RE = re.compile(rf"[{RECOVERY_ALPHABET}]{{{RECOVERY_CODE_LENGTH}}}")
#: What people mistype in Crockford's base32, read as what they meant.
_CROCKFORD_FIXES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_SEPARATORS = re.compile(r"[\s\-_.]+")
_KEY_LABEL = b"flask-aaa/mfa/recovery-codes/v1"

#: ``method`` values of a completed second step (``auth.login.succeeded`` details ``mfa``).
TOTP = "totp"
RECOVERY = "recovery_code"


# -- secrets, provisioning and the QR code --


def new_secret() -> str:
    """A new TOTP secret: 160 random bits (RFC 4226's recommendation) in base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def provisioning_uri(secret: str, account_name: str, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps import (SHA-1, 6 digits, 30 s)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account_name, issuer_name=issuer
    )


def qr_svg(uri: str, *, title: str = "QR code for your authenticator app") -> str:
    """``uri`` as an inline ``<svg>`` element (no script, no style attribute), for HTML."""
    svg: str = segno.make(uri, error="m").svg_inline(
        scale=5, border=4, dark="#000", light="#fff", svgclass="aaa-qr", lineclass=None, title=title
    )
    return svg.replace("<svg ", '<svg role="img" ', 1)


def format_secret(secret: str) -> str:
    """The secret in groups of four characters, for typing it by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def is_secret(value: object) -> bool:
    return isinstance(value, str) and _SECRET_RE.fullmatch(value) is not None


# -- codes --


def normalize_totp(code: str) -> str | None:
    """The six ASCII digits of a typed code (spaces and full-width digits allowed), or None."""
    cleaned = _SEPARATORS.sub("", unicodedata.normalize("NFKC", code[:64]))
    return cleaned if _TOTP_RE.fullmatch(cleaned) else None


def normalize_recovery_code(code: str) -> str | None:
    """A typed recovery code in canonical form (case, dashes and spaces ignored), or None."""
    cleaned = _SEPARATORS.sub("", unicodedata.normalize("NFKC", code[:64]).casefold())
    cleaned = cleaned.translate(_CROCKFORD_FIXES)
    return cleaned if _RECOVERY_RE.fullmatch(cleaned) else None


def current_step(now: dt.datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step within ±:data:`VALID_WINDOW` of ``now`` whose code is ``code``, or None.
    Every candidate is compared (in constant time), so timing tells nothing either."""
    normalized = normalize_totp(code)
    if normalized is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    base = current_step(now)
    found = None
    for step in range(base - VALID_WINDOW, base + VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), normalized):
            found = step
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryCodeHasher:
    """Keyed hashing of recovery codes. The first key hashes new codes; every key is tried
    when one is checked, so codes survive a ``SECRET_KEY`` rotation (old key in
    ``SECRET_KEY_FALLBACKS``)."""

    keys: tuple[bytes, ...] = dataclasses.field(repr=False)

    @classmethod
    def from_secret_keys(
        cls, secret_key: str | bytes | None, fallbacks: Sequence[str | bytes] = ()
    ) -> RecoveryCodeHasher:
        if not secret_key:
            raise RuntimeError("recovery codes need the app's SECRET_KEY")
        raw = [secret_key, *fallbacks]
        keys = tuple(
            hmac.new(k.encode() if isinstance(k, str) else k, _KEY_LABEL, hashlib.sha256).digest()
            for k in raw
            if k
        )
        return cls(keys)

    def digest(self, code: str) -> str:
        return self._digest(self.keys[0], code)

    def digests(self, code: str) -> list[str]:
        return [self._digest(key, code) for key in self.keys]

    @staticmethod
    def _digest(key: bytes, code: str) -> str:
        return hmac.new(key, code.encode("ascii"), hashlib.sha256).hexdigest()


def new_recovery_code() -> str:
    return "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))


def display_recovery_code(code: str) -> str:
    half = RECOVERY_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def code_method(code: str) -> str:
    """Which kind of code was typed: six digits are an authenticator code, anything else is
    taken for a recovery code."""
    return TOTP if normalize_totp(code) is not None else RECOVERY

"""PasswordService: the NIST rules, argon2id hashing, legacy bcrypt, and the hashing slots."""

from __future__ import annotations

import importlib.resources
import os
import re
import threading
import unicodedata
from unittest import mock

import bcrypt
import pytest

from flask_aaa.config import Settings
from flask_aaa.db import writing
from flask_aaa.errors import AuthenticationFailed, InvalidInput, ServiceUnavailable
from flask_aaa.services import accounts
from flask_aaa.services.actors import RequestFacts
from flask_aaa.services.passwords import (
    PasswordService,
    common_passwords,
    normalize_password,
)
from tests.conftest import PASSWORD, SYSTEM

#: 15 characters of no particular meaning; slices and repeats of it make other lengths.
BASE = "mq7vzr2kx9tlw4p"
EMOJI = "\U0001f512\U0001f511\U0001f30d\U0001f680"  # 4 code points, 16 UTF-8 bytes

ARGON2_RE = re.compile(
    r"^\$argon2id\$v=19\$m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$"
)


def make_settings(**config: object) -> Settings:
    values = {"AAA_PASSWORD_HASH_PRESET": "fast", **config}
    return Settings.from_config(
        {f"AAA_{k}" if not k.startswith("AAA_") else k: v for k, v in values.items()},
        debug=False,
        testing=True,
    )


def of_length(n: int) -> str:
    return (BASE * (n // len(BASE) + 1))[:n]


def refused(passwords: PasswordService, password: str, **kwargs: object) -> str:
    with pytest.raises(InvalidInput) as info:
        passwords.check_policy(password, **kwargs)  # type: ignore[arg-type]
    assert set(info.value.errors) == {"password"}
    return info.value.errors["password"]


def legacy_bcrypt(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()


# -- A09: length --


@pytest.mark.parametrize("length", [7, 14])
def test_A09_short_passwords_refused_at_min_15(passwords, length):
    assert "at least 15" in refused(passwords, of_length(length))


@pytest.mark.parametrize("length", [15, 64, 128, 256])
def test_A09_long_enough_passwords_accepted(passwords, length):
    password = of_length(length)
    assert passwords.check_policy(password) == password


def test_A09_min_length_of_8_when_configured(passwords):
    """The ``min_length`` override (e.g. with a second factor) lets 8 characters through."""
    assert passwords.check_policy(of_length(8), min_length=8) == of_length(8)
    refused(passwords, of_length(7), min_length=8)


def test_A09_emoji_counted_as_code_points(passwords):
    """4 emoji are 4 characters: refused at a minimum of 8 (as bytes they would be 16, in
    UTF-16 units 8), and 8 emoji are accepted."""
    assert "at least 8" in refused(passwords, EMOJI, min_length=8)
    assert passwords.check_policy(EMOJI * 2, min_length=8) == EMOJI * 2
    assert passwords.check_policy(EMOJI * 4) == EMOJI * 4  # 16 code points >= 15


def test_A09_maximum_counts_code_points_not_bytes(passwords):
    """256 emoji are 1024 UTF-8 bytes but 256 code points: allowed at the default maximum."""
    password = EMOJI * 64
    assert passwords.check_policy(password) == password


def test_A09_length_counted_after_nfkc(passwords):
    """'ﬁ' (one code point) becomes 'fi' under NFKC: the normalized length is what counts."""
    password = "\ufb01" * 8  # 8 code points typed, 16 after NFKC
    assert passwords.check_policy(password) == "fi" * 8


def test_A09_nfkc_expansion_beyond_the_maximum_refused(passwords):
    """U+FDFA expands to 18 code points under NFKC; 20 of them exceed 256 once normalized."""
    password = "\ufdfa" * 20
    assert len(password) <= 256 < len(normalize_password(password))
    assert "at most 256" in refused(passwords, password)


# -- A10: no truncation --


def test_A10_no_truncation(passwords):
    password = of_length(100)
    stored = passwords.hash(password)
    assert passwords.verify(password, stored) == (True, None)
    assert passwords.verify(password[:72], stored)[0] is False
    assert passwords.verify(password[:-1], stored)[0] is False


def test_A10_no_truncation_of_multibyte_passwords(passwords):
    """72 bytes of a password of 3-byte characters are 24 characters: no byte limit either."""
    password = "\u20ac" * 40  # 120 UTF-8 bytes
    stored = passwords.hash(password)
    assert passwords.verify(password, stored)[0] is True
    assert passwords.verify("\u20ac" * 24, stored)[0] is False


# -- A11: composition and blocklist --


@pytest.mark.parametrize(
    "password",
    ["purple monkey dishwasher river", "lanterns drift over quiet harbors", PASSWORD],
)
def test_A11_lowercase_passphrase_accepted(passwords, password):
    """No composition rules: no digit, capital or symbol is asked for."""
    assert password not in common_passwords()
    assert passwords.check_policy(password) == password


def top_common(n: int) -> list[str]:
    text = (
        importlib.resources.files("flask_aaa")
        .joinpath("data/common-passwords.txt")
        .read_text(encoding="utf-8")
    )
    return [line for line in text.splitlines() if line][:n]


def test_A11_top_common_passwords_refused(passwords):
    """The top 3000 entries of the shipped list (in its rank order, each also returned by
    ``common_passwords()``) are refused; with the minimum lowered to 8 so that the blocklist,
    not the length rule, is what refuses them."""
    top = top_common(3000)
    assert len(top) == 3000
    listed = common_passwords()
    checked = 0
    for entry in top:
        assert entry in listed
        refused(passwords, entry)  # by length or by the list, at the default policy
        if len(entry) >= 8:
            assert "too common" in refused(passwords, entry, min_length=8), entry
            checked += 1
    assert checked > 500


def test_A11_long_common_passwords_refused_at_default_policy(passwords):
    """Entries of 15+ characters pass the length rule and must be caught by the list."""
    long_entries = [p for p in common_passwords() if len(p) >= 15]
    assert long_entries
    for entry in long_entries:
        assert "too common" in refused(passwords, entry), entry


def test_A11_common_check_ignores_case_and_width(passwords):
    entry = next(p for p in sorted(common_passwords()) if len(p) >= 15 and p.isascii())
    assert "too common" in refused(passwords, entry.upper())
    full_width = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in entry)
    assert "too common" in refused(passwords, full_width)


def test_A11_common_check_can_be_switched_off():
    passwords = PasswordService(make_settings(PASSWORD_CHECK_COMMON=False))
    entry = next(p for p in common_passwords() if len(p) >= 15)
    assert passwords.check_policy(entry) == entry


@pytest.mark.parametrize(
    "password",
    [
        "my flask-aaa password 2024",
        "MY-FLASK-AAA-PASSWORD-2024",
    ],
)
def test_A11_app_name_refused(passwords, password):
    assert "name" in refused(passwords, password)


def test_A11_custom_app_name_refused():
    passwords = PasswordService(make_settings(APP_NAME="Notebook"))
    refused(passwords, "open-the-NOTEBOOK-river-77")


@pytest.mark.parametrize(
    "password",
    [
        "margaret-loves-kayaking-42",
        "MARGARET-LOVES-KAYAKING-42",
        "kayak.fan@example.org-is-me",
        "i-am-the-real-kayak.fan-99",
    ],
)
def test_A11_username_or_email_refused(passwords, password):
    refused(passwords, password, identifiers=["Margaret", "kayak.fan@example.org"])


def test_A11_short_identifiers_do_not_block_everything(passwords):
    """A 3-letter username is too short to be looked for (it would refuse half of English)."""
    password = "the-bob-cat-rides-north"
    assert passwords.check_policy(password, identifiers=["bob", None, ""]) == password


# -- A13: Unicode normalization --


def test_A13_nfc_nfd_and_nfkc_forms_verify(passwords):
    """Registered in NFC; NFD (decomposed accents) and NFKC (ligature and full-width digits
    folded) both verify, because NFKC is applied before hashing."""
    typed = "caf\u00e9-\ufb01nale-harbor-\uff14\uff12"  # café, fi ligature, full-width 42
    nfc = unicodedata.normalize("NFC", typed)
    nfd = unicodedata.normalize("NFD", typed)
    nfkc = unicodedata.normalize("NFKC", typed)
    assert len({nfc, nfd, nfkc}) == 3
    stored = passwords.hash(passwords.check_policy(nfc))
    for form in (nfc, nfd, nfkc):
        assert passwords.verify(form, stored)[0] is True, ascii(form)
    assert passwords.verify("cafe-finale-harbor-42", stored)[0] is False


def test_A13_register_nfc_login_nfd_through_accounts(session, settings, passwords):
    nfc = unicodedata.normalize("NFC", "\u00e9l\u00e8ve-tr\u00e8s-s\u00fbr-du-ch\u00e2teau")
    with writing():
        accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username="eleve",
            email="eleve@example.org",
            password=nfc,
        )
        session.commit()
    facts = RequestFacts(ip="192.0.2.1")
    for form in ("NFD", "NFKC", "NFKD"):
        with writing():
            user = accounts.authenticate(
                session,
                settings=settings,
                passwords=passwords,
                login="eleve",
                password=unicodedata.normalize(form, nfc),
                facts=facts,
            )
            session.commit()
        assert user.username == "eleve"


# -- A14: NUL and control characters --


@pytest.mark.parametrize(
    "password",
    [
        "pw\x00AAAAAAAAAAAAAAAA",
        "pw\x01AAAAAAAAAAAAAAAA",
        "pw\r\nAAAAAAAAAAAAAAAA",
        "pw\x7fAAAAAAAAAAAAAAAA",
        "pw\x1bAAAAAAAAAAAAAAAA",
        "pw\ud800AAAAAAAAAAAAAAAA",
    ],
)
def test_A14_control_characters_refused_by_policy(passwords, password):
    assert "Control characters" in refused(passwords, password)


def test_A14_no_truncation_at_nul_on_verify(passwords):
    """A hash made of a password with NUL in it (e.g. a legacy import) is not a hash of
    ``pw``: the characters after NUL count."""
    stored = passwords.hash("pw\x00AAAAAAAAAAAAAAAA")
    assert passwords.verify("pw\x00AAAAAAAAAAAAAAAA", stored)[0] is True
    assert passwords.verify("pw\x00BBBBBBBBBBBBBBBB", stored)[0] is False
    assert passwords.verify("pw", stored)[0] is False


def test_A14_no_truncation_at_nul_for_legacy_bcrypt(passwords):
    """The C bcrypt stops at NUL; the ``bcrypt`` module refuses NUL. Either way ``pw\\0B``
    must not open an account whose legacy hash is of ``pw\\0A``."""
    stored = legacy_bcrypt(b"plain-legacy-password")
    assert passwords.verify("plain-legacy-password\x00anything", stored)[0] is False


# -- A15: over-long passwords --


@pytest.fixture
def spied(passwords):
    """The service with its argon2 hasher's hash and verify wrapped by mocks."""
    argon2 = passwords._argon2
    with (
        mock.patch.object(argon2, "hash", wraps=argon2.hash) as hash_,
        mock.patch.object(argon2, "verify", wraps=argon2.verify) as verify,
    ):
        yield passwords, hash_, verify


@pytest.mark.parametrize("size", [257, 10_000, 1_000_000])
def test_A15_over_long_password_refused_before_hashing(spied, size):
    passwords, hash_, verify = spied
    huge = "a" * size
    for call in (
        lambda: passwords.check_length(huge),
        lambda: passwords.check_policy(huge),
        lambda: passwords.verify(huge, None),
        lambda: passwords.verify(huge, passwords._dummy_hash),
    ):
        with pytest.raises(InvalidInput) as info:
            call()
        assert "password" in info.value.errors
    hash_.assert_not_called()
    verify.assert_not_called()


def test_A15_over_long_password_refused_by_authenticate_before_hashing(spied, session, settings):
    passwords, hash_, verify = spied
    with pytest.raises(InvalidInput):
        accounts.authenticate(
            session,
            settings=settings,
            passwords=passwords,
            login="nobody",
            password="x" * 1_000_000,
            facts=RequestFacts(),
        )
    hash_.assert_not_called()
    verify.assert_not_called()


def test_A15_over_long_password_refused_by_registration_before_hashing(spied, session, settings):
    passwords, hash_, verify = spied
    with writing(), pytest.raises(InvalidInput) as info:
        accounts.register(
            session,
            settings=settings,
            passwords=passwords,
            username="bigpw",
            email="bigpw@example.org",
            password="x" * 1_000_000,
            facts=RequestFacts(),
        )
    assert "password" in info.value.errors
    hash_.assert_not_called()
    verify.assert_not_called()


def test_A15_maximum_is_inclusive(passwords):
    passwords.check_length("a" * 256)


# -- A16: hash parameters and legacy upgrade --


@pytest.fixture(scope="module")
def owasp_passwords() -> PasswordService:
    """The default preset (one service for the module: each owasp hash costs ~19 MiB)."""
    return PasswordService(Settings.from_config({}, debug=False, testing=True))


def test_A16_default_hash_is_argon2id_at_owasp_cost(owasp_passwords):
    stored = owasp_passwords.hash(PASSWORD)
    match = ARGON2_RE.match(stored)
    assert match, stored
    assert int(match["m"]) >= 19_456
    assert int(match["t"]) >= 2
    assert int(match["p"]) >= 1
    assert owasp_passwords.verify(PASSWORD, stored) == (True, None)
    assert owasp_passwords.needs_rehash(stored) is False


def test_A16_hashes_are_salted(passwords):
    assert passwords.hash(PASSWORD) != passwords.hash(PASSWORD)


def test_A16_legacy_bcrypt_verifies_and_is_upgraded(passwords):
    stored = legacy_bcrypt(PASSWORD.encode())
    assert stored.startswith("$2b$")
    ok, new_hash = passwords.verify(PASSWORD, stored)
    assert ok is True
    assert new_hash is not None and new_hash.startswith("$argon2id$")
    assert passwords.verify(PASSWORD, new_hash) == (True, None)
    assert passwords.needs_rehash(stored) is True


def test_A16_legacy_2a_bcrypt_verifies(passwords):
    stored = "$2a$" + legacy_bcrypt(PASSWORD.encode())[4:]
    assert passwords.verify(PASSWORD, stored)[0] is True


def test_A16_wrong_password_against_bcrypt_gives_no_new_hash(passwords):
    stored = legacy_bcrypt(PASSWORD.encode())
    assert passwords.verify(PASSWORD + "x", stored) == (False, None)


def test_A16_bcrypt_of_a_password_over_72_bytes_still_verifies(passwords):
    """Old bcrypt libraries hashed only the first 72 bytes (the ``bcrypt`` module now refuses
    longer input, so the legacy hash is made from those 72 bytes). The full password still
    verifies against it, and the replacement argon2id hash covers all 100 characters."""
    password = of_length(100)
    stored = legacy_bcrypt(password.encode()[:72])
    ok, new_hash = passwords.verify(password, stored)
    assert ok is True
    assert new_hash is not None and new_hash.startswith("$argon2id$")
    assert passwords.verify(password, new_hash)[0] is True
    assert passwords.verify(password[:72], new_hash)[0] is False


def test_A16_legacy_bcrypt_of_an_unnormalized_password_verifies(passwords):
    """Flask-User hashed the password as typed: a legacy hash of a password with a ligature
    and full-width digits verifies with what the user types, and the argon2id hash replacing
    it is of the NFKC form (so the NFKC form verifies from then on)."""
    typed = "\ufb01ddle-harbor-violin-\uff14\uff12"
    stored = legacy_bcrypt(typed.encode())
    ok, new_hash = passwords.verify(typed, stored)
    assert ok is True
    assert new_hash is not None
    assert passwords.verify(normalize_password(typed), new_hash)[0] is True
    assert passwords.verify(typed, new_hash)[0] is True


def test_A16_weaker_argon2_hash_is_upgraded(passwords, owasp_passwords):
    weak = passwords.hash(PASSWORD)  # the 'fast' preset
    ok, new_hash = owasp_passwords.verify(PASSWORD, weak)
    assert ok is True
    assert new_hash is not None
    assert int(ARGON2_RE.match(new_hash)["m"]) >= 19_456  # type: ignore[index]


@pytest.mark.parametrize(
    "stored", ["", "plaintext-password", "$pbkdf2-sha256$29000$abc$def", "$2b$04$short"]
)
def test_unknown_hash_formats_fail_closed(spied, stored):
    """Garbage in the hash column verifies as False, still at the cost of one argon2 verify."""
    passwords, _, verify = spied
    assert passwords.verify("plaintext-password", stored) == (False, None)
    assert verify.call_count == 1


# -- A02: the dummy hash --


def test_A02_unknown_user_costs_exactly_one_argon2_verify(spied, session, settings):
    passwords, hash_, verify = spied
    with pytest.raises(AuthenticationFailed):
        accounts.authenticate(
            session,
            settings=settings,
            passwords=passwords,
            login="nobody-here",
            password=PASSWORD,
            facts=RequestFacts(),
        )
    assert verify.call_count == 1
    assert verify.call_args.args[1] == passwords._dummy_hash
    hash_.assert_not_called()


def test_A02_known_user_wrong_password_costs_one_argon2_verify(session, settings, passwords):
    with writing():
        accounts.create_user(
            session,
            actor=SYSTEM,
            settings=settings,
            passwords=passwords,
            username="known",
            email="known@example.org",
            password=PASSWORD,
        )
        session.commit()
    argon2 = passwords._argon2
    with mock.patch.object(argon2, "verify", wraps=argon2.verify) as verify:
        with pytest.raises(AuthenticationFailed):
            accounts.authenticate(
                session,
                settings=settings,
                passwords=passwords,
                login="known",
                password=PASSWORD + "!",
                facts=RequestFacts(),
            )
        assert verify.call_count == 1
        assert verify.call_args.args[1] != passwords._dummy_hash


def test_A02_dummy_hash_has_the_preset_parameters(owasp_passwords):
    dummy = ARGON2_RE.match(owasp_passwords._dummy_hash)
    real = ARGON2_RE.match(owasp_passwords.hash(PASSWORD))
    assert dummy and real
    assert (dummy["m"], dummy["t"], dummy["p"]) == (real["m"], real["t"], real["p"])


# -- A03: bounded hashing --


@pytest.fixture
def one_slot() -> PasswordService:
    return PasswordService(make_settings(PASSWORD_HASH_CONCURRENCY=1, PASSWORD_HASH_WAIT=0.05))


def hold_slot(passwords: PasswordService) -> tuple[threading.Thread, threading.Event]:
    """Start a thread whose hash blocks inside the only slot until the returned event is set."""
    entered, release = threading.Event(), threading.Event()
    real_hash = passwords._argon2.hash

    def slow_hash(password, **kwargs):
        entered.set()
        assert release.wait(10)
        return real_hash(password, **kwargs)

    patcher = mock.patch.object(passwords._argon2, "hash", side_effect=slow_hash)
    patcher.start()
    thread = threading.Thread(target=passwords.hash, args=(PASSWORD,), daemon=True)
    thread.start()
    assert entered.wait(10)
    patcher.stop()  # the held call keeps its reference; later calls use the real hasher
    return thread, release


def test_A03_second_hash_refused_while_the_only_slot_is_held(one_slot):
    thread, release = hold_slot(one_slot)
    try:
        with pytest.raises(ServiceUnavailable) as info:
            one_slot.hash(PASSWORD)
        assert info.value.status == 503
        assert info.value.retry_after > 0
        with pytest.raises(ServiceUnavailable):
            one_slot.verify(PASSWORD, None)
    finally:
        release.set()
        thread.join(10)
    assert not thread.is_alive()
    assert one_slot.verify(PASSWORD, one_slot.hash(PASSWORD))[0] is True


def test_A03_authenticate_answers_503_when_no_slot_frees(one_slot, session):
    thread, release = hold_slot(one_slot)
    try:
        with pytest.raises(ServiceUnavailable):
            accounts.authenticate(
                session,
                settings=one_slot.settings,
                passwords=one_slot,
                login="anyone",
                password=PASSWORD,
                facts=RequestFacts(),
            )
    finally:
        release.set()
        thread.join(10)


def test_A03_slot_is_returned_when_hashing_fails(one_slot):
    with (
        mock.patch.object(one_slot._argon2, "hash", side_effect=MemoryError),
        pytest.raises(MemoryError),
    ):
        one_slot.hash(PASSWORD)
    assert one_slot.hash(PASSWORD).startswith("$argon2id$")


def test_normalize_password_is_nfkc():
    assert normalize_password("\uff21\ufb01") == "Afi"


def test_A03_hashing_runs_on_a_fixed_set_of_threads():
    """Memory, not only time, is bounded: argon2 leaves a freed ``memory_cost`` block in the
    malloc arena of each thread that hashed, so hashes run on as many threads as slots,
    however many request threads sign in at once."""
    passwords = PasswordService(make_settings(PASSWORD_HASH_CONCURRENCY=2, PASSWORD_HASH_WAIT=10))
    seen: set[str] = set()
    real_verify = passwords._verify

    def spy(*args):
        seen.add(threading.current_thread().name)
        return real_verify(*args)

    stored = passwords.hash(PASSWORD)
    with mock.patch.object(passwords, "_verify", side_effect=spy):
        callers = [
            threading.Thread(target=passwords.verify, args=(PASSWORD, stored)) for _ in range(12)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(30)
    assert 1 <= len(seen) <= 2
    assert all(name.startswith("aaa-hash") for name in seen)


def test_A03_a_forked_process_gets_its_own_hashing_threads(monkeypatch):
    """A pool inherited through fork has no threads in the child: a new one is made there."""
    passwords = PasswordService(make_settings(PASSWORD_HASH_CONCURRENCY=1))
    passwords.hash(PASSWORD)
    parent_pool = passwords._pool
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert passwords.verify(PASSWORD, passwords.hash(PASSWORD))[0] is True
    assert passwords._pool is not parent_pool

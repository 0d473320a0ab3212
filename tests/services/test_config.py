"""Settings.from_config: unknown keys, types, presets, and the SECRET_KEY check (C01)."""

from __future__ import annotations

import pytest

from flask_aaa.config import HASH_PRESETS, Settings, check_secret_key
from flask_aaa.errors import ConfigurationError

#: A key that passes the production check: 64 hex characters from secrets.token_hex(32).
GOOD_KEY = "3f9c1e7a5b2d48c6a0e1f7b3d9c5a2e84b6f0d1c7a9e3b5f2d8c4a6e0b1f7d3c"


def production(config: dict[str, object]) -> Settings:
    return Settings.from_config({"SECRET_KEY": GOOD_KEY, **config}, debug=False, testing=False)


def test_defaults_build_in_production_with_a_good_key():
    settings = production({})
    assert settings.password_hash_preset == "owasp"
    assert settings.password_min_length == 15
    assert settings.secure_cookies is True
    assert settings.session_cookie_name == "__Host-aaa_session"


def test_secure_cookies_default_off_in_testing_and_debug():
    assert Settings.from_config({}, debug=False, testing=True).secure_cookies is False
    assert Settings.from_config({}, debug=True, testing=False).secure_cookies is False


def test_unknown_key_is_refused_with_a_hint():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_config({"AAA_PAGE_SIZES": 10}, debug=False, testing=True)
    assert "AAA_PAGE_SIZES" in info.value.message
    assert "did you mean AAA_PAGE_SIZE?" in info.value.message


def test_unknown_key_without_a_close_match_has_no_hint():
    with pytest.raises(ConfigurationError) as info:
        Settings.from_config({"AAA_ZZZZZZZZZZZZZZZ": 1}, debug=False, testing=True)
    assert "unknown setting AAA_ZZZZZZZZZZZZZZZ" in info.value.message
    assert "did you mean" not in info.value.message


def test_keys_without_the_prefix_are_ignored():
    settings = Settings.from_config({"PAGE_SIZES": 1, "aaa_x": 2}, debug=False, testing=True)
    assert settings.page_size == 50


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AAA_PAGE_SIZE", "50"),
        ("AAA_PAGE_SIZE", 50.0),
        ("AAA_PAGE_SIZE", True),
        ("AAA_ENABLE_EMAIL", 1),
        ("AAA_ENABLE_EMAIL", "yes"),
        ("AAA_PASSWORD_HASH_WAIT", "2"),
        ("AAA_PASSWORD_HASH_WAIT", False),
        ("AAA_APP_NAME", None),
        ("AAA_SECURE_COOKIES", "yes"),
        ("AAA_DEFAULT_ROLE", 3),
        ("AAA_HOME_ENDPOINT", ["index"]),
    ],
)
def test_wrong_types_are_refused(key, value):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_config({key: value}, debug=False, testing=True)
    assert key in info.value.message


def test_int_is_accepted_for_a_float_setting():
    settings = Settings.from_config({"AAA_PASSWORD_HASH_WAIT": 1}, debug=False, testing=True)
    assert settings.password_hash_wait == 1


def test_optional_settings_accept_none_and_strings():
    settings = Settings.from_config(
        {"AAA_DEFAULT_ROLE": "member", "AAA_HOME_ENDPOINT": None, "AAA_SECURE_COOKIES": True},
        debug=False,
        testing=True,
    )
    assert settings.default_role == "member"
    assert settings.home_endpoint is None
    assert settings.secure_cookies is True


@pytest.mark.parametrize(("debug", "testing"), [(False, False), (True, False)])
def test_fast_preset_is_refused_outside_testing(debug, testing):
    with pytest.raises(ConfigurationError, match="only allowed in TESTING"):
        Settings.from_config(
            {"SECRET_KEY": GOOD_KEY, "AAA_PASSWORD_HASH_PRESET": "fast"},
            debug=debug,
            testing=testing,
        )


def test_fast_preset_is_allowed_in_testing():
    settings = Settings.from_config({"AAA_PASSWORD_HASH_PRESET": "fast"}, debug=False, testing=True)
    assert settings.hash_parameters == HASH_PRESETS["fast"]


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigurationError, match="PASSWORD_HASH_PRESET"):
        production({"AAA_PASSWORD_HASH_PRESET": "md5"})


@pytest.mark.parametrize("preset", ["owasp", "strong"])
def test_A16_production_presets_meet_the_owasp_minimum(preset):
    params = production({"AAA_PASSWORD_HASH_PRESET": preset}).hash_parameters
    assert params["memory_cost"] >= 19_456
    assert params["time_cost"] >= 2
    assert params["parallelism"] >= 1


def test_hash_parameters_is_a_copy():
    settings = production({})
    settings.hash_parameters["memory_cost"] = 1
    assert settings.hash_parameters["memory_cost"] == HASH_PRESETS["owasp"]["memory_cost"]


@pytest.mark.parametrize(
    "config",
    [
        {"AAA_ENABLE_USERNAME": False, "AAA_ENABLE_EMAIL": False},
        {"AAA_PASSWORD_MIN_LENGTH": 7},
        {"AAA_PASSWORD_MIN_LENGTH": 65},
        {"AAA_PASSWORD_MAX_LENGTH": 63},
        {"AAA_PASSWORD_MIN_LENGTH": 64, "AAA_PASSWORD_MAX_LENGTH": 63},
        {"AAA_PASSWORD_HASH_CONCURRENCY": 0},
        {"AAA_SESSION_IDLE_TIMEOUT": 0},
        {"AAA_PAGE_SIZE": 0},
        {"AAA_SESSION_IDLE_TIMEOUT": 600, "AAA_SESSION_ABSOLUTE_TIMEOUT": 599},
        {"AAA_SESSION_TOUCH_INTERVAL": 0},
        {"AAA_SESSION_IDLE_TIMEOUT": 60, "AAA_SESSION_TOUCH_INTERVAL": 60},
        {"AAA_MAX_BODY_SIZE": 0},
        {"AAA_PASSWORD_HASH_WAIT": -1.0},
    ],
)
def test_A09_impossible_combinations_are_refused(config):
    """Among them: a minimum under 8 or a maximum under 64 characters (A09's bounds), and a
    touch interval as long as the idle timeout (active users would be signed out)."""
    with pytest.raises(ConfigurationError):
        Settings.from_config(config, debug=False, testing=True)


def test_settings_are_frozen():
    settings = production({})
    with pytest.raises(AttributeError):
        settings.page_size = 1  # type: ignore[misc]


# -- C01: SECRET_KEY --


WEAK_KEYS = [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("dev", id="dev"),
    pytest.param("  CHANGEME ", id="known-weak-padded"),
    pytest.param("k3y-Xq9!short-but-mixed", id="short"),
    pytest.param("Zq" * 20, id="low-variety"),
    pytest.param(b"\x01\x02" * 32, id="low-variety-bytes"),
    pytest.param(b"Short-bytes-0123", id="short-bytes"),
    pytest.param(1234567890123456789012345678901234567890, id="not-a-string"),
]


@pytest.mark.parametrize("key", WEAK_KEYS)
def test_C01_weak_secret_key_refused_in_production(key):
    config = {} if key is None else {"SECRET_KEY": key}
    with pytest.raises(RuntimeError) as info:
        Settings.from_config(config, debug=False, testing=False)
    message = str(info.value)
    assert "SECRET_KEY" in message
    if key:
        shown = key.decode("latin-1") if isinstance(key, bytes) else str(key).strip()
        assert shown not in message
        assert repr(key) not in message


@pytest.mark.parametrize("key", WEAK_KEYS)
@pytest.mark.parametrize(("debug", "testing"), [(True, False), (False, True), (True, True)])
def test_C01_weak_secret_key_tolerated_in_debug_and_testing(key, debug, testing):
    config = {} if key is None else {"SECRET_KEY": key}
    Settings.from_config(config, debug=debug, testing=testing)


def test_C01_check_secret_key_accepts_strong_keys():
    check_secret_key(GOOD_KEY)
    check_secret_key(bytes(range(32)))


def test_C01_known_weak_key_check_is_case_insensitive():
    with pytest.raises(RuntimeError):
        check_secret_key("Dev")


def test_C01_key_is_not_in_the_exception_chain():
    """Not in the message, and not smuggled in through ``args`` or a chained cause."""
    key = "Secret-But-Short-77"
    with pytest.raises(RuntimeError) as info:
        check_secret_key(key)
    assert all(key not in str(arg) for arg in info.value.args)
    assert info.value.__cause__ is None


# -- audit signing keys --


@pytest.mark.parametrize(
    "value",
    [
        ["short"],
        ["k" * 32, "k" * 32],
        "k" * 40,  # a string, not a list of keys
        [b"k" * 32],  # bytes are not text
    ],
)
def test_bad_audit_signing_keys_are_refused_without_echoing_them(value):
    with pytest.raises(ConfigurationError) as caught:
        production({"AAA_AUDIT_SIGNING_KEYS": value})
    assert "kkkk" not in str(caught.value) and "short" not in str(caught.value)


@pytest.mark.parametrize("key", ["AAA_AUDIT_CHECKPOINT_EVERY", "AAA_AUDIT_RETENTION_DAYS"])
def test_negative_audit_counts_are_refused(key):
    with pytest.raises(ConfigurationError):
        production({key: -1})


def test_audit_signing_keys_never_appear_in_the_settings_repr():
    settings = production({"AAA_AUDIT_SIGNING_KEYS": ["s3cr3t-" * 6]})
    assert settings.audit_signing_keys == ("s3cr3t-" * 6,)
    assert "s3cr3t" not in repr(settings)

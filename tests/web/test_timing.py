"""A02: an unknown login and a known login with a wrong password cannot be told apart by time.

The library verifies a dummy argon2id hash (made with the current parameters) when the login
is unknown, so both failures cost one real hash. This is measured through the test client,
with the real default cost preset (``owasp``: m=19 MiB, t=2, p=1); the ``fast`` preset of the
other tests would hide any difference under request overhead.

Method. The requests go in pairs, one of each kind, in a random (seeded) order within each
pair: 100 pairs, 200 requests. A pair takes well under a tenth of a second, so a burst of load
from the shared machine (other processes, frequency changes, garbage collection) mostly falls
on both of its requests, and the pair's difference cancels it. A difference counts as a leak
only when two measures agree:

- **size**: the median of the pairs' differences is more than 10% of the median request time
  (the SECURITY-CASES bound). A plain difference of medians was tried first: on this machine
  noise alone put the medians of two unpaired, shuffled samples 25% apart;
- **significance**: a Wilcoxon signed-rank test on the differences (rank-based, no assumption
  about the shape of the noise) says the difference is not chance, at p < 0.001
  (|z| > 3.29).

Size alone could flake when a burst still lands unevenly; significance alone would flag a
real but small difference (there is one: see below). Together they are quiet on a noisy
machine and loud on a missing dummy hash, which removes most of the work from one side. The
control test switches the dummy hash off and asserts that the detector sees it, so the test
can fail.

What remains: a wrong password for a real account also counts the failure towards the
lockout (an UPDATE and a SELECT in the failure's transaction), which an unknown login does
not. With the fast preset that is about 1 ms of a 5-6 ms request; with the owasp preset about
4% of the request, under the 10% bound, but measurable with enough samples on a quiet
machine. See docs/security.md ("Enumeration").
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass

import pytest

from flask_aaa.services.passwords import PasswordService
from tests.conftest import form_token

#: Pairs of requests (one unknown login, one wrong password): 200 requests, as SECURITY-CASES
#: asks; about 8 s with the owasp preset on an idle machine.
PAIRS = 100
#: Discarded pairs before measuring (caches, the connection pool, both code paths).
WARM_UP = 4
#: A leak: the median difference is more than this share of the median time ...
MAX_RELATIVE_DIFFERENCE = 0.10
#: ... and the Wilcoxon signed-rank |z| is above this (two-sided p < 0.001).
MIN_Z = 3.29

#: Two of each, used in turn, so that no known account reaches the lockout threshold
#: (each gets at most 52 failures) and no single name is measured.
KNOWN = ("alice", "bob")
UNKNOWN = ("nobody-at-all", "no-such-user")


@dataclass(frozen=True)
class Comparison:
    median_a: float
    median_b: float
    #: Median of the paired differences ``a - b`` (seconds).
    shift: float
    #: ``|shift|`` as a share of the median of all requests.
    relative_difference: float
    #: Wilcoxon signed-rank z of the differences (negative: ``a`` is faster).
    z: float
    #: Share of pairs in which ``a`` took longer: about 0.5 when they cannot be told apart.
    a_slower: float

    @property
    def leaks(self) -> bool:
        return self.relative_difference > MAX_RELATIVE_DIFFERENCE and abs(self.z) > MIN_Z

    def __str__(self) -> str:
        return (
            f"medians {self.median_a * 1000:.2f} ms vs {self.median_b * 1000:.2f} ms, "
            f"paired shift {self.shift * 1000:+.2f} ms ({self.relative_difference:.1%}), "
            f"Wilcoxon z={self.z:.2f}, a slower in {self.a_slower:.0%} of pairs"
        )


def signed_rank_z(differences: list[float]) -> float:
    """The normal approximation of the Wilcoxon signed-rank statistic: zero differences are
    dropped, tied magnitudes share their average rank."""
    nonzero = sorted((abs(d), d > 0) for d in differences if d != 0)
    n = len(nonzero)
    if n == 0:
        return 0.0
    positive = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and nonzero[j + 1][0] == nonzero[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        positive += rank * sum(1 for k in range(i, j + 1) if nonzero[k][1])
        i = j + 1
    mean = n * (n + 1) / 4
    sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return (positive - mean) / sd


def compare(a: list[float], b: list[float]) -> Comparison:
    """Compare paired samples: ``a[i]`` and ``b[i]`` were measured together."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    shift = statistics.median(differences)
    return Comparison(
        median_a=statistics.median(a),
        median_b=statistics.median(b),
        shift=shift,
        relative_difference=abs(shift) / statistics.median(a + b),
        z=signed_rank_z(differences),
        a_slower=sum(1 for d in differences if d > 0) / len(differences),
    )


@pytest.fixture
def config(config):
    config.update(
        AAA_PASSWORD_HASH_PRESET="owasp",  # the real cost: what an attacker would time
        AAA_LOGIN_LIMIT_PER_IP="100000 per minute",
        AAA_LOGIN_LIMIT_PER_ACCOUNT="100000 per minute",
        # The known accounts must stay plain "wrong password" cases: no lockout on the way.
        AAA_LOCKOUT_THRESHOLD=100,
    )
    return config


def measure(client, seed: int) -> tuple[list[float], list[float]]:
    """Failed logins in pairs (an unknown login and a known one with a wrong password, in a
    random order within the pair); the wall times of each kind, in seconds, pair by pair."""
    token = form_token(client.get("/auth/login").get_data(as_text=True))

    def attempt(login: str) -> float:
        start = time.perf_counter()
        response = client.post(
            "/auth/login",
            data={"login": login, "password": "not-the-password-1", "csrf_token": token},
        )
        elapsed = time.perf_counter() - start
        assert response.status_code == 401, response.status_code
        return elapsed

    rng = random.Random(seed)
    unknown: list[float] = []
    known: list[float] = []
    for i in range(WARM_UP + PAIRS):
        pair = [("unknown", UNKNOWN[i % 2]), ("known", KNOWN[i % 2])]
        rng.shuffle(pair)
        times = {kind: attempt(login) for kind, login in pair}
        if i >= WARM_UP:
            unknown.append(times["unknown"])
            known.append(times["known"])
    return unknown, known


@pytest.mark.slow
def test_A02_unknown_and_wrong_password_take_the_same_time(client, make_user):
    for name in KNOWN:
        make_user(name)
    unknown, known = measure(client, seed=20240902)
    result = compare(unknown, known)
    print(f"A02 unknown vs wrong password: {result}")
    assert not result.leaks, f"an unknown login can be told apart by its time: {result}"


@pytest.mark.slow
def test_A02_detector_flags_a_missing_dummy_hash(client, make_user, monkeypatch):
    # The control: without the dummy hash an unknown login skips argon2id, and the same
    # measurement must call that a leak. (Were it not to, the test above would prove nothing.)
    for name in KNOWN:
        make_user(name)
    original = PasswordService.verify

    def verify_without_dummy(self, password, stored_hash):
        if stored_hash is None:
            self.check_length(password)
            return False, None
        return original(self, password, stored_hash)

    monkeypatch.setattr(PasswordService, "verify", verify_without_dummy)
    unknown, known = measure(client, seed=20240903)
    result = compare(unknown, known)
    print(f"A02 control (no dummy hash): {result}")
    assert result.leaks, f"a missing dummy hash went unnoticed: {result}"
    assert result.shift < 0


# -- the detector on synthetic samples (fast) --


def _pairs(rng: random.Random, base_a: float, base_b: float) -> tuple[list[float], list[float]]:
    """Paired times with what a busy machine adds: bursts of load that slow both requests of
    a pair (1 pair in 5, up to 3x), jitter, and stalls of a single request (1 in 10, 3x)."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(PAIRS):
        load = rng.uniform(1.5, 3.0) if rng.random() < 0.2 else 1.0
        for base, out in ((base_a, a), (base_b, b)):
            stall = 3.0 if rng.random() < 0.1 else 1.0
            out.append(base * load * stall * rng.uniform(0.95, 1.15))
    return a, b


@pytest.mark.parametrize("seed", range(20))
def test_A02_detector_is_quiet_on_equal_noisy_samples(seed):
    a, b = _pairs(random.Random(seed), 0.033, 0.033)
    assert not compare(a, b).leaks


@pytest.mark.parametrize("seed", range(20))
def test_A02_detector_ignores_a_small_steady_difference(seed):
    # 4%, the size of the lockout counter's extra work: real, but under the bound.
    a, b = _pairs(random.Random(seed), 0.033, 0.0343)
    assert not compare(a, b).leaks


@pytest.mark.parametrize("seed", range(20))
def test_A02_detector_flags_a_missing_hash_on_synthetic_samples(seed):
    a, b = _pairs(random.Random(seed), 0.005, 0.033)
    result = compare(a, b)
    assert result.leaks
    assert result.z < 0
    assert result.a_slower < 0.2


def test_A02_signed_rank_matches_a_hand_computed_value():
    # Differences -1, -2, -3, 4: ranks 1, 2, 3, 4; W+ = 4, mean 5, sd sqrt(7.5).
    assert signed_rank_z([-1.0, -2.0, -3.0, 4.0]) == pytest.approx((4 - 5) / math.sqrt(7.5))
    # Tied magnitudes share a rank (1.5 each): W+ = 1.5 = mean, so z = 0.
    assert signed_rank_z([1.0, -1.0]) == 0.0
    # No difference at all tells nothing.
    assert signed_rank_z([0.0, 0.0]) == 0.0

"""Interleaved rounds, medians, ratios and targets.

A case is a set of contenders measured side by side: every round runs one sample of each
(in an order that rotates from round to round), so that a noisy neighbour slows all of them
alike. Ratios are taken within a round and the median of those is reported; absolute
figures are medians too, and mean little on a shared machine.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

#: How long one sample of a fast operation runs (it is repeated to fill this).
_sample_seconds = 0.05


def configure(*, sample_seconds: float) -> None:
    global _sample_seconds  # noqa: PLW0603 (one setting for the whole run)
    _sample_seconds = sample_seconds


@dataclasses.dataclass(frozen=True)
class Contender:
    """One way of doing the case's work. ``sample()`` measures once and returns the value
    (seconds per operation, unless the case's unit says otherwise)."""

    name: str
    sample: Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal stated as a ratio from the same run: ``measure`` returns (what was measured,
    met?) from the case's result."""

    text: str
    measure: Callable[[CaseResult], tuple[str, bool]]


@dataclasses.dataclass
class Case:
    """Contenders doing the same work, the floor among them, and the targets."""

    title: str
    contenders: list[Contender]
    ours: str
    floor: str | None = None
    #: ``time`` (seconds per operation, lower is better) or ``mib`` (peak memory).
    unit: str = "time"
    targets: list[Target] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: Rounds to run when the run does not say (noisy or very fast cases need more).
    rounds: int | None = None
    #: False when the contenders do different work (no "ours is faster by" column).
    versus: bool = True
    close: Callable[[], None] | None = None


@dataclasses.dataclass
class CaseResult:
    case: Case
    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over the rounds of ``a / b`` (both measured in the same round)."""
        pairs = zip(self.samples[a], self.samples[b], strict=False)
        return statistics.median(x / y for x, y in pairs if y > 0)


def repeated(operation: Callable[[], object], ops_per_call: int = 1) -> Callable[[], float]:
    """A sampler for a fast operation: calibrated once to run about the configured sample time, then
    each sample returns the seconds per operation (``ops_per_call`` per call)."""
    budget = _sample_seconds
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            operation()
        elapsed = time.perf_counter() - start
        if elapsed >= budget or calls >= 1 << 24:
            break
        calls *= 2 if elapsed <= 0 else max(2, min(16, int(budget / elapsed) + 1))

    def sample() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            operation()
        return (time.perf_counter() - start) / (calls * ops_per_call)

    return sample


def run_case(case: Case, *, rounds: int, max_seconds: float) -> CaseResult:
    """``rounds`` interleaved rounds (at least three, fewer than ``rounds`` only when the
    case runs past ``max_seconds``)."""
    samples: dict[str, list[float]] = {c.name: [] for c in case.contenders}
    started = time.monotonic()
    count = len(case.contenders)
    for number in range(rounds):
        order = case.contenders[number % count :] + case.contenders[: number % count]
        for contender in order:
            samples[contender.name].append(contender.sample())
        if number >= 2 and time.monotonic() - started > max_seconds:
            break
    return CaseResult(case, samples)


# -- formatting --


def format_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_rate(seconds: float) -> str:
    rate = 1 / seconds if seconds > 0 else float("inf")
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k/s"
    return f"{rate:.0f} /s" if rate >= 10 else f"{rate:.2g} /s"


def format_ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 1000 else f"{value:.3g}x"


def table(result: CaseResult) -> list[str]:
    """The case as a Markdown table: median, rate, and the ratios to the floor and to ours."""
    case = result.case
    if case.unit == "mib":
        lines = ["| contender | peak memory (median) | vs ours |", "|---|---:|---:|"]
        for c in case.contenders:
            vs = format_ratio(result.ratio(c.name, case.ours))
            lines.append(f"| {c.name} | {format_mib(result.median(c.name))} | {vs} |")
        return lines
    head = "| contender | median | rate |"
    rule = "|---|---:|---:|"
    if case.floor:
        head, rule = head + " x floor |", rule + "---:|"
    if case.versus:
        head, rule = head + " ours is faster by |", rule + "---:|"
    lines = [head, rule]
    for c in case.contenders:
        med = result.median(c.name)
        name = f"**{c.name}**" if c.name == case.ours else c.name
        cells = [name, format_time(med), format_rate(med)]
        if case.floor:
            cells.append(format_ratio(result.ratio(c.name, case.floor)))
        if case.versus:
            ours = c.name == case.ours
            cells.append("" if ours else format_ratio(result.ratio(c.name, case.ours)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_mib(value: float) -> str:
    return f"{value:.2f} MiB" if value < 10 else f"{value:.0f} MiB"


def report(result: CaseResult) -> list[str]:
    """Title, table, targets and notes of one case, as Markdown lines."""
    case = result.case
    rounds = min(len(s) for s in result.samples.values())
    lines = [f"### {case.title}", "", f"{rounds} interleaved rounds.", "", *table(result), ""]
    if case.targets:
        lines += ["| target | measured | met |", "|---|---|:-:|"]
        for target in case.targets:
            measured, met = target.measure(result)
            lines.append(f"| {target.text} | {measured} | {'yes' if met else '**no**'} |")
        lines.append("")
    lines += [f"- {note}" for note in case.notes]
    if case.notes:
        lines.append("")
    return lines


# -- common targets --


def at_most(a: str, b: str, limit: float, text: str) -> Target:
    """``a`` costs at most ``limit`` times ``b``."""

    def measure(result: CaseResult) -> tuple[str, bool]:
        value = result.ratio(a, b)
        return format_ratio(value), value <= limit

    return Target(text, measure)


def faster_by(a: str, b: str, factor: float, text: str) -> Target:
    """``a`` is at least ``factor`` times faster than ``b``."""

    def measure(result: CaseResult) -> tuple[str, bool]:
        value = result.ratio(b, a)
        return format_ratio(value), value >= factor

    return Target(text, measure)


def throughput_at_least(ours: str, other: str, factor: float, text: str) -> Target:
    """``ours`` serves at least ``factor`` times ``other``'s requests per second."""

    def measure(result: CaseResult) -> tuple[str, bool]:
        value = result.ratio(other, ours)
        return format_ratio(value), value >= factor

    return Target(text, measure)

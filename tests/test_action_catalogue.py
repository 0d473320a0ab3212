"""The action catalogue of docs/audit.md names every action the library records, and only those.

The actions are read from the package's source, not from a list kept by hand:

- every call that records (``AuditEvent(...)``, and every function that hands its own
  ``action`` argument on to one: ``audit.record``, ``record_apart``, ``record_event``,
  ``@audited``, ``accounts.confirm_password``, ...; found by following the argument, so a
  new wrapper is found too) must name its action with a string literal, a conditional
  expression of literals, a local variable assigned only such values, or a parameter of
  the enclosing function (which makes that function a recorder in turn);
- anything else there (an f-string, a lookup in a mapping, a call) fails the scan with its
  place in the source, to be handled here explicitly;
- every other string in the source that looks like an action (``<area>.<name>``, for an area
  the library records in) must be one of the recorded actions (a tuple of action names
  for a query, say), or be listed in :data:`NOT_ACTIONS`. A name built some other way is
  therefore noticed, not missed.

The demo application under ``flask_aaa/demo`` is left out: its ``notes.*`` actions are an
app's own (the catalogue's "your actions" rows), not the library's.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flask_aaa"
CATALOGUE_DOC = ROOT / "docs" / "audit.md"
CATALOGUE_HEADING = "## Action catalogue"

#: What every action name looks like: dotted, lower case.
ACTION_RE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")

#: Strings in the source that look like actions but are not ones.
NOT_ACTIONS: frozenset[str] = frozenset()

#: Subpackages whose action-shaped strings (and f-strings) are names of another kind: the
#: Flask-User compatibility layer keeps Flask-User's signal and endpoint names
#: (``user.user_logged_in``, ``f"user.{name}"``). What it records is still scanned.
OTHER_NAMES = ("compat",)

#: A call that constructs an event records whatever it is given: recorder name -> (the
#: parameter that names the action, its position or None when it is keyword-only).
BASE_RECORDERS: dict[str, tuple[str, int | None]] = {"AuditEvent": ("action", None)}


class ScanError(Exception):
    pass


@dataclass
class _Scope:
    name: str
    params: list[str]
    kwonly: list[str]
    #: Local names assigned a value, with the values (expressions).
    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Site:
    path: Path
    line: int
    callee: str
    expr: ast.expr | None  # None: the call passes no action we can see (**kwargs)
    scopes: tuple[_Scope, ...]


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _scope_of(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> _Scope:
    args = fn.args
    scope = _Scope(
        fn.name, [a.arg for a in (*args.posonlyargs, *args.args)], [a.arg for a in args.kwonlyargs]
    )
    for node in ast.walk(fn):
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(node, ast.Assign):
            pairs = [(target, node.value) for target in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(node.target, node.value)]
        elif isinstance(node, ast.AugAssign):
            # ``name += ...`` builds a value: kept as an expression the scan cannot resolve.
            pairs = [(node.target, ast.BinOp(node.target, node.op, node.value))]
        for target, value in pairs:
            if isinstance(target, ast.Name):
                scope.assigned.setdefault(target.id, []).append(value)
    return scope


def _calls(path: Path, tree: ast.AST) -> Iterator[tuple[ast.Call, tuple[_Scope, ...]]]:
    """Every call in ``tree``, with the functions that enclose it (innermost last)."""

    def visit(node: ast.AST, scopes: tuple[_Scope, ...]) -> Iterator[tuple[ast.Call, tuple]]:
        for child in ast.iter_child_nodes(node):
            inner = scopes
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = (*scopes, _scope_of(child))
            if isinstance(child, ast.Call):
                yield child, inner
            yield from visit(child, inner)

    yield from visit(tree, ())


def _sources() -> list[tuple[Path, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "demo" in path.relative_to(PACKAGE).parts:
            continue
        out.append((path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return out


def _action_arg(call: ast.Call, param: tuple[str, int | None]) -> ast.expr | None:
    name, position = param
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    if position is not None and len(call.args) > position:
        arg = call.args[position]
        return None if isinstance(arg, ast.Starred) else arg
    return None


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def _resolve(site: _Site, expr: ast.expr, seen: frozenset[str] = frozenset()) -> set[str] | _Scope:
    """The literal actions ``expr`` can be, or the enclosing function whose parameter it is."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        names: set[str] = set()
        for branch in (expr.body, expr.orelse):
            found = _resolve(site, branch, seen)
            if not isinstance(found, set):
                raise ScanError(f"{_where(site.path, site.line)}: a parameter inside a condition")
            names |= found
        return names
    if isinstance(expr, ast.Name) and expr.id not in seen:
        for scope in reversed(site.scopes):
            if expr.id in scope.assigned:
                names = set()
                for value in scope.assigned[expr.id]:
                    found = _resolve(site, value, seen | {expr.id})
                    if not isinstance(found, set):
                        raise ScanError(f"{_where(site.path, site.line)}: unhandled assignment")
                    names |= found
                return names
            if expr.id in scope.params or expr.id in scope.kwonly:
                return scope
    raise ScanError(
        f"{_where(site.path, site.line)}: {site.callee}(action={ast.unparse(expr)}) is not a "
        "literal, a condition of literals or a parameter; teach tests/test_action_catalogue.py "
        "this pattern"
    )


def recorded_actions() -> tuple[set[str], dict[str, tuple[str, int | None]]]:
    """Every action the package records, and the recorders found (see
    :data:`BASE_RECORDERS`)."""
    sources = _sources()
    calls = [(path, call, scopes) for path, tree in sources for call, scopes in _calls(path, tree)]
    recorders = dict(BASE_RECORDERS)
    while True:  # follow ``action`` parameters outwards until no new recorder turns up
        grown = False
        for path, call, scopes in calls:
            callee = _callee(call)
            if callee not in recorders:
                continue
            expr = _action_arg(call, recorders[callee])
            if expr is None:
                continue
            site = _Site(path, call.lineno, callee, expr, scopes)
            found = _resolve(site, expr)
            if isinstance(found, _Scope) and found.name not in recorders:
                assert isinstance(expr, ast.Name)
                position = found.params.index(expr.id) if expr.id in found.params else None
                recorders[found.name] = (expr.id, position)
                grown = True
        if not grown:
            break
    actions: set[str] = set()
    for path, call, scopes in calls:
        callee = _callee(call)
        if callee not in recorders:
            continue
        expr = _action_arg(call, recorders[callee])
        if expr is None:
            raise ScanError(f"{_where(path, call.lineno)}: {callee}(...) names no action")
        found = _resolve(_Site(path, call.lineno, callee, expr, scopes), expr)
        if isinstance(found, set):
            actions |= found
    return actions, recorders


def action_like_strings() -> dict[str, list[str]]:
    """Every string constant in the package that has the shape of an action, and where."""
    out: dict[str, list[str]] = {}
    for path, tree in _sources():
        if path.relative_to(PACKAGE).parts[0] in OTHER_NAMES:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and ACTION_RE.fullmatch(node.value)
            ):
                out.setdefault(node.value, []).append(_where(path, node.lineno))
    return out


def f_string_prefixes() -> dict[str, list[str]]:
    """The literal start of every f-string, and where (an action built from parts)."""
    out: dict[str, list[str]] = {}
    for path, tree in _sources():
        if path.relative_to(PACKAGE).parts[0] in OTHER_NAMES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    out.setdefault(first.value, []).append(_where(path, node.lineno))
    return out


def catalogue_actions() -> list[str]:
    """The action names in the first column of the tables of the catalogue section."""
    text = CATALOGUE_DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{CATALOGUE_HEADING}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    names: list[str] = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        assert len(cells) == 4, f"a catalogue row needs 4 cells: {line}"
        names.extend(n for n in re.findall(r"`([^`]+)`", cells[0]) if ACTION_RE.fullmatch(n))
    return names


@pytest.fixture(scope="module")
def recorded() -> set[str]:
    return recorded_actions()[0]


def test_the_scan_finds_the_known_recorders_and_actions(recorded: set[str]) -> None:
    # A check of the scanner itself: the public ways to record, the wrappers that pass an
    # action through, and actions that only a conditional expression or a wrapper names.
    _, recorders = recorded_actions()
    expected = {"record", "record_apart", "record_event", "audited", "confirm_password"}
    assert expected <= set(recorders)
    through_wrappers = {"user.enabled", "user.disabled", "auth.reauth.failed", "auth.reset.failed"}
    assert through_wrappers <= recorded
    assert len(recorded) > 50


def test_every_recorded_action_is_in_the_catalogue(recorded: set[str]) -> None:
    missing = sorted(recorded - set(catalogue_actions()))
    assert not missing, f"add these actions to the catalogue in docs/audit.md: {missing}"


def test_the_catalogue_lists_only_recorded_actions(recorded: set[str]) -> None:
    unknown = sorted(set(catalogue_actions()) - recorded)
    assert not unknown, f"the catalogue lists actions the code never records: {unknown}"


def test_strings_shaped_like_actions_are_recorded_actions(recorded: set[str]) -> None:
    # An action spelt in a constant (a tuple of names for a query, a mapping) that no
    # recorder names: a typo, or a way of recording that the scan does not follow yet.
    areas = {name.split(".")[0] for name in recorded}
    strays = {
        name: places
        for name, places in action_like_strings().items()
        if name.split(".")[0] in areas and name not in recorded | NOT_ACTIONS
    }
    assert not strays, f"action-like strings that nothing records: {strays}"


def test_no_action_is_built_from_parts(recorded: set[str]) -> None:
    areas = {name.split(".")[0] for name in recorded}
    built = {
        start: places
        for start, places in f_string_prefixes().items()
        if re.fullmatch(r"[a-z][a-z0-9_]*\.(?:[a-z0-9_]+\.)*", start)
        and start.split(".")[0] in areas
    }
    assert not built, f"f-strings that may build an action name; handle them here: {built}"


_FOLLOWED = """
from . import audit

def wrapper(db, *, verb, actor):
    audit.record(db, action=verb, actor=actor)

def caller(db, actor, active):
    wrapper(db, verb="thing.enabled" if active else "thing.disabled", actor=actor)
    name = "thing.renamed"
    audit.record_apart(db, action=name, actor=actor, outcome="failure")
"""

_NOT_FOLLOWED = """
from . import audit

def caller(db, actor, kind):
    audit.record(db, action=f"thing.{kind}", actor=actor)
"""


@pytest.mark.parametrize("source", [_FOLLOWED, _NOT_FOLLOWED], ids=["followed", "not-followed"])
def test_the_scan_follows_wrappers_and_refuses_what_it_cannot_read(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "audit.py").write_text(
        "def record(db, *, action, actor, outcome='success'):\n"
        "    return AuditEvent(action=action, actor=actor)\n"
        "def record_apart(db, *, action, actor, outcome):\n"
        "    record(db, action=action, actor=actor)\n"
    )
    (package / "things.py").write_text(source)
    monkeypatch.setitem(globals(), "PACKAGE", package)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    if source is _NOT_FOLLOWED:
        with pytest.raises(ScanError, match=r"things\.py:5: record\(action=f"):
            recorded_actions()
        return
    actions, recorders = recorded_actions()
    assert actions == {"thing.enabled", "thing.disabled", "thing.renamed"}
    assert set(recorders) == {"AuditEvent", "record", "record_apart", "wrapper"}

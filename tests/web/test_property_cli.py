"""Property-based hostile input over every ``flask aaa`` command (I01, A14; issue 9).

Each command of the Click group (subgroups included) is run through the app's CLI runner
with hypothesis-generated arguments and option values: arbitrary text, leading dashes, NUL,
RTL and zero-width characters, lone surrogates (what a non-UTF-8 argv byte becomes on POSIX),
and a few plausible values so the valid paths are reached too. The rule: exit status 0, 1 (a
one-line "Error: ..." from the library, or Click's "Aborted!") or 2 (usage error); never an
uncaught exception and never a traceback.
"""

from __future__ import annotations

from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_aaa.cli import aaa_cli

#: Commands left out, and why.
SKIPPED = {
    "db upgrade": "runs the migrations (slow, and it changes the schema under the test app)",
}


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            found.extend(walk(command, path))
        else:
            found.append((path, command))
    return found


COMMANDS = {" ".join(path): command for path, command in walk(aaa_cli)}


def test_commands_are_found():
    assert len(COMMANDS) > 10, sorted(COMMANDS)
    assert set(SKIPPED) <= set(COMMANDS)


TRICKY = ["\x00", "\u202e", "\u200b", "\ufeff", "\r\n", "\x1b[2J", "e\u0301", "\U0001f600"]
PLAUSIBLE = [
    "root",
    "#1",
    "1",
    "0",
    "-1",
    "editor",
    "admin",
    "notes:read",
    "account:read",
    "root@example.org",
    "2026-01-01",
    "user:1",
    "",
    "--",
    "-",
    "--help",
]

text = st.text(max_size=30)  # any code point, lone surrogates and NUL included
tokens = st.one_of(
    st.sampled_from(PLAUSIBLE),
    text,
    text.map(lambda s: "-" + s),
    text.map(lambda s: "--" + s),
    st.lists(st.sampled_from(TRICKY) | text, min_size=1, max_size=4).map("".join),
    st.sampled_from(["a", "\u00e9", "\x00"]).map(lambda c: c * 5000),
)
#: Values for file options: only names inside the runner's temporary directory.
FILE_VALUES = st.sampled_from(["-", "out.txt", "no/such/dir/out.txt", ""])


def argv_for(command: click.Command) -> st.SearchStrategy[list[str]]:
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]

    def option(p: click.Option) -> st.SearchStrategy[list[str]]:
        flag = st.sampled_from(p.opts)
        if p.is_flag or p.count:
            return flag.map(lambda f: [f])
        values = FILE_VALUES if isinstance(p.type, click.File) else tokens
        return st.tuples(flag, values).map(list)

    def argument(p: click.Argument) -> st.SearchStrategy[list[str]]:
        if p.nargs == -1:
            return st.lists(tokens, max_size=3)
        return st.lists(tokens, min_size=max(p.nargs, 1), max_size=max(p.nargs, 1))

    positional = st.tuples(*(argument(p) for p in arguments)).map(
        lambda parts: [x for part in parts for x in part]
    )
    chosen = (
        st.lists(st.sampled_from(options).flatmap(option), max_size=4).map(
            lambda parts: [x for part in parts for x in part]
        )
        if options
        else st.just([])
    )
    extra = st.lists(tokens, max_size=2)
    # Well-formed-ish (options then arguments) most of the time, and sometimes shuffled.
    ordered = st.tuples(chosen, positional).map(lambda t: t[0] + t[1])
    with_extra = st.tuples(ordered, extra).map(lambda t: t[0] + t[1])
    return st.one_of(ordered, ordered, with_extra, extra)


@pytest.fixture
def runner(app: Any, make_user: Any, tmp_path: Any, monkeypatch: Any) -> Any:
    # The test's temporary directory as the working one: file options write nowhere else.
    monkeypatch.chdir(tmp_path)
    make_user("root", roles=["admin"], perms={"admin": ["*"]})
    make_user("bob", roles=["editor"], perms={"editor": ["notes:read"]})
    return app.test_cli_runner()


FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,  # write no example database into the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.skip(reason=SKIPPED[name]))
        if name in SKIPPED
        else name
        for name in sorted(COMMANDS)
    ],
)
def test_I01_A14_property_cli_never_crashes(runner, name):
    command = COMMANDS[name]
    path = name.split()

    @FUZZ
    @given(argv=argv_for(command))
    def run(argv: list[str]) -> None:
        result = runner.invoke(args=["aaa", *path, *argv], input="\n")
        output = result.output
        case = (name, argv, result.exit_code, output[-500:])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            case,
            repr(result.exception),
        )
        assert "Traceback" not in output, case
        assert result.exit_code in (0, 1, 2), case
        if result.exit_code == 1:
            last = output.rstrip("\n").splitlines()[-1] if output.strip() else ""
            assert last.startswith("Error:") or last == "Aborted!", case
            if last.startswith("Error:"):
                assert "\n" not in last, case

    run()

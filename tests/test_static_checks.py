"""Static checks over the library's source: patterns that must not appear in src/flask_aaa.

Every module of the package (the demo, the compatibility layer and the migrations included)
is parsed with :mod:`ast`, and these mistakes fail the suite:

(a) **Secrets compared with ``==`` or ``!=``** (T01 and the timing cases). A comparison is
    suspect when an operand's name says it holds a secret (``token``, ``hash``, ``mac``,
    ``digest``, ``secret``, ``password``, ``code``, ``signature``, ``csrf``, ``nonce``, ...).
    Such values must be compared with ``hmac.compare_digest`` or ``secrets.compare_digest``,
    whose time does not depend on where the first difference lies. Not suspect, by rule:
    a comparison with a literal (a public value; a hard-coded secret is ruff's S105), and a
    SQLAlchemy column expression (``Model.token_hash == digest`` builds a WHERE clause: the
    lookup of a digest of a random token in an index, followed by ``compare_digest`` in
    Python where it matters). Anything else is listed in :data:`COMPARE_ALLOWED` with its
    reason.

(b) **Redirects to request data without** :func:`flask_aaa.web.security.safe_next`. A taint
    analysis: values read from the request (``request.args``, ``form``, ``values``,
    ``headers``, ``cookies``, ``json``, ``referrer``, ..., and a view's URL parameters) taint
    what is computed from them, through assignments, containers and calls; a call to a
    function of the package is resolved through the module's imports, so taint crosses
    modules through returns and, from arguments, into parameters. ``safe_next(...)`` and
    ``url_for(...)`` give untainted results, and so does an f-string whose request data
    only comes after an untainted ``?`` (a query string cannot change where a redirect
    goes). ``redirect(x)`` with a tainted ``x`` fails.

(c) **SQL built from strings** (L01). ``text()``, ``literal_column()``, ``DDL()``,
    ``exec_driver_sql()`` and ``execute()`` called with an f-string, ``%`` formatting,
    ``.format()``, ``"sep".join()`` or ``+`` (directly, or through a variable assigned such
    a value in the same function or at module level) fail. Bound parameters are the way.
    The two exceptions (no request data can reach them) are in :data:`SQL_ALLOWED`.

(d) **Templates**: password inputs must be masked and fillable by password managers, nothing
    may block pasting (ASVS 6.2.6, 6.2.7), and every page extends the layout that carries
    the sign-out form (7.4.4).

(e) Small facts the ASVS mapping of docs/security.md rests on: no ``random`` import, no
    user created by a migration, no CORS header, the default CSP's directives.

Allow-list keys are the module's path below ``src/flask_aaa`` and the flagged expression as
:func:`ast.unparse` writes it (stable under reformatting). A key that no longer matches
anything fails too, so the lists stay current. Every checker is shown to fail on a small bad
sample (the ``..._flags_...`` tests), so a check that silently stopped working is noticed.

Ruff's flake8-bandit rules (``S`` in pyproject.toml) run on the same code and cover other
ground: hard-coded passwords (S105-S107), S608's SQL-looking strings built by formatting,
weak hashes (S324), ``debug=True`` (S201), autoescape off (S701), ``Markup`` (S704), and so
on. See docs/security.md, "Static checks".
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "flask_aaa"


@dataclass(frozen=True)
class Finding:
    line: int
    code: str


def source_modules() -> dict[str, ast.Module]:
    """Every module of the package, by its path below src/flask_aaa (POSIX separators)."""
    return {
        path.relative_to(SRC).as_posix(): ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(SRC.rglob("*.py"))
    }


def _short(code: str) -> str:
    return code if len(code) <= 120 else code[:117] + "..."


def _report(found: dict[str, list[Finding]]) -> str:
    return "\n".join(
        f"  src/flask_aaa/{path}:{f.line}: {_short(f.code)}"
        for path, items in sorted(found.items())
        for f in items
    )


def _unallowed(
    found: dict[str, list[Finding]], allowed: dict[tuple[str, str], str]
) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for path, items in found.items():
        rest = [f for f in items if (path, f.code) not in allowed]
        if rest:
            out[path] = rest
    return out


def _stale(
    found: dict[str, list[Finding]], allowed: dict[tuple[str, str], str]
) -> list[tuple[str, str]]:
    seen = {(path, f.code) for path, items in found.items() for f in items}
    return sorted(key for key in allowed if key not in seen)


# -- (a) secrets compared with == / != --

#: Parts of an identifier (split at ``_`` and camelCase) that mark a secret.
SECRET_WORDS = frozenset({
    "token", "tokens", "hash", "hashes", "hashed", "mac", "hmac", "digest", "secret",
    "secrets", "password", "passwords", "passwd", "pwd", "passphrase", "code", "codes",
    "otp", "totp", "hotp", "signature", "sig", "csrf", "xsrf", "nonce", "verifier", "pin",
    "salt", "credential", "credentials", "apikey",
})  # fmt: skip
#: Endings of a part that mark a secret (``hexdigest``, ``accesstoken``).
SECRET_ENDINGS = ("digest", "token", "secret", "password", "hash")
#: Word pairs that mark a secret where either word alone would not.
SECRET_PHRASES = ("api_key", "secret_key", "private_key", "signing_key", "session_id")

#: Comparisons of secret-sounding values that are not secret comparisons, and why.
COMPARE_ALLOWED: dict[tuple[str, str], str] = {
    # Method names held in constants: public words, not secrets.
    ("services/mfa.py", "method == TOTP"): "TOTP is the name of a factor, not a code",
    ("web/bearer.py", "via() == TOKEN"): "TOKEN is the authentication method's name",
    ("web/decorators.py", "how == bearer.TOKEN"): "the authentication method's name",
    ("web/impersonation.py", "bearer.via() == bearer.TOKEN"): "the method's name",
    ("services/oidc.py", "provider.token_auth == _TOKEN_AUTH[0]"): (
        "the client authentication method's name (client_secret_basic), from configuration"
    ),
    ("services/passkeys.py", "credential.get('rawId') != cred_id"): (
        "shape check of one request body (id and rawId both from the browser); a "
        "credential id is a public identifier"
    ),
    # The password and its confirmation come from the same request: the sender already
    # knows both, so the time tells them nothing.
    ("web/auth.py", "fields['confirm'] != fields['password']"): "both from the same request",
    ("web/auth.py", "fields['confirm'] != fields['new_password']"): "both from the same request",
    ("web/recovery.py", "fields['confirm'] != fields['password']"): "both from the same request",
    # Flask-User compatibility: change detection between the app's stored hash and
    # Flask-AAA's copy. Both are read from the databases; no caller supplies either.
    ("compat/manager.py", "user.password_hash != new_hash"): "two stored hashes (sync)",
    ("compat/sync.py", "account.password != user.password_hash"): "two stored hashes (sync)",
    # The audit chain: unkeyed SHA-256 content hashes, stored in the clear next to the
    # events, compared by the offline verifier. The keyed MACs of the checkpoints are
    # compared with hmac.compare_digest (services/signing.py).
    ("services/audit.py", "_hash_values(values) != stored"): "public chain hash (verify)",
    ("services/audit.py", "sha256(encode(values).encode('utf-8')).hexdigest() == stored"): (
        "public chain hash (verify, inline step)"
    ),
    ("services/audit.py", "last_hash != starts[k + 1]"): "public chain hash (parallel verify)",
    ("services/audit.py", "mark.hash != stored"): "public chain hash (verify)",
    ("services/audit.py", "head_hash != self.prev"): "public chain hash (verify)",
    ("services/audit.py", "m.hash == stored"): "public chain hash (verify, resume point)",
    ("services/audit.py", "event_hash(_fields(event_)) == event_.hash"): (
        "public chain hash (check one event)"
    ),
    ("services/audit.py", "previous == event_.prev_hash"): "public chain hash (check one event)",
}


def _identifier_parts(name: str) -> list[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [part for part in name.lower().split("_") if part]


def _sounds_secret(name: str) -> bool:
    lowered = name.lower()
    if any(phrase in lowered for phrase in SECRET_PHRASES):
        return True
    return any(
        part in SECRET_WORDS or part.endswith(SECRET_ENDINGS) for part in _identifier_parts(name)
    )


def _operand_names(node: ast.expr, modules: frozenset[str] = frozenset()) -> list[str]:
    """The names that say what an operand holds: a variable, the last attribute, a string
    key (``x["token"]``, ``x.get("token")``), a called function's name and its receiver
    (unless that is an imported module: ``tokens.status(t)`` is about ``status``)."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Subscript):
        names = _operand_names(node.value, modules)
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.append(key.value)
        return names
    if isinstance(node, ast.Call):
        names = _operand_names(node.func)
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
        if receiver is not None and not (isinstance(receiver, ast.Name) and receiver.id in modules):
            names += _operand_names(receiver, modules)  # totp.now(), mac.hexdigest()
        if (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
        return names
    if isinstance(node, ast.Await):
        return _operand_names(node.value, modules)
    return []


def _is_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_is_literal(item) for item in node.elts)
    if isinstance(node, ast.UnaryOp):
        return _is_literal(node.operand)
    return False


def _is_sql_column(node: ast.expr) -> bool:
    """``Model.column``, ``table.c.column`` or ``bindparam(...)``: a SQL expression."""
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id[:1].isupper():
            return True
        if isinstance(node.value, ast.Attribute) and node.value.attr == "c":
            return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        return name in {"bindparam", "literal", "column"}
    return False


def check_comparisons(tree: ast.Module) -> list[Finding]:
    modules = frozenset(_imports("module.py", tree))
    found: list[Finding] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            pair = (operands[i], operands[i + 1])
            if any(_is_literal(side) or _is_sql_column(side) for side in pair):
                continue
            names = [name for side in pair for name in _operand_names(side, modules)]
            if any(_sounds_secret(name) for name in names):
                found.append(Finding(node.lineno, ast.unparse(node)))
                break
    return found


# -- (b) redirects to request data --

#: Attributes of ``request`` that carry what the client sent.
REQUEST_SOURCES = frozenset({
    "args", "form", "values", "headers", "cookies", "json", "get_json", "data", "get_data",
    "files", "referrer", "url", "base_url", "full_path", "path", "query_string", "environ",
    "host", "host_url", "url_root", "root_url", "stream", "authorization",
})  # fmt: skip
#: Calls whose result is a same-origin URL whatever their arguments.
SANITIZERS = frozenset({"safe_next", "url_for"})
#: Names of the redirect helpers (flask.redirect, werkzeug.utils.redirect).
REDIRECTS = frozenset({"redirect"})
#: Lookup methods: a mapping's value is tainted only when the mapping is.
LOOKUPS = frozenset({"get", "pop", "setdefault"})
#: Decorators that make a function a view: its parameters come from the URL.
ROUTES = frozenset({"route", "get", "post", "put", "patch", "delete"})


def _imports(path: str, tree: ast.Module) -> dict[str, str]:
    """A module's imported names: alias -> dotted target, relative imports resolved against
    the package root (``from ..services import oidc`` in web/x.py -> ``services.oidc``)."""
    package = path.split("/")[:-1]
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name.removeprefix("flask_aaa.")
                names[alias.asname or alias.name.split(".")[0]] = target
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            else:
                module = (node.module or "").removeprefix("flask_aaa").lstrip(".")
            for alias in node.names:
                names[alias.asname or alias.name] = f"{module}.{alias.name}".lstrip(".")
    return names


def _is_route(decorator: ast.expr) -> bool:
    return (
        isinstance(decorator, ast.Call)
        and isinstance(decorator.func, ast.Attribute)
        and decorator.func.attr in ROUTES
    )


_FUNCTION = ast.FunctionDef | ast.AsyncFunctionDef
#: The nodes the taint analysis acts on.
_FLOW = (
    ast.Assign
    | ast.AnnAssign
    | ast.AugAssign
    | ast.NamedExpr
    | ast.For
    | ast.AsyncFor
    | ast.comprehension
    | ast.withitem
    | ast.Return
    | ast.Call
)
_SCOPE_BREAK = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda


def _own_nodes(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of a scope's body, not descending into nested functions and classes."""
    stack: list[ast.AST] = [node for node in body if not isinstance(node, _SCOPE_BREAK)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(
            child for child in ast.iter_child_nodes(node) if not isinstance(child, _SCOPE_BREAK)
        )


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _target_names(target: ast.expr) -> Iterator[str]:
    """Names a store taints: ``x``, ``a, b``, and the container of ``d["k"] = ...``."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for item in target.elts:
            yield from _target_names(item)
    elif isinstance(target, ast.Starred | ast.Subscript | ast.Attribute):
        yield from _target_names(target.value)


@dataclass(eq=False)
class _Scope:
    path: str
    body: list[ast.stmt]
    name: str  # "" for a module
    params: list[str]
    method: bool
    parents: list[_Scope]
    tainted: set[str] = field(default_factory=set)
    returns_taint: bool = False
    #: The nodes of the body that store, return or call (computed once).
    nodes: list[ast.AST] = field(default_factory=list)


class RedirectTaint:
    """The taint analysis of (b), over a set of modules at once.

    A call to a function of the package is resolved (a function of the same module, or a
    name imported into it, or ``module.function`` for an imported module) and its result is
    tainted when one of that function's returns is. Tainted arguments taint the parameters
    they land in. A call that cannot be resolved (a method, a library function) is tainted
    when its receiver or an argument is: conservative, so a miss is unlikely and a false
    alarm is handled by a ``safe_next`` call, which the code should have anyway."""

    def __init__(self, trees: dict[str, ast.Module]) -> None:
        self.scopes: list[_Scope] = []
        #: Per module: alias -> dotted target ("flask.request", "web.forms.read_fields"),
        #: package modules relative to the package root.
        self.imported: dict[str, dict[str, str]] = {}
        self.modules = {path.removesuffix(".py").removesuffix("/__init__") for path in trees}
        for path, tree in trees.items():
            module = _Scope(path, tree.body, "", [], False, [])
            self.scopes.append(module)
            self._collect(path, tree, [module])
            self.imported[path] = _imports(path, tree)
        self.local: dict[tuple[str, str], list[_Scope]] = {}
        #: Answers of :meth:`tainted` in the current pass. Taint only grows, so an answer
        #: that is stale within a pass only delays a change to the next pass; the last pass
        #: changes nothing, so its answers are exact.
        self._memo: dict[int, bool] = {}
        for scope in self.scopes:
            scope.nodes = [node for node in _own_nodes(scope.body) if isinstance(node, _FLOW)]
            if scope.name:
                module_name = scope.path.removesuffix(".py").removesuffix("/__init__")
                self.local.setdefault((module_name, scope.name), []).append(scope)
        self._solve()

    def _collect(self, path: str, node: ast.AST, parents: list[_Scope]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _FUNCTION):
                args = child.args
                params = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
                method = bool(params) and params[0] in ("self", "cls")
                scope = _Scope(path, child.body, child.name, params, method, parents)
                if any(_is_route(decorator) for decorator in child.decorator_list):
                    scope.tainted.update(params)  # URL path parameters: client data too
                self.scopes.append(scope)
                self._collect(path, child, [*parents, scope])
            else:
                self._collect(path, child, parents)

    def resolve(self, call: ast.Call, scope: _Scope) -> list[_Scope] | None:
        """The package's functions a call may reach, or None when it is not resolved."""
        func, imported = call.func, self.imported.get(scope.path, {})
        here = scope.path.removesuffix(".py").removesuffix("/__init__")
        if isinstance(func, ast.Name):
            if (here, func.id) in self.local:
                return self.local[here, func.id]
            module, _, name = imported.get(func.id, "").replace(".", "/").rpartition("/")
            return self.local.get((module, name))
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = imported.get(func.value.id, "").replace(".", "/")
            if module in self.modules:
                return self.local.get((module, func.attr))
        return None

    def _is_request(self, node: ast.expr, scope: _Scope) -> bool:
        """Flask's ``request`` (imported from flask), or ``flask.request``."""
        imported = self.imported.get(scope.path, {})
        if isinstance(node, ast.Name):
            return imported.get(node.id) in ("flask.request", "flask.globals.request")
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "request"
            and isinstance(node.value, ast.Name)
            and imported.get(node.value.id) == "flask"
        )

    def tainted(self, node: ast.AST | None, scope: _Scope) -> bool:
        if node is None:
            return False
        key = id(node)
        if key not in self._memo:
            self._memo[key] = self._tainted(node, scope)
        return self._memo[key]

    def _tainted(self, node: ast.AST, scope: _Scope) -> bool:
        if isinstance(node, ast.Name):
            return any(node.id in s.tainted for s in (scope, *scope.parents))
        if isinstance(node, ast.Attribute):
            if self._is_request(node.value, scope):
                return node.attr in REQUEST_SOURCES
            return self.tainted(node.value, scope)
        if isinstance(node, ast.Subscript):
            # A stored value looked up by a client's key is chosen, not written, by them.
            return self.tainted(node.value, scope)
        if isinstance(node, ast.Call):
            if _callee(node) in SANITIZERS:
                return False
            targets = self.resolve(node, scope)
            if targets is not None:
                return any(target.returns_taint for target in targets)
            if isinstance(node.func, ast.Attribute) and node.func.attr in LOOKUPS:
                return self.tainted(node.func.value, scope)
            parts = [node.func, *node.args, *(k.value for k in node.keywords)]
            return any(self.tainted(part, scope) for part in parts)
        if isinstance(node, ast.Compare | ast.Lambda | ast.Constant):
            return False
        if isinstance(node, ast.UnaryOp):
            return not isinstance(node.op, ast.Not) and self.tainted(node.operand, scope)
        if isinstance(node, ast.IfExp):
            return self.tainted(node.body, scope) or self.tainted(node.orelse, scope)
        if isinstance(node, ast.JoinedStr):
            return self._tainted_url(node, scope)
        # Containers, operators, subscripts, comprehensions: any tainted part.
        return any(self.tainted(child, scope) for child in ast.iter_child_nodes(node))

    def _tainted_url(self, node: ast.JoinedStr, scope: _Scope) -> bool:
        """An f-string is tainted if request data comes before its query string: after an
        untainted ``...?``, a value cannot change where the redirect goes (``/p?next=x``)."""
        for part in node.values:
            if isinstance(part, ast.Constant):
                if "?" in str(part.value) or "#" in str(part.value):
                    return False
            elif self.tainted(part, scope):
                return True
        return False

    def _taint_params(self, call: ast.Call, scope: _Scope) -> bool:
        changed = False
        for target in self.resolve(call, scope) or []:
            params = target.params
            offset = 1 if target.method and isinstance(call.func, ast.Attribute) else 0
            hits = [
                params[i + offset]
                for i, arg in enumerate(call.args)
                if i + offset < len(params) and self.tainted(arg, scope)
            ]
            hits += [
                k.arg for k in call.keywords if k.arg in params and self.tainted(k.value, scope)
            ]
            for name in hits:
                if name not in target.tainted:
                    target.tainted.add(name)
                    changed = True
        return changed

    def _solve(self) -> None:
        changed = True
        while changed:
            changed = False
            self._memo.clear()
            for scope in self.scopes:
                for node in scope.nodes:
                    stores: list[tuple[ast.expr, ast.AST | None]] = []
                    if isinstance(node, ast.Assign):
                        stores = [(t, node.value) for t in node.targets]
                    elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
                        stores = [(node.target, node.value)]
                    elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                        stores = [(node.target, node.iter)]
                    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                        stores = [(node.optional_vars, node.context_expr)]
                    elif isinstance(node, ast.Return) and scope.name:
                        if not scope.returns_taint and self.tainted(node.value, scope):
                            scope.returns_taint = changed = True
                    elif isinstance(node, ast.Call):
                        changed |= self._taint_params(node, scope)
                    for target, value in stores:
                        if self.tainted(value, scope):
                            for name in _target_names(target):
                                if name not in scope.tainted:
                                    scope.tainted.add(name)
                                    changed = True

    def findings(self) -> dict[str, list[Finding]]:
        self._memo.clear()
        found: dict[str, list[Finding]] = {}
        for scope in self.scopes:
            for node in scope.nodes:
                if not (isinstance(node, ast.Call) and _callee(node) in REDIRECTS):
                    continue
                location = node.args[0] if node.args else None
                for keyword in node.keywords:
                    if keyword.arg == "location":
                        location = keyword.value
                if self.tainted(location, scope):
                    found.setdefault(scope.path, []).append(Finding(node.lineno, ast.unparse(node)))
        return found


def check_redirects(trees: dict[str, ast.Module]) -> dict[str, list[Finding]]:
    return RedirectTaint(trees).findings()


# -- (c) SQL built from strings --

#: Calls that take SQL text.
SQL_SINKS = frozenset({
    "text", "literal_column", "DDL", "exec_driver_sql", "execute", "executemany",
    "executescript",
})  # fmt: skip

#: String-built SQL that no outside value can reach, and why.
SQL_ALLOWED: dict[tuple[str, str], str] = {
    ("db.py", "cursor.execute(f'PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}')"): (
        "PRAGMA takes no bound parameters; the value is the integer module constant "
        "SQLITE_BUSY_TIMEOUT_MS"
    ),
    (
        "migrations/versions/0001_initial_schema.py",
        "op.execute(\"INSERT INTO aaa_audit_head (id, seq, hash) VALUES (1, 0, '\" + '0' * 64 + "
        '"\')")',
    ): "migration seed row: string literals only (the 64-zero genesis hash)",
}


def _string_built(node: ast.AST | None, built_names: set[str]) -> bool:
    if node is None:
        return False
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, ast.Add | ast.Mod)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "format":
            return True
        receiver = node.func.value
        if node.func.attr == "join" and isinstance(receiver, ast.Constant | ast.JoinedStr):
            return True
    if isinstance(node, ast.IfExp):
        return _string_built(node.body, built_names) or _string_built(node.orelse, built_names)
    if isinstance(node, ast.Name):
        return node.id in built_names
    return False


def _built_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in _own_nodes(body):
        if isinstance(node, ast.Assign | ast.AnnAssign) and _string_built(node.value, names):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(_target_names(target))
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add | ast.Mod):
            names.update(_target_names(node.target))
    return names


def check_sql(tree: ast.Module) -> list[Finding]:
    module_names = _built_names(tree.body)
    scopes: list[list[ast.stmt]] = [tree.body]
    scopes += [node.body for node in ast.walk(tree) if isinstance(node, _FUNCTION)]
    found: list[Finding] = []
    for body in scopes:
        names = module_names | _built_names(body)
        for node in _own_nodes(body):
            if not (isinstance(node, ast.Call) and _callee(node) in SQL_SINKS):
                continue
            statement = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg in ("statement", "sql", "text"):
                    statement = keyword.value
            if _string_built(statement, names):
                found.append(Finding(node.lineno, ast.unparse(node)))
    return sorted(found, key=lambda f: f.line)


# -- the checks on the package --

Checker = Callable[[ast.Module], list[Finding]]


@pytest.fixture(scope="module")
def modules() -> dict[str, ast.Module]:
    return source_modules()


def _per_module(modules: dict[str, ast.Module], check: Checker) -> dict[str, list[Finding]]:
    found = {path: check(tree) for path, tree in modules.items()}
    return {path: items for path, items in found.items() if items}


def test_T01_no_secret_compared_with_eq(modules):
    bad = _unallowed(_per_module(modules, check_comparisons), COMPARE_ALLOWED)
    assert not bad, (
        "secret-looking values compared with == or != (use hmac.compare_digest, or allow-list "
        "the comparison in COMPARE_ALLOWED with the reason it is not secret):\n" + _report(bad)
    )


def test_T01_comparison_allow_list_is_current(modules):
    stale = _stale(_per_module(modules, check_comparisons), COMPARE_ALLOWED)
    assert not stale, f"COMPARE_ALLOWED entries that match nothing any more: {stale}"


def test_redirects_from_request_data_go_through_safe_next(modules):
    bad = check_redirects(modules)
    assert not bad, (
        "redirect() to a value derived from request data without safe_next():\n" + _report(bad)
    )


def test_L01_no_sql_built_from_strings(modules):
    bad = _unallowed(_per_module(modules, check_sql), SQL_ALLOWED)
    assert not bad, (
        "SQL text built with an f-string, %, .format(), join or + (use bound parameters, or "
        "allow-list a constant in SQL_ALLOWED with the reason):\n" + _report(bad)
    )


def test_L01_sql_allow_list_is_current(modules):
    stale = _stale(_per_module(modules, check_sql), SQL_ALLOWED)
    assert not stale, f"SQL_ALLOWED entries that match nothing any more: {stale}"


def test_the_scan_sees_the_whole_package(modules):
    # A broken path would make every check above pass vacuously.
    assert len(modules) > 40
    assert {"web/security.py", "services/accounts.py", "db.py", "compat/views.py"} <= set(modules)


# -- each checker can fail: bad samples are flagged, good ones are not --


def _flagged(check: Checker, code: str) -> list[Finding]:
    return check(ast.parse(code))


@pytest.mark.parametrize(
    "code",
    [
        "if token == supplied: pass",
        "ok = user.password_hash != candidate",
        "valid = hmac.new(key, msg, 'sha256').hexdigest() == sig",
        "ok = request.form['csrf_token'] == session['csrf']",
        "ok = claims.get('nonce') == expected",
        "ok = row.signature == computed",
        "ok = submitted == totp.now()",
        "ok = recovery_code != stored",
        "ok = a == b == reset_secret",
        "ok = api_key == header_value",
    ],
)
def test_T01_comparison_checker_flags_bad_samples(code):
    assert _flagged(check_comparisons, code), code


@pytest.mark.parametrize(
    "code",
    [
        "ok = hmac.compare_digest(token, supplied)",
        "ok = response.status_code == 401",
        "ok = preset == 'fast'",
        "q = select(User).where(ApiToken.token_hash == digest)",
        "q = select(events.c.hash).where(events.c.hash == digest)",
        "ok = user.email == address",
        "ok = token is None",
    ],
)
def test_T01_comparison_checker_passes_good_samples(code):
    assert not _flagged(check_comparisons, code), code


_REDIRECT_BAD = {
    "direct": "def v():\n    return redirect(request.args['next'])\n",
    "get": "def v():\n    return redirect(request.args.get('next', '/'))\n",
    "assigned": "def v():\n    nxt = request.values.get('next')\n    return redirect(nxt)\n",
    "or-default": "def v():\n    return redirect(request.form.get('next') or url_for('x'))\n",
    "header": "def v():\n    return flask.redirect(request.referrer)\n",
    "f-string": "def v():\n    t = request.args['t']\n    return redirect(f'/go/{t}')\n",
    "keyword": "def v():\n    return redirect(location=request.headers['X-Next'], code=303)\n",
    "closure": (
        "def factory():\n    nxt = request.args.get('next')\n"
        "    def view():\n        return redirect(nxt)\n    return view\n"
    ),
    "helper-return": (
        "def target():\n    return request.args.get('next')\n"
        "def v():\n    return redirect(target())\n"
    ),
    "helper-param": (
        "def go(where):\n    return redirect(where, 303)\n"
        "def v():\n    return go(request.args['next'])\n"
    ),
    "json-dict": (
        "def v():\n    data = request.get_json()\n    d = {'n': data['next']}\n"
        "    return redirect(d['n'])\n"
    ),
}

_REDIRECT_GOOD = {
    "safe_next": "def v():\n    return redirect(safe_next(request.args.get('next')) or '/')\n",
    "assigned": (
        "def v():\n    nxt = safe_next(request.values.get('next'))\n"
        "    return redirect(nxt or url_for('home'))\n"
    ),
    "url_for": "def v():\n    return redirect(url_for('login', next=request.full_path))\n",
    "constant": "def v():\n    return redirect('/')\n",
    "query-string": (
        "def v():\n    return redirect(f\"{url_for('login')}?next={quote(request.full_path)}\")\n"
    ),
    "condition-only": (
        "def v():\n    return redirect('/a' if request.args.get('x') == '1' else '/b')\n"
    ),
}


_FLASK = "import flask\nfrom flask import redirect, request, url_for\n"


@pytest.mark.parametrize("code", _REDIRECT_BAD.values(), ids=_REDIRECT_BAD.keys())
def test_redirect_checker_flags_bad_samples(code):
    assert check_redirects({"sample.py": ast.parse(_FLASK + code)}), code


@pytest.mark.parametrize("code", _REDIRECT_GOOD.values(), ids=_REDIRECT_GOOD.keys())
def test_redirect_checker_passes_good_samples(code):
    assert not check_redirects({"sample.py": ast.parse(_FLASK + code)}), code


class _WithoutSafeNext(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if _callee(node) == "safe_next" and node.args:
            return node.args[0]
        return node


def test_redirect_checker_catches_the_library_without_safe_next():
    # The library's own redirects to ``next``, with every safe_next() call removed, are
    # flagged: the analysis reaches the real call sites, it does not pass them by.
    stripped = {
        path: tree if path == "web/security.py" else _WithoutSafeNext().visit(tree)
        for path, tree in source_modules().items()
    }
    flagged = set(check_redirects(stripped))
    assert {"web/auth.py", "web/account.py", "web/signin.py", "compat/views.py"} <= flagged


def test_redirect_checker_follows_helpers_across_modules():
    helpers = ast.parse(_FLASK + "def read_next():\n    return request.form.get('next')\n")
    views = ast.parse(
        _FLASK + "from helpers import read_next\ndef v():\n    return redirect(read_next())\n"
    )
    assert check_redirects({"helpers.py": helpers, "views.py": views})


@pytest.mark.parametrize(
    "code",
    [
        "db.execute(text(f'SELECT * FROM t WHERE name = {name}'))",
        "db.execute(text('SELECT * FROM t WHERE id = %s' % uid))",
        "db.execute(text('SELECT * FROM t ORDER BY {}'.format(col)))",
        "db.execute(text('SELECT * FROM t WHERE n = ' + name))",
        "conn.exec_driver_sql(f'DELETE FROM t WHERE id = {i}')",
        "cursor.execute('SELECT %s' % x)",
        "q = literal_column(', '.join(cols))",
        "def f(name):\n    sql = f'SELECT * FROM t WHERE n = {name}'\n    return text(sql)\n",
        "def f(name):\n    sql = 'SELECT * FROM t'\n    sql += ' WHERE n = ' + name\n"
        "    return db.execute(text(sql))\n",
        "op.execute('DROP TABLE ' + table)",
    ],
)
def test_L01_sql_checker_flags_bad_samples(code):
    assert _flagged(check_sql, code), code


@pytest.mark.parametrize(
    "code",
    [
        "db.execute(text('SELECT * FROM t WHERE n = :n'), {'n': name})",
        "db.execute(select(User).where(User.id == uid))",
        "db.execute(text('SELECT 1 '\n 'FROM t'))",
        "conn.exec_driver_sql('BEGIN IMMEDIATE' if w else 'BEGIN')",
        "cursor.execute('SELECT ?', (x,))",
    ],
)
def test_L01_sql_checker_passes_good_samples(code):
    assert not _flagged(check_sql, code), code


# -- (d) the templates: password inputs and the way out (ASVS 6.2.6, 6.2.7, 7.4.4) --

TEMPLATES = SRC / "templates" / "aaa"

_FIELD_CALL = re.compile(r"\bfield\(\s*\"(?P<name>[^\"]+)\"(?P<args>[^)]*)\)")
_INPUT_TAG = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"\b(?P<key>[a-z-]+)=\"(?P<value>[^\"]*)\"", re.IGNORECASE)
_MACRO_ARGUMENT = re.compile(r"\b(?P<key>type|autocomplete)=\"(?P<value>[^\"]*)\"")
#: What a password manager needs to fill (current) or to offer to save (new) a password.
PASSWORD_AUTOCOMPLETE = frozenset({"current-password", "new-password"})
#: Scripts or attributes that would stop pasting or password managers.
_PASTE_BLOCKING = re.compile(r"onpaste|[\"']paste[\"']|autocomplete=\"off\"[^>]*type=\"password\"")


def check_password_inputs(text: str) -> list[str]:
    """Problems of a template's password inputs: a field named like a password that is not
    ``type="password"``, a password input without ``autocomplete`` for password managers,
    and anything that blocks pasting."""
    problems: list[str] = []
    found: list[tuple[str, dict[str, str]]] = []
    for match in _FIELD_CALL.finditer(text):
        args = {m["key"]: m["value"] for m in _MACRO_ARGUMENT.finditer(match["args"])}
        found.append((match["name"], args))
    for tag in _INPUT_TAG.findall(text):
        attributes = {m["key"].lower(): m["value"] for m in _ATTRIBUTE.finditer(tag)}
        found.append((attributes.get("name", ""), attributes))
    for name, attributes in found:
        is_password = attributes.get("type") == "password"
        if "password" in name and not is_password:
            problems.append(f"{name}: not type=password")
        if is_password and attributes.get("autocomplete") not in PASSWORD_AUTOCOMPLETE:
            problems.append(f"{name}: autocomplete is not current-password or new-password")
    if _PASTE_BLOCKING.search(text):
        problems.append("something blocks pasting or password managers")
    return problems


def test_password_inputs_are_masked_and_password_managers_work():
    # ASVS 6.2.6 (masked entry) and 6.2.7 (paste and password managers allowed).
    problems = {
        path.name: found
        for path in sorted(TEMPLATES.glob("*.html"))
        if (found := check_password_inputs(path.read_text(encoding="utf-8")))
    }
    static = "\n".join(p.read_text(encoding="utf-8") for p in (SRC / "static").rglob("*.js"))
    if _PASTE_BLOCKING.search(static):
        problems["static/*.js"] = ["something blocks pasting"]
    assert not problems, problems


def test_compat_password_fields_are_password_fields(modules):
    # The Flask-User compatibility forms render through WTForms: PasswordField is masked.
    tree = modules["compat/forms.py"]
    fields = {
        target.id: ast.unparse(node.value.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        for target in node.targets
        if isinstance(target, ast.Name) and "password" in target.id
    }
    assert fields
    assert set(fields.values()) == {"PasswordField"}, fields


@pytest.mark.parametrize(
    "text",
    [
        '{{ field("password", "Password", errors=errors) }}',
        '{{ field("new_password", "New", type="text", autocomplete="new-password") }}',
        '<input name="password" autocomplete="current-password">',
        '<input name="pin" type="password">',
        '<input name="secret" type="password" autocomplete="off">',
        '<input name="password" type="password" autocomplete="current-password" onpaste="x()">',
        "<script>el.addEventListener('paste', e => e.preventDefault())</script>",
    ],
)
def test_password_input_checker_flags_bad_samples(text):
    assert check_password_inputs(text), text


def test_password_input_checker_passes_good_samples():
    text = (
        '{{ field("password", "Password", type="password", autocomplete="current-password") }}'
        '<input name="new_password" type="password" autocomplete="new-password" required>'
        '<input name="confirm" required autocomplete="off">'
    )
    assert check_password_inputs(text) == []


def test_every_library_page_offers_sign_out():
    # ASVS 7.4.4: every page of the library extends the base layout, whose header has a
    # POST sign-out form (with its CSRF token) for a signed-in user.
    base = (TEMPLATES / "base.html").read_text(encoding="utf-8")
    assert re.search(
        r"<form[^>]*method=\"post\"[^>]*action=\"\{\{ url_for\('aaa_auth\.logout'\) \}\}\"", base
    )
    assert 'name="csrf_token"' in base
    pages = [p for p in TEMPLATES.glob("*.html") if p.name not in ("base.html", "_macros.html")]
    assert len(pages) > 20
    lost = [
        p.name
        for p in pages
        if not re.search(r"\{% extends \"aaa/(base|admin_base)\.html\" %\}", p.read_text("utf-8"))
    ]
    assert not lost, f"pages without the layout (and its sign-out form): {lost}"
    admin_base = (TEMPLATES / "admin_base.html").read_text(encoding="utf-8")
    assert '{% extends "aaa/base.html" %}' in admin_base


# -- (e) small facts the ASVS mapping in docs/security.md rests on --


def _imported_modules(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_secrets_come_from_a_csprng_not_the_random_module(modules):
    # ASVS 6.5.3, 7.2.3: tokens, codes and seeds come from ``secrets``; ``random`` (a
    # predictable generator) is imported nowhere in the package. Ruff's S311 flags its
    # calls too; this also catches an import that ruff's rule would not see used.
    users = sorted(path for path, tree in modules.items() if "random" in _imported_modules(tree))
    assert not users, users
    assert "secrets" in _imported_modules(modules["services/otp.py"])


def test_random_import_checker_sees_both_import_forms():
    assert "random" in _imported_modules(ast.parse("import random"))
    assert "random" in _imported_modules(ast.parse("from random import choice"))
    assert "random" not in _imported_modules(ast.parse("import secrets"))


def test_no_migration_creates_a_user(modules):
    # ASVS 6.3.2: no default account. The migrations seed two one-row tables (the
    # authorization version and the audit head) and nothing else.
    seeded = [
        f"{path}: {ast.unparse(node)[:100]}"
        for path, tree in modules.items()
        if path.startswith("migrations/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _callee(node) in {"execute", "bulk_insert", "insert"}
        and "aaa_users" in ast.unparse(node)
    ]
    assert not seeded, seeded


def test_no_cors_header_is_sent(modules):
    # ASVS 3.4.2: the library opens nothing to other origins; an app that adds CORS
    # chooses its own allowlist.
    senders = [
        path
        for path, tree in modules.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "access-control-allow" in node.value.lower()
    ]
    assert not senders, senders


def test_default_csp_has_the_asvs_directives():
    # ASVS 3.4.3 (object-src 'none', base-uri 'none') and 3.4.6 (frame-ancestors).
    from flask_aaa.config import DEFAULTS

    directives = {
        part.split()[0]: part.split()[1:]
        for part in (p.strip() for p in DEFAULTS["CONTENT_SECURITY_POLICY"].split(";"))
        if part
    }
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in directives.get("script-src", directives["default-src"])

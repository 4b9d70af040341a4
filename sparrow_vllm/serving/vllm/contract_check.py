"""Checks sparrow-vllm's touch points in vLLM (`sparrow_vllm.serving.vllm.contract`)
statically against vLLM's source. A CI/dev tool, not part of the serving path.

`check_source(root)` parses (with `ast`, never importing vLLM) the vLLM package under `root`
and returns one human-readable problem per broken touch point: a missing module, a missing
name, a name of the wrong kind, or a parameter list that no longer matches. So a vLLM
release the plugin has never run on (vLLM 0.33 has no CPU build) is checked from its
wheel's Python source, and the installed vLLM from its site-packages
(`sparrow_vllm.serving.vllm.source_roots`): tests/unit/serving/vllm/test_vllm_contract.py does both.
`validate_touch_points()` checks the list itself.

`python scripts/check_vllm_contract.py ROOT` prints where each touch point lives in the
vLLM source under ROOT (site-packages, or a directory holding an extracted `vllm/`) and the
problems; `--vllm 0.33.0` checks that release's wheel (downloaded once, see
`sparrow_vllm.serving.vllm.source_roots.wheel_source`); no argument checks the installed vLLM.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from sparrow_vllm.serving.vllm.contract import TOUCH_POINTS, Kind, Match, TouchPoint

_KINDS = get_args(Kind)
_MATCHES = get_args(Match)


# ---- reading vLLM's source ---------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """Where a touch point lives in the source: file, line, and its kind there."""

    kind: str  # "class", "function", "attribute", "module-name"
    path: Path
    line: int
    node: ast.AST | None = None

    def params(self) -> tuple[str, ...] | None:
        if self.kind != "function" or not isinstance(
            self.node, ast.FunctionDef | ast.AsyncFunctionDef
        ):
            return None
        return parameter_names(self.node.args)

    def required(self) -> set[str]:
        """Parameters without a default (a caller must pass them)."""
        if not isinstance(self.node, ast.FunctionDef | ast.AsyncFunctionDef):
            return set()
        args = self.node.args
        positional = [a.arg for a in (*args.posonlyargs, *args.args)]
        required = set(positional[: len(positional) - len(args.defaults)])
        required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
        return required


def parameter_names(args: ast.arguments) -> tuple[str, ...]:
    """A def's parameters as written: names, "*args", "*" before keyword-only, "**kw"."""
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if args.vararg is not None:
        names.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg is not None:
        names.append("**" + args.kwarg.arg)
    return tuple(names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_statements(body: list[ast.stmt]):
    """Statements of a module or class body that run, descending into if/try blocks;
    `if TYPE_CHECKING:` bodies are skipped (their else branch is kept)."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _runtime_statements(stmt.body)
            yield from _runtime_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, *(h.body for h in stmt.handlers), stmt.orelse,
                          stmt.finalbody):
                yield from _runtime_statements(block)
        else:
            yield stmt


def _target_names(target: ast.expr):
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)


def _flatten(targets: list[ast.expr]):
    for target in targets:
        if isinstance(target, ast.Tuple | ast.List):
            yield from _flatten(target.elts)
        elif isinstance(target, ast.Starred):
            yield from _flatten([target.value])
        else:
            yield target


class _Module:
    """One parsed module: its runtime bindings (last one wins, as at run time)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self.is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.bindings: dict[str, ast.stmt] = {}
        self.lazy_exports: dict[str, ast.stmt] = {}
        has_getattr = False
        for stmt in _runtime_statements(tree.body):
            for name in self._bound_names(stmt):
                self.bindings[name] = stmt
            has_getattr |= isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__"
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict):
                for key in stmt.value.keys:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        self.lazy_exports.setdefault(key.value, stmt)
        if not has_getattr:  # a dict of strings is a lazy export table only with __getattr__
            self.lazy_exports = {}

    @staticmethod
    def _bound_names(stmt: ast.stmt):
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield stmt.name
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                yield from _target_names(target)
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign):
            yield from _target_names(stmt.target)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                yield alias.asname or alias.name.split(".")[0]
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if alias.name != "*":
                    yield alias.asname or alias.name

    def import_source(self, stmt: ast.ImportFrom) -> str:
        """The absolute module an `from X import ...` statement reads from."""
        if not stmt.level:
            return stmt.module or ""
        parts = self.name.split(".")
        base = parts if self.is_package else parts[:-1]
        base = base[: len(base) - (stmt.level - 1)]
        return ".".join([*base, stmt.module] if stmt.module else base)


class Source:
    """A vLLM source tree: `root` holds the `vllm` package (or is it)."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        if (root / "vllm" / "__init__.py").is_file():
            self.root = root
        elif root.name == "vllm" and (root / "__init__.py").is_file():
            self.root = root.parent
        else:
            raise FileNotFoundError(f"no vllm package (vllm/__init__.py) under {root}")
        self._modules: dict[str, _Module | None] = {}

    def module(self, name: str) -> _Module | None:
        if name not in self._modules:
            base = self.root.joinpath(*name.split("."))
            path = next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()),
                        None)
            self._modules[name] = None if path is None else _Module(name, path)
        return self._modules[name]

    def _found(self, mod: _Module, stmt: ast.stmt) -> Found:
        kind = {ast.ClassDef: "class", ast.FunctionDef: "function",
                ast.AsyncFunctionDef: "function"}.get(type(stmt), "module-name")
        return Found(kind, mod.path, stmt.lineno, stmt)

    def resolve(self, module: str, name: str, _depth: int = 0) -> Found | None:
        """A module-level name, followed through `from X import name` within vLLM."""
        mod = self.module(module)
        if mod is None:
            return None
        stmt = mod.bindings.get(name)
        if stmt is None:
            if name in mod.lazy_exports:
                return Found("module-name", mod.path, mod.lazy_exports[name].lineno)
            sub = self.module(f"{module}.{name}") if mod.is_package else None
            return None if sub is None else Found("module-name", sub.path, 1)
        if isinstance(stmt, ast.ImportFrom) and _depth < 20:
            alias = next(a for a in stmt.names if (a.asname or a.name) == name)
            origin = self.resolve(mod.import_source(stmt), alias.name, _depth + 1)
            if origin is not None:
                return origin
        return self._found(mod, stmt)

    def find_member(self, cls: Found, member: str, _seen: frozenset = frozenset()) -> Found | None:
        """`member` of a class, as defined in its body, by `self.member = ...` in one of its
        methods, or inherited from a base class vLLM defines."""
        node = cls.node
        assert isinstance(node, ast.ClassDef)
        key = (cls.path, node.lineno)
        if key in _seen:
            return None
        found: Found | None = None
        for stmt in _runtime_statements(node.body):
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if stmt.name == member:
                    is_property = any(
                        (isinstance(d, ast.Name) and d.id in ("property", "cached_property"))
                        or (isinstance(d, ast.Attribute) and d.attr in ("cached_property",
                                                                        "setter"))
                        for d in getattr(stmt, "decorator_list", ())
                    )
                    kind = "attribute" if is_property else self._found_kind(stmt)
                    found = Found(kind, cls.path, stmt.lineno, stmt)
            elif member in set(_Module._bound_names(stmt)):
                found = Found("attribute", cls.path, stmt.lineno, stmt)
        if found is not None:
            return found
        for fn in ast.walk(node):  # instance attributes: self.member = ... in any method
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or not fn.args.args:
                continue
            this = fn.args.args[0].arg
            for sub in ast.walk(fn):
                targets = (sub.targets if isinstance(sub, ast.Assign)
                           else [sub.target] if isinstance(sub, ast.AnnAssign | ast.AugAssign)
                           else [])
                for t in _flatten(targets):
                    if (isinstance(t, ast.Attribute) and t.attr == member
                            and isinstance(t.value, ast.Name) and t.value.id == this):
                        return Found("attribute", cls.path, sub.lineno, sub)
        for base in node.bases:
            base_cls = self._resolve_base(cls, base)
            if base_cls is not None:
                hit = self.find_member(base_cls, member, _seen | {key})
                if hit is not None:
                    return hit
        return None

    @staticmethod
    def _found_kind(stmt: ast.stmt) -> str:
        return "class" if isinstance(stmt, ast.ClassDef) else "function"

    def _resolve_base(self, cls: Found, base: ast.expr) -> Found | None:
        module = self._module_of(cls.path)
        if isinstance(base, ast.Subscript):  # Generic[T], Base[T]
            base = base.value
        if isinstance(base, ast.Name):
            hit = self.resolve(module, base.id)
        elif isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
            mod = self.module(module)
            stmt = mod.bindings.get(base.value.id) if mod else None
            if not isinstance(stmt, ast.Import):
                return None
            alias = next(a for a in stmt.names if (a.asname or a.name.split(".")[0]) == base.value.id)
            hit = self.resolve(alias.name if alias.asname else base.value.id, base.attr)
        else:
            return None
        return hit if hit is not None and hit.kind == "class" else None

    def _module_of(self, path: Path) -> str:
        rel = path.relative_to(self.root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        return ".".join(parts)

    def locate(self, tp: TouchPoint) -> Found | str:
        """Where `tp` lives, or why it cannot be found."""
        if self.module(tp.module) is None:
            return f"module {tp.module} is missing"
        head, *members = tp.name.split(".")
        found = self.resolve(tp.module, head)
        if found is None:
            return f"{tp.module} has no name {head!r}"
        for i, member in enumerate(members):
            if found.kind != "class":
                owner = ".".join([head, *members[:i]])
                return f"{owner} is a {found.kind}, not a class, so it has no {member!r}"
            hit = self.find_member(found, member)
            if hit is None:
                owner = ".".join([head, *members[:i]])
                return (f"class {owner} ({self._rel(found.path)}:{found.line}) has no "
                        f"{member!r}, nor do its bases defined in vLLM")
            found = hit
        return found

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def where(self, found: Found) -> str:
        return f"{self._rel(found.path)}:{found.line}"


def _kind_ok(expected: str, found: str) -> bool:
    if expected == "module-name":
        return True
    if expected in ("function", "method"):
        return found == "function"
    return expected == found


def _params_problem(tp: TouchPoint, found: Found) -> str | None:
    want, actual = tp.params or (), found.params() or ()
    new_required = sorted(found.required() - set(want))
    if tp.match == "exact":
        ok = actual == want
    elif tp.match == "prefix":
        ok = actual[: len(want)] == want and not new_required
    else:
        ok = set(want) <= set(actual) and not new_required
    if ok:
        return None
    missing = [p for p in want if p not in actual]
    extra = [p for p in actual if p not in want] if tp.match == "exact" else []
    detail = "; ".join(
        part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"new {', '.join(extra)}" if extra else "",
            f"new required (no default) {', '.join(new_required)}"
            if new_required and tp.match != "exact" else "",
        ) if part
    ) or "order differs"
    return (f"parameters ({', '.join(actual)}) do not match ({', '.join(want)}) "
            f"[{tp.match}]: {detail}")


def check_touch_point(source: Source, tp: TouchPoint) -> str | None:
    """The problem with one touch point in `source`, or None."""
    label = f"{tp.module}:{tp.name} ({tp.kind}; {tp.why})"
    found = source.locate(tp)
    if isinstance(found, str):
        return f"{label}: {found}"
    if not _kind_ok(tp.kind, found.kind):
        return f"{label}: is a {found.kind} at {source.where(found)}, expected a {tp.kind}"
    if tp.params is not None:
        problem = _params_problem(tp, found)
        if problem:
            return f"{label}: {problem} at {source.where(found)}"
    return None


def check_source(root: Path, touch_points: list[TouchPoint] | None = None) -> list[str]:
    """Problems with `touch_points` (default TOUCH_POINTS) in the vLLM source under `root`
    (the directory holding the `vllm` package, or the package itself); [] when all hold.
    Nothing is imported: the .py files are parsed with `ast`."""
    source = Source(root)
    problems = [check_touch_point(source, tp) for tp in (touch_points or TOUCH_POINTS)]
    return [p for p in problems if p is not None]


def describe(root: Path, touch_points: list[TouchPoint] | None = None) -> list[str]:
    """One line per touch point: where it lives under `root` and its parameters."""
    source = Source(root)
    lines = []
    for tp in touch_points or TOUCH_POINTS:
        found = source.locate(tp)
        if isinstance(found, str):
            lines.append(f"{tp.module}:{tp.name}  MISSING: {found}")
            continue
        params = found.params()
        sig = f"({', '.join(params)})" if params is not None else ""
        lines.append(f"{tp.module}:{tp.name}{sig}  {found.kind} at {source.where(found)}")
    return lines


def validate_touch_points(touch_points: list[TouchPoint] | None = None) -> list[str]:
    """Mistakes in the list itself: unknown kinds or match modes, params on a
    non-callable, duplicates."""
    errors, seen = [], set()
    for tp in touch_points or TOUCH_POINTS:
        key = (tp.module, tp.name)
        if tp.kind not in _KINDS:
            errors.append(f"{key}: unknown kind {tp.kind!r}")
        if tp.match not in _MATCHES:
            errors.append(f"{key}: unknown match {tp.match!r}")
        if tp.params is not None and tp.kind not in ("function", "method"):
            errors.append(f"{key}: params given for a {tp.kind}")
        if tp.kind == "method" and "." not in tp.name:
            errors.append(f"{key}: a method is named Class.method")
        if not tp.why.strip():
            errors.append(f"{key}: no why")
        if key in seen:
            errors.append(f"{key}: listed twice")
        seen.add(key)
    return errors

"""The policy file contract, checked statically (parsing is safe; running is the sandbox's job).

A policy is one self-contained ``.py`` file:

- ``class Policy`` with ``reset(self, seed)`` and ``act(self, obs, info) -> action``;
  ``__init__`` is given what it declares of ``action_space``, ``simulator_model`` (the path of the task's
  simulator model, a MuJoCo task's XML, else None) and ``setup`` (below);
- optionally a top-level ``setup()`` for expensive, deterministic set-up (a planner's table): run once per
  worker with ``random`` and ``numpy.random`` seeded with 0, given what it declares of ``simulator_model``
  and ``action_space``; each episode's ``Policy.__init__(setup=...)`` gets its own copy of the value (numpy
  arrays shared read-only), so an episode still depends on its seed alone (``envs.policy_slots``);
- a policy may be a folder: ``policy.py`` plus the data files it reads, found beside ``__file__`` and
  read-only (``envs.policy_files``);
- optionally ``self.diagnostics = {"mode": ..., "reason": ...}`` set in ``act``; the
  evaluator records it per step in the trace;
- optionally ``observe(self, reward, terminated, truncated, info)``, called after every step
  (the last one included) with what the env's step returned, before the next ``act``;
- optionally ``@dataclass class Tunables`` whose fields are declared with
  ``tunable(default, low, high, doc)``; a scalar search reads and rewrites those
  defaults (and nothing else) through ``read_tunables`` / ``rewrite_tunables``;
- imports limited to the standard library, numpy, scipy, cv2 and simulator packages: refused
  here where they run when the file loads (module and class level); an import inside a function
  runs only if that code does, so it is a warning here (``lazy_imports``) and is enforced where it
  runs, in the policy process (``allowed_import``): a refused import fails that episode, with why.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from common.errors import PolicyError
from envs.import_rule import HEURIST_PACKAGES, allowed_import


class Tunable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    default: float
    low: float
    high: float
    doc: str
    integer: bool = False


_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def source_lines(source: str) -> list[str]:
    """The source's lines as Python numbers them (``ast``'s ``lineno``), line ends kept: split at ``\\n``, ``\\r\\n``
    and ``\\r`` only. ``str.splitlines`` also splits at form feeds, ``\\x1c``-``\\x1e``, ``\\x85`` and ``\\u2028``, which
    a comment or string may hold, and every offset after one would land on the wrong line."""
    return _LINES.findall(source)


def line_offsets(source: str) -> list[int]:
    """The UTF-8 byte offset where each line starts (``ast``'s ``col_offset`` counts bytes too), and the end."""
    offsets = [0]
    for line in source_lines(source):
        offsets.append(offsets[-1] + len(line.encode()))
    return offsets


def policy_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# What a policy's source may weigh. Parsing takes about 300 times a file's size in memory (a 4 MB table of numbers
# took 1.2 GB in heurist's own process, which no sandbox bounds), and no policy's logic is that long: a table
# belongs in a data file of a policy folder, which the policy reads in its sandbox.
MAX_SOURCE_BYTES = 2**20


def too_large(name: str) -> str:
    return (f"{name} is larger than {MAX_SOURCE_BYTES >> 20} MiB of source, more than any policy's code; keep large "
            f"tables in data files (a policy folder: policy.py and the files it reads)")


def check_policy_file(path: Path | str) -> ast.Module:
    """Raise PolicyError with a one-line reason unless ``path`` is a well-formed policy file."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise PolicyError(f"policy file {path} does not exist; give the path to a .py file with a class Policy")
    if path.is_dir():
        raise PolicyError(f"{path} is a folder; a run starts from one policy .py file (heurist eval also reads "
                          f"policy folders: policy.py and its data files)")
    if path.suffix != ".py":
        raise PolicyError(f"{path} is not a .py file; a policy is one Python file with a class Policy")
    try:
        if path.stat().st_size > MAX_SOURCE_BYTES:  # before reading it: it may be any size
            raise PolicyError(too_large(str(path)))
        source = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:  # every reader after this one (the run's copy, git, the sandbox) takes it as UTF-8
        raise PolicyError(f"{path} is not UTF-8 text; a policy is Python source: save it as UTF-8") from None
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
    return check_policy_source(source, str(path))


def _imports(tree: ast.Module, name: str) -> list[tuple[ast.stmt, str, bool]]:
    """Every import as (statement, module, whether it runs when the file loads: not inside a function)."""
    found: list[tuple[ast.stmt, str, bool]] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child, alias.name, at_load) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level > 0:
                raise PolicyError(f"{name}:{child.lineno} uses a relative import; a policy must be self-contained")
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.append((child, child.module, at_load))
            visit(child, at_load and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


def lazy_imports(tree: ast.Module, name: str = "<policy>") -> list[str]:
    """Warnings for imports inside functions that the policy process would refuse if that code ran."""
    return [f"{name}:{node.lineno} {why} (inside a function: that episode fails if it runs)"
            for node, module, at_load in _imports(tree, name) if not at_load and (why := allowed_import(module))]


# How deep a policy's syntax tree may nest. Python parses about 1,000 levels, but heurist's own readers of a policy
# (the seed rule, the complexity measure) walk it recursively, and a model's sum of 450 terms that Python took
# stopped the run in its check with a RecursionError, and again at every resume, which replays the same answer (a
# red-team review, 2026-12-05). Written policies nest a few dozen levels.
MAX_NESTING = 200


def nesting(tree: ast.AST) -> int:
    """The depth of the deepest node of ``tree``, walked without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def check_policy_source(source: str, name: str = "<policy>") -> ast.Module:
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise PolicyError(too_large(name))
    try:
        tree = ast.parse(source, filename=name)
        # Compiled too: some errors only compilation finds (a `from __future__` after other code, `return`
        # outside a function), and each would otherwise fail every episode at load.
        compile(tree, name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise PolicyError(f"{name} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except (RecursionError, MemoryError):  # a sum of thousands of terms, thousands of nested lambdas
        raise PolicyError(f"{name} is nested too deeply for Python to parse (an expression of thousands of terms "
                          f"or levels); split it into smaller ones, or keep the numbers in a data file") from None
    depth = nesting(tree)
    if depth > MAX_NESTING:
        raise PolicyError(f"{name} nests {depth} levels deep (a sum of hundreds of terms, an elif chain of hundreds "
                          f"of branches), past the {MAX_NESTING} heurist reads; split it into smaller ones, or keep "
                          f"the numbers in a data file")
    for node, module, at_load in _imports(tree, name):
        why = allowed_import(module)
        if why is not None and (at_load or module.split(".")[0] in HEURIST_PACKAGES):
            raise PolicyError(f"{name}:{node.lineno} {why}")
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    policy = classes.get("Policy")
    if policy is None:
        raise PolicyError(f"{name} defines no top-level class Policy; a policy file needs class Policy with reset(seed) and act(obs, info)")
    methods = {n.name: n for n in policy.body if isinstance(n, ast.FunctionDef)}
    missing = [m for m in ("reset", "act") if m not in methods]
    if missing:
        raise PolicyError(f"{name}: class Policy has no {' or '.join(missing)} method; it needs reset(self, seed) and act(self, obs, info)")
    init = methods.get("__init__")
    takes = {a.arg for a in [*init.args.args, *init.args.kwonlyargs]} if init is not None else set()
    if "setup" in takes and not any(isinstance(n, ast.FunctionDef) and n.name == "setup" for n in tree.body):
        raise PolicyError(f"{name}:{init.lineno} Policy.__init__ takes setup, but the file defines no top-level "
                          f"function setup(); define setup() to compute what every episode shares, once per worker")
    observe = methods.get("observe")
    if observe is not None and not observe.decorator_list and not observe.args.vararg:
        positional = len(observe.args.posonlyargs) + len(observe.args.args)
        required = positional - len(observe.args.defaults)
        if positional < 5 or required > 5:
            raise PolicyError(f"{name}:{observe.lineno} observe takes observe(self, reward, terminated, truncated, "
                              f"info); it is called after every step with what the step returned")
    _declared_tunables(tree, name)  # validates declarations
    return tree


def policy_observes(source: str) -> bool:
    """Whether the policy's class Policy defines ``observe`` (called after each step with its reward)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # checked before: the check said why
        return False
    return any(isinstance(n, ast.ClassDef) and n.name == "Policy" and any(
        isinstance(m, ast.FunctionDef) and m.name == "observe" for m in n.body) for n in tree.body)


def binds_setup(source: str) -> bool:
    """Whether the policy file binds the name ``setup`` at its top (a def, an assignment, an import, or a ``*``
    import that may bring one): heurist runs a set-up only where the file's module has one, so a policy process
    that reports a set-up of a file without one reports what never ran."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # checked before: the check said why
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "setup":
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name.split(".")[0]) in ("setup", "*") for alias in node.names):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(n, ast.Name) and n.id == "setup" for t in targets for n in ast.walk(t)):
            return True
    return False


# What a policy may hand its seed to: random generators (and int(), to make one; reset(), a part's own).
GENERATORS = {"Random", "seed", "default_rng", "RandomState", "SeedSequence", "Generator", "PCG64", "MT19937",
              "Philox", "SFC64"}
SEEDING_CALLS = GENERATORS | {"int", "reset"}


def _none_check(node: ast.Compare) -> bool:
    """``x is None``, ``None is not x``: asking whether a seed was given is not special-casing it."""
    sides = [node.left, *node.comparators]
    return all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops) and any(
        isinstance(s, ast.Constant) and s.value is None for s in sides)


def _called_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def seed_special_cases(source: str, before: str | None = None) -> str | None:
    """Why this policy special-cases seeds, or None: the seed ``reset`` is given (or an attribute it is copied
    into) compared, used as a key or an index, matched on, or handed to anything but a random generator.
    Seeding a generator with it, and asking whether it is None, are the uses a policy has for it. With
    ``before`` (the incumbent), only what the edit adds is reported: an existing policy is not blocked for
    what it already did. Code cannot see every trick; this catches the plain ones."""
    found = _seed_uses(source)
    if before is not None:
        found = {k: v for k, v in found.items() if k not in _seed_uses(before)}
    if not found:
        return None
    line, text = min(found.values())
    return (f"special-cases the seed at line {line} ({text[:80]}): it compares it, indexes or looks it up by it, "
            f"or hands it to something other than a random generator; a policy must act on what it observes, "
            f"never on which seed it runs")


def _seed_uses(source: str) -> dict[str, tuple[int, str]]:
    """Each suspect use of the reset seed, by its code (so the same use in two versions is the same key)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    policy = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Policy"), None)
    reset = next((n for n in (policy.body if policy else []) if isinstance(n, ast.FunctionDef) and n.name == "reset"),
                 None)
    if policy is None or reset is None or len(reset.args.args) < 2:
        return {}
    seed = reset.args.args[1].arg
    in_reset = set(ast.walk(reset))
    own_methods = {n.name for n in policy.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def copies_seed(node: ast.AST) -> bool:
        """The seed's value flows out of this expression, not into a generator or a None check."""
        if isinstance(node, ast.Call) and _called_name(node.func) in GENERATORS | own_methods:
            return False  # a generator, or the policy's own helper (which is read as a whole policy is)
        if isinstance(node, ast.Compare) and _none_check(node):
            return False
        if isinstance(node, ast.Name):
            return node.id == seed and node in in_reset
        return any(copies_seed(child) for child in ast.iter_child_nodes(node))

    # Attributes the seed is copied into (self.s = seed, self.s = int(seed) % 7, self.s, = seed,, self.s += seed,
    # self.__dict__["s"] = seed); one holding a generator built from it (self.rng = random.Random(seed), or one made
    # only when seed is not None) is not the seed.
    kept: set[str] = set()
    for node in ast.walk(reset):
        if isinstance(node, ast.Assign):
            pairs = [pair for target in node.targets for pair in _assigned(target, node.value)]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            pairs = _assigned(node.target, node.value)
        else:
            continue
        kept.update(name for target, value in pairs if copies_seed(value) for name in _stored_names(target))

    def is_seed(node: ast.AST) -> bool:
        return copies_seed(node) or any(isinstance(n, ast.Attribute) and n.attr in kept
                                        and isinstance(n.ctx, ast.Load) for n in ast.walk(node))

    found: dict[str, tuple[int, str]] = {}
    for node in ast.walk(policy):
        uses: list[ast.AST] = []
        if isinstance(node, ast.Compare) and not _none_check(node):
            uses = [node.left, *node.comparators]
        elif isinstance(node, ast.Subscript):
            uses = [node.slice]
        elif isinstance(node, ast.Match):
            uses = [node.subject]
        elif isinstance(node, ast.Call) and _called_name(node.func) not in SEEDING_CALLS | own_methods:
            uses = [*node.args, *(k.value for k in node.keywords)]
        if any(is_seed(u) for u in uses):
            text = ast.unparse(node)
            found.setdefault(text, (node.lineno, text))
    return found


def _assigned(target: ast.expr, value: ast.expr) -> list[tuple[ast.expr, ast.expr]]:
    """Which value each part of an assignment's target gets: element by element where both sides are tuples or
    lists of one length without a starred part (``self.a, self.b = seed, 0`` copies the seed into ``a`` alone),
    else the whole value to every part."""
    if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
            and len(target.elts) == len(value.elts) and not any(isinstance(e, ast.Starred) for e in target.elts):
        return [pair for t, v in zip(target.elts, value.elts) for pair in _assigned(t, v)]
    return [(target, value)]


def _stored_names(target: ast.expr) -> set[str]:
    """The attributes an assignment target stores into: ``x.name``, inside tuples, lists and starred targets too,
    and ``x.__dict__["name"]``."""
    if isinstance(target, ast.Attribute):
        return {target.attr}
    if isinstance(target, (ast.Tuple, ast.List)):
        return {name for element in target.elts for name in _stored_names(element)}
    if isinstance(target, ast.Starred):
        return _stored_names(target.value)
    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute) \
            and target.value.attr == "__dict__" and isinstance(target.slice, ast.Constant) \
            and isinstance(target.slice.value, str):
        return {target.slice.value}
    return set()


def _tunable_calls(tree: ast.Module, name: str) -> list[tuple[str, ast.Call]]:
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tunables"), None)
    if cls is None:
        return []
    calls = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(stmt.value, ast.Call) \
                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "tunable":
            call = stmt.value
            if len(call.args) + len(call.keywords) != 4:
                raise PolicyError(f"{name}:{stmt.lineno} tunable() takes (default, low, high, doc)")
            calls.append((stmt.target.id, call))
    return calls


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr:
    if index < len(call.args):
        return call.args[index]
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    raise PolicyError(f"tunable() at line {call.lineno} is missing {keyword}")


def read_tunables(source: str, name: str = "<policy>") -> list[Tunable]:
    """The declared tunables with their current defaults and bounds."""
    return _declared_tunables(check_policy_source(source, name), name)


def _declared_tunables(tree: ast.Module, name: str) -> list[Tunable]:
    """The tunables ``tree`` declares, each checked as a search needs it: literal whole or real numbers (not bools,
    strings, None or complex), finite, ``low <= default <= high`` with a finite span, whole-number bounds for a
    whole-number tunable (a search rounds its values and must stay within them), and a string doc. Checked when a
    policy is checked (``check_policy_source``), so a declaration no search can use stops nothing later."""
    out = []
    for field_name, call in _tunable_calls(tree, name):
        where = f"{name}:{call.lineno} tunable {field_name!r}"
        try:
            default, low, high, doc = (ast.literal_eval(_arg(call, i, k))
                                       for i, k in enumerate(("default", "low", "high", "doc")))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise PolicyError(f"{where} must use literal numbers and a string") from None
        numbers = (default, low, high)
        if not all(type(v) in (int, float) for v in numbers):
            raise PolicyError(f"{where} must use whole or real numbers for its default and bounds, not "
                              f"{', '.join(sorted({type(v).__name__ for v in numbers if type(v) not in (int, float)}))}")
        if not all(math.isfinite(v) for v in numbers) or not math.isfinite(float(high) - float(low)):
            raise PolicyError(f"{where} needs finite numbers, and bounds whose span is finite")
        if not isinstance(doc, str):
            raise PolicyError(f"{where} takes a string as its doc")
        if not (low <= default <= high):
            raise PolicyError(f"{where} default {default} is outside [{low}, {high}]")
        integer = type(default) is int
        if integer and not all(float(v).is_integer() for v in (low, high)):
            raise PolicyError(f"{where} is a whole number, so its bounds must be whole numbers too (a search rounds "
                              f"its values); write {math.ceil(low)} and {math.floor(high)}, or a real default")
        out.append(Tunable(name=field_name, default=default, low=low, high=high, doc=doc, integer=integer))
    return out


def rewrite_tunables(source: str, values: dict[str, float], name: str = "<policy>") -> str:
    """Return ``source`` with the named tunables' defaults replaced, every other byte unchanged."""
    tree = check_policy_source(source, name)
    calls = dict(_tunable_calls(tree, name))
    declared = {t.name: t for t in read_tunables(source, name)}
    unknown = sorted(set(values) - set(calls))
    if unknown:
        raise PolicyError(f"{name} declares no tunable {', '.join(unknown)}; declared: {', '.join(calls) or 'none'}")
    offsets = line_offsets(source)
    data = source.encode()
    edits = []
    for field_name, value in values.items():
        spec = declared[field_name]
        if not (spec.low <= value <= spec.high):
            raise PolicyError(f"{field_name}={value} is outside its bounds [{spec.low}, {spec.high}]")
        node = _arg(calls[field_name], 0, "default")
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        written = int(round(value)) if spec.integer else float(value)
        if not (spec.low <= written <= spec.high and math.isfinite(written)):  # what is written is what is checked
            raise PolicyError(f"{field_name}={written} (from {value}) is outside its bounds [{spec.low}, {spec.high}]")
        text = str(written) if spec.integer else repr(written)
        edits.append((start, end, text.encode()))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text + data[end:]
    return data.decode()

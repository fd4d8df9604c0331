"""The settings schema: which keys a run accepts, what each may hold, and which are grid axes.

It is built from the YAML configs, the one source of defaults: ``configs/defaults.yaml`` (run settings),
``configs/methods/<method>.yaml`` and ``configs/plugins/<plugin>.yaml``. A key's default declares it, and
its type is read off a non-null default: ``bool``, ``int``, ``float``, ``str``, a list (of the type of its
elements) or a mapping. Numbers typed this way must be finite and ``>= 0``.

A file's ``schema:`` block states what a default cannot show, one line per key (``KEY: SPEC``)::

    schema:
      threads: int >= 1 | null; runtime   # nullable, a range, flags after ';'
      dropout: float in [0, 1)             # ranges: >= a, > a, <= b, < b, in [a, b] (round brackets: open)
      fusion: slerp | linear | none        # a bare word is a literal choice
      eval_lambda: float in [0, 1] | last
      plugins: list[str]                   # list[ALT], dict[ALT] (str keys), any, null
      modality_weights: dict[float >= 0] | null

A key whose default is ``null`` must have a line there. A line in ``defaults.yaml`` for a key that file does
not set is a shared declaration: it types that key in every method or plug-in that sets it (e.g.
``embedding_size: int >= 1``), so a new method's YAML needs nothing beyond its defaults.

Flags: ``fixed`` (a run setting, never a grid axis), ``runtime`` (does not change what is trained --
epochs budget, device, threads --: may change on ``--resume``; implies fixed), ``repeat`` (``seed``: a
list means repeated runs, reported each, never a choice made on validation).

Roles of a key for ``--set key=[a,b]``: a key whose type admits a list (``topk``, ``plugins``,
``modalities``) takes the list as its *value*; a scalar key without ``fixed`` is *tunable*: the list is a
grid axis; ``repeat`` keys give repetitions; other keys reject a list.
"""
from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import yaml

from mmgraph.errors import ConfigError
from mmgraph.utils.io import load_yaml

#: keys set by the library itself, never by a config layer
RESERVED = ("method", "grid")
FLAGS = ("fixed", "runtime", "repeat")
_SCALARS = ("int", "float", "bool", "str")
_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf)"
_RANGE_CMP = re.compile(rf"^(>=|>|<=|<)\s*({_NUM})$")
_RANGE_IN = re.compile(rf"^in\s*([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*([\])])$")
_WORD = re.compile(r"^[A-Za-z0-9_.:@+-]+$")


# ---------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Alt:
    """One alternative of a key's type: a scalar type with an optional range, ``null``, ``any``, a literal
    word, or a ``list`` / ``dict`` of alternatives."""

    kind: str                      # int | float | bool | str | any | null | word | list | dict
    lo: Optional[float] = None
    lo_open: bool = False
    hi: Optional[float] = None
    hi_open: bool = False
    items: Optional[Tuple["Alt", ...]] = None
    word: Optional[str] = None

    # -- checking
    def accept(self, value: Any) -> Tuple[bool, Any]:
        """``(ok, value)``: whether ``value`` fits this alternative, and the value as stored."""
        k = self.kind
        if k == "any":
            return True, value
        if k == "null":
            return value is None, value
        if k == "word":
            return isinstance(value, str) and value == self.word, value
        if k == "bool":
            return isinstance(value, bool), value
        if k == "str":
            return isinstance(value, str), value
        if k in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False, value
            if isinstance(value, float) and not math.isfinite(value):
                return False, value
            if k == "int":
                if isinstance(value, float):
                    if not value.is_integer():
                        return False, value
                    value = int(value)
            return self._in_range(value), value
        if k == "list":
            if not isinstance(value, (list, tuple)):
                return False, value
            out = []
            for item in value:
                ok, item = _accept_any(self.items, item)
                if not ok:
                    return False, value
                out.append(item)
            return True, out
        if k == "dict":
            if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
                return False, value
            out = {}
            for key, item in value.items():
                ok, item = _accept_any(self.items, item)
                if not ok:
                    return False, value
                out[key] = item
            return True, out
        raise AssertionError(k)

    def _in_range(self, x: float) -> bool:
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        if self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)):
            return False
        return True

    # -- text
    def range_text(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return ""

    def spec(self) -> str:
        """The alternative in the schema grammar (``int >= 1``, ``list[str]``, ``last``)."""
        if self.kind == "word":
            return str(self.word)
        if self.kind in ("list", "dict"):
            return self.kind + (f"[{' | '.join(a.spec() for a in self.items)}]" if self.items else "")
        return " ".join(filter(None, [self.kind, self.range_text()]))

    def describe(self) -> str:
        """Plain words for error messages (``an integer >= 1``)."""
        rng = self.range_text()
        base = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "any": "any value", "null": "null"}.get(self.kind)
        if base:
            return f"{base} {rng}".strip()
        if self.kind == "word":
            return repr(self.word)
        inner = describe_alts(self.items) if self.items else "any values"
        return f"a list of {inner}" if self.kind == "list" else f"a mapping of names to {inner}"


def _num(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def _accept_any(alts: Optional[Sequence[Alt]], value: Any) -> Tuple[bool, Any]:
    if not alts:
        return True, value
    for alt in alts:
        ok, out = alt.accept(value)
        if ok:
            return True, out
    return False, value


def describe_alts(alts: Sequence[Alt]) -> str:
    words = [a.word for a in alts if a.kind == "word"]
    parts = [a.describe() for a in alts if a.kind not in ("word", "null")]
    if words:
        parts.append(("one of " + ", ".join(words)) if len(words) > 1 else repr(words[0]))
    if any(a.kind == "null" for a in alts):
        parts.append("null")
    return " or ".join(parts)


def _split_top(text: str, sep: str) -> List[str]:
    """Split on ``sep`` outside brackets (``in [0, 1)`` keeps its comma; ``list[a | b]`` its bar)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_alts(text: str, where: str = "") -> Tuple[Alt, ...]:
    """Parse ``ALT | ALT ...`` (see the module docstring)."""
    alts = []
    for part in _split_top(text, "|"):
        if not part:
            raise ConfigError(f"{where}: empty alternative in type {text!r}")
        alts.append(_parse_alt(part, where))
    return tuple(alts)


def _parse_alt(text: str, where: str) -> Alt:
    m = re.match(r"^(list|dict)\s*\[(.*)\]$", text)
    if m:
        return Alt(m.group(1), items=parse_alts(m.group(2), where))
    if text in ("list", "dict"):
        return Alt(text)
    m = re.match(r"^(int|float|bool|str|any|null)\b\s*(.*)$", text)
    if m:
        kind, rest = m.group(1), m.group(2).strip()
        if not rest:
            return Alt(kind)
        if kind not in ("int", "float"):
            raise ConfigError(f"{where}: a range applies to int or float only, got {text!r}")
        cmp_ = _RANGE_CMP.match(rest)
        if cmp_:
            op, x = cmp_.group(1), float(cmp_.group(2))
            if op.startswith(">"):
                return Alt(kind, lo=x, lo_open=op == ">")
            return Alt(kind, hi=x, hi_open=op == "<")
        in_ = _RANGE_IN.match(rest)
        if in_:
            return Alt(kind, lo=float(in_.group(2)), lo_open=in_.group(1) == "(",
                       hi=float(in_.group(3)), hi_open=in_.group(4) == ")")
        raise ConfigError(f"{where}: cannot read the range {rest!r} of {text!r} (expected e.g. '>= 1' or "
                          "'in [0, 1)')")
    if _WORD.match(text):
        return Alt("word", word=text)
    raise ConfigError(f"{where}: cannot read type {text!r} (expected int, float, bool, str, list[...], "
                      "dict[...], any, null or a literal word)")


def infer_alts(value: Any) -> Optional[Tuple[Alt, ...]]:
    """The type of a non-null default (numbers ``>= 0``); ``None`` for a null default."""
    if value is None:
        return None
    if isinstance(value, bool):
        return (Alt("bool"),)
    if isinstance(value, int):
        return (Alt("int", lo=0.0),)
    if isinstance(value, float):
        return (Alt("float", lo=0.0),)
    if isinstance(value, str):
        return (Alt("str"),)
    if isinstance(value, (list, tuple)):
        kinds = {_scalar_kind(v) for v in value}
        if len(kinds) == 1 and None not in kinds:
            kind = kinds.pop()
            return (Alt("list", items=(Alt(kind, lo=0.0) if kind in ("int", "float") else Alt(kind),)),)
        if kinds == {"int", "float"}:
            return (Alt("list", items=(Alt("float", lo=0.0),)),)
        return (Alt("list"),)
    if isinstance(value, dict):
        return (Alt("dict"),)
    return (Alt("any"),)


def _scalar_kind(v: Any) -> Optional[str]:
    for kind, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(v, typ):
            return kind
    return None


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    """One config key: its default, type alternatives, flags and where it is declared."""

    name: str
    default: Any
    alts: Tuple[Alt, ...]
    flags: FrozenSet[str] = frozenset()
    source: str = "defaults"          # defaults | method:<name> | plugin:<name>
    comment: str = ""

    @property
    def spec(self) -> str:
        text = " | ".join(a.spec() for a in self.alts)
        flags = self.flags - {"fixed"} if "runtime" in self.flags else self.flags
        return text + ("; " + " ".join(sorted(flags)) if flags else "")

    @property
    def accepts_list(self) -> bool:
        return any(a.kind in ("list", "any") for a in self.alts)

    @property
    def role(self) -> str:
        """``value`` (a list is the value), ``repeat`` (a list = repetitions), ``axis`` (a list = grid axis)
        or ``fixed`` (no list)."""
        if self.accepts_list:
            return "value"
        if "repeat" in self.flags:
            return "repeat"
        if self.flags & {"fixed", "runtime"}:
            return "fixed"
        return "axis"

    @property
    def tunable(self) -> bool:
        return self.role == "axis"

    def expectation(self) -> str:
        return describe_alts(self.alts)

    def check(self, value: Any, origin: str = "") -> Any:
        """``value`` as stored, or a :class:`ConfigError` naming the key, the expectation and ``origin``."""
        ok, out = _accept_any(self.alts, value)
        if ok:
            return out
        # a single value for a list key: plugins=cross is plugins=[cross]
        if not isinstance(value, (list, tuple, dict)):
            for alt in self.alts:
                if alt.kind == "list":
                    ok, out = alt.accept([value])
                    if ok:
                        return out
        where = f" ({origin})" if origin else ""
        raise ConfigError(f"{self.name}: expected {self.expectation()}, got {_show(value)}{where}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip().removesuffix("...").strip() \
        if isinstance(value, (list, dict)) else repr(value)


# ---------------------------------------------------------------------------------------------- files
@dataclass
class Declarations:
    """What one YAML file declares: defaults (in file order), ``schema:`` lines, ``grid:`` and comments."""

    path: Path
    values: Dict[str, Any]
    specs: Dict[str, str]
    grid: Dict[str, List[Any]]
    comments: Dict[str, str] = field(default_factory=dict)


def read_yaml_mapping(path: Path) -> Dict[str, Any]:
    try:
        data = load_yaml(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: keys must be names, got {bad[0]!r}")
    return data


def _line_comments(text: str) -> Dict[str, str]:
    """``{key: its line comment (plus indented comment lines that follow)}`` of top-level keys."""
    out: Dict[str, str] = {}
    key = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][\w]*)\s*:(.*)$", line)
        if m:
            key = m.group(1)
            rest = m.group(2)
            hashpos = rest.find(" #")
            out[key] = rest[hashpos + 2:].strip() if hashpos >= 0 else ""
            continue
        m = re.match(r"^\s+#\s?(.*)$", line)
        if m and key is not None and out.get(key):
            out[key] += " " + m.group(1).strip()
            continue
        if line.strip() and not line.startswith(" "):
            key = None
    return out


@functools.lru_cache(maxsize=128)
def _read_declarations(path: str, mtime_ns: int) -> Declarations:
    p = Path(path)
    data = read_yaml_mapping(p)
    specs = data.pop("schema", None) or {}
    grid = data.pop("grid", None) or {}
    if "methods" in data:
        raise ConfigError(f"{p}: a 'methods:' block belongs in a --config file, not in a declaration file")
    for what, block in (("schema", specs), ("grid", grid)):
        if not isinstance(block, dict):
            raise ConfigError(f"{p}: '{what}:' must be a mapping of key: ..., got {type(block).__name__}")
    for key, spec in specs.items():
        if not isinstance(spec, str):
            raise ConfigError(f"{p}: schema line '{key}: {spec!r}' must be a type string such as 'int >= 1'")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{p}: grid axis {key!r} must be a non-empty list of values")
    comments = _line_comments(p.read_text())
    return Declarations(p, data, specs, grid, {k: comments.get(k, "") for k in data})


#: the description of a key that many methods declare, shown where a method's YAML line has no comment
COMMON_HELP: Dict[str, str] = {
    "embedding_size": "width d of the embeddings",
    "reg_weight": "weight of the L2 regulariser",
    "n_layers": "propagation layers",
    "n_ui_layers": "LightGCN layers on the user-item graph",
    "n_mm_layers": "hops on the modality item-item graphs",
    "knn_k": "neighbours per item in the modality kNN graphs",
    "lr_decay_step": "epochs between learning-rate decays (by lr_decay)",
    "patience": "early stopping: validations without strict improvement before stopping (+1)",
}


def read_declarations(path: Path) -> Declarations:
    path = Path(path)
    return _read_declarations(str(path), path.stat().st_mtime_ns)


def parse_spec(text: str, where: str) -> Tuple[Tuple[Alt, ...], FrozenSet[str]]:
    """``ALT | ALT ...; FLAG ...`` -> (alternatives, flags)."""
    head, _, tail = text.partition(";")
    flags = frozenset(tail.split())
    unknown = flags - set(FLAGS)
    if unknown:
        raise ConfigError(f"{where}: unknown flag(s) {sorted(unknown)} (known: {', '.join(FLAGS)})")
    if not head.strip():
        raise ConfigError(f"{where}: the schema line needs a type before ';'")
    return parse_alts(head.strip(), where), flags


# ---------------------------------------------------------------------------------------------- schema
class Schema:
    """Every key a run of ``method`` with ``plugins`` accepts (see the module docstring).

    ``settings`` keeps the declaration order: run settings, the method's keys, then each plug-in's.
    ``grid`` is the method's built-in search grid (its YAML ``grid:`` block)."""

    def __init__(self, method: str, plugins: Sequence[str], settings: Dict[str, Setting],
                 grid: Dict[str, List[Any]], config_dir: Path):
        self.method = method
        self.plugins = tuple(plugins)
        self.settings = settings
        self.grid = grid
        self.config_dir = config_dir

    def __contains__(self, key: str) -> bool:
        return key in self.settings

    def __getitem__(self, key: str) -> Setting:
        return self.settings[key]

    def defaults(self) -> Dict[str, Any]:
        return {k: s.default for k, s in self.settings.items()}

    def setting(self, key: str, origin: str = "") -> Setting:
        """The key's :class:`Setting`, or a :class:`ConfigError` with the closest valid names."""
        if key in self.settings:
            return self.settings[key]
        where = f" ({origin})" if origin else ""
        if key in RESERVED:
            what = "--method" if key == "method" else "--set KEY=[a,b] or a grid: block, run with --grid"
            raise ConfigError(f"{key!r} is not a setting{where}; use {what}")
        hint = self._owner_hint(key)
        close = suggest(key, self.settings)
        tip = f"; did you mean {', '.join(close)}?" if close else ""
        entry = self.method + "".join("+" + p for p in self.plugins)
        raise ConfigError(f"unknown setting {key!r} for {entry}"
                          f"{where}{hint}{tip} (mmgraph methods --show {self.method} lists them)")

    def check(self, key: str, value: Any, origin: str = "") -> Any:
        return self.setting(key, origin).check(value, origin)

    def _owner_hint(self, key: str) -> str:
        plugins = [p for p, keys in _all_keys(self.config_dir, "plugins").items() if key in keys]
        if plugins:
            return (f"; it belongs to plug-in {' / '.join(plugins)}: enable it with --set "
                    f"plugins=[{plugins[0]}]")
        methods = [m for m, keys in _all_keys(self.config_dir, "methods").items() if key in keys]
        if methods:
            return f"; it is a setting of {', '.join(methods)}, not of {self.method}"
        return ""


def suggest(key: str, names: Iterable[str], n: int = 3) -> List[str]:
    """The valid names closest to ``key``: spelling (difflib), initials (``lr`` -> ``learning_rate``),
    then names that contain it."""
    names = list(names)
    out = difflib.get_close_matches(key, names, n=n, cutoff=0.6)
    low = key.lower().replace("-", "_")
    for name in names:
        initials = "".join(part[:1] for part in name.split("_") if part)
        if len(low) >= 2 and initials == low and name not in out:
            out.append(name)
    for name in names:
        if len(low) >= 3 and low in name and name not in out:
            out.append(name)
    return out[:n]


def _all_keys(config_dir: Path, kind: str) -> Dict[str, set]:
    folder = Path(config_dir) / kind
    out = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        decl = read_declarations(path)
        out[path.stem] = set(decl.values)
    return out


def plugin_keys(config_dir: Optional[Path] = None) -> Dict[str, set]:
    """``{plug-in: the keys its configs/plugins/<name>.yaml declares}`` (default: the project's ``configs/``)."""
    from mmgraph.train.config import CONFIG_DIR

    return _all_keys(Path(config_dir) if config_dir else CONFIG_DIR, "plugins")


def declared_methods(config_dir: Path) -> List[str]:
    folder = Path(config_dir) / "methods"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _make_setting(key: str, default: Any, spec: Optional[str], where: str, source: str,
                  comment: str) -> Setting:
    if spec is not None:
        alts, flags = parse_spec(spec, f"{where}: schema of {key!r}")
    else:
        alts, flags = infer_alts(default), frozenset()
        if alts is None:
            raise ConfigError(f"{where}: {key!r} defaults to null; declare its type in the file's schema: "
                              f"block (e.g. '{key}: float >= 0 | null')")
    if "runtime" in flags:
        flags = flags | {"fixed"}
    setting = Setting(key, default, alts, flags, source, comment)
    ok, _ = _accept_any(alts, default)
    if not ok:
        raise ConfigError(f"{where}: the default of {key!r} ({_show(default)}) is not "
                          f"{setting.expectation()} as its schema says")
    return setting


def build_schema(method: str, plugins: Sequence[str] = (), config_dir: Optional[Path] = None) -> Schema:
    """The schema of ``method`` with ``plugins`` from ``config_dir`` (default: the project's ``configs/``).

    Raises :class:`ConfigError` on a malformed declaration (a null default without a type, a default
    outside its declared type, a grid axis on an unknown or non-tunable key)."""
    from mmgraph.train.config import CONFIG_DIR

    root = Path(config_dir) if config_dir else CONFIG_DIR
    base = root / "defaults.yaml"
    if not base.exists():
        raise ConfigError(f"{base} does not exist (set MMGRAPH_CONFIG_DIR to the project's configs/ folder)")
    shared = read_declarations(base)
    files: List[Tuple[str, Path]] = [("defaults", base)]
    method_file = root / "methods" / f"{method}.yaml"
    if method_file.exists():
        files.append((f"method:{method}", method_file))
    for name in plugins:
        path = root / "plugins" / f"{name}.yaml"
        if path.exists():
            files.append((f"plugin:{name}", path))

    settings: Dict[str, Setting] = {}
    grid: Dict[str, List[Any]] = {}
    for source, path in files:
        decl = read_declarations(path)
        where = str(path)
        for key in decl.specs:
            if key not in decl.values and source != "defaults":
                raise ConfigError(f"{where}: schema line for {key!r}, which the file does not set "
                                  "(a method or plug-in file declares its own keys)")
        for key, value in decl.values.items():
            if key in RESERVED or key == "schema":
                raise ConfigError(f"{where}: {key!r} is reserved")
            spec = decl.specs.get(key, shared.specs.get(key))
            previous = settings.get(key)
            if previous is not None and source.startswith("plugin:"):
                # a plug-in does not override a key the run settings or the method already set
                continue
            if spec is None and previous is not None and value is not None:
                setting = Setting(key, value, previous.alts, previous.flags, source,
                                  decl.comments.get(key) or previous.comment)
                ok, _ = _accept_any(setting.alts, value)
                if not ok:
                    raise ConfigError(f"{where}: {key}: {_show(value)} is not {setting.expectation()}")
            elif spec is None and previous is not None:
                setting = Setting(key, value, previous.alts, previous.flags, source, previous.comment)
                if not _accept_any(setting.alts, value)[0]:
                    raise ConfigError(f"{where}: {key}: null is not {setting.expectation()}")
            else:
                setting = _make_setting(key, value, spec, where, source,
                                        decl.comments.get(key) or COMMON_HELP.get(key, ""))
            settings[key] = setting
        if not source.startswith("plugin:"):  # a plug-in's grid: block is documentation of its search space
            for key, values in decl.grid.items():
                if key not in settings:
                    raise ConfigError(f"{where}: grid axis {key!r} is not a declared key")
                s = settings[key]
                if s.role not in ("axis", "repeat"):
                    raise ConfigError(f"{where}: grid axis {key!r} is not tunable ({s.role} setting)")
                grid[key] = [s.check(v, f"grid of {path.name}") for v in values]
    return Schema(method, plugins, settings, grid, root)


def plugin_list(value: Any, origin: str = "") -> List[str]:
    """``plugins`` as a list of names (a bare name is a one-element list)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip().lower()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip().lower() for v in value]
    where = f" ({origin})" if origin else ""
    raise ConfigError(f"plugins: expected a list of plug-in names, got {_show(value)}{where}")

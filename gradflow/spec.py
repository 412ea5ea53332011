"""Probe specs (``probes/*.toml``): the schema of a declarative retention check, and loading it.

Evaluation lives in :mod:`gradflow.evaluation`; rendering of results in :mod:`gradflow.report.check`.

A spec names a subject (with preset and config overrides), the branches and targets to measure, how
many batches with which seed, a retention band, optional per-module bands, an optional baseline record
and optional preflight checks. Every key is validated when the file is read; a mistake raises
:class:`SpecError` whose message starts with ``<file>: <key>:`` (the CLI maps it to exit code 2).

Format (every key but ``subject.name``, ``branches`` and ``targets`` is optional)::

    description = "Stage-2 cross-attention must not starve the image adapter"
    branches = ["image_cross_attn"]        # names the subject defines, or a table name -> selector
    targets = ["image_adapter"]            # (a selector string or {selector, mode, scale} for branches)
    batches = "auto"                       # or a whole number; "auto" (the default) adds batches until every
    max_batches = 24                       #   gated verdict is decided, up to max_batches
    precision = 0.05                       # with "auto": also stop once every gated interval is this narrow
    seed = 0                               # seed of the passes and the bootstrap
    confidence = 0.95                      # of the bootstrap interval

    [subject]
    name = "aaclip"                        # built-in name or "module.path:factory"
    preset = "full"                        # `gradflow check --preset tiny` overrides it
    seed = 0                               # the factory's seed (model init, synthetic data)
    weights = "weights/clip.pt"            # relative to this file; passed as weights=
    set = { stage = "stage2" }             # config overrides, like --set (values become strings)
    options = {}                           # further keyword arguments of the factory, verbatim
    paths = { adapters = "../ckpt/base" }  # factory keyword arguments that are paths relative to this file

    [thresholds]
    min_retention = 0.8                    # the band of every (branch, target) total row
    max_retention = 1.5
    gate = "ci"                            # ci | point | strict; `--gate` overrides it
    per_module = false                     # true: gate every per-module row with the band as well
    [[thresholds.modules]]                 # a band for per-module rows matching a glob (or "re:...")
    module = "image_adapter.layer_adapters.*"
    target = "image_adapter"               # optional filters
    branch = "image_cross_attn"
    min_retention = 0.5

    [baseline]
    record = "baselines/stage2-{preset}.json"   # relative to this file; {preset} = the preset run
    tolerance = 0.05                       # allowed drop of retention below the baseline's
    direction = "down"                     # down | both

    [preflight]
    config = { resolved_image_cross_attn_weight = 0.1 }   # subject config values
    model = { "image_cross_attn.scale" = 0.1 }            # model attributes (dotted paths)
    trained = ["image_adapter"]            # targets/branches/selectors that must not be at initialisation
    reachable = true                       # every branch must be on every target's gradient path
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GradflowError, SelectorError
from .files import FileError, read_text_capped
from .select import compile_glob, validate_selector
from .verdicts import Band, GateMode

DEFAULT_SPEC_DIR = "probes"


class SpecError(GradflowError):
    """A probe spec is missing, malformed, or names something that does not exist (exit code 2)."""


# ------------------------------------------------------------------------------------------ schema
_TOP = {"description", "branches", "targets", "batches", "max_batches", "precision", "seed", "confidence", "subject",
        "thresholds",
        "baseline", "preflight"}
_SUBJECT = {"name", "preset", "seed", "weights", "set", "options", "paths"}
_THRESHOLDS = {"min_retention", "max_retention", "gate", "per_module", "modules"}
_MODULE_THRESHOLD = {"module", "target", "branch", "min_retention", "max_retention"}
_BASELINE = {"record", "tolerance", "direction"}
_PREFLIGHT = {"config", "model", "trained", "reachable"}
_BRANCH_TABLE = {"selector", "mode", "scale"}


@dataclass(frozen=True)
class ModuleThreshold:
    """A band for the per-module rows whose module name matches ``module`` (glob or ``re:``)."""

    module: str
    band: Band
    target: str | None = None
    branch: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` (a per-module row) falls under this threshold."""
        if row["module"] == "*":
            return False
        if self.target is not None and row["target"] != self.target:
            return False
        if self.branch is not None and row["branch"] != self.branch:
            return False
        return compile_glob(self.module).fullmatch(row["module"])


@dataclass
class Spec:
    """A validated probe spec (see the module docstring for the file format)."""

    path: Path
    subject: str
    branches: list[str]
    targets: list[str]
    description: str = ""
    preset: str | None = None
    subject_seed: int | None = None
    weights: Path | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    extra_branches: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_targets: dict[str, Any] = field(default_factory=dict)
    batches: int | str = "auto"
    max_batches: int | None = None
    precision: float | None = None
    seed: int = 0
    confidence: float = 0.95
    band: Band = field(default_factory=Band)
    gate: GateMode = GateMode.CI
    per_module: bool = False
    module_thresholds: list[ModuleThreshold] = field(default_factory=list)
    baseline: str | None = None
    tolerance: float = 0.05
    direction: str = "down"
    preflight_config: dict[str, Any] = field(default_factory=dict)
    preflight_model: dict[str, Any] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    reachable: bool = True

    @property
    def name(self) -> str:
        """The spec's file stem (``aaclip-stage2``)."""
        return self.path.stem

    def baseline_path(self, preset: str | None) -> Path | None:
        """The baseline record's path for a run of ``preset`` (``{preset}`` substituted)."""
        if self.baseline is None:
            return None
        return self.path.parent / self.baseline.replace("{preset}", str(preset))


class _Reader:
    """Typed access to one TOML table with errors that name the file and the dotted key."""

    def __init__(self, path: Path, data: dict[str, Any], prefix: str, allowed: set[str]) -> None:
        self.path, self.data, self.prefix = path, data, prefix
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
                raise self.error(key, f"unknown key.{hint} Keys allowed in {where}: {', '.join(sorted(allowed))}.")

    def error(self, key: str, problem: str) -> SpecError:
        return SpecError(f"{self.path}: {self.prefix}{key}: {problem}")

    def _typed(self, key: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {what}, got {value!r} (a boolean).")
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {what}, got {value!r} (a {_toml_type(value)}).")
        return value

    def string(self, key: str, default: Any = None, required: bool = False) -> Any:
        if required and key not in self.data:
            raise self.error(key, "is required (a string).")
        value = self._typed(key, (str,), "a string", default)
        if key in self.data and not value.strip():
            raise self.error(key, "must not be empty.")
        return value

    def integer(self, key: str, default: Any = None, minimum: int | None = None) -> Any:
        value = self._typed(key, (int,), "an integer", default)
        if value is not None and minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}.")
        return value

    def number(self, key: str, default: Any = None) -> Any:
        value = self._typed(key, (int, float), "a number", default)
        if value is not None and not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value}.")
        return None if value is None else float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, (bool,), "true or false", default)

    def table(self, key: str) -> dict[str, Any]:
        return self._typed(key, (dict,), "a table", {})

    def strings(self, key: str, required: bool = False) -> list[str]:
        if required and key not in self.data:
            raise self.error(key, "is required (a list of names).")
        value = self._typed(key, (list,), "a list of strings", [])
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise self.error(f"{key}[{index}]", f"expected a non-empty string, got {item!r}.")
        return value


def _toml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)


def _override_value(reader: _Reader, key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    raise reader.error(f"set.{key}", f"expected a string, number, boolean or list of these, got {value!r}.")


def _paths(reader: _Reader, path: Path) -> dict[str, str]:
    out = {}
    for key, value in reader.table("paths").items():
        if not isinstance(value, str) or not value.strip():
            raise reader.error(f"paths.{key}", f"expected a path (a string, relative to the spec), got {value!r}.")
        resolved = path.parent / value
        if not resolved.exists():
            raise reader.error(f"paths.{key}", f"{resolved} does not exist (paths are relative to the spec's folder "
                               f"{path.parent}).")
        out[str(key)] = str(resolved)
    return out


def _band(reader: _Reader, default: Band | None = None) -> Band:
    low = reader.number("min_retention", default.min_retention if default else 0.8)
    high = reader.number("max_retention", default.max_retention if default else None)
    if low is not None and high is not None and low > high:
        raise reader.error("max_retention", f"the band is empty: min_retention {low:g} > max_retention {high:g}.")
    return Band(low, high)


def _check_selector(reader: _Reader, key: str, selector: str) -> None:
    try:
        validate_selector(selector)
    except SelectorError as exc:
        raise reader.error(key, str(exc)) from None


def _groups(reader: _Reader, key: str, branches: bool) -> tuple[list[str], dict[str, Any]]:
    """``branches``/``targets``: a list of subject names, or a table name -> selector (or branch table)."""
    if key not in reader.data:
        raise reader.error(key, f"is required: a list of the subject's {key} (see `gradflow list`), or a table "
                           "mapping new names to selectors.")
    value = reader.data[key]
    if isinstance(value, list):
        names = reader.strings(key)
        if not names:
            raise reader.error(key, "must name at least one.")
        return names, {}
    if not isinstance(value, dict) or not value:
        raise reader.error(key, f"expected a list of names or a table name -> selector, got {value!r}.")
    extra: dict[str, Any] = {}
    for name, item in value.items():
        where = f"{key}.{name}"
        if isinstance(item, str):
            _check_selector(reader, where, item)
            extra[name] = {"selector": item} if branches else item
        elif branches and isinstance(item, dict):
            sub = _Reader(reader.path, item, f"{where}.", _BRANCH_TABLE)
            selector = sub.string("selector", required=True)
            _check_selector(sub, "selector", selector)
            mode = sub.string("mode", "zero")
            if mode not in ("zero", "identity", "scale"):
                raise sub.error("mode", f"must be 'zero', 'identity' or 'scale', got {mode!r}.")
            scale = sub.number("scale")
            if mode == "scale" and scale is None:
                raise sub.error("scale", "is required with mode = 'scale'.")
            extra[name] = {"selector": selector, "mode": mode, "scale": scale}
        else:
            kind = "a selector string or a table {selector, mode, scale}" if branches else "a selector string"
            raise reader.error(where, f"expected {kind}, got {item!r}.")
    return list(extra), extra


def _batches(reader: _Reader) -> int | str:
    value = reader.data.get("batches", "auto")
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise reader.error("batches", f"expected a whole number of at least 1 or \"auto\", got {value!r}.")
    return value


def _precision(reader: _Reader) -> float | None:
    value = reader.number("precision")
    if value is not None and value <= 0:
        raise reader.error("precision", f"must be a positive interval width, got {value:g}.")
    return value


def parse_spec(data: dict[str, Any], path: Path) -> Spec:
    """Validate the parsed TOML ``data`` of the spec file ``path``."""
    top = _Reader(path, data, "", _TOP)
    subject = _Reader(path, top.table("subject"), "subject.", _SUBJECT)
    if "subject" not in data:
        raise top.error("subject", "is required: a [subject] table with at least name = \"aaclip\" (or "
                        "\"module.path:factory\").")
    name = subject.string("name", required=True)
    if name.count(":") > 1 or name.endswith(":") or name.startswith(":"):
        raise subject.error("name", f"{name!r} is neither a built-in subject name nor 'module.path:factory'.")
    overrides = {str(k): _override_value(subject, k, v) for k, v in subject.table("set").items()}
    weights = subject.string("weights")
    branch_names, extra_branches = _groups(top, "branches", True)
    target_names, extra_targets = _groups(top, "targets", False)
    confidence = top.number("confidence", 0.95)
    if not 0 < confidence < 1:
        raise top.error("confidence", f"must lie strictly between 0 and 1, got {confidence:g}.")

    thresholds = _Reader(path, top.table("thresholds"), "thresholds.", _THRESHOLDS)
    band = _band(thresholds)
    gate = thresholds.string("gate", "ci")
    if gate not in tuple(GateMode):
        raise thresholds.error("gate", f"must be one of {', '.join(GateMode)}, got {gate!r}.")
    modules = thresholds._typed("modules", (list,), "a list of tables ([[thresholds.modules]])", [])
    module_thresholds = []
    for index, item in enumerate(modules):
        if not isinstance(item, dict):
            raise thresholds.error(f"modules[{index}]", f"expected a table, got {item!r}.")
        sub = _Reader(path, item, f"thresholds.modules[{index}].", _MODULE_THRESHOLD)
        pattern = sub.string("module", required=True)
        _check_selector(sub, "module", pattern)
        if "min_retention" not in item and "max_retention" not in item:
            raise sub.error("min_retention", "give min_retention and/or max_retention for these modules.")
        module_thresholds.append(ModuleThreshold(pattern, _band(sub, Band(None, None)), sub.string("target"),
                                                 sub.string("branch")))

    baseline = _Reader(path, top.table("baseline"), "baseline.", _BASELINE)
    record = baseline.string("record", required="baseline" in data)
    tolerance = baseline.number("tolerance", 0.05)
    if tolerance < 0:
        raise baseline.error("tolerance", f"must not be negative, got {tolerance:g}.")
    direction = baseline.string("direction", "down")
    if direction not in ("down", "both"):
        raise baseline.error("direction", f"must be 'down' or 'both', got {direction!r}.")
    spec_preset = subject.string("preset")
    if record is not None and "{preset}" not in record and not (path.parent / record).is_file():
        if (path.parent / record).exists():
            raise baseline.error("record", f"baseline record {path.parent / record} is not a regular file (a "
                                 "folder or a device); name a JSON run record.")
        raise baseline.error("record", f"baseline record {path.parent / record} does not exist (paths are relative "
                             f"to the spec's folder {path.parent}). Write one with `gradflow check {path} --out "
                             f"{path.parent / record}`, or remove [baseline].")

    preflight = _Reader(path, top.table("preflight"), "preflight.", _PREFLIGHT)
    expected_config = preflight.table("config")
    expected_model = preflight.table("model")
    for key, table in (("config", expected_config), ("model", expected_model)):
        for item, value in table.items():
            if not isinstance(value, int | float | str | bool):
                raise preflight.error(f"{key}.{item}", f"expected a string, number or boolean, got {value!r}.")
    return Spec(
        path=path, subject=name, branches=branch_names, targets=target_names,
        description=top.string("description", ""), preset=spec_preset,
        subject_seed=subject.integer("seed"),
        weights=None if weights is None else path.parent / weights,
        overrides=overrides, options={**subject.table("options"), **_paths(subject, path)},
        extra_branches=extra_branches, extra_targets=extra_targets,
        batches=_batches(top), max_batches=top.integer("max_batches", None, minimum=2),
        precision=_precision(top), seed=top.integer("seed", 0), confidence=confidence,
        band=band, gate=GateMode(gate), per_module=thresholds.boolean("per_module", False),
        module_thresholds=module_thresholds, baseline=record, tolerance=tolerance, direction=direction,
        preflight_config=dict(expected_config), preflight_model=dict(expected_model),
        trained=preflight.strings("trained"), reachable=preflight.boolean("reachable", True),
    )


#: A spec is a short hand-written file; anything larger is refused before parsing.
MAX_SPEC_BYTES = 1024 * 1024


def load_spec(path: str | Path) -> Spec:
    """Read and validate one spec file; any problem raises :class:`SpecError` naming the file and key."""
    file = Path(path)
    if file.is_dir():
        raise SpecError(f"{file}: is a folder; pass spec files (e.g. {file}/*.toml) or nothing for probes/*.toml.")
    try:
        data = tomllib.loads(read_text_capped(file, MAX_SPEC_BYTES))
    except FileNotFoundError:
        raise SpecError(f"{file}: spec file does not exist.") from None
    except FileError as exc:  # too large (or an endless device), not UTF-8 text
        raise SpecError(f"{file}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{file}: not valid TOML: {exc}.") from None
    except RecursionError:
        raise SpecError(f"{file}: not a spec: its tables or arrays are nested too deeply to read.") from None
    except OSError as exc:
        raise SpecError(f"{file}: cannot read the spec: {exc}.") from None
    return parse_spec(data, file)


def discover_specs(folder: str | Path = DEFAULT_SPEC_DIR) -> list[Path]:
    """Every ``*.toml`` in ``folder`` (sorted); none is an error."""
    root = Path(folder)
    found = sorted(root.glob("*.toml")) if root.is_dir() else []
    if not found:
        raise SpecError(f"{root}: no probe specs (*.toml) found. Pass spec files, or run from the folder that "
                        f"holds {DEFAULT_SPEC_DIR}/.")
    return found

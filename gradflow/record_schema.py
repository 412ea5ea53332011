"""The schema of run records (version 2), as pydantic models: validation, migration and a JSON Schema.

Every field of a record file is checked (types, ranges, the vocabularies of statuses, modes and kinds), so a
record that loads can be rendered; anything else is a :class:`gradflow.errors.RecordError` naming the JSON
path of the bad field. Non-finite numbers are stored as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (strict JSON) and decoded here. ``docs/record.schema.json`` is generated from these models
(``python -m gradflow.record_schema > docs/record.schema.json``) for tools in other languages.

Version 1 records (gradflow 0.1: percentile-bootstrap intervals, no measurement block) are migrated on load:
their rows gain the settings they compare, and their intervals are marked as the old bootstrap ones.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, WithJsonSchema

from .errors import RecordError

SCHEMA = "gradflow/run-record"
SCHEMA_VERSION = 2
_MARKERS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value in _MARKERS:
        return _MARKERS[value]
    raise ValueError(f"expected a number (or \"NaN\", \"Infinity\", \"-Infinity\"), got {value!r}")


def _finite(value: Any) -> float:
    number = _number(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _encode(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


_NUMBER_JSON = {"anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}
Number = Annotated[float, PlainValidator(_number), PlainSerializer(_encode, when_used="json"),
                   WithJsonSchema(_NUMBER_JSON)]
Finite = Annotated[float, PlainValidator(_finite), WithJsonSchema({"type": "number"})]


def _in_range(low: float, high: float, *, low_open: bool, high_open: bool):
    """A validator for a finite number within bounds (``Field(gt=...)`` does not apply after a
    ``PlainValidator``, so the bounds are checked here)."""
    def check(value: Any) -> float:
        number = _finite(value)
        if number < low or number > high or (low_open and number == low) or (high_open and number == high):
            shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ValueError(f"expected a number in {shown}, got {value!r}")
        return number
    return check


Probability = Annotated[float, PlainValidator(_in_range(0, 1, low_open=True, high_open=True)),
                        WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})]
NonNegative = Annotated[float, PlainValidator(_in_range(0, math.inf, low_open=False, high_open=True)),
                        WithJsonSchema({"type": "number", "minimum": 0})]
Positive = Annotated[float, PlainValidator(_in_range(0, math.inf, low_open=True, high_open=True)),
                     WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=0, max_length=10_000)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Open(BaseModel):
    """Objects whose keys vary (environment, runtime): known fields typed, others kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow")


class Run(_Model):
    created: str
    elapsed_s: NonNegative


class Environment(_Open):
    gradflow: str | None = None
    python: str | None = None
    torch: str | None = None


class ModelSummary(_Model):
    class_: str = Field(alias="class")
    n_parameters: Count
    n_trainable: Count
    dtype: str | None
    device: str | None
    training: bool


class SubjectInfo(_Model):
    name: Name
    preset: Name | None
    config: dict[str, Any]
    model: ModelSummary


class BatchRule(_Open):
    rule: Literal["fixed", "group-sequential, Bonferroni spending"]
    confidence: Probability
    looks: list[Annotated[int, Field(ge=1)]] | None = None
    look_confidence: Probability | None = None
    stopped_at: int | None = None
    reason: str | None = None
    precision: Positive | None = None


class Batches(_Model):
    count: Count
    pass_seeds: list[int]
    rule: BatchRule


class Interval(_Model):
    method: str
    confidence: Probability


class BranchInfo(_Model):
    selector: Name
    mode: Literal["zero", "identity", "scale"]
    scale: Finite | None
    modules: list[Name]
    calls_per_pass: list[Count] = Field(min_length=2, max_length=2)


class TargetInfo(_Model):
    selector: Name
    n_params: Count
    modules: dict[Name, Count]


class Ablate(_Model):
    selector: Name
    mode: Literal["zero", "identity", "scale"]
    scale: Finite | None


class SettingInfo(_Model):
    name: Name
    scale: Finite | None
    ablate: dict[Name, Ablate]


class Runtime(_Open):
    scope: Literal["local", "ddp", "fsdp2"] = "local"
    world_size: Annotated[int, Field(ge=1)] = 1


class Measurement(_Model):
    gradient_paths: dict[Literal["autograd", "backward"], str] = Field(default_factory=dict)
    runtime: Runtime = Field(default_factory=Runtime)
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class Pass(_Model):
    batch: Count
    setting: Name
    loss: Number
    norms: dict[Name, dict[Name, Number | None]]


class Row(_Model):
    branch: Name
    target: Name
    module: Name
    scale: Finite | None
    numerator: Name
    denominator: Name
    norm_with: Number | None
    norm_without: Number | None
    retention: Number | None
    ci_low: Number | None
    ci_high: Number | None
    n_batches: Count
    per_batch: list[Number | None]
    status: Literal["ok", "no_grad", "not_run", "undefined", "non_finite", "no_effect"]
    note: str


class LearningRunInfo(_Model):
    train_loss: list[Number]
    eval_steps: list[Count]
    eval_loss: list[Number]
    eval_first: list[Number]
    eval_last: list[Number]
    target_norms: dict[Name, list[Number | None]]
    status: Literal["ok", "diverged"]
    diverged_at: Count | None


class LearningRow(_Model):
    branch: Name
    scale: Finite | None
    numerator: Name
    denominator: Name
    decrease_with: Number | None
    decrease_without: Number | None
    learning_ratio: Number | None
    ci_low: Number | None
    ci_high: Number | None
    n_eval_batches: Count
    status: Literal["ok", "diverged", "undefined", "non_finite"]
    note: str


class Optimizer(_Model):
    name: Literal["adam", "sgd"]
    lr: Positive
    betas: list[Finite] = Field(min_length=2, max_length=2)


class Learning(_Model):
    steps: Annotated[int, Field(ge=1)]
    train: Literal["all", "targets"] = "all"
    train_batches: Annotated[int, Field(ge=1)]
    first_eval_batch: Count
    optimizer: Optimizer
    eval_batches: Annotated[int, Field(ge=2)]
    eval_every: Annotated[int, Field(ge=1)]
    interval: str
    runs: dict[Name, LearningRunInfo]
    rows: list[LearningRow]


class Record(_Model):
    """A run record, version 2."""

    schema_: Literal["gradflow/run-record"] = Field(alias="schema")
    schema_version: Literal[2]
    kind: Literal["compare", "sweep", "learn"]
    run: Run
    environment: Environment
    subject: SubjectInfo
    seed: int
    confidence: Probability
    batches: Batches
    interval: Interval
    branches: dict[Name, BranchInfo]
    targets: dict[Name, TargetInfo]
    settings: list[SettingInfo]
    measurement: Measurement
    passes: list[Pass]
    retention: list[Row]
    learning: Learning | None = None


def _path(location: tuple[Any, ...]) -> str:
    out = "$"
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record brought to version 2 (same numbers; what v1 lacked is filled in and labelled)."""
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        return data
    out = dict(data)
    out["schema_version"] = 2
    confidence = out.get("confidence", 0.95)
    batches = dict(out.get("batches") or {})
    batches.setdefault("rule", {"rule": "fixed", "confidence": confidence})
    out["batches"] = batches
    out.setdefault("interval", {"method": "percentile bootstrap of batches (schema v1; too narrow at small N)",
                                "confidence": confidence})
    out.setdefault("measurement", {})
    branches = {}
    for name, branch in (out.get("branches") or {}).items():
        branches[name] = {"calls_per_pass": [0, 0], "modules": [], **branch} if isinstance(branch, dict) else branch
    out["branches"] = branches
    rows = []
    for row in out.get("retention") or []:
        if isinstance(row, dict):
            row = dict(row)
            scale = row.get("scale")
            branch = row.get("branch")
            numerator = "with" if scale is None else f"scale={scale:g}:{branch}" if isinstance(scale, int | float) \
                else "?"
            row.setdefault("numerator", numerator)
            row.setdefault("denominator", f"without:{branch}")
        rows.append(row)
    out["retention"] = rows
    return out


def validate(data: Any, source: str | None = None) -> dict[str, Any]:
    """The record ``data`` validated (and migrated from version 1), numbers decoded; else :class:`RecordError`."""
    where = f" in {source}" if source else ""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise RecordError(
            f"not a gradflow run record{where}: expected a JSON object with \"schema\": \"{SCHEMA}\". "
            "Pass a file written by `gradflow compare --out` or RunRecord.save()."
        )
    version = data.get("schema_version")
    if version not in (1, SCHEMA_VERSION) or isinstance(version, bool):
        raise RecordError(
            f"run record{where} has schema_version {version!r}; this gradflow reads versions 1 and {SCHEMA_VERSION}. "
            "Re-run the measurement with this gradflow version, or read it with the version that wrote it."
        )
    try:
        record = Record.model_validate(migrate(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise RecordError(f"run record{where} is invalid at {_path(first['loc'])}: {first['msg']}{more}.") from None
    except RecursionError:
        raise RecordError(f"run record{where} is nested too deeply to be a gradflow record.") from None
    _check_consistency(record, where)
    dumped = record.model_dump(by_alias=True, mode="python")
    if dumped.get("learning") is None:
        dumped.pop("learning", None)
    return dumped


def _check_consistency(record: Record, where: str) -> None:
    """What types cannot say: rows and passes refer to what the record defines, sizes agree."""
    settings = {s.name for s in record.settings}
    for index, row in enumerate(record.retention):
        if row.target not in record.targets:
            raise RecordError(f"run record{where} is invalid at $.retention[{index}].target: {row.target!r} is not "
                              "one of the record's targets.")
        for key in ("numerator", "denominator"):
            if record.passes and getattr(row, key) not in settings and getattr(row, key) != "?":
                raise RecordError(f"run record{where} is invalid at $.retention[{index}].{key}: "
                                  f"{getattr(row, key)!r} is not one of the record's settings.")

        if len(row.per_batch) != row.n_batches:
            raise RecordError(f"run record{where} is invalid at $.retention[{index}].per_batch: {len(row.per_batch)} "
                              f"values for n_batches {row.n_batches}.")
        if row.status in ("ok", "no_effect") and (row.retention is None or not math.isfinite(row.retention)):
            raise RecordError(f"run record{where} is invalid at $.retention[{index}].retention: a row with status "
                              f"{row.status!r} needs a finite retention, got {row.retention!r}.")
        if (row.ci_low is None) != (row.ci_high is None):
            raise RecordError(f"run record{where} is invalid at $.retention[{index}].ci_high: an interval needs both "
                              "ends (or neither).")
        if record.kind == "sweep" and row.scale is None:
            raise RecordError(f"run record{where} is invalid at $.retention[{index}].scale: sweep rows need a scale.")
    for index, entry in enumerate(record.passes):
        if entry.setting not in settings:
            raise RecordError(f"run record{where} is invalid at $.passes[{index}].setting: {entry.setting!r} is not "
                              "one of the record's settings.")
    if (record.kind == "learn") != (record.learning is not None):
        raise RecordError(f"run record{where} is invalid at $.learning: a learn record has it, no other kind does.")
    if record.learning is not None:
        for index, row in enumerate(record.learning.rows):
            for key in ("numerator", "denominator"):
                if getattr(row, key) not in record.learning.runs:
                    raise RecordError(f"run record{where} is invalid at $.learning.rows[{index}].{key}: "
                                      f"{getattr(row, key)!r} is not one of the record's runs.")
            if row.status == "ok" and (row.learning_ratio is None or not math.isfinite(row.learning_ratio)):
                raise RecordError(f"run record{where} is invalid at $.learning.rows[{index}].learning_ratio: a row "
                                  f"with status 'ok' needs a finite ratio, got {row.learning_ratio!r}.")
    if len(record.batches.pass_seeds) != record.batches.count:
        raise RecordError(f"run record{where} is invalid at $.batches.pass_seeds: {len(record.batches.pass_seeds)} "
                          f"seeds for {record.batches.count} batches.")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of run records (version 2)."""
    schema = Record.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=1))

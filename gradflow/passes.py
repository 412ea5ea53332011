"""Passes: one forward + backward of the subject on one batch under one ablation setting, verified.

Every setting of one batch runs from the same RNG seed on the same weights, so dropout masks match.
Gradients come from ``torch.autograd.grad`` on the targets' parameters only, or, where autograd cannot reach
them (reentrant checkpointing, FSDP2), from a ``.backward()`` whose ``.grad`` writes are undone
(:mod:`gradflow.gradients`). Every ablated module must have run in its pass (:class:`gradflow.ablation.
Ablation`), compiled code runs eagerly so that hooks fire, and under DDP/FSDP2 the numbers are global
(:mod:`gradflow.distributed`). The user's ``.grad`` fields, modes, hooks and RNG state are left exactly as
they were.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._tree import all_tensors, fresh_containers
from .ablation import Ablation, ForwardCalls, branch_modules
from .distributed import reduce_pass
from .errors import LossError
from .forward_state import ForwardState
from .gradients import GradientPath, choose_path, gradients
from .norms import combine_norms
from .runtime import Runtime
from .subject import Branch, Subject

ProgressFn = Callable[[int, int], None]

REFERENCE = "with"


@dataclass(frozen=True)
class Setting:
    """One ablation setting: ``ablations`` maps branch names to how they are switched off."""

    name: str
    ablations: Mapping[str, Branch] = field(default_factory=dict)
    scale: float | None = None


@dataclass
class TargetLayout:
    """The trainable parameters of all targets, deduplicated, and which belong to which row."""

    params: list[nn.Parameter]
    rows: dict[str, dict[str, list[int]]]  # target -> {"*" | module name: parameter indices}
    describe: dict[str, dict[str, Any]]
    modules: dict[str, dict[str, list[str]]]  # target -> {"*" | module name: names of modules (and descendants)}


def with_descendants(name: str, module: nn.Module) -> list[str]:
    return [name] + [f"{name}.{child}" if name else child for child, _ in module.named_modules() if child]


def target_layout(subject: Subject, target_names: Sequence[str]) -> TargetLayout:
    index_of: dict[int, int] = {}
    params: list[nn.Parameter] = []
    rows: dict[str, dict[str, list[int]]] = {}
    describe: dict[str, dict[str, Any]] = {}
    modules: dict[str, dict[str, list[str]]] = {}

    def indices(named: list[tuple[str, nn.Parameter]]) -> list[int]:
        out = []
        for _, param in named:
            if id(param) not in index_of:
                index_of[id(param)] = len(params)
                params.append(param)
            out.append(index_of[id(param)])
        return out

    for target in target_names:
        named = subject.target_parameters(target)
        target_rows = {"*": indices(named)}
        target_modules: dict[str, list[str]] = {"*": []}
        module_params: dict[str, int] = {}
        for module_name, module in subject.target_modules(target):
            own = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            members = with_descendants(module_name, module)
            target_modules["*"] += members
            if own:
                target_rows[module_name] = indices(own)
                target_modules[module_name] = members
                module_params[module_name] = sum(p.numel() for _, p in own)
        rows[target] = target_rows
        modules[target] = target_modules
        describe[target] = {
            **subject.target(target).describe(),
            "n_params": sum(p.numel() for _, p in named),
            "modules": module_params,
        }
    return TargetLayout(params, rows, describe, modules)


def pass_seed(seed: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise LossError(
            f"loss_fn returned a {type(loss).__name__}; gradflow needs a scalar torch.Tensor "
            "(e.g. return F.cross_entropy(model(x), y))."
        )
    if loss.is_complex() or not loss.is_floating_point():
        raise LossError(
            f"loss_fn returned a {loss.dtype} tensor; gradflow needs a real floating-point scalar to "
            "differentiate (an integer loss has no gradient: was it cast with .long() or made by argmax?; a "
            "complex one needs .real, .abs() or similar first)."
        )
    if loss.numel() != 1:
        raise LossError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}; gradflow needs a scalar. "
            "Reduce it inside loss_fn (e.g. .mean() or .sum())."
        )
    if loss.is_inference():
        raise LossError(
            "loss_fn returned an inference tensor: gradflow was called inside torch.inference_mode(), where "
            "autograd records nothing. Call it outside inference_mode (torch.no_grad() is handled)."
        )
    if not loss.requires_grad:
        raise LossError(
            "loss_fn returned a tensor that does not require grad: no trainable parameter reaches the "
            "loss (are all parameters frozen, or was it computed under torch.no_grad()?)."
        )
    return loss.reshape(())


class SavedRng:
    """Saves and restores every global RNG a loss function may touch (torch CPU/CUDA, random, numpy)."""

    def __enter__(self) -> SavedRng:
        self._torch = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
        random.setstate(self._python)
        np.random.set_state(self._numpy)


@dataclass
class PassEngine:
    """Runs passes of one subject: hooks and layouts are built once, every pass is verified."""

    subject: Subject
    runtime: Runtime
    layout: TargetLayout
    settings: Sequence[Setting]
    #: gradient path used -> why (empty reason for the default path)
    paths: dict[GradientPath, str] = field(default_factory=dict)
    #: branch -> module name -> [fewest, most] forward calls in one pass
    calls: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what the reader must know to trust the numbers (shown with the results, not only in the notes)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        aliases = self.runtime.aliases
        names = {b for s in self.settings for b in s.ablations}
        self.branch_modules: dict[str, list[tuple[str, nn.Module]]] = {}
        for name in names:
            modules, notes = branch_modules(self.subject.model, self.subject.branch(name), aliases)
            self.branch_modules[name] = modules
            self.notes += [f"branch {name}: {note}" for note in notes]
        watched: list[tuple[str, nn.Module]] = []
        for modules in self.branch_modules.values():
            for name, module in modules:
                watched += [(n, module.get_submodule(n[len(name) + 1:]) if n != name else module)
                            for n in with_descendants(name, module)]
        for target in self.layout.modules:
            for name, module in self.subject.target_modules(target):
                watched += [(n, module.get_submodule(n[len(name) + 1:]) if n != name else module)
                            for n in with_descendants(name, module)]
        self.watch = ForwardCalls(watched)
        self.ablations = {s.name: Ablation(self.subject.model, s.ablations, aliases) for s in self.settings
                          if s.ablations}
        #: buffers and module generators, put back before every pass (and at the end by the caller)
        self.state = ForwardState(self.subject.model)

    def first_item_branches(self) -> set[str]:
        """Branches with a module whose tuple output had only its first item switched off."""
        return {branch for ablation in self.ablations.values() for branch, name, _, _ in ablation.targets
                if name in ablation.first_only}

    @property
    def reentrant(self) -> bool:
        """Whether a pass went through reentrant activation checkpointing."""
        return "reentrant" in self.paths.get("backward", "")

    def run(self, batch: Any, setting: Setting) -> dict[str, Any]:
        """One verified pass: ``{"loss", "norms" (target -> row -> norm), "ran" (target -> row -> bool)}``."""
        ablation = self.ablations.get(setting.name)
        self.watch.reset()
        if ablation is not None:
            for name in ablation.calls:
                ablation.calls[name] = 0
        batch = fresh_containers(batch)  # a loss_fn that pops a key leaves the next pass's batch whole
        versions = [(tensor, tensor._version) for tensor in all_tensors(batch) if not tensor.is_inference()]
        with self.watch, (ablation if ablation is not None else _nothing()):
            loss = check_loss(self.subject.loss_fn(self.subject.model, batch))
            changed = [tensor for tensor, version in versions if tensor._version != version]
            if changed:
                raise LossError(
                    f"loss_fn changed {len(changed)} tensor(s) of its batch in place (shape "
                    f"{tuple(changed[0].shape)} first): the next setting of the same batch would see other data, "
                    "and retention would compare different inputs. Copy before modifying (x = x.clone()), or "
                    "do the preprocessing once, outside loss_fn."
                )
            if ablation is not None:
                ablation.verify(self.watch.counts)
                for name in sorted(ablation.first_only):
                    warning = (f"{name} returns a tuple or list: only its first item was switched off, the tensors "
                               "after it were passed on as they were (right for attention weights, a T5 position "
                               "bias, an LSTM state; if later items are contributions of the branch too, select the "
                               "modules that produce them)")
                    if warning not in self.warnings:
                        self.warnings.append(warning)
            self._count_calls(setting)
            path, reason = choose_path(loss, self.layout.params, sharded=self.runtime.scope == "fsdp2")
            self.paths.setdefault(path, reason)
            grads = gradients(loss, self.layout.params, path, self.subject.model)
        loss_value, param_norms = reduce_pass(self.runtime, loss, grads, self.layout.params)
        counts, off = self.watch.counts, self.watch.no_grad_counts
        ran = {target: {row: _ran(members, counts, off) for row, members in rows.items()}
               for target, rows in self.layout.modules.items()}
        return {"loss": loss_value, "norms": _group_norms(self.layout, param_norms), "ran": ran}

    def _count_calls(self, setting: Setting) -> None:
        for branch, modules in self.branch_modules.items():
            for name, _ in modules:
                count = self.watch.counts.get(name, 0)
                low_high = self.calls.setdefault(branch, {}).setdefault(name, [count, count])
                low_high[0], low_high[1] = min(low_high[0], count), max(low_high[1], count)


def _ran(members: list[str], counts: Mapping[str, int], no_grad: Mapping[str, int]) -> str:
    """"yes" when a member module ran with gradient recording on, "no_grad" when only with it off, else "no"."""
    if any(counts.get(m, 0) > no_grad.get(m, 0) for m in members):
        return "yes"
    return "no_grad" if any(counts.get(m, 0) for m in members) else "no"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _group_norms(layout: TargetLayout, param_norms: list[float | None]) -> dict[str, dict[str, float | None]]:
    return {
        target: {row: combine_norms([param_norms[i] for i in idx]) for row, idx in rows.items()}
        for target, rows in layout.rows.items()
    }


def run_batch(engine: PassEngine, batch_index: int, seed: int) -> list[dict[str, Any]]:
    """Every setting of ``engine`` on batch ``batch_index``, each from the batch's pass seed."""
    batch = engine.subject.batch(batch_index)
    batch_seed = pass_seed(seed, batch_index)
    entries = []
    for setting in engine.settings:
        seed_everything(batch_seed)
        engine.state.reset(batch_seed)
        entries.append({"batch": batch_index, "setting": setting.name, **engine.run(batch, setting)})
    return entries

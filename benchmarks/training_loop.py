"""Cost of gradient monitoring inside a training step, against the usual tools, in one interleaved run.

A 12-block ViT (timm, width 192, 64 px, batch 16) with a bottleneck adapter after every block; one SGD
step per call. Variants: no logging; gradflow's per-step ``.grad`` norms of every adapter
(``Monitor.log_grad_norms``); Lightning's ``grad_norm`` utility; Cockpit's ``GradNorm`` quantity (when
cockpit-for-pytorch is installed); ``gf.probe`` on the adapters' parameters; ``gf.probe`` on the parameters
and outputs of every module. And the price of one retention check (``Monitor.check``) in plain steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

import gradflow as gf
from benchmarks.timing import interleaved, paired_ratios


class Adapter(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, 32), nn.Linear(32, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


class AdaptedBlock(nn.Module):
    def __init__(self, block: nn.Module, width: int) -> None:
        super().__init__()
        self.block, self.adapter = block, Adapter(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return x + self.adapter(x)


def adapter_vit(depth: int = 12, width: int = 192) -> nn.Module:
    import timm

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=8, embed_dim=width, depth=depth,
                                                           num_heads=3, num_classes=10)
    vit.blocks = nn.Sequential(*[AdaptedBlock(b, width) for b in vit.blocks])
    return vit


def steps(model: nn.Module, quick: bool) -> dict[str, Callable[[], None]]:
    x, y = torch.randn(4 if quick else 16, 3, 64, 64), torch.randint(0, 10, (4 if quick else 16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    monitor = gf.Monitor(model, loss_fn, branches={"adapters": "blocks.*.adapter"},
                         targets={"adapters": "blocks.*.adapter"}, every=10**9)
    checker = gf.Monitor(model, loss_fn, branches={"adapters": "blocks.*.adapter"}, targets={"head": "head"},
                         every=1)

    def step(after_backward: Callable[[], object] | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, (x, y)).backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()

    def probed(selector: str, outputs: bool) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with gf.probe(model, selector, outputs=outputs) as p:
                loss_fn(model, (x, y)).backward()
            p.norms()
            if outputs:
                p.output_norms(allow_unobserved=True)
            optimizer.step()
        return run

    variants: dict[str, Callable[[], None]] = {
        "plain": step,
        "gradflow_grad_norms": lambda: step(monitor.grad_norms),
    }
    try:
        from lightning.pytorch.utilities import grad_norm

        variants["lightning_grad_norm"] = lambda: step(lambda: grad_norm(model, norm_type=2))
    except ImportError:
        pass
    cockpit_step = _cockpit_step(model, x, y)
    if cockpit_step is not None:
        variants["cockpit_gradnorm"] = cockpit_step
    variants["gradflow_probe_adapters"] = probed("blocks.*.adapter", outputs=False)
    variants["gradflow_probe_all_modules"] = probed("**", outputs=True)
    variants["gradflow_probe_all_modules_open"] = _open_probe_step(model, x, y)
    variants["floor_read_output_grads_once"] = _read_once_step(model, x, y)
    variants["check_every_step"] = lambda: (step(), checker.check(0, (x, y)))
    return variants


def _twin_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               after_backward: Callable[[], object]) -> Callable[[], None]:
    """A plain step on a copy of ``model`` (same weights, its own optimizer), for hooks that stay installed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        after_backward()
        optimizer.step()
    return run


def _open_probe_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """``gf.probe`` on every module of a copy of ``model``, opened once for the whole run (no per-step
    selection and hook setup)."""
    twin = copy.deepcopy(model)
    probe = gf.probe(twin, "**", outputs=True).__enter__()  # noqa: PLC2801 - open for the life of the benchmark
    return _twin_step(twin, x, y, lambda: (probe.norms(), probe.output_norms(allow_unobserved=True)))


def _read_once_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """The floor for output norms, on a copy of ``model``: a hook per distinct module output that reads its
    gradient once (a sum) and keeps nothing."""
    twin = copy.deepcopy(model)
    sink: list[torch.Tensor] = []

    def on_forward(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad and not output._backward_hooks:
            output.register_hook(lambda grad: sink.append(grad.sum()))  # a module returning its input: once

    for module in twin.modules():
        module.register_forward_hook(on_forward)
    return _twin_step(twin, x, y, sink.clear)


def _cockpit_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None] | None:
    try:
        from backpack import extend
        from cockpit import Cockpit, quantities
    except Exception:  # noqa: BLE001 - an optional comparison: skipped when cockpit-for-pytorch does not import
        return None
    loss_fn = extend(nn.CrossEntropyLoss())
    individual = nn.CrossEntropyLoss(reduction="none")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    cockpit = Cockpit(list(model.parameters()), quantities=[quantities.GradNorm(track_schedule=lambda _s: True)])
    counter = [0]

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        info = {"batch_size": len(x), "individual_losses": individual(out, y), "loss": loss, "optimizer": optimizer}
        with cockpit(counter[0], info=info):
            loss.backward(create_graph=cockpit.create_graph(counter[0]))
        optimizer.step()
        counter[0] += 1

    try:
        run()
    except Exception:  # noqa: BLE001 - Cockpit cannot run on this model: leave it out rather than guess
        return None
    return run


def training_loop_overhead(rounds: int, quick: bool = False) -> dict:
    """Per-variant ratio to the plain step (median of per-round ratios), one interleaved run."""
    model = adapter_vit(depth=2 if quick else 12)
    result = paired_ratios(interleaved(steps(model, quick), rounds, 0 if quick else 2), "plain")
    return {"model": "timm ViT, 12 blocks, width 192, 64 px, batch 16, adapter after every block",
            "modules": sum(1 for _ in model.modules()), **result}

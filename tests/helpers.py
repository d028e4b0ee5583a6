"""Test helpers: run the CLI in-process, and read back the exact values torch's init passes to its samplers."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "sample_models").glob("*.yaml"))


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(*args: str) -> Result:
    """Call fancli's entry point as the console script does, capturing stdout, stderr and the exit code."""
    from fancli.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def sampler_calls() -> Iterator[list[tuple[str, object, tuple]]]:
    """Record (method, tensor, args) of every Tensor.normal_/uniform_/fill_/zero_ call torch.nn.init makes.

    torch's init functions end in `tensor.normal_(0, std)` or `tensor.uniform_(-bound, bound)`, so this
    reads the std and bound torch itself computed, with no formula retyped in the test.
    """
    import torch

    calls: list[tuple[str, object, tuple]] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("normal_", "uniform_", "fill_", "zero_")}

    def wrap(name):
        def recorder(self, *args, **kwargs):
            calls.append((name, self, args))
            return originals[name](self, *args, **kwargs)

        return recorder

    for name in originals:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def torch_std_and_bound(init_fn, tensor, **kwargs) -> tuple[float, float | None]:
    """(std, bound) exactly as torch passes them to its sampler: normal_ → (std, None), uniform_ → (b/√3, b)."""
    import math

    with sampler_calls() as calls:
        init_fn(tensor, **kwargs)
    ((method, _, args),) = [call for call in calls if call[0] in ("normal_", "uniform_")]
    if method == "normal_":
        return args[1], None
    return args[1] / math.sqrt(3.0), args[1]

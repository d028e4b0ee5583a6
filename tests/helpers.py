"""Test helpers: run the CLI in-process, and read back the exact values torch's init passes to its samplers."""

from __future__ import annotations

import contextlib
import io
import math
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
def sampler_calls(keywords: bool = False) -> Iterator[list[tuple]]:
    """Record (method, tensor, args) of every Tensor.normal_/uniform_/fill_/zero_ call torch.nn.init makes
    (with `keywords`, (method, tensor, args, kwargs)).

    torch's init functions end in `tensor.normal_(0, std)` or `tensor.uniform_(-bound, bound)`, so this
    reads the std and bound torch itself computed, with no formula retyped in the test.
    """
    import torch

    calls: list[tuple] = []
    originals = {name: getattr(torch.Tensor, name) for name in ("normal_", "uniform_", "fill_", "zero_")}

    def wrap(name):
        def recorder(self, *args, **kwargs):
            calls.append((name, self, args, kwargs) if keywords else (name, self, args))
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


def library_draws(build) -> tuple[object, dict[str, tuple]]:
    """Build a model with its library's own init, recording for each parameter the last draw that covered it
    whole: ("normal", std), ("uniform", bound), ("truncated", σ, k) for torch's trunc_normal_ cut at ±kσ, or
    ("constant", value). This is the library's own number, read from its calls into torch, for a recipe's
    oracle. trunc_normal_ is recorded as the call it is (at torch.nn.init's own `_no_grad_trunc_normal_`,
    which every holder of a reference to trunc_normal_ reaches), not as the draws it samples through."""
    import torch

    original = torch.nn.init._no_grad_trunc_normal_

    with sampler_calls(keywords=True) as calls:
        def truncated(tensor, mean, std, a, b, generator=None):
            result = original(tensor, mean, std, a, b, generator=generator)
            calls.append(("truncated", tensor, (std, b / std), {}))
            return result

        torch.nn.init._no_grad_trunc_normal_ = truncated
        try:
            model = build()
        finally:
            torch.nn.init._no_grad_trunc_normal_ = original
    by_storage = {(p.data_ptr(), tuple(p.shape)): name for name, p in model.named_parameters()}
    draws: dict[str, tuple] = {}
    for method, tensor, args, kwargs in calls:
        name = by_storage.get((tensor.data_ptr(), tuple(tensor.shape)))
        if name is None:
            continue  # a part of a tensor (a padding row) or a tensor that is not a parameter
        if method == "truncated":
            draws[name] = ("truncated", *args)
        elif method == "normal_":
            draws[name] = ("normal", args[1] if len(args) > 1 else kwargs.get("std", 1.0))
        elif method == "uniform_":
            draws[name] = ("uniform", args[1] if len(args) > 1 else kwargs.get("to", 1.0))
        else:
            draws[name] = ("constant", args[0] if method == "fill_" else 0.0)
    return model, draws


def jax_compute_fans(shape, in_axis=-2, out_axis=-1, batch_axis=()):
    """jax 0.10.2 `nn/initializers.py` `_compute_fans`, copied (what `variance_scaling(in_axis=, out_axis=,
    batch_axis=)` divides by)."""
    if isinstance(in_axis, int) and in_axis == -2 and len(shape) <= 1:
        raise ValueError("Can't compute input and output sizes")
    in_size = shape[in_axis] if isinstance(in_axis, int) else math.prod([shape[i] for i in in_axis])
    out_size = shape[out_axis] if isinstance(out_axis, int) else math.prod([shape[i] for i in out_axis])
    batch_size = shape[batch_axis] if isinstance(batch_axis, int) else math.prod([shape[i] for i in batch_axis])
    receptive_field_size = math.prod(shape) / in_size / out_size / batch_size
    fan_in = in_size * receptive_field_size
    fan_out = out_size * receptive_field_size
    return fan_in, fan_out


def keras_compute_fans(shape, input_axes=None, output_axes=None) -> tuple[int, int]:
    """keras 3.15.1 `initializers/random_initializers.py` `compute_fans`, copied (EinsumDense gives it the
    einsum's axes)."""
    shape = tuple(shape)
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[axis] for axis in input_axes), math.prod(shape[axis] for axis in output_axes)
    if len(shape) < 1:
        fan_in = fan_out = 1
    elif len(shape) == 1:
        fan_in = fan_out = shape[0]
    elif len(shape) == 2:
        fan_in, fan_out = shape[0], shape[1]
    else:
        receptive_field_size = 1
        for dim in shape[:-2]:
            receptive_field_size *= dim
        fan_in = shape[-2] * receptive_field_size
        fan_out = shape[-1] * receptive_field_size
    return int(fan_in), int(fan_out)


def run_child(args, code: int = 0, hidden: tuple[str, ...] = (), absent: tuple[str, ...] = ()):
    """fancli's entry point in a fresh Python (what a newcomer's process imports, nothing this test process
    has loaded): `hidden` packages made unimportable (`sys.modules[name] = None`), the exit code asserted to be
    `code` and none of `absent` imported by the end. Returns the finished process (stdout, stderr)."""
    import os
    import subprocess
    import sys

    script = ("import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in hidden)
              + "from fancli.cli import main\n"
              + f"try:\n    main({[str(a) for a in args]!r})\n"
              + f"except SystemExit as done:\n    assert done.code == {code}, done.code\n"
              + f"assert not {set(absent)!r} & set(sys.modules), set({set(absent)!r}) & set(sys.modules)\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def union_of_runs(stats: list[dict], spectral: list[dict]) -> list[dict]:
    """The JSON layers a `--stats --spectral` run should give, from a `--stats` run's and a `--spectral` run's:
    field by field the one that is set (where both are, they must agree), a row's notes --stats's then the
    ones --spectral adds."""
    assert [row["param"] for row in stats] == [row["param"] for row in spectral]
    union = []
    for one, other in zip(stats, spectral):
        row = {}
        for key in one | other:
            a, b = one.get(key), other.get(key)
            if key == "notes":
                row[key] = a + [note for note in b if note not in a]
            else:
                assert a is None or b is None or a == b, (one["param"], key, a, b)
                row[key] = b if a is None else a
        union.append(row)
    return union


def assert_observed_is(observed: dict, values) -> None:
    """A row's `--stats` (`observed`) against numpy on the values written: count, mean and sample std."""
    import numpy as np
    import pytest

    assert observed["count"] == values.size
    assert observed["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-6, abs=1e-9)
    assert observed["std"] == pytest.approx(values.astype(np.float64).std(ddof=1), rel=1e-6)

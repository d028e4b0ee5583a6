"""Write a tiny training run: checkpoints of a small MLP trained for a few SGD steps.

    python sample_models/make_run.py        # from the repository root; needs torch and safetensors

Writes sample_models/run/step-{0,2,10,50,200,1000}/model.safetensors (about 11 KB each): a 8 → 24 → 24×4 → 4
ReLU MLP regressing a random teacher, SGD with weight decay, fixed seeds. The README's trajectory example
(`fancli inspect sample_models/run/step-* --stats`) and docs/trajectory.png are made from these files;
tests/test_trajectory.py checks fancli's numbers on them against torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
STEPS = (0, 2, 10, 50, 200, 1000)


class Net(nn.Module):
    def __init__(self, width: int = 24, depth: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.out(x)


def write_run(out: Path = HERE / "run", steps: tuple[int, ...] = STEPS) -> list[Path]:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, teacher = Net(), Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    inputs = torch.randn(256, 8)
    targets = teacher(inputs).detach() * 30
    written = []
    for step in range(max(steps) + 1):
        if step in steps:
            path = out / f"step-{step}" / "model.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
            written.append(path)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()
    return written


if __name__ == "__main__":
    for path in write_run():
        print(path.relative_to(HERE.parent))

"""Write the saved samples: one small model in every format fancli reads.

    python sample_models/make_saved.py      # from the repository root; needs torch and safetensors

The files are deterministic (fixed seeds) and a few hundred KB in all. tests/test_samples.py checks that
every format gives the same layers as the live module, so rerun this after changing models.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sample_models.models import lenet5, tinynet  # noqa: E402


def save_all(out: Path = HERE) -> list[Path]:
    from safetensors.torch import save_file

    written = []

    def target(name: str) -> Path:
        written.append(out / name)
        return out / name

    net = tinynet()
    state = net.state_dict()
    torch.save(state, target("tinynet_state_dict.pt"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    image, tokens = net.example_inputs()
    picture, logits = net(image, tokens)
    (picture.mean() + logits.mean()).backward()
    optimizer.step()
    torch.save({"epoch": 1, "global_step": 1, "pytorch-lightning_version": "2.4.0",
                "state_dict": net.state_dict(), "optimizer_states": [optimizer.state_dict()],
                "hyper_parameters": {"width": 16}}, target("tinynet_checkpoint.ckpt"))
    net = tinynet()
    torch.save(net, target("tinynet_module.pt"))  # a pickled module: fancli needs --trust for it
    torch.jit.trace(net, net.example_inputs(), check_trace=False).save(str(target("tinynet_script.pt")))
    untied = {k: v.clone() for k, v in net.state_dict().items() if k != "head.weight"}
    save_file(untied, str(target("tinynet.safetensors")), metadata={"format": "pt"})
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in untied.items()}
    save_file(bf16, str(target("tinynet_bf16.safetensors")), metadata={"format": "pt"})

    small = lenet5()
    torch.save(small.state_dict(), target("lenet5.pth"))
    exported = torch.export.export(small, (torch.randn(1, 1, 32, 32),))
    torch.export.save(exported, str(target("lenet5.pt2")))
    save_file(small.state_dict(), str(target("lenet5.safetensors")))
    shards = [dict(list(small.state_dict().items())[i::2]) for i in range(2)]
    weight_map = {}
    for index, shard in enumerate(shards):
        name = f"lenet5-{index + 1:05d}-of-00002.safetensors"
        save_file(shard, str(target(name)))
        weight_map.update({key: name for key in shard})
    target("lenet5.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                  indent=2) + "\n")
    return written


if __name__ == "__main__":
    for path in save_all():
        print(f"{path.relative_to(HERE.parent)}  {path.stat().st_size:,} bytes")

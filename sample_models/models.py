"""The torch modules behind the saved samples, also usable as factory sources:

    fancli inspect sample_models.models:tinynet
    fancli inspect sample_models.models:lenet5 --kwargs '{"seed": 1}'

`tinynet` packs every layer whose fans torch's convention gets wrong into a few thousand weights:
a depthwise and a grouped conv, a strided transposed conv, an LSTM (4 stacked gates), attention
(stacked q/k/v) and an embedding tied to the output head.

`mlp` takes a `width` for `fancli scale` (the coordinate check):

    fancli scale sample_models.models:mlp --width 64,128,256,512 --lr 0.02
    fancli scale sample_models.models:mlp --width 64,128,256,512 --lr 0.02 --kwargs '{"mup": false}'
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 as in the deeplearning.net tutorial: tanh, 2×2 pooling after each conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x)))
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc3(torch.tanh(self.fc2(x)))


class TinyNet(nn.Module):
    """An image branch and a token branch, each with the layers torch's fans mislead on."""

    def __init__(self, width: int = 16, vocab: int = 100) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.grouped = nn.Conv2d(width, 2 * width, 3, padding=2, dilation=2, groups=4)
        self.norm = nn.BatchNorm2d(2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.attn = nn.MultiheadAttention(2 * width, 4, batch_first=True)
        self.ln = nn.LayerNorm(2 * width)
        self.proj = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models do

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.stem(image))
        x = torch.relu(self.depthwise(x))
        x = torch.relu(self.norm(self.grouped(x)))
        picture = self.up(x)
        h, _ = self.lstm(self.embed(tokens))
        h = self.ln(h + self.attn(h, h, h, need_weights=False)[0])
        return picture, self.head(torch.relu(self.proj(h)))

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(1, 3, 8, 8), torch.randint(0, 100, (1, 5))


def tinynet(seed: int = 0, width: int = 16) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(width).eval()


def lenet5(seed: int = 0) -> LeNet5:
    torch.manual_seed(seed)
    return LeNet5().eval()


def mlp(width: int = 64, mup: bool = True, d_in: int = 16, d_out: int = 16, base: int = 64) -> nn.Sequential:
    """A 2-hidden-layer ReLU MLP in μP (Yang et al., Tensor Programs V, Table 3, for Adam) or, with
    mup=False, in the standard parametrization (every std 1/√fan_in, one learning rate).

    μP: input and hidden weights std 1/√fan_in, the readout zero-initialised (mup's readout_zero_init);
    the hidden and readout weights train at lr·base/width (their `lr_scale`, which `fancli scale` reads
    as mup's MuAdam scales them). Not seeded here: `fancli scale --seed` seeds torch before each width.
    """
    net = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, d_out, bias=False))
    for layer in (net[0], net[2], net[4]):
        nn.init.normal_(layer.weight, 0.0, layer.in_features ** -0.5)
    for layer in (net[0], net[2]):
        nn.init.zeros_(layer.bias)
    if mup:
        nn.init.zeros_(net[4].weight)
        for layer in (net[2], net[4]):
            layer.weight.lr_scale = base / width
    return net

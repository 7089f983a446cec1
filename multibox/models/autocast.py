"""bf16 autocast for inference, and a guard around one wrong result of PyTorch's CPU bf16 convolution.

:class:`BFloat16Network` runs a dense network under bf16 autocast and hands its outputs to the
post-processing in float32 (ranking and decoding in bf16 would tie scores and move boxes).

Under CPU autocast to bfloat16, the weight gradient of a convolution with stride ``s > 1`` and
padding, whose input is narrower than ``s`` (so its output is one column wide), has its taps
that see only padding left uninitialised: measured with torch 2.14.1 on AVX2 and AVX-512
kernels alike, values such as 3e35 or NaN where the gradient is 0, whatever the batch. A NaN
makes the trainer skip every step; a large finite value ruins the weights silently.
RetinaNet's P7 (a stride-2 convolution on P6) meets it at inputs of 64 px or less. Such
convolutions have a one-column output, so running them in float32 costs nothing measurable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BFloat16Network", "guard_bf16_strided_convs"]


def guard_bf16_strided_convs(model: nn.Module) -> int:
    """Make ``model``'s padded strided convolutions run in float32 under CPU bf16 autocast when
    their input is narrower or shorter than their stride; elsewhere they run as before.

    Returns:
        how many convolutions were guarded (those with a stride above 1 and padding).
    """
    guarded = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1 and _padded(module):
            module.register_forward_pre_hook(_enter_float32)
            module.register_forward_hook(_leave_float32, always_call=True)
            guarded += 1
    return guarded


def _padded(conv: nn.Conv2d) -> bool:
    return conv.padding == "same" or (conv.padding != "valid" and max(conv.padding) > 0)


def _needs_float32(conv: nn.Conv2d, x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and (x.shape[-1] < conv.stride[1] or x.shape[-2] < conv.stride[0])
    )


def _enter_float32(conv: nn.Conv2d, inputs: tuple[Tensor, ...]):
    if not _needs_float32(conv, inputs[0]):
        return None
    context = torch.autocast("cpu", enabled=False)
    context.__enter__()
    conv._float32_contexts = [*getattr(conv, "_float32_contexts", []), context]
    return (inputs[0].float(), *inputs[1:])


def _leave_float32(conv: nn.Conv2d, inputs, output):
    contexts = getattr(conv, "_float32_contexts", [])
    if contexts:
        contexts.pop().__exit__(None, None, None)
    return None


class BFloat16Network(nn.Module):
    """``network`` (a dense detector) under bf16 autocast, its outputs float32; ``detect`` is the
    network's, in float32. Measured 1.30x faster than float32 at 512x512 on an AMX CPU
    (``bench/bf16.py``); on CPUs without bf16 instructions PyTorch emulates it, slower."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        guard_bf16_strided_convs(network)

    def forward(self, images: Tensor):
        with torch.autocast(images.device.type, torch.bfloat16):
            output = self.network(images)
        return type(output)(*(part.float() for part in output))

    def detect(self, *args, **kwargs):
        return self.network.detect(*args, **kwargs)

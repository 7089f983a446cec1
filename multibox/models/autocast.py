"""A guard around one wrong result of PyTorch's CPU bf16 convolution.

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

__all__ = ["guard_bf16_strided_convs"]


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

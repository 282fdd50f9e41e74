"""2-D convolutions whose derivatives of every order are again convolutions.

A gradient penalty (PGGAN's WGAN-GP, DF-GAN's MA-GP) differentiates D twice. PyTorch's own double
backward of a convolution runs, on CUDA, in cuDNN kernels that use no tensor cores
(implicit_convolve_sgemm), and took about half of the GPU time of such a training step. Following
the idea of Karras et al. 2020 (stylegan2-ada, "conv2d_gradfix"), the convolutions here are custom
autograd Functions: the gradient w.r.t. the input is the transposed operation, the gradient w.r.t.
the weight is a second Function, and the backward of each is written with the same Functions, so
every derivative is a plain conv2d / conv_transpose2d (or cuDNN's weight-gradient kernel), which
cuDNN runs on tensor cores.

The custom path is taken for CUDA tensors only: on the CPU it was no faster than the native ops in
float32 and a few percent slower under bfloat16 autocast (PGGAN 32x32 training steps), and the
native CPU kernels have no slow double backward to avoid. `force(True)` takes it everywhere (the
tests use it on the CPU), `force(False)` nowhere.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# None: the custom path for CUDA tensors only; True / False: everywhere / nowhere (see `force`).
enabled: bool | None = None
# False inside `no_weight_gradients`.
_weight_gradients = True


@contextlib.contextmanager
def force(flag: bool | None) -> Iterator[None]:
    """Take the custom path everywhere (True), nowhere (False) or by device (None) inside the block."""
    global enabled
    previous, enabled = enabled, flag
    try:
        yield
    finally:
        enabled = previous


@contextlib.contextmanager
def no_weight_gradients() -> Iterator[None]:
    """Inside the block, backward passes through these convolutions give no gradient to weights and biases.

    For a gradient penalty's autograd.grad w.r.t. D's input only: a custom Function's backward
    cannot tell which of its inputs autograd.grad asked for, and would compute a weight gradient per
    layer only to drop it. The penalty's own gradient w.r.t. the weights (its second derivative) is
    unaffected: it is computed later, outside the block.
    """
    global _weight_gradients
    previous, _weight_gradients = _weight_gradients, False
    try:
        yield
    finally:
        _weight_gradients = previous


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d (dilation 1), twice differentiable through convolutions only."""
    config = _Config(False, _pair(stride, "stride"), _pair(padding, "padding"), (0, 0), groups)
    return _convolve(config, x, weight, bias, dilation)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """F.conv_transpose2d (dilation 1), twice differentiable through convolutions only."""
    config = _Config(True, _pair(stride, "stride"), _pair(padding, "padding"), _pair(output_padding, "output_padding"),
                     groups)
    return _convolve(config, x, weight, bias, dilation)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, initialisation and state-dict keys) that convolves with `conv2d` above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"ganforge.conv.Conv2d pads with zeros only, not padding_mode={self.padding_mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _custom_path(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" if enabled is None else enabled


class _Config(NamedTuple):
    """One convolution: conv2d, or conv_transpose2d when `transposed`."""

    transposed: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    groups: int


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise ValueError(f"ganforge.conv: {name} must be an int or a pair of ints, not {value!r}")


def _convolve(config: _Config, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              dilation) -> torch.Tensor:
    if _pair(dilation, "dilation") != (1, 1):
        raise ValueError(f"ganforge.conv supports dilation 1 only, not {dilation!r}")
    if x.dim() != 4:
        raise ValueError(f"ganforge.conv expects a batch of images [N, C, H, W], not a tensor of shape {tuple(x.shape)}")
    if not _custom_path(x):
        return _run(config, x, weight, bias)
    # A custom Function's backward runs under whatever autocast state is current then, not the
    # forward's. So the inputs are cast here as autocast would cast them, and the Functions convolve
    # with autocast off: every derivative sees the forward's dtype. The casts are ordinary ops, so
    # autograd casts the gradients back to the dtypes of the original inputs.
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, bias = (_autocast(t, dtype) for t in (x, weight, bias))
    return _Convolution.apply(x, weight, bias, config)


def _autocast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """t in autocast's dtype, for the tensors autocast casts (floating point, not float64)."""
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _run(config: _Config, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if config.transposed:
        return F.conv_transpose2d(x, weight, bias, config.stride, config.padding, config.output_padding, config.groups)
    return F.conv2d(x, weight, bias, config.stride, config.padding, 1, config.groups)


def _input_gradient_config(config: _Config, input_shape: torch.Size, output_shape: torch.Size,
                           weight_shape: torch.Size) -> _Config:
    """The convolution that maps a gradient of the output to the gradient of the input: the transposed
    operation. A strided conv2d maps several input sizes to one output size; the output_padding of its
    transpose picks the input's size back out."""
    if config.transposed:
        return config._replace(transposed=False, output_padding=(0, 0))
    output_padding = tuple(input_shape[i + 2] - (output_shape[i + 2] - 1) * config.stride[i] + 2 * config.padding[i]
                           - weight_shape[i + 2] for i in range(2))
    return config._replace(transposed=True, output_padding=output_padding)


class _Convolution(torch.autograd.Function):
    """conv2d / conv_transpose2d (by `config`) whose backward is made of _Convolution and _WeightGradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: _Config) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            out = _run(config, x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.config = config
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        config = ctx.config
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            transpose = _input_gradient_config(config, x.shape, grad_out.shape, weight.shape)
            grad_x = _Convolution.apply(grad_out, weight, None, transpose)
        if ctx.needs_input_grad[1] and _weight_gradients:
            grad_weight = _WeightGradient.apply(grad_out, x, weight, config)
        if ctx.needs_input_grad[2] and _weight_gradients:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


class _WeightGradient(torch.autograd.Function):
    """The gradient of a convolution's weight given (grad_out, x); `weight` only gives its shape and layout.

    It is bilinear in (grad_out, x), so its backward is two convolutions: w.r.t. grad_out, the
    convolution itself applied to x with the incoming gradient as its weight; w.r.t. x, the
    transposed operation applied to grad_out with that weight.
    """

    @staticmethod
    def forward(ctx, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, config: _Config) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, config.stride, config.padding, (1, 1), config.transposed,
                config.output_padding, config.groups, (False, True, False))
        ctx.save_for_backward(grad_out, x)
        ctx.config = config
        return grad_weight

    @staticmethod
    def backward(ctx, grad2_weight: torch.Tensor):
        grad_out, x = ctx.saved_tensors
        config = ctx.config
        grad2_grad_out = grad2_x = None
        if ctx.needs_input_grad[0]:
            grad2_grad_out = _Convolution.apply(x, grad2_weight, None, config)
        if ctx.needs_input_grad[1]:
            transpose = _input_gradient_config(config, x.shape, grad_out.shape, grad2_weight.shape)
            grad2_x = _Convolution.apply(grad_out, grad2_weight, None, transpose)
        return grad2_grad_out, grad2_x, None, None

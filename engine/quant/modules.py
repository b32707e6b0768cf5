"""Modules that replace parts of a ``BertModel`` during quantization.

``Int8Linear`` replaces ``nn.Linear``: int8 weight (N, K) with per-output-channel fp32 scales, the bias
in fp32, and activations quantized at run time either per token (dynamic) or with one calibrated
scale and zero point (static). Three GEMM paths (exact int32 accumulation, fp32 epilogue):

* ``packed`` (CPU without VNNI/AMX, the default there): bertrt's own kernel
  (``bertrt._C.int8_linear_packed``): the activations are quantized inside the call, weights packed
  once as 7-bit values (see below), dequantization, bias and GELU fused into the epilogue. On the
  AVX2 development CPU it runs at the speed of bertrt's FP32 GEMM and faster than oneDNN's int8
  path (figures in docs/quantization.md).
* ``onednn`` (CPU; the default with VNNI or AMX): ``torch.ops.onednn.qlinear_pointwise``, oneDNN's
  int8 matmul primitive (AVX2 u8s8, AVX512-VNNI or AMX, whatever the CPU has), weights prepacked once.
  The u8 input is the int8 value + 128 with zero point 128, so per-token int8 data goes through
  unchanged.
  Without VNNI/AMX, oneDNN multiplies u8 x s8 pairs with vpmaddubsw, whose int16 pair sums
  saturate for 8-bit operands (measured: errors of ~34,000 in the int32 result). There the prepacked
  weights are requantized to 7 bits (|w| <= 63, scale * 127 / 63), which keeps the product exact and
  the activations at 8 bits (they carry the outliers); the checkpoint does not change.
* ``op``: ``bertrt.ops.int8_linear`` (our C++ CPU kernel when built, Triton on CUDA, else torch).

``KeepPrecision`` wraps a module that stays in higher precision inside a bf16/fp16 model and casts
at its boundary.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .. import ops
from ..ops.gemm_choice import has_amx_int8, has_int8_dot, onednn_available, packed_available
from ..ops.int8_linear import (
    check_act_bits,
    pack_int8_weight,
    quantize_per_token,
    quantize_per_token_asym,
    quantize_per_token_u8,
    quantize_static_u8,
    static_params_for,
)

__all__ = ["Int8Linear", "KeepPrecision", "has_int8_dot", "onednn_available", "packed_available",
           "quantize_weight_per_channel"]

log = logging.getLogger("bertrt.quant")

MODES = ("dynamic", "static")


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (N, K) float -> (w_q int8 (N, K), scale float32 (N,))."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    w_q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return w_q, scale


class Int8Linear(nn.Module):
    """W8A8 linear. Buffers (what a quantized checkpoint stores):
    weight (N, K) int8, weight_scale (N,) fp32, bias (N,) fp32 (when the source had one);
    static mode adds input_scale (1,) fp32 and input_zero_point (1,) int32 (x_q = round(x / s) + z in
    [-128, 127]); input_multiplier (K,) fp32 when SmoothQuant divided the activations (x -> x * m).
    act_bits 7 (a config attribute, not a buffer) quantizes activations to [-63, 63] per token, or maps
    the static range onto [-64, 63] (``static_params_for``), in every kernel. act_symmetric False
    (dynamic, act_bits 7) gives each token its own zero point over its [min, max] range
    (``quantize_per_token_asym``): one more bit of resolution for one-sided inputs (GELU outputs).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "dynamic",
                 smooth: bool = False, kernel: str = "auto", act_bits: int = 8, act_symmetric: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not act_symmetric and (mode != "dynamic" or act_bits != 7):
            raise ValueError("asymmetric per-token activations (act_symmetric=False) are dynamic and 7-bit only")
        self.act_symmetric = bool(act_symmetric)
        self.in_features, self.out_features, self.mode, self.kernel = in_features, out_features, mode, kernel
        self.act_bits = check_act_bits(act_bits)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        if mode == "static":
            self.register_buffer("input_scale", torch.ones(1))
            self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32))
        self.register_buffer("input_multiplier", torch.ones(in_features) if smooth else None)
        self._cache: dict = {}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}, "
                f"smooth={self.input_multiplier is not None}, kernel={self.kernel}, act_bits={self.act_bits}, "
                f"act_symmetric={self.act_symmetric}")

    def tensor_names(self) -> list[str]:
        """Names of the tensors a checkpoint must hold for this module."""
        names = ["weight", "weight_scale"]
        if self.bias is not None:
            names.append("bias")
        if self.mode == "static":
            names += ["input_scale", "input_zero_point"]
        if self.input_multiplier is not None:
            names.append("input_multiplier")
        return names

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "dynamic", input_scale: float | None = None,
                   input_zero_point: int = 0, smooth: torch.Tensor | None = None, kernel: str = "auto",
                   act_bits: int = 8, act_symmetric: bool = True) -> Int8Linear:
        """Quantize ``linear``. ``smooth`` (K,): SmoothQuant factors s; the weight's columns are multiplied
        by s and the activations by 1 / s at run time (folded into the quantization scale)."""
        weight = linear.weight.detach().float()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, smooth is not None, kernel,
                     act_bits, act_symmetric)
        if smooth is not None:
            smooth = smooth.float().to(weight.device)
            weight = weight * smooth[None, :]
            module.input_multiplier = (1.0 / smooth).contiguous()
        w_q, w_scale = quantize_weight_per_channel(weight)
        module.weight, module.weight_scale = w_q, w_scale
        if linear.bias is not None:
            module.bias = linear.bias.detach().float().clone()
        if mode == "static":
            if input_scale is None or not input_scale > 0:
                raise ValueError(f"static Int8Linear needs a positive input_scale, got {input_scale}")
            module.input_scale = torch.tensor([float(input_scale)], device=weight.device)
            module.input_zero_point = torch.tensor([int(input_zero_point)], dtype=torch.int32, device=weight.device)
        return module.to(weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight this module multiplies by (without SmoothQuant's factor)."""
        w = self.weight.float() * self.weight_scale[:, None]
        if self.input_multiplier is not None:
            w = w * self.input_multiplier[None, :]
        return w

    # -- run time ------------------------------------------------------------------------------------

    def kernel_for(self, x: torch.Tensor, planned: str | None = None) -> str:
        """The GEMM path for input ``x`` (2-D): this module's explicit kernel, else the kernel plan's
        choice (``planned``), else the static rule (packed without VNNI/AMX, oneDNN with it). An
        explicit kernel that cannot take ``x`` raises; a planned or automatic one falls back."""
        explicit = self.kernel != "auto"
        choice = self.kernel if explicit else (planned if planned not in (None, "auto") else "auto")
        cpu = x.device.type == "cpu"
        if choice == "packed":
            fits = cpu and x.dtype == torch.float32
            reason = packed_available() if fits else f"takes float32 CPU input, got {x.dtype} on {x.device}"
            if reason is None:
                return "packed"
            if explicit:
                raise RuntimeError(f"Int8Linear kernel='packed' is unavailable: {reason}")
            choice = "auto"
        if choice == "onednn":
            reason = onednn_available() if cpu else f"runs on the CPU, the input is on {x.device}"
            if reason is None:
                return "onednn"
            if explicit:
                raise RuntimeError(f"Int8Linear kernel='onednn' is unavailable: {reason}")
            choice = "auto"
        if choice == "op":
            return "op"
        if cpu and x.dtype == torch.float32 and packed_available() is None and not has_amx_int8():
            return "packed"  # VNNI or AVX2 tiles, quantization fused; with AMX-INT8 oneDNN's tiles win
        return "onednn" if cpu and onednn_available() is None else "op"

    def _key(self) -> tuple:
        return (self.weight.data_ptr(), self.weight._version, self.weight_scale._version,
                None if self.bias is None else self.bias._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_activation(x, "none")

    def forward_activation(self, x: torch.Tensor, activation: str, kernel: str | None = None) -> torch.Tensor:
        """act(self(x)): the packed kernel applies "gelu"/"gelu_tanh" in its epilogue, the others after.
        kernel: the kernel plan's INT8 choice (see ``kernel_for``)."""
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        chosen = self.kernel_for(x2, kernel)
        if chosen == "packed":
            y = self._forward_packed(x2, activation)
            return y.to(x.dtype).view(*shape[:-1], self.out_features)
        if chosen == "onednn":
            y = self._forward_onednn(x2)
        else:
            y = self._forward_op(x2)
        if activation != "none":
            y = torch.nn.functional.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def _forward_packed(self, x: torch.Tensor, activation: str) -> torch.Tensor:
        from ..ops import cpu_kernels  # imports bertrt._C, an optional build (packed_available said it is there)

        weight_bits = cpu_kernels.packed_weight_bits()  # 8 on the VNNI loop: the checkpoint's weights as they are
        key = ("packed", weight_bits, self._key())
        if key not in self._cache:
            for stale in [k for k in self._cache if isinstance(k, tuple) and k[0] == "packed"]:
                del self._cache[stale]
            self._cache[key] = pack_int8_weight(self.weight, self.weight_scale, self.bias, self.act_bits, weight_bits)
        # the kernel multiplies by SmoothQuant's 1 / s while it quantizes (no extra pass over x)
        extra = {"multiplier": self.input_multiplier, "asymmetric": not self.act_symmetric}
        if self.mode == "dynamic":
            return cpu_kernels.int8_linear_packed(x.contiguous(), self._cache[key], activation, **extra)
        return cpu_kernels.int8_linear_packed(x.contiguous(), self._cache[key], activation, *self._static_params(),
                                              **extra)

    def _static_params(self) -> tuple[float, int]:
        """(scale, zero point) of the activations on this module's act_bits grid."""
        return static_params_for(self.act_bits, float(self.input_scale.item()), int(self.input_zero_point.item()))

    def _qmax(self) -> int:
        return 2 ** (self.act_bits - 1) - 1

    def _scaled_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x if self.input_multiplier is None else x * self.input_multiplier

    def _packed(self) -> torch.Tensor:
        key = ("onednn", self._key())
        if key not in self._cache:
            self._cache.clear()
            w_q, w_scale = self.weight, self.weight_scale
            if not has_int8_dot():  # 7-bit weights: vpmaddubsw's int16 pair sums cannot saturate
                w_q = torch.round(w_q.float() * (63.0 / 127.0)).to(torch.int8)
                w_scale = w_scale * (127.0 / 63.0)
            self._cache[key] = torch.ops.onednn.qlinear_prepack(w_q.contiguous(), None)
            self._cache["w_scale"] = w_scale.contiguous()
            self._cache["w_zp"] = torch.zeros(self.out_features, dtype=torch.long)
        return self._cache[key]

    def _forward_onednn(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed()
        w_zp, w_scale = self._cache["w_zp"], self._cache["w_scale"]
        if self.mode == "dynamic":
            zero = self._qmax() + 1
            if self.act_symmetric:
                x_u8, x_scale = quantize_per_token_u8(self._scaled_input(x), self._qmax())
            else:  # the centred values (x_q - z in [-127, 127]) around one shared zero point, 128
                x_c, x_scale, _ = quantize_per_token_asym(self._scaled_input(x), self._qmax())
                x_u8, zero = (x_c.to(torch.int16) + 128).to(torch.uint8), 128
            y = torch.ops.onednn.qlinear_pointwise(x_u8, 1.0, zero, packed, w_scale, w_zp,
                                                   None, 1.0, 0, torch.float32, "none", [None], "")
            # per-token scale and bias after the int32 product: y = acc * s_w * s_x + b
            return torch.addcmul(self.bias, y, x_scale[:, None]) if self.bias is not None else y.mul_(x_scale[:, None])
        scale, zp = self._static_params()
        zp += 128
        x_u8 = quantize_static_u8(self._scaled_input(x), scale, zp, 128.0 + self._qmax(), 127.0 - self._qmax())
        return torch.ops.onednn.qlinear_pointwise(x_u8, scale, zp, packed, w_scale, w_zp, self.bias, 1.0, 0,
                                                  torch.float32, "none", [None], "")

    def _forward_op(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._scaled_input(x)
        if self.mode == "dynamic":
            if self.act_symmetric:
                x_q, x_scale = quantize_per_token(xs, self._qmax())
            else:
                x_q, x_scale, _ = quantize_per_token_asym(xs, self._qmax())
            return ops.int8_linear(x_q, x_scale, self.weight, self.weight_scale, self.bias, "none", torch.float32)
        scale, zp = self._static_params()
        x_q = torch.round(xs / scale).add_(float(zp)).clamp_(-self._qmax() - 1, self._qmax()).to(torch.int8)
        x_scale = torch.full((x_q.shape[0],), scale, device=x_q.device)
        return ops.int8_linear(x_q, x_scale, self.weight, self.weight_scale, self._op_bias(), "none", torch.float32)

    def _op_bias(self) -> torch.Tensor | None:
        """Static asymmetric: the zero point's contribution -s_x * s_w[n] * z * sum_k w_q[n, k], folded
        into the bias so that the symmetric int8 op computes the exact asymmetric product."""
        scale, zp = self._static_params()
        if zp == 0:
            return self.bias
        key = ("op_bias", self._key(), self.input_scale._version, self.input_zero_point._version)
        if key not in self._cache:
            row_sum = self.weight.to(torch.int64).sum(1).float()
            corr = -scale * zp * self.weight_scale * row_sum
            self._cache[key] = corr + (self.bias if self.bias is not None else 0.0)
        return self._cache[key]

    def __getstate__(self):  # deepcopy / pickle: the prepacked oneDNN weight is rebuilt on first use
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # .to(bfloat16) on the model must not touch the int8 weight nor the fp32 scales
        self._cache.clear()
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved.to(buf.dtype) if moved.dtype != buf.dtype else moved
        return self


class KeepPrecision(nn.Module):
    """Runs ``inner`` in ``dtype`` inside a model of another dtype: floating tensor arguments are cast
    to ``dtype``, the floating output to ``out_dtype`` (or to the first floating argument's dtype)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype | None = None):
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.out_dtype = out_dtype

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, out_dtype={self.out_dtype}"

    def forward(self, *args, **kwargs):
        out_dtype = self.out_dtype
        cast = []
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                out_dtype = out_dtype or a.dtype
                a = a.to(self.dtype)
            cast.append(a)
        out = self.inner(*cast, **kwargs)
        if out_dtype is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.to(out_dtype)
        return out

    def _apply(self, fn, *args, **kwargs):
        # model.to(dtype) keeps the wrapped module in its own dtype; moves between devices still apply
        def keep_dtype(t):
            moved = fn(t)
            return moved.to(t.dtype) if moved.is_floating_point() and moved.dtype != t.dtype else moved

        return super()._apply(keep_dtype, *args, **kwargs)

"""INT8 GEMM with per-token activation scales, per-channel weight scales and a fused epilogue.

    x_q:     (tokens, in_features) int8     activations, symmetric per-token quantization
    x_scale: (tokens,) float32              x ~= x_q * x_scale[:, None]
    w_q:     (out_features, in_features) int8, symmetric per-output-channel quantization
    w_scale: (out_features,) float32        w ~= w_q * w_scale[:, None]
    bias:    (out_features,) or None, added after dequantization
    activation: "none" | "gelu" | "gelu_tanh", applied after the bias
    returns (tokens, out_features) in out_dtype

The int32 accumulation is exact; the only error is the final float epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import pick

ACTIVATIONS = ("none", "gelu", "gelu_tanh")


def _check(x_q, x_scale, w_q, w_scale, bias, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise ValueError(f"x_q and w_q must be int8, got {x_q.dtype} and {w_q.dtype}")
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"x_q (tokens, K) and w_q (N, K) must agree on K: {tuple(x_q.shape)} vs {tuple(w_q.shape)}")
    if x_scale.shape != (x_q.shape[0],) or w_scale.shape != (w_q.shape[0],):
        raise ValueError(
            f"x_scale must be ({x_q.shape[0]},) and w_scale ({w_q.shape[0]},), got "
            f"{tuple(x_scale.shape)} and {tuple(w_scale.shape)}"
        )
    if bias is not None and bias.shape != (w_q.shape[0],):
        raise ValueError(f"bias must be ({w_q.shape[0]},), got {tuple(bias.shape)}")


def _epilogue(acc: torch.Tensor, x_scale, w_scale, bias, activation) -> torch.Tensor:
    y = acc * x_scale.float()[:, None] * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    if activation == "gelu":
        y = F.gelu(y)
    elif activation == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    return y


def int8_linear_ref(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32):
    """Exact integer product (in float64, exact for K * 127^2 < 2^53), then the fp32 epilogue."""
    _check(x_q, x_scale, w_q, w_scale, bias, activation)
    acc = (x_q.double() @ w_q.double().t()).float()
    return _epilogue(acc, x_scale, w_scale, bias, activation).to(out_dtype)


def int8_linear_torch(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32):
    """torch._int_mm where it exists for the shape (CUDA, M > 16), else an fp32 product (exact below 2^24)."""
    _check(x_q, x_scale, w_q, w_scale, bias, activation)
    if x_q.is_cuda and x_q.shape[0] > 16 and x_q.shape[1] % 8 == 0 and w_q.shape[0] % 8 == 0:
        acc = torch._int_mm(x_q, w_q.t()).float()
    else:
        acc = x_q.float() @ w_q.float().t()
    return _epilogue(acc, x_scale, w_scale, bias, activation).to(out_dtype)


def quantize_per_token(x: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row INT8 on [-qmax, qmax] (127; 63 for 7-bit activations):
    x (tokens, K) -> (x_q int8 (tokens, K), scale float32 (tokens,))."""
    amax = x.float().abs().amax(dim=-1).clamp_min(1e-8)
    scale = amax / float(qmax)
    x_q = torch.round(x.float() / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
    return x_q, scale


def quantize_per_token_asym(x: torch.Tensor, qmax: int = 63) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per-token quantization on the grid [-qmax - 1, qmax]: each row's range [lo, hi]
    (widened to hold 0) in 2 qmax + 1 steps, x_q = round(x / s) + z. Returns (centred, scale, zero):
    centred = x_q - z (int8 for qmax 63: in [-127, 127]), so x ~= centred * scale[:, None], and any
    symmetric int8 GEMM computes the asymmetric product exactly."""
    x = x.float()
    lo = x.amin(dim=1).clamp(max=0.0)
    hi = x.amax(dim=1).clamp(min=0.0)
    scale = (hi - lo).clamp_min(1e-8) / float(2 * qmax + 1)
    zero = torch.round(-lo / scale) - float(qmax + 1)
    x_q = torch.round(x / scale[:, None]).add_(zero[:, None]).clamp_(-qmax - 1.0, float(qmax))
    return (x_q - zero[:, None]).to(torch.int8), scale, zero.to(torch.int32)


def quantize_per_token_u8(x: torch.Tensor, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token quantization to [-qmax, qmax], stored as uint8 = q + qmax + 1 (zero point
    128 for qmax 127, 64 for the 7-bit qmax 63): (x_u8 (M, K), scale (M,))."""
    amax = x.abs().amax(dim=1).clamp_min_(1e-8)
    scale = amax / float(qmax)
    x_u8 = torch.round(x * (qmax / amax)[:, None]).add_(qmax + 1.0)
    x_u8 = x_u8.clamp_(1.0, 2.0 * qmax + 1).to(torch.uint8)
    return x_u8, scale


def quantize_static_u8(x: torch.Tensor, scale: float, zero_point_u8: int, hi: float = 255.0,
                       lo: float = 0.0) -> torch.Tensor:
    """x -> uint8 round(x / scale) + zero_point, saturated to [lo, hi]."""
    return torch.round(x * (1.0 / scale)).add_(float(zero_point_u8)).clamp_(lo, hi).to(torch.uint8)


def int8_linear(x_q, x_scale, w_q, w_scale, bias=None, activation="none", out_dtype=torch.float32, impl="auto"):
    return pick("int8_linear", x_q.device.type, impl)(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)


# ---- packed path: float activations in, weights packed once (bertrt._C.int8_linear_packed) -------------

Q8_PANEL = 16  # output columns per packed panel; fixed in csrc/cpu/int8_linear.cpp


ACT_BITS = (8, 7)


@dataclass(frozen=True)
class PackedInt8Weight:
    """An int8 weight in the packed CPU kernel's layout.

    data:     (ceil(N / 16), quads, 16, 4) int8; [p, g, j, t] = w_q[16p + j, 4g + t], zero padded.
              act_bits 7: quads is even (K padded to a multiple of 8)
    col_sums: (ceil(N / 16) * 16,) int32, sum over K of each column of w_q
    w_scale:  (ceil(N / 16) * 16,) float32, the scale of w_q (7-bit: the source scale * 127 / 63)
    bias:     (ceil(N / 16) * 16,) float32 or None
    w_q:      (N, K) int8: the weight the kernel multiplies by (for the reference); |w_q| <= 63 when
              weight_bits is 7
    act_bits: 8 (activations u8 = q + 128) or 7 (u7 = q + 64; four products sum in 16 bits, faster
              on the AVX2 tiles)
    weight_bits: 7 (every loop) or 8 (the source weight unchanged; the AVX512-VNNI loop only, see
              ``cpu_kernels.packed_weight_bits``)
    """

    data: torch.Tensor
    col_sums: torch.Tensor
    w_scale: torch.Tensor
    bias: torch.Tensor | None
    w_q: torch.Tensor
    act_bits: int = 8
    weight_bits: int = 7

    @property
    def out_features(self) -> int:
        return self.w_q.shape[0]

    @property
    def in_features(self) -> int:
        return self.w_q.shape[1]


def to_7bit(w_q: torch.Tensor, w_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weight (N, K) with scales (N,) -> the same weight in 7 bits (|w| <= 63) and its scales.

    Without VNNI, u8 x s8 products go through vpmaddubsw, whose int16 pair sums saturate for 8-bit
    weights; 7-bit weights keep them exact (the activations keep their 8 bits: they carry outliers)."""
    w7 = torch.round(w_q.float() * (63.0 / 127.0)).to(torch.int8)
    return w7, w_scale.float() * (127.0 / 63.0)


def check_act_bits(act_bits: int) -> int:
    if act_bits not in ACT_BITS:
        raise ValueError(f"act_bits must be one of {ACT_BITS}, got {act_bits!r}")
    return int(act_bits)


def pack_int8_weight(w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                     act_bits: int = 8, weight_bits: int = 7) -> PackedInt8Weight:
    """w_q (N, K) int8, w_scale (N,), bias (N,) or None -> PackedInt8Weight for activations of
    ``act_bits`` (8 or 7) bits; weight_bits 7 requantizes the weight to |w| <= 63, 8 keeps it."""
    check_act_bits(act_bits)
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    if w_q.dtype != torch.int8 or w_q.dim() != 2 or min(w_q.shape) < 1:
        raise ValueError(f"w_q must be (N, K) int8 with N, K >= 1, got {tuple(w_q.shape)} {w_q.dtype}")
    n, k = w_q.shape
    if w_scale.shape != (n,) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"w_scale and bias must be ({n},), got {tuple(w_scale.shape)} and "
                         f"{None if bias is None else tuple(bias.shape)}")
    if weight_bits == 7:
        w_p, scale_p = to_7bit(w_q.detach(), w_scale.detach())
    else:
        w_p, scale_p = w_q.detach(), w_scale.detach().float()
    panels = -(-n // Q8_PANEL)
    quads = -(-k // 8) * 2 if act_bits == 7 else -(-k // 4)
    padded = torch.zeros(panels * Q8_PANEL, quads * 4, dtype=torch.int8)
    padded[:n, :k] = w_p
    data = padded.view(panels, Q8_PANEL, quads, 4).permute(0, 2, 1, 3).contiguous()

    def pad(v, dtype):
        out = torch.zeros(panels * Q8_PANEL, dtype=dtype)
        out[:n] = v
        return out

    col_sums = pad(w_p.to(torch.int32).sum(1), torch.int32)
    return PackedInt8Weight(data, col_sums, pad(scale_p, torch.float32),
                            None if bias is None else pad(bias.detach().float(), torch.float32), w_p, act_bits,
                            weight_bits)


def static_params_for(act_bits: int, input_scale: float, input_zero_point: int) -> tuple[float, int]:
    """A static (scale, zero point) calibrated for int8 [-128, 127] -> the same real range on the
    activation grid of ``act_bits`` bits ([-64, 63] for 7: scale * 255 / 127, zero point scaled)."""
    if check_act_bits(act_bits) == 8:
        return float(input_scale), int(input_zero_point)
    zero_point = max(-64, min(63, round(int(input_zero_point) * 127 / 255)))
    return float(input_scale) * 255.0 / 127.0, int(zero_point)


def int8_linear_packed_ref(x: torch.Tensor, packed: PackedInt8Weight, activation: str = "none",
                           input_scale: float | None = None, input_zero_point: int = 0,
                           multiplier: torch.Tensor | None = None, asymmetric: bool = False) -> torch.Tensor:
    """What bertrt._C.int8_linear_packed computes: x (tokens, K) float -> quantize to ``packed.act_bits``
    bits (per token when input_scale is None: x_q = round(x / s) in [-q, q], q = 2^(bits-1) - 1; else
    x_q = round(x / s) + z in [-q - 1, q], with s and z already on that grid: see static_params_for)
    -> exact product with the packed weight -> y = s_x * s_w * (x_q - z) @ w_q^T + bias -> activation.
    multiplier (K,): x * multiplier is what gets quantized. asymmetric (dynamic, act_bits 7): per-token
    scale and zero point from the row's range (quantize_per_token_asym). Returns (tokens, N) float32."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    x = x.float()
    if multiplier is not None:  # SmoothQuant's 1 / s, one rounded product per element
        x = x * multiplier.float()
    qmax = 2 ** (packed.act_bits - 1) - 1
    if input_scale is None and asymmetric:
        x_c, x_scale, _ = quantize_per_token_asym(x, qmax)
        centred = x_c.double()
    elif input_scale is None:
        x_q, x_scale = quantize_per_token(x, qmax)
        centred = x_q.double()
    else:
        x_q = torch.round(x / input_scale).add_(input_zero_point).clamp_(-qmax - 1, qmax)
        x_scale = torch.full((x.shape[0],), float(input_scale))
        centred = (x_q - input_zero_point).double()
    n = packed.out_features
    acc = (centred @ packed.w_q.double().t()).float()
    y = acc * x_scale[:, None] * packed.w_scale[None, :n]
    if packed.bias is not None:
        y = y + packed.bias[:n]
    return _epilogue(y, torch.ones(y.shape[0]), torch.ones(n), None, activation)

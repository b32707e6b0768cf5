// bertrt._C: pybind11 bindings of the CPU kernels.
//
// Thin: each function takes raw data pointers (tensor.data_ptr()), shapes, dtype codes and an ISA
// code, checks what it can see (codes, sizes, cu_seqlens, id ranges) and raises ValueError naming
// the offending value, then releases the GIL and runs the kernel of the chosen variant.
// engine/ops/cpu_kernels.py holds the tensor-level checks (devices, dtypes, contiguity).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dispatch.h"

namespace py = pybind11;
using namespace bertrt::cpu;

namespace {

template <class T>
const T* ptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}

Isa checked_isa(int isa) {
  if (isa < 0 || isa >= kIsaCount) throw py::value_error("unknown ISA code " + std::to_string(isa));
  const char* reason = isa_unsupported_reason(Isa(isa));
  if (reason[0] != '\0')
    throw py::value_error(std::string("ISA variant '") + variant(Isa(isa)).name +
                          "' cannot run here: " + reason);
  return Isa(isa);
}

DType checked_dtype(const char* what, int code) {
  DType dtype;
  if (!bertrt::dtype_from_code(code, &dtype))
    throw py::value_error(std::string(what) + ": unknown dtype code " + std::to_string(code));
  return dtype;
}

void require_pointer(const char* what, uintptr_t p) {
  if (p == 0) throw py::value_error(std::string(what) + " is a null pointer");
}

void require_positive(const char* what, int64_t v) {
  if (v <= 0) throw py::value_error(std::string(what) + " must be positive, got " + std::to_string(v));
}

int checked_threads(int threads) { return threads > 0 ? threads : 1; }

void attention(int isa, uintptr_t qkv, uintptr_t out, uintptr_t cu_seqlens, int64_t total_tokens,
               int64_t batch, int64_t heads, int64_t head_dim, double scale, int dtype, int threads,
               uintptr_t rel_bias, int64_t bias_max_seqlen, int64_t window, uintptr_t rotary_cos,
               uintptr_t rotary_sin, int64_t rotary_positions) {
  AttentionArgs a{};
  const Isa chosen = checked_isa(isa);
  a.dtype = checked_dtype("qkv", dtype);
  require_positive("batch", batch);
  require_positive("heads", heads);
  if (head_dim <= 0 || head_dim > kMaxHeadDim)
    throw py::value_error("head_dim must be in [1, " + std::to_string(kMaxHeadDim) + "], got " +
                          std::to_string(head_dim));
  const int32_t* cu = ptr<int32_t>(cu_seqlens);
  require_pointer("cu_seqlens", cu_seqlens);
  if (cu[0] != 0) throw py::value_error("cu_seqlens[0] must be 0, got " + std::to_string(cu[0]));
  int64_t max_len = 0;
  for (int64_t b = 0; b < batch; ++b) {
    if (cu[b + 1] < cu[b])
      throw py::value_error("cu_seqlens must be non-decreasing, got " + std::to_string(cu[b]) + " then " +
                            std::to_string(cu[b + 1]) + " at index " + std::to_string(b));
    if (cu[b + 1] - cu[b] > max_len) max_len = cu[b + 1] - cu[b];
  }
  if (cu[batch] != total_tokens)
    throw py::value_error("cu_seqlens[-1] must equal total_tokens " + std::to_string(total_tokens) +
                          ", got " + std::to_string(cu[batch]));
  if (total_tokens > 0) {
    require_pointer("qkv", qkv);
    require_pointer("out", out);
  }
  a.qkv = ptr<void>(qkv);
  a.out = reinterpret_cast<void*>(out);
  a.cu_seqlens = cu;
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.max_seqlen = max_len;
  a.scale = float(scale);
  a.threads = checked_threads(threads);
  // Options: the tables must cover every sequence (their indices come from in-sequence positions).
  if (rel_bias != 0 && bias_max_seqlen < max_len)
    throw py::value_error("rel_bias was built for max_seqlen " + std::to_string(bias_max_seqlen) +
                          " but a sequence has " + std::to_string(max_len) + " tokens");
  if ((rotary_cos == 0) != (rotary_sin == 0)) throw py::value_error("rotary needs both cos and sin");
  if (rotary_cos != 0 && (head_dim % 2 != 0 || rotary_positions < max_len))
    throw py::value_error("rotary needs an even head_dim and a table of >= " + std::to_string(max_len) +
                          " positions, got head_dim " + std::to_string(head_dim) + " and " +
                          std::to_string(rotary_positions) + " positions");
  a.rel_bias = ptr<float>(rel_bias);
  a.bias_max_seqlen = bias_max_seqlen;
  a.window = window < 0 ? -1 : window;
  a.rotary_cos = ptr<float>(rotary_cos);
  a.rotary_sin = ptr<float>(rotary_sin);
  py::gil_scoped_release release;
  variant(chosen).attention(a);
}

void bias_gelu(int isa, uintptr_t x, uintptr_t bias, uintptr_t out, int64_t rows, int64_t cols,
               bool tanh_approx, bool gated, int dtype, int bias_dtype, int threads) {
  BiasGeluArgs a{};
  const Isa chosen = checked_isa(isa);
  a.dtype = checked_dtype("x", dtype);
  a.bias_dtype = checked_dtype("bias", bias_dtype);
  if (a.bias_dtype != a.dtype && a.bias_dtype != DType::F32)
    throw py::value_error("bias dtype must be x's dtype or float32");
  if (rows < 0 || cols < 0)
    throw py::value_error("x shape must be non-negative, got (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + ")");
  if (gated && cols % 2)
    throw py::value_error("gated bias_gelu needs an even number of columns, got " + std::to_string(cols));
  if (rows * cols > 0) {
    require_pointer("x", x);
    require_pointer("out", out);
  }
  a.x = ptr<void>(x);
  a.bias = bias ? ptr<void>(bias) : nullptr;
  a.out = reinterpret_cast<void*>(out);
  a.rows = rows;
  a.cols = cols;
  a.tanh_approximation = tanh_approx;
  a.gated = gated;
  a.threads = checked_threads(threads);
  if (rows * cols == 0) return;
  py::gil_scoped_release release;
  variant(chosen).bias_gelu(a);
}

void bias_residual_layer_norm(int isa, uintptr_t x, uintptr_t residual, uintptr_t bias, uintptr_t weight,
                              uintptr_t beta, uintptr_t out, uintptr_t sum_out, int64_t rows, int64_t hidden,
                              double eps, int dtype, int param_dtype, int threads) {
  LayerNormArgs a{};
  const Isa chosen = checked_isa(isa);
  a.dtype = checked_dtype("x", dtype);
  a.param_dtype = checked_dtype("weight", param_dtype);
  if (a.param_dtype != a.dtype && a.param_dtype != DType::F32)
    throw py::value_error("LayerNorm parameter dtype must be x's dtype or float32");
  require_positive("hidden", hidden);
  if (rows < 0) throw py::value_error("rows must be non-negative, got " + std::to_string(rows));
  require_pointer("weight", weight);  // residual, bias, beta and sum_out may be null (absent)
  if (rows > 0) {
    require_pointer("x", x);
    require_pointer("out", out);
  }
  a.x = ptr<void>(x);
  a.residual = residual ? ptr<void>(residual) : nullptr;
  a.bias = bias ? ptr<void>(bias) : nullptr;
  a.weight = ptr<void>(weight);
  a.beta = beta ? ptr<void>(beta) : nullptr;
  a.out = reinterpret_cast<void*>(out);
  a.sum_out = sum_out ? reinterpret_cast<void*>(sum_out) : nullptr;
  a.rows = rows;
  a.hidden = hidden;
  a.eps = float(eps);
  a.threads = checked_threads(threads);
  if (rows == 0) return;
  py::gil_scoped_release release;
  variant(chosen).bias_residual_layer_norm(a);
}

template <class Id>
void check_id_range(const char* name, const Id* ids, int64_t n, int64_t rows) {
  Id lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || ids[i] < lo) lo = ids[i];
    if (i == 0 || ids[i] > hi) hi = ids[i];
  }
  if (n > 0 && (lo < 0 || int64_t(hi) >= rows))
    throw py::value_error(std::string(name) + " out of range: min " + std::to_string(int64_t(lo)) + ", max " +
                          std::to_string(int64_t(hi)) + ", table has " + std::to_string(rows) + " rows");
}

void embedding_layer_norm(int isa, uintptr_t input_ids, uintptr_t token_type_ids, uintptr_t position_ids,
                          bool ids_int64, uintptr_t word, int64_t vocab, uintptr_t position,
                          int64_t max_positions, uintptr_t token_type, int64_t type_vocab, uintptr_t weight,
                          uintptr_t bias, uintptr_t out, int64_t tokens, int64_t hidden, double eps,
                          int dtype, int param_dtype, int threads) {
  EmbeddingArgs a{};
  const Isa chosen = checked_isa(isa);
  a.dtype = checked_dtype("word_embeddings", dtype);
  a.param_dtype = checked_dtype("weight", param_dtype);
  if (a.param_dtype != a.dtype && a.param_dtype != DType::F32)
    throw py::value_error("LayerNorm parameter dtype must be the embeddings' dtype or float32");
  require_positive("hidden", hidden);
  if (tokens < 0) throw py::value_error("tokens must be non-negative, got " + std::to_string(tokens));
  if (tokens == 0) return;
  // The position and token-type tables may be absent (null): then their ids are not read.
  for (auto [name, p] : {std::pair<const char*, uintptr_t>{"input_ids", input_ids},
                         {"word_embeddings", word},
                         {"weight", weight},
                         {"out", out}})
    require_pointer(name, p);
  if (position) require_pointer("position_ids", position_ids);
  if (token_type) require_pointer("token_type_ids", token_type_ids);
  if (ids_int64) {
    check_id_range("input_ids", ptr<int64_t>(input_ids), tokens, vocab);
    if (token_type) check_id_range("token_type_ids", ptr<int64_t>(token_type_ids), tokens, type_vocab);
    if (position) check_id_range("position_ids", ptr<int64_t>(position_ids), tokens, max_positions);
  } else {
    check_id_range("input_ids", ptr<int32_t>(input_ids), tokens, vocab);
    if (token_type) check_id_range("token_type_ids", ptr<int32_t>(token_type_ids), tokens, type_vocab);
    if (position) check_id_range("position_ids", ptr<int32_t>(position_ids), tokens, max_positions);
  }
  a.input_ids = ptr<void>(input_ids);
  a.token_type_ids = token_type ? ptr<void>(token_type_ids) : nullptr;
  a.position_ids = position ? ptr<void>(position_ids) : nullptr;
  a.ids_int64 = ids_int64;
  a.word = ptr<void>(word);
  a.position = position ? ptr<void>(position) : nullptr;
  a.token_type = token_type ? ptr<void>(token_type) : nullptr;
  a.weight = ptr<void>(weight);
  a.bias = bias ? ptr<void>(bias) : nullptr;
  a.out = reinterpret_cast<void*>(out);
  a.tokens = tokens;
  a.hidden = hidden;
  a.eps = float(eps);
  a.threads = checked_threads(threads);
  py::gil_scoped_release release;
  variant(chosen).embedding_layer_norm(a);
}

void int8_linear(int isa, uintptr_t x, uintptr_t x_scale, uintptr_t w, uintptr_t w_scale, uintptr_t bias,
                 uintptr_t out, int64_t m, int64_t n, int64_t k, int activation, int bias_dtype,
                 int out_dtype, int threads) {
  Int8LinearArgs a{};
  const Isa chosen = checked_isa(isa);
  a.bias_dtype = checked_dtype("bias", bias_dtype);
  a.out_dtype = checked_dtype("out_dtype", out_dtype);
  if (activation < 0 || activation > 2) throw py::value_error("activation code must be 0, 1 or 2");
  if (m < 0 || n <= 0 || k <= 0)
    throw py::value_error("int8_linear shapes must be m >= 0, n > 0, k > 0, got m=" + std::to_string(m) +
                          " n=" + std::to_string(n) + " k=" + std::to_string(k));
  // int32 accumulation stays exact while k * 128 * 128 < 2^31.
  if (k > (int64_t(1) << 17))
    throw py::value_error("in_features must be <= 131072, got " + std::to_string(k));
  if (m == 0) return;
  for (auto [name, p] : {std::pair<const char*, uintptr_t>{"x_q", x},
                         {"x_scale", x_scale},
                         {"w_q", w},
                         {"w_scale", w_scale},
                         {"out", out}})
    require_pointer(name, p);
  a.x = ptr<int8_t>(x);
  a.x_scale = ptr<float>(x_scale);
  a.w = ptr<int8_t>(w);
  a.w_scale = ptr<float>(w_scale);
  a.bias = bias ? ptr<void>(bias) : nullptr;
  a.out = reinterpret_cast<void*>(out);
  a.m = m;
  a.n = n;
  a.k = k;
  a.activation = activation;
  a.threads = checked_threads(threads);
  py::gil_scoped_release release;
  variant(chosen).int8_linear(a);
}

void linear(int isa, uintptr_t x, uintptr_t packed_weight, uintptr_t padded_bias, uintptr_t out, int64_t m,
            int64_t n, int64_t k, int64_t ldx, int64_t ldy, int activation, int threads) {
  LinearArgs a{};
  const Isa chosen = checked_isa(isa);
  if (activation < 0 || activation > 2) throw py::value_error("activation code must be 0, 1 or 2");
  if (m < 0 || n <= 0 || k <= 0)
    throw py::value_error("linear shapes must be m >= 0, n > 0, k > 0, got m=" + std::to_string(m) +
                          " n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (ldx < k || ldy < n)
    throw py::value_error("linear row strides must cover a row: ldx=" + std::to_string(ldx) + " < k=" +
                          std::to_string(k) + " or ldy=" + std::to_string(ldy) + " < n=" + std::to_string(n));
  if (m == 0) return;
  for (auto [name, p] :
       {std::pair<const char*, uintptr_t>{"x", x}, {"packed_weight", packed_weight}, {"out", out}})
    require_pointer(name, p);
  a.x = ptr<void>(x);
  a.packed_weight = ptr<float>(packed_weight);
  a.padded_bias = padded_bias ? ptr<float>(padded_bias) : nullptr;
  a.out = reinterpret_cast<void*>(out);
  a.m = m;
  a.n = n;
  a.k = k;
  a.ldx = ldx;
  a.ldy = ldy;
  a.activation = activation;
  a.threads = checked_threads(threads);
  py::gil_scoped_release release;
  variant(chosen).linear(a);
}

void int8_linear_packed(int isa, uintptr_t x, uintptr_t packed_weight, uintptr_t col_sums, uintptr_t w_scale,
                        uintptr_t bias, uintptr_t input_scale, int input_zero_point, uintptr_t out, int64_t m,
                        int64_t n, int64_t k, int64_t ldx, int activation, int act_bits,
                        uintptr_t x_multiplier, bool asymmetric, int weight_bits, int threads) {
  Int8PackedLinearArgs a{};
  const Isa chosen = checked_isa(isa);
  if (activation < 0 || activation > 2) throw py::value_error("activation code must be 0, 1 or 2");
  if (m < 0 || n <= 0 || k <= 0)
    throw py::value_error("int8_linear_packed shapes must be m >= 0, n > 0, k > 0, got m=" +
                          std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (ldx < k) throw py::value_error("x row stride " + std::to_string(ldx) + " < k=" + std::to_string(k));
  if (act_bits != 7 && act_bits != 8)
    throw py::value_error("act_bits must be 7 or 8, got " + std::to_string(act_bits));
  const int zp_lo = act_bits == 7 ? -64 : -128, zp_hi = act_bits == 7 ? 63 : 127;
  if (input_zero_point < zp_lo || input_zero_point > zp_hi)
    throw py::value_error("input zero point must be in [" + std::to_string(zp_lo) + ", " +
                          std::to_string(zp_hi) + "] for act_bits " + std::to_string(act_bits) + ", got " +
                          std::to_string(input_zero_point));
  if (weight_bits != 7 && weight_bits != 8)
    throw py::value_error("weight_bits must be 7 or 8, got " + std::to_string(weight_bits));
  // 8-bit weights only where the loop is vpdpbusd: the AVX2 tiles' int16 pair sums would saturate
  if (weight_bits == 8 && std::string(int8_packed_kernel(chosen)) != "avx512-vnni")
    throw py::value_error(std::string("8-bit packed weights need the avx512-vnni loop; this variant runs ") +
                          int8_packed_kernel(chosen) + " (pack with weight_bits=7)");
  // int32 accumulation of u8 x w products stays exact while k * 255 * 2^(weight_bits - 1) < 2^31.
  const int64_t k_max = weight_bits == 8 ? int64_t(1) << 16 : int64_t(1) << 17;
  if (k > k_max)
    throw py::value_error("in_features must be <= " + std::to_string(k_max) + " for " +
                          std::to_string(weight_bits) + "-bit weights, got " + std::to_string(k));
  if (m == 0) return;
  for (auto [name, p] : {std::pair<const char*, uintptr_t>{"x", x},
                         {"packed_weight", packed_weight},
                         {"col_sums", col_sums},
                         {"w_scale", w_scale},
                         {"out", out}})
    require_pointer(name, p);
  a.x = ptr<float>(x);
  a.packed_weight = ptr<int8_t>(packed_weight);
  a.col_sums = ptr<int32_t>(col_sums);
  a.w_scale = ptr<float>(w_scale);
  a.bias = bias ? ptr<float>(bias) : nullptr;
  a.input_scale = input_scale ? ptr<float>(input_scale) : nullptr;
  a.input_zero_point = input_zero_point;
  if (asymmetric && (input_scale || act_bits != 7))
    throw py::value_error("asymmetric per-token activations are dynamic and 7-bit only");
  a.x_multiplier = x_multiplier ? ptr<float>(x_multiplier) : nullptr;
  a.asymmetric = asymmetric ? 1 : 0;
  a.out = reinterpret_cast<float*>(out);
  a.m = m;
  a.n = n;
  a.k = k;
  a.ldx = ldx;
  a.activation = activation;
  a.act_bits = act_bits;
  a.threads = checked_threads(threads);
  py::gil_scoped_release release;
  variant(chosen).int8_linear_packed(a);
}

void vector_exp(int isa, uintptr_t x, uintptr_t out, int64_t n) {
  const Isa chosen = checked_isa(isa);
  if (n < 0) throw py::value_error("n must be non-negative");
  if (n == 0) return;
  require_pointer("x", x);
  require_pointer("out", out);
  variant(chosen).vector_exp(ptr<float>(x), reinterpret_cast<float*>(out), n);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bertrt CPU kernels: raw-pointer bindings; use bertrt.ops.cpu_kernels for tensors";
  m.attr("MAX_HEAD_DIM") = kMaxHeadDim;

  m.def(
      "isa_names",
      [] {
        std::vector<std::string> names;
        for (int i = kIsaCount - 1; i >= 0; --i) names.emplace_back(variant(Isa(i)).name);
        return names;
      },
      "Compiled ISA variants, best first.");
  m.def("isa_code", [](const std::string& name) {
    for (int i = 0; i < kIsaCount; ++i)
      if (name == variant(Isa(i)).name) return i;
    throw py::value_error("unknown ISA variant '" + name + "'");
  });
  m.def(
      "isa_unsupported_reason",
      [](int isa) {
        if (isa < 0 || isa >= kIsaCount) throw py::value_error("unknown ISA code " + std::to_string(isa));
        return std::string(isa_unsupported_reason(Isa(isa)));
      },
      "Empty when the variant runs on this CPU, else why not.");
  m.def("best_isa", [] { return int(best_isa()); });

  m.def("attention", &attention, py::arg("isa"), py::arg("qkv"), py::arg("out"), py::arg("cu_seqlens"),
        py::arg("total_tokens"), py::arg("batch"), py::arg("heads"), py::arg("head_dim"), py::arg("scale"),
        py::arg("dtype"), py::arg("threads"), py::arg("rel_bias") = 0, py::arg("bias_max_seqlen") = 0,
        py::arg("window") = -1, py::arg("rotary_cos") = 0, py::arg("rotary_sin") = 0,
        py::arg("rotary_positions") = 0);
  m.def("bias_gelu", &bias_gelu, py::arg("isa"), py::arg("x"), py::arg("bias"), py::arg("out"),
        py::arg("rows"), py::arg("cols"), py::arg("tanh"), py::arg("gated"), py::arg("dtype"),
        py::arg("bias_dtype"), py::arg("threads"));
  m.def("bias_residual_layer_norm", &bias_residual_layer_norm, py::arg("isa"), py::arg("x"),
        py::arg("residual"), py::arg("bias"), py::arg("weight"), py::arg("beta"), py::arg("out"),
        py::arg("sum_out"), py::arg("rows"), py::arg("hidden"), py::arg("eps"), py::arg("dtype"),
        py::arg("param_dtype"), py::arg("threads"));
  m.def("embedding_layer_norm", &embedding_layer_norm, py::arg("isa"), py::arg("input_ids"),
        py::arg("token_type_ids"), py::arg("position_ids"), py::arg("ids_int64"), py::arg("word"),
        py::arg("vocab"), py::arg("position"), py::arg("max_positions"), py::arg("token_type"),
        py::arg("type_vocab"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("tokens"),
        py::arg("hidden"), py::arg("eps"), py::arg("dtype"), py::arg("param_dtype"), py::arg("threads"));
  m.def("int8_linear", &int8_linear, py::arg("isa"), py::arg("x"), py::arg("x_scale"), py::arg("w"),
        py::arg("w_scale"), py::arg("bias"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("activation"), py::arg("bias_dtype"), py::arg("out_dtype"), py::arg("threads"));
  m.def("linear", &linear, py::arg("isa"), py::arg("x"), py::arg("packed_weight"), py::arg("padded_bias"),
        py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("ldx"), py::arg("ldy"),
        py::arg("activation"), py::arg("threads"),
        "y = act(x @ W^T + bias), fp32, W packed by bertrt.ops.linear.pack_weight.");
  m.def("int8_linear_packed", &int8_linear_packed, py::arg("isa"), py::arg("x"), py::arg("packed_weight"),
        py::arg("col_sums"), py::arg("w_scale"), py::arg("bias"), py::arg("input_scale"),
        py::arg("input_zero_point"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("ldx"),
        py::arg("activation"), py::arg("act_bits"), py::arg("x_multiplier"), py::arg("asymmetric"),
        py::arg("weight_bits"), py::arg("threads"),
        "float x (times x_multiplier when given) -> quantize (per token, symmetric or asymmetric, or static) "
        "to act_bits (8 or 7) -> GEMM with 7-bit (8-bit: VNNI only) packed weights -> fused epilogue; weights packed by "
        "bertrt.ops.int8_linear.pack_int8_weight.");
  m.def(
      "int8_packed_kernel", [](int isa) { return std::string(int8_packed_kernel(Isa(isa))); }, py::arg("isa"),
      "The inner loop int8_linear_packed runs in this ISA variant on this CPU (avx512-vnni | avx2 | "
      "scalar).");
  m.def("vector_exp", &vector_exp, py::arg("isa"), py::arg("x"), py::arg("out"), py::arg("n"),
        "The kernels' fast exp over n float32 values (for accuracy tests).");
}

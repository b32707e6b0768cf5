// bertrt._cuda: pybind11 bindings for the CUDA kernels in this folder.
//
// The functions take raw device pointers (Python ints), shapes, a dtype name and a CUDA stream handle
// (an int, e.g. torch.cuda.current_stream().cuda_stream; 0 is the legacy default stream), enqueue the
// kernel and return without synchronizing. Argument errors raise ValueError; CUDA errors raise
// RuntimeError naming the op and the CUDA error. The CUDA runtime is linked statically and loads the
// driver lazily, so importing this module needs neither a GPU nor libcuda: device_count() is then 0 and
// device_status() says why.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using bertrt::cuda::AttentionPath;
using bertrt::cuda::DType;

#ifndef BERTRT_CUDA_ARCHS_STR
#define BERTRT_CUDA_ARCHS_STR ""
#endif

namespace {

[[noreturn]] void fail(const std::string& op, const std::string& msg) {
  throw py::value_error("bertrt._cuda." + op + ": " + msg);
}

void require(bool ok, const std::string& op, const std::string& msg) {
  if (!ok) fail(op, msg);
}

DType parse_dtype(const std::string& op, const std::string& name) {
  DType dtype;
  if (!bertrt::dtype_from_name(name, &dtype))
    fail(op, "dtype must be 'float32', 'float16' or 'bfloat16', got '" + name + "'");
  return dtype;
}

bool parse_id_dtype(const std::string& op, const std::string& what, const std::string& name) {
  if (name == "int32") return false;
  if (name == "int64") return true;
  fail(op, what + " dtype must be 'int32' or 'int64', got '" + name + "'");
}

const void* pointer(const std::string& op, const char* name, std::uintptr_t p, bool required = true) {
  require(!required || p != 0, op, std::string(name) + " is a null pointer");
  return reinterpret_cast<const void*>(p);
}

cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check_cuda(const std::string& op, cudaError_t err) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that later calls are not blamed for it
  throw std::runtime_error("bertrt._cuda." + op + ": " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

std::string device_status() {
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    cudaGetLastError();
    std::string why;
    if (driver == 0) {
      why = "no CUDA driver is installed (libcuda.so.1 could not be loaded)";
    } else if (err != cudaSuccess) {
      why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err) + " (driver " +
            version_string(driver) + ", runtime " + version_string(runtime) + ")";
    } else {
      why = "the driver reports 0 devices";
    }
    return "no CUDA device present: " + why;
  }
  std::ostringstream out;
  out << n << " CUDA device" << (n == 1 ? "" : "s") << ":";
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
      out << " [" << i << "] " << prop.name << " (sm_" << prop.major << prop.minor << ")";
    } else {
      cudaGetLastError();
      out << " [" << i << "] (properties unavailable)";
    }
  }
  out << "; driver " << version_string(driver) << ", runtime " << version_string(runtime) << " (static)";
  return out.str();
}

std::vector<int> compiled_archs() {
  std::vector<int> archs;
  std::stringstream ss(BERTRT_CUDA_ARCHS_STR);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) archs.push_back(std::stoi(item));
  }
  return archs;
}

AttentionPath parse_path(const std::string& op, const std::string& path) {
  if (path == "auto") return AttentionPath::kAuto;
  if (path == "mma") return AttentionPath::kTensorCore;
  if (path == "simt") return AttentionPath::kSimt;
  fail(op, "path must be 'auto', 'mma' or 'simt', got '" + path + "'");
}

std::string path_name(AttentionPath p) {
  return p == AttentionPath::kTensorCore ? "mma" : p == AttentionPath::kSimt ? "simt" : "auto";
}

void attention(std::uintptr_t qkv, std::uintptr_t cu_seqlens, std::uintptr_t out, long long batch,
               long long heads, long long head_dim, long long max_seqlen, double scale,
               const std::string& dtype, std::uintptr_t stream, const std::string& path,
               std::uintptr_t rel_bias, long long bias_max_seqlen, long long window,
               std::uintptr_t rotary_cos, std::uintptr_t rotary_sin) {
  const std::string op = "attention";
  const DType dt = parse_dtype(op, dtype);
  const AttentionPath p = parse_path(op, path);
  require(batch >= 0, op, "batch must be >= 0, got " + std::to_string(batch));
  require(heads >= 1, op, "heads must be >= 1, got " + std::to_string(heads));
  require(head_dim >= 1 && head_dim <= 128, op,
          "head_dim must be in [1, 128], got " + std::to_string(head_dim));
  require(max_seqlen >= 0 && max_seqlen <= INT_MAX, op,
          "max_seqlen must be in [0, 2^31), got " + std::to_string(max_seqlen));
  require(batch * heads <= INT_MAX, op, "batch * heads must be < 2^31");
  require(std::isfinite(scale), op, "scale must be finite");
  // the glue checked the tables' shapes against max_seqlen; the kernel trusts cu_seqlens like flash-attn
  require(rel_bias == 0 || (bias_max_seqlen >= max_seqlen && bias_max_seqlen <= INT_MAX / 2), op,
          "rel_bias must be built for max_seqlen >= " + std::to_string(max_seqlen));
  require((rotary_cos == 0) == (rotary_sin == 0), op, "rotary needs both cos and sin");
  require(rotary_cos == 0 || head_dim % 2 == 0, op, "rotary needs an even head_dim");
  require(window <= INT_MAX, op, "window must be < 2^31");
  bertrt::cuda::AttentionOptions options;
  options.rel_bias = static_cast<const float*>(pointer(op, "rel_bias", rel_bias, false));
  options.bias_max_seqlen = static_cast<int>(bias_max_seqlen);
  options.window = window < 0 ? -1 : static_cast<int>(window);
  options.rotary_cos = static_cast<const float*>(pointer(op, "rotary_cos", rotary_cos, false));
  options.rotary_sin = static_cast<const float*>(pointer(op, "rotary_sin", rotary_sin, false));
  if (batch == 0) return;
  const cudaError_t err = bertrt::cuda::launch_attention(
      pointer(op, "qkv", qkv), static_cast<const int32_t*>(pointer(op, "cu_seqlens", cu_seqlens)),
      const_cast<void*>(pointer(op, "out", out)), static_cast<int>(batch), static_cast<int>(heads),
      static_cast<int>(head_dim), static_cast<int>(max_seqlen), static_cast<float>(scale), dt, p,
      as_stream(stream), options);
  if (err == cudaErrorNotSupported) {
    fail(op, "path '" + path + "' cannot run " + dtype + " on sm_" +
                 std::to_string(bertrt::cuda::current_device_sm()) + " (bf16 mma needs sm_80 or newer)");
  }
  check_cuda(op, err);
}

void bias_gelu(std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, long long tokens,
               long long features, const std::string& approximate, const std::string& dtype,
               std::uintptr_t stream, bool gated) {
  const std::string op = "bias_gelu";
  const DType dt = parse_dtype(op, dtype);
  require(approximate == "none" || approximate == "tanh", op,
          "approximate must be 'none' or 'tanh', got '" + approximate + "'");
  require(tokens >= 0 && features >= 0, op, "tokens and features must be >= 0");
  require(!gated || features % 2 == 0, op,
          "gated needs an even number of features, got " + std::to_string(features));
  if (tokens == 0 || features == 0) return;
  check_cuda(op, bertrt::cuda::launch_bias_gelu(pointer(op, "x", x), pointer(op, "bias", bias, false),
                                                const_cast<void*>(pointer(op, "out", out)), tokens, features,
                                                approximate == "tanh", gated, dt, as_stream(stream)));
}

void bias_residual_layer_norm(std::uintptr_t x, std::uintptr_t bias, std::uintptr_t residual,
                              std::uintptr_t weight, std::uintptr_t beta, std::uintptr_t out,
                              long long tokens, long long hidden, double eps, const std::string& dtype,
                              std::uintptr_t stream, std::uintptr_t sum_out) {
  const std::string op = "bias_residual_layer_norm";
  const DType dt = parse_dtype(op, dtype);
  require(tokens >= 0 && tokens <= INT_MAX, op, "tokens must be in [0, 2^31), got " + std::to_string(tokens));
  require(hidden >= 1 && hidden <= INT_MAX, op, "hidden must be in [1, 2^31), got " + std::to_string(hidden));
  require(eps >= 0.0 && std::isfinite(eps), op, "eps must be finite and >= 0");
  if (tokens == 0) return;
  check_cuda(op, bertrt::cuda::launch_bias_residual_layer_norm(
                     pointer(op, "x", x), pointer(op, "bias", bias, false),
                     pointer(op, "residual", residual, false), pointer(op, "weight", weight),
                     pointer(op, "beta", beta, false), const_cast<void*>(pointer(op, "out", out)),
                     const_cast<void*>(pointer(op, "sum_out", sum_out, false)), tokens, hidden,
                     static_cast<float>(eps), dt, as_stream(stream)));
}

void embedding_layer_norm(std::uintptr_t input_ids, const std::string& input_ids_dtype,
                          std::uintptr_t token_type_ids, const std::string& token_type_ids_dtype,
                          std::uintptr_t position_ids, const std::string& position_ids_dtype,
                          std::uintptr_t word, long long vocab, std::uintptr_t position,
                          long long max_positions, std::uintptr_t token_type, long long type_vocab,
                          std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t out, long long tokens,
                          long long hidden, double eps, const std::string& dtype, std::uintptr_t stream) {
  const std::string op = "embedding_layer_norm";
  const DType dt = parse_dtype(op, dtype);
  const bool ids64 = parse_id_dtype(op, "input_ids", input_ids_dtype);
  const bool types64 = parse_id_dtype(op, "token_type_ids", token_type_ids_dtype);
  const bool pos64 = parse_id_dtype(op, "position_ids", position_ids_dtype);
  require(tokens >= 0 && tokens <= INT_MAX, op, "tokens must be in [0, 2^31), got " + std::to_string(tokens));
  require(hidden >= 1 && hidden <= INT_MAX, op, "hidden must be in [1, 2^31), got " + std::to_string(hidden));
  require(vocab >= 1 && (position == 0 || max_positions >= 1) && (token_type == 0 || type_vocab >= 1), op,
          "every embedding table needs >= 1 row");
  require(eps >= 0.0 && std::isfinite(eps), op, "eps must be finite and >= 0");
  if (tokens == 0) return;
  check_cuda(op,
             bertrt::cuda::launch_embedding_layer_norm(
                 pointer(op, "input_ids", input_ids), ids64,
                 pointer(op, "token_type_ids", token_type_ids, token_type != 0), types64,
                 pointer(op, "position_ids", position_ids, position != 0), pos64, pointer(op, "word", word),
                 vocab,
                 pointer(op, "position", position, false), max_positions,
                 pointer(op, "token_type", token_type, false), type_vocab, pointer(op, "weight", weight),
                 pointer(op, "bias", bias, false),
                 const_cast<void*>(pointer(op, "out", out)), tokens, hidden, static_cast<float>(eps), dt,
                 as_stream(stream)));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "bertrt CUDA kernels (csrc/cuda). Functions take device pointers (ints), shapes, a dtype name and a "
      "CUDA stream handle; use bertrt.ops.cuda_kernels for torch tensors.";
  m.attr("compiled_archs") = compiled_archs();
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  m.attr("cuda_runtime_version") = runtime;

  m.def("device_count", &device_count,
        "Number of visible CUDA devices; 0 (never an exception) without a driver.");
  m.def("device_status", &device_status, "A human-readable line: the devices, or why there are none.");
  m.def("current_device_sm", &bertrt::cuda::current_device_sm,
        "Compute capability of the current device as major * 10 + minor, 0 when there is none.");
  m.def(
      "attention_path",
      [](const std::string& dtype, int sm) {
        return path_name(bertrt::cuda::attention_auto_path(parse_dtype("attention_path", dtype), sm));
      },
      py::arg("dtype"), py::arg("sm"), "The attention path 'auto' takes for dtype on sm: 'mma' or 'simt'.");

  m.def("attention", &attention, py::arg("qkv"), py::arg("cu_seqlens"), py::arg("out"), py::arg("batch"),
        py::arg("heads"), py::arg("head_dim"), py::arg("max_seqlen"), py::arg("scale"), py::arg("dtype"),
        py::arg("stream") = 0, py::arg("path") = "auto", py::arg("rel_bias") = 0,
        py::arg("bias_max_seqlen") = 0, py::arg("window") = -1, py::arg("rotary_cos") = 0,
        py::arg("rotary_sin") = 0,
        "Variable-length attention: qkv (total, 3, heads, head_dim), cu_seqlens int32 (batch + 1), "
        "out (total, heads, head_dim). path: 'auto', 'mma' (tensor cores) or 'simt' (fp32 CUDA cores). "
        "Options: rel_bias fp32 (heads, 2 * bias_max_seqlen - 1), window (< 0: none), rotary cos/sin fp32 "
        "(positions, head_dim / 2); 0 pointers for none.");
  m.def("bias_gelu", &bias_gelu, py::arg("x"), py::arg("bias"), py::arg("out"), py::arg("tokens"),
        py::arg("features"), py::arg("approximate"), py::arg("dtype"), py::arg("stream") = 0,
        py::arg("gated") = false,
        "out = gelu(x + bias) for x, out (tokens, features); bias (features,) or 0 for none. gated: "
        "out (tokens, features / 2) = gelu(x[:, :half] + bias[:half]) * (x[:, half:] + bias[half:]).");
  m.def("bias_residual_layer_norm", &bias_residual_layer_norm, py::arg("x"), py::arg("bias"),
        py::arg("residual"), py::arg("weight"), py::arg("beta"), py::arg("out"), py::arg("tokens"),
        py::arg("hidden"), py::arg("eps"), py::arg("dtype"), py::arg("stream") = 0, py::arg("sum_out") = 0,
        "out = LayerNorm(x + bias + residual) * weight + beta; bias, residual, beta and sum_out may be 0 "
        "(none); sum_out receives x + bias + residual.");
  m.def("embedding_layer_norm", &embedding_layer_norm, py::arg("input_ids"), py::arg("input_ids_dtype"),
        py::arg("token_type_ids"), py::arg("token_type_ids_dtype"), py::arg("position_ids"),
        py::arg("position_ids_dtype"), py::arg("word"), py::arg("vocab"), py::arg("position"),
        py::arg("max_positions"), py::arg("token_type"), py::arg("type_vocab"), py::arg("weight"),
        py::arg("bias"), py::arg("out"), py::arg("tokens"), py::arg("hidden"), py::arg("eps"),
        py::arg("dtype"), py::arg("stream") = 0,
        "out = LayerNorm(word[input_ids] + position[position_ids] + token_type[token_type_ids]). Ids must be "
        "in "
        "range (the glue checks); the kernel clamps them so that it never reads outside a table.");
}

// The element types of bertrt's native kernels, shared by csrc/cpu (bertrt._C) and csrc/cuda
// (bertrt._cuda): one enum, its Python-side names and codes, and the one dtype dispatch helper.
#pragma once

#include <string>

namespace bertrt {

// The integer codes are what the CPU glue passes (engine/ops/cpu_kernels.py _DTYPE_CODES); the CUDA
// glue passes the names below.
enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };
inline constexpr int kDTypeCount = 3;

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return "bfloat16";
    case DType::F16:
      return "float16";
    case DType::F32:
      break;
  }
  return "float32";
}

// False for a code that names no DType.
inline bool dtype_from_code(int code, DType* out) {
  if (code < 0 || code >= kDTypeCount) return false;
  *out = DType(code);
  return true;
}

// False for a name that is not "float32", "bfloat16" or "float16".
inline bool dtype_from_name(const std::string& name, DType* out) {
  for (int code = 0; code < kDTypeCount; ++code) {
    if (name == dtype_name(DType(code))) {
      *out = DType(code);
      return true;
    }
  }
  return false;
}

template <class T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the C++ element type of ``dtype`` (each side names its own: float,
// bf16, f16 on the CPU; float, __nv_bfloat16, __half on CUDA) and returns what fn returns:
//   return dispatch_dtype<float, bf16, f16>(a.dtype, [&](auto tag) {
//     return run_typed<typename decltype(tag)::type>(a);
//   });
template <class F32, class BF16, class F16, class Fn>
decltype(auto) dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::BF16:
      return fn(TypeTag<BF16>{});
    case DType::F16:
      return fn(TypeTag<F16>{});
    case DType::F32:
      break;
  }
  return fn(TypeTag<F32>{});
}

}  // namespace bertrt

// Runtime ISA dispatch: what this CPU supports (cpuid + XCR0, and the AMX tile permission on
// Linux), decided once at load time, and the kernel table of each variant.
#pragma once

#include "kernels.h"

namespace bertrt::cpu {

struct Variant {
  const char* name;
  void (*attention)(const AttentionArgs&);
  void (*bias_gelu)(const BiasGeluArgs&);
  void (*bias_residual_layer_norm)(const LayerNormArgs&);
  void (*embedding_layer_norm)(const EmbeddingArgs&);
  void (*int8_linear)(const Int8LinearArgs&);
  void (*linear)(const LinearArgs&);
  void (*int8_linear_packed)(const Int8PackedLinearArgs&);
  void (*vector_exp)(const float*, float*, int64_t);
};

const Variant& variant(Isa isa);
bool isa_supported(Isa isa);                  // compiled and runnable on this CPU
const char* isa_unsupported_reason(Isa isa);  // empty when supported
Isa best_isa();
const char* int8_packed_kernel(
    Isa isa);  // the packed INT8 GEMM's inner loop: "avx512-vnni" | "avx2" | "scalar"

}  // namespace bertrt::cpu

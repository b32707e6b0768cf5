#include "dispatch.h"

#include <cpuid.h>

namespace bertrt::cpu {
namespace {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false, amx_permitted = false;
  bool os_avx = false, os_avx512 = false, os_amx = false;
};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (osxsave) {
    const uint64_t xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;                   // XMM and YMM state
    f.os_avx512 = f.os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
    f.os_amx = (xcr0 & 0x60000) == 0x60000;           // XTILECFG and XTILEDATA
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
    f.amx_bf16 = d & (1u << 22);
    f.amx_tile = d & (1u << 24);
    f.amx_int8 = d & (1u << 25);
  }
  // Linux hands out the large tile state only on request; without it the first tile load faults.
  if (f.amx_tile && f.amx_bf16 && f.os_amx) f.amx_permitted = amx::request_tile_permission();
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

// The AVX-512 variant's packed INT8 GEMM: vpdpbusd where the CPU has VNNI (Cascade Lake and later,
// Zen 4), else the AVX2 u8 x s8 tiles it also carries.
void avx512_int8_linear_packed(const Int8PackedLinearArgs& a) {
  static const bool vnni = features().avx512vnni;
  return vnni ? avx512::int8_linear_packed_vnni(a) : avx512::int8_linear_packed(a);
}

const Variant kVariants[kIsaCount] = {
    {"scalar", scalar::attention, scalar::bias_gelu, scalar::bias_residual_layer_norm,
     scalar::embedding_layer_norm, scalar::int8_linear, scalar::linear, scalar::int8_linear_packed,
     scalar::vector_exp},
    {"avx2", avx2::attention, avx2::bias_gelu, avx2::bias_residual_layer_norm, avx2::embedding_layer_norm,
     avx2::int8_linear, avx2::linear, avx2::int8_linear_packed, avx2::vector_exp},
    {"avx512", avx512::attention, avx512::bias_gelu, avx512::bias_residual_layer_norm,
     avx512::embedding_layer_norm, avx512::int8_linear, avx512::linear, avx512_int8_linear_packed,
     avx512::vector_exp},
    {"amx", amx::attention, avx512::bias_gelu, avx512::bias_residual_layer_norm, avx512::embedding_layer_norm,
     avx512::int8_linear, avx512::linear, avx512_int8_linear_packed, avx512::vector_exp},
};

}  // namespace

const Variant& variant(Isa isa) { return kVariants[int(isa)]; }

const char* isa_unsupported_reason(Isa isa) {
  const CpuFeatures& f = features();
  const bool avx2 = f.os_avx && f.avx2 && f.fma && f.f16c;
  const bool avx512 = avx2 && f.os_avx512 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  switch (isa) {
    case Isa::Scalar:
      return "";
    case Isa::Avx2:
      return avx2 ? "" : "this CPU (or OS) lacks AVX2/FMA/F16C";
    case Isa::Avx512:
      return avx512 ? "" : "this CPU (or OS) lacks AVX-512 F/BW/VL/DQ";
    case Isa::Amx:
      if (!avx512) return "this CPU (or OS) lacks AVX-512 F/BW/VL/DQ";
      if (!(f.amx_tile && f.amx_bf16)) return "this CPU lacks AMX-TILE/AMX-BF16";
      if (!f.os_amx) return "the OS does not enable the AMX tile state (XCR0)";
      if (!f.amx_permitted) return "the kernel refused arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)";
      return "";
  }
  return "unknown ISA";
}

bool isa_supported(Isa isa) { return isa_unsupported_reason(isa)[0] == '\0'; }

const char* int8_packed_kernel(Isa isa) {
  if (isa == Isa::Scalar) return "scalar";
  if (isa != Isa::Avx2 && features().avx512vnni) return "avx512-vnni";
  return "avx2";
}

Isa best_isa() {
  for (int i = kIsaCount - 1; i > 0; --i)
    if (isa_supported(Isa(i))) return Isa(i);
  return Isa::Scalar;
}

}  // namespace bertrt::cpu

// Standalone check of attention_amx.cpp with software tiles (no AMX needed); tests/test_cpu_isa.py
// builds and runs it:
//   g++ -O2 -std=c++17 -fopenmp -DBERTRT_ISA_AMX -DBERTRT_AMX_EMULATE csrc/cpu/amx_emulation_test.cpp
//       csrc/cpu/attention_amx.cpp -o /tmp/amx_emulation_test && /tmp/amx_emulation_test
// Compares bf16 attention on awkward shapes with a float64 reference; exits non-zero on mismatch.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"

using namespace bertrt::cpu;

static uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static bool check(std::vector<int> lengths, int heads, int dim, int threads) {
  std::vector<int32_t> cu{0};
  for (int l : lengths) cu.push_back(cu.back() + l);
  const int total = cu.back();
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> qkv(size_t(total) * 3 * heads * dim), out(size_t(total) * heads * dim);
  for (auto& x : qkv) x = to_bf16(normal(rng));
  AttentionArgs a{};
  a.qkv = qkv.data();
  a.out = out.data();
  a.cu_seqlens = cu.data();
  a.batch = int64_t(lengths.size());
  a.heads = heads;
  a.head_dim = dim;
  a.scale = float(1.0 / std::sqrt(double(dim)));
  a.dtype = DType::BF16;
  a.threads = threads;
  amx::attention(a);
  double worst = 0.0;
  auto at = [&](int tok, int which, int h, int d) {
    return double(from_bf16(qkv[((size_t(tok) * 3 + which) * heads + h) * dim + d]));
  };
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = cu[b]; i < cu[b + 1]; ++i) {
        std::vector<double> p(size_t(cu[b + 1] - cu[b]));
        double mx = -1e300, sum = 0.0;
        for (int j = cu[b]; j < cu[b + 1]; ++j) {
          double s = 0.0;
          for (int d = 0; d < dim; ++d) s += at(i, 0, h, d) * at(j, 1, h, d);
          p[size_t(j - cu[b])] = s * a.scale;
          mx = std::fmax(mx, s * a.scale);
        }
        for (auto& v : p) sum += (v = std::exp(v - mx));
        for (int d = 0; d < dim; ++d) {
          double o = 0.0;
          for (int j = cu[b]; j < cu[b + 1]; ++j) o += p[size_t(j - cu[b])] / sum * at(j, 2, h, d);
          const double got = from_bf16(out[(size_t(i) * heads + h) * dim + d]);
          worst = std::fmax(worst, std::fabs(got - o) / (1.0 + std::fabs(o)));
        }
      }
  const bool ok = worst < 2e-2;
  std::printf("%s lengths=%zu heads=%d dim=%d threads=%d max error %.3g\n", ok ? "ok  " : "FAIL",
              lengths.size(), heads, dim, threads, worst);
  return ok;
}

int main() {
  bool ok = true;
  ok &= check({1}, 1, 32, 1);
  ok &= check({5, 1, 33, 17}, 3, 32, 2);
  ok &= check({129, 3}, 2, 64, 2);
  ok &= check({31, 8}, 2, 72, 1);
  ok &= check({19}, 2, 40, 1);
  ok &= check({13, 27}, 1, 33, 2);
  ok &= check({300, 2}, 1, 128, 2);  // two key blocks: the online-softmax rescale
  ok &= check({200}, 1, 80, 2);      // query rows split across threads
  return ok ? 0 : 1;
}

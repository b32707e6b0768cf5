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

struct Options {
  int window = -1;  // < 0: none
  bool bias = false, rotary = false;
};

static bool check(std::vector<int> lengths, int heads, int dim, int threads, Options opt = {}) {
  std::vector<int32_t> cu{0};
  for (int l : lengths) cu.push_back(cu.back() + l);
  const int total = cu.back();
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> qkv(size_t(total) * 3 * heads * dim), out(size_t(total) * heads * dim);
  for (auto& x : qkv) x = to_bf16(normal(rng));
  int max_len = 0;
  for (int l : lengths) max_len = l > max_len ? l : max_len;
  std::vector<float> bias(size_t(heads) * (2 * max_len + 1)), cos(size_t(max_len) * (dim / 2)),
      sin(cos.size());
  for (auto& x : bias) x = normal(rng);
  for (int p = 0; p < max_len; ++p)
    for (int k = 0; k < dim / 2; ++k) {
      const double angle = p * std::pow(10000.0, -2.0 * k / dim);
      cos[size_t(p) * (dim / 2) + k] = float(std::cos(angle));
      sin[size_t(p) * (dim / 2) + k] = float(std::sin(angle));
    }
  const int bias_len = max_len + 1;  // a table built for a larger max_seqlen than the batch's
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
  a.window = opt.window;
  a.rel_bias = opt.bias ? bias.data() : nullptr;
  a.bias_max_seqlen = bias_len;
  a.rotary_cos = opt.rotary ? cos.data() : nullptr;
  a.rotary_sin = opt.rotary ? sin.data() : nullptr;
  amx::attention(a);
  double worst = 0.0;
  auto raw = [&](int tok, int which, int h, int d) {
    return double(from_bf16(qkv[((size_t(tok) * 3 + which) * heads + h) * dim + d]));
  };
  // q and k rotated at their in-sequence position p (rotate-half), v as it is
  auto at = [&](int tok, int which, int h, int d, int p) {
    if (!opt.rotary || which == 2) return raw(tok, which, h, d);
    const int half = dim / 2, k = d % half;
    const double c = cos[size_t(p) * half + k], sn = sin[size_t(p) * half + k];
    return d < half ? raw(tok, which, h, d) * c - raw(tok, which, h, d + half) * sn
                    : raw(tok, which, h, d) * c + raw(tok, which, h, d - half) * sn;
  };
  for (size_t b = 0; b + 1 < cu.size(); ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = cu[b]; i < cu[b + 1]; ++i) {
        std::vector<double> p(size_t(cu[b + 1] - cu[b]));
        double mx = -1e300, sum = 0.0;
        const int qi = i - cu[b];
        for (int j = cu[b]; j < cu[b + 1]; ++j) {
          const int kj = j - cu[b];
          double s = 0.0;
          for (int d = 0; d < dim; ++d) s += at(i, 0, h, d, qi) * at(j, 1, h, d, kj);
          s *= a.scale;
          if (opt.bias) s += bias[size_t(h) * (2 * bias_len - 1) + size_t(kj - qi + bias_len - 1)];
          if (opt.window >= 0 && std::abs(kj - qi) > opt.window) s = -1e300;
          p[size_t(kj)] = s;
          mx = std::fmax(mx, s);
        }
        for (auto& v : p) sum += (v = v <= -1e299 ? 0.0 : std::exp(v - mx));
        for (int d = 0; d < dim; ++d) {
          double o = 0.0;
          for (int j = cu[b]; j < cu[b + 1]; ++j) o += p[size_t(j - cu[b])] / sum * raw(j, 2, h, d);
          const double got = from_bf16(out[(size_t(i) * heads + h) * dim + d]);
          worst = std::fmax(worst, std::fabs(got - o) / (1.0 + std::fabs(o)));
        }
      }
  const bool ok = worst < 2e-2;
  std::printf("%s lengths=%zu heads=%d dim=%d threads=%d window=%d bias=%d rotary=%d max error %.3g\n",
              ok ? "ok  " : "FAIL", lengths.size(), heads, dim, threads, opt.window, int(opt.bias),
              int(opt.rotary), worst);
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
  ok &= check({300, 2}, 1, 128, 2);                      // two key blocks: the online-softmax rescale
  ok &= check({200}, 1, 80, 2);                          // query rows split across threads
  ok &= check({7, 1, 40}, 3, 32, 1, {-1, true, false});  // relative bias
  ok &= check({9, 33}, 2, 40, 2, {-1, false, true});     // rotary, head_dim 40
  ok &= check({300, 5}, 2, 64, 2, {0, false, false});    // window 0: only the diagonal
  ok &= check({300, 5}, 2, 64, 2, {5, true, true});      // all three, several key tiles skipped
  ok &= check({600}, 1, 64, 2, {64, false, true});       // ModernBERT-like local layer, rows split
  ok &= check({20}, 2, 24, 1, {100, true, false});       // window wider than the sequence
  return ok ? 0 : 1;
}

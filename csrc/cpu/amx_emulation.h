// Software AMX tiles for amx_emulation_test.cpp: checks attention_amx.cpp's packing and tile
// indexing on machines without AMX (the real instructions are only exercised on AMX hardware).
#pragma once

#include <cstdint>
#include <cstring>

namespace bertrt::cpu::amx::emulation {

inline thread_local unsigned char tiles[8][16][64];

inline float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void load(int t, const void* p, int64_t stride) {
  for (int r = 0; r < 16; ++r)
    std::memcpy(tiles[t][r], static_cast<const unsigned char*>(p) + r * stride, 64);
}

inline void store(int t, void* p, int64_t stride) {
  for (int r = 0; r < 16; ++r) std::memcpy(static_cast<unsigned char*>(p) + r * stride, tiles[t][r], 64);
}

inline void dpbf16ps(int c, int a, int b) {
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float acc;
      std::memcpy(&acc, tiles[c][m] + 4 * n, 4);
      for (int k = 0; k < 16; ++k) {
        uint16_t a0, a1, b0, b1;
        std::memcpy(&a0, tiles[a][m] + 4 * k, 2);
        std::memcpy(&a1, tiles[a][m] + 4 * k + 2, 2);
        std::memcpy(&b0, tiles[b][k] + 4 * n, 2);
        std::memcpy(&b1, tiles[b][k] + 4 * n + 2, 2);
        acc += bf16_to_float(a0) * bf16_to_float(b0) + bf16_to_float(a1) * bf16_to_float(b1);
      }
      std::memcpy(tiles[c][m] + 4 * n, &acc, 4);
    }
}

}  // namespace bertrt::cpu::amx::emulation

#define _tile_loadconfig(cfg) ((void)(cfg))
#define _tile_release() ((void)0)
#define _tile_zero(t) std::memset(::bertrt::cpu::amx::emulation::tiles[t], 0, 1024)
#define _tile_loadd(t, p, stride) ::bertrt::cpu::amx::emulation::load(t, p, stride)
#define _tile_stored(t, p, stride) ::bertrt::cpu::amx::emulation::store(t, p, stride)
#define _tile_dpbf16ps(c, a, b) ::bertrt::cpu::amx::emulation::dpbf16ps(c, a, b)

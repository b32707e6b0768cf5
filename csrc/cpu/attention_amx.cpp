// AMX variant entry points. Built with -mamx-tile -mamx-bf16 -mamx-int8 plus the AVX-512 flags.
#include <sys/syscall.h>
#include <unistd.h>

#include "kernels.h"

namespace bertrt::cpu::amx {

bool request_tile_permission() {
#if defined(__linux__)
  constexpr int kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

void attention(const AttentionArgs& args) { avx512::attention(args); }

}  // namespace bertrt::cpu::amx

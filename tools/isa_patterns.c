// Register-only rates of the instruction patterns behind bertrt's AVX2 GEMMs, in inline asm so the
// compiler can neither hoist the multiplies out of the loop nor keep the accumulators in memory (a C
// version of the q8 loop compiled with gcc -O2 did both, and timed memory adds instead).
//   q8:  vpmaddubsw + vpmaddwd + vpaddd per 32 multiply-adds (int8_linear.cpp, act_bits 8)
//   q7:  two vpmaddubsw, vpaddw, vpaddd, vpsrld, vpaddd per 64 multiply-adds (act_bits 7 until the
//        sixth session: offset weights, pair sums widened by shifts)
//   q7m: two vpmaddubsw, vpaddw, vpmaddwd, vpaddd per 64 multiply-adds (act_bits 7 now: signed 7-bit
//        weights, so two pair sums fit int16 and vpmaddwd widens them)
//   fma: vfmadd231ps, 8 multiply-adds (linear.cpp's FP32 micro-kernel)
//   vnni: vpdpbusd zmm, 64 multiply-adds (the AVX-512 variant's packed kernel on VNNI CPUs; run only
//        where the CPU has AVX512-VNNI); vnni256: the same on ymm
// Build and run: gcc -O2 tools/isa_patterns.c -o /tmp/isa_patterns && /tmp/isa_patterns
// The three loops alternate, so their ratios hold on a machine whose clock drifts.
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
// q8: 6 x (vpmaddubsw, vpmaddwd, vpaddd) = 192 MAC per iteration, into 6 accumulators
static double q8(long it){ double t=now(); __asm__ volatile(
 "vpxor %%ymm0,%%ymm0,%%ymm0\n vpxor %%ymm12,%%ymm12,%%ymm12\n vpxor %%ymm13,%%ymm13,%%ymm13\n vpxor %%ymm14,%%ymm14,%%ymm14\n"
 "1:\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm1\n vpmaddwd %%ymm14, %%ymm1, %%ymm1\n vpaddd %%ymm1, %%ymm0, %%ymm0\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm2\n vpmaddwd %%ymm14, %%ymm2, %%ymm2\n vpaddd %%ymm2, %%ymm3, %%ymm3\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm4\n vpmaddwd %%ymm14, %%ymm4, %%ymm4\n vpaddd %%ymm4, %%ymm5, %%ymm5\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm6\n vpmaddwd %%ymm14, %%ymm6, %%ymm6\n vpaddd %%ymm6, %%ymm7, %%ymm7\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm8\n vpmaddwd %%ymm14, %%ymm8, %%ymm8\n vpaddd %%ymm8, %%ymm9, %%ymm9\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm10\n vpmaddwd %%ymm14, %%ymm10, %%ymm10\n vpaddd %%ymm10, %%ymm11, %%ymm11\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
 return now()-t; }
// q7: per (row, half): 2 maddubs, vpaddw, vpaddd, vpsrld, vpaddd = 64 MAC; 3 per iteration = 192 MAC
static double q7(long it){ double t=now(); __asm__ volatile(
 "vpxor %%ymm12,%%ymm12,%%ymm12\n vpxor %%ymm13,%%ymm13,%%ymm13\n vpxor %%ymm14,%%ymm14,%%ymm14\n vpxor %%ymm15,%%ymm15,%%ymm15\n"
 "1:\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm0\n vpmaddubsw %%ymm14, %%ymm15, %%ymm1\n vpaddw %%ymm1, %%ymm0, %%ymm0\n vpaddd %%ymm0, %%ymm2, %%ymm2\n vpsrld $16, %%ymm0, %%ymm0\n vpaddd %%ymm0, %%ymm3, %%ymm3\n"
 "vpmaddubsw %%ymm12, %%ymm15, %%ymm4\n vpmaddubsw %%ymm14, %%ymm13, %%ymm5\n vpaddw %%ymm5, %%ymm4, %%ymm4\n vpaddd %%ymm4, %%ymm6, %%ymm6\n vpsrld $16, %%ymm4, %%ymm4\n vpaddd %%ymm4, %%ymm7, %%ymm7\n"
 "vpmaddubsw %%ymm13, %%ymm12, %%ymm8\n vpmaddubsw %%ymm15, %%ymm14, %%ymm9\n vpaddw %%ymm9, %%ymm8, %%ymm8\n vpaddd %%ymm8, %%ymm10, %%ymm10\n vpsrld $16, %%ymm8, %%ymm8\n vpaddd %%ymm8, %%ymm11, %%ymm11\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15");
 return now()-t; }
// q7m: per (row, half): 2 maddubs, vpaddw, vpmaddwd, vpaddd = 64 MAC; 3 per iteration = 192 MAC
static double q7m(long it){ double t=now(); __asm__ volatile(
 "vpxor %%ymm12,%%ymm12,%%ymm12\n vpxor %%ymm13,%%ymm13,%%ymm13\n vpxor %%ymm14,%%ymm14,%%ymm14\n vpxor %%ymm15,%%ymm15,%%ymm15\n"
 "vpxor %%ymm11,%%ymm11,%%ymm11\n"
 "1:\n"
 "vpmaddubsw %%ymm12, %%ymm13, %%ymm0\n vpmaddubsw %%ymm14, %%ymm15, %%ymm1\n vpaddw %%ymm1, %%ymm0, %%ymm0\n vpmaddwd %%ymm11, %%ymm0, %%ymm0\n vpaddd %%ymm0, %%ymm2, %%ymm2\n"
 "vpmaddubsw %%ymm12, %%ymm15, %%ymm4\n vpmaddubsw %%ymm14, %%ymm13, %%ymm5\n vpaddw %%ymm5, %%ymm4, %%ymm4\n vpmaddwd %%ymm11, %%ymm4, %%ymm4\n vpaddd %%ymm4, %%ymm6, %%ymm6\n"
 "vpmaddubsw %%ymm13, %%ymm12, %%ymm8\n vpmaddubsw %%ymm15, %%ymm14, %%ymm9\n vpaddw %%ymm9, %%ymm8, %%ymm8\n vpmaddwd %%ymm11, %%ymm8, %%ymm8\n vpaddd %%ymm8, %%ymm10, %%ymm10\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm4","xmm5","xmm6","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15");
 return now()-t; }
// fp32 FMA: 10 independent accumulators, 8 MAC each
static double fp32_fma(long it){ double t=now(); __asm__ volatile(
 "vxorps %%ymm12,%%ymm12,%%ymm12\n vxorps %%ymm13,%%ymm13,%%ymm13\n"
 "1:\n"
 "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n"
 "vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm12","xmm13");
 return now()-t; }
// vnni: 10 independent accumulators; zmm (64 MAC each) and ymm (32 MAC each)
static double vnni(long it){ double t=now(); __asm__ volatile(
 "vpxord %%zmm12,%%zmm12,%%zmm12\n vpxord %%zmm13,%%zmm13,%%zmm13\n"
 "1:\n"
 "vpdpbusd %%zmm12, %%zmm13, %%zmm0\n vpdpbusd %%zmm12, %%zmm13, %%zmm1\n vpdpbusd %%zmm12, %%zmm13, %%zmm2\n vpdpbusd %%zmm12, %%zmm13, %%zmm3\n vpdpbusd %%zmm12, %%zmm13, %%zmm4\n"
 "vpdpbusd %%zmm12, %%zmm13, %%zmm5\n vpdpbusd %%zmm12, %%zmm13, %%zmm6\n vpdpbusd %%zmm12, %%zmm13, %%zmm7\n vpdpbusd %%zmm12, %%zmm13, %%zmm8\n vpdpbusd %%zmm12, %%zmm13, %%zmm9\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm12","xmm13");
 return now()-t; }
static double vnni256(long it){ double t=now(); __asm__ volatile(
 "vpxord %%ymm12,%%ymm12,%%ymm12\n vpxord %%ymm13,%%ymm13,%%ymm13\n"
 "1:\n"
 "vpdpbusd %%ymm12, %%ymm13, %%ymm0\n vpdpbusd %%ymm12, %%ymm13, %%ymm1\n vpdpbusd %%ymm12, %%ymm13, %%ymm2\n vpdpbusd %%ymm12, %%ymm13, %%ymm3\n vpdpbusd %%ymm12, %%ymm13, %%ymm4\n"
 "vpdpbusd %%ymm12, %%ymm13, %%ymm5\n vpdpbusd %%ymm12, %%ymm13, %%ymm6\n vpdpbusd %%ymm12, %%ymm13, %%ymm7\n vpdpbusd %%ymm12, %%ymm13, %%ymm8\n vpdpbusd %%ymm12, %%ymm13, %%ymm9\n"
 "dec %0\n jnz 1b\n" : "+r"(it) :: "memory","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm12","xmm13");
 return now()-t; }
int main(){
  long it = 100000000;
  for (int r = 0; r < 4; ++r) {
    double a = q8(it), b = q7(it), d = q7m(it), c = fp32_fma(it);
    printf("q8 %.1f  q7 %.1f  q7m %.1f  fp32 fma %.1f GMAC/s  | q7/q8 %.2f  q7m/q8 %.2f  q8/fma %.2f\n", it*192.0/a/1e9,
           it*192.0/b/1e9, it*192.0/d/1e9, it*80.0/c/1e9, a/b, a/d, (it*192.0/a)/(it*80.0/c));
    if (__builtin_cpu_supports("avx512vnni")) {
      double v = vnni(it / 4), v2 = vnni256(it / 4);
      printf("  vnni zmm %.1f  ymm %.1f GMAC/s  | vnni zmm / q8 %.2f\n", it / 4 * 640.0 / v / 1e9,
             it / 4 * 320.0 / v2 / 1e9, (it / 4 * 640.0 / v) / (it * 192.0 / a));
    }
  }
}

// What the hand-vectorised AVX-512 CPU kernels share (csrc/paged_attention/paged_attention_avx512.cpp,
// csrc/linear/linear_avx512.cpp): the target attribute, the CPU check and the lane-quad reduction.
// x86-64 GCC / Clang only; elsewhere this header declares nothing and those kernels compile to stubs.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 flags the deliberately undefined registers inside its own AVX-512 intrinsics as uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#define EFFREASON_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq")))

namespace effreason::avx512 {

// Whether this CPU has the AVX-512 subsets (F, VL, DQ) that EFFREASON_AVX512 code uses.
inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq");
  return has;
}

// Lane (h, i) = sum_j v_i lane (h, j): the four quad totals of each 128-bit lane h of four vectors v_0..v_3.
EFFREASON_AVX512 inline __m512 sum_lane_quads(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, 0x44), _mm512_shuffle_ps(v0, v1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_ps(v2, v3, 0x44), _mm512_shuffle_ps(v2, v3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x88), _mm512_shuffle_ps(s01, s23, 0xDD));
}

}  // namespace effreason::avx512

#endif

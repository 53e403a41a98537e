// Elementwise float math written so that GCC vectorises the loops calling it, plus the switch that
// compiles a hot loop for AVX-512, AVX2+FMA and baseline x86-64 and picks one at load time.
// Used by the CPU ops in csrc/cpu_decode and csrc/paged_attention.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Hot loops, compiled for AVX-512 / AVX2+FMA / baseline x86-64 and picked at load time (GCC target_clones).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EFFREASON_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EFFREASON_CPU_CLONES
#endif

namespace effreason::cpu {

constexpr int kLanes = 8;  // independent partial sums, so reductions vectorise without -ffast-math

__attribute__((always_inline)) inline float float_from_bits(int32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

__attribute__((always_inline)) inline int32_t bits_from_float(float value) {
  int32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// exp_approx's constants.
namespace exp_constants {
constexpr float kMin = -87.f, kMax = 88.f;  // e^x is 0 below kMin; x is clamped to kMax (e^88 ~ 1.7e38)
constexpr float kLog2e = 1.4426950408889634f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187e-06f;
constexpr float kTaylor[7] = {1.f / 720.f, 1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f};  // Horner order
}  // namespace exp_constants

// e^x as 2^n p(r) with x = n ln2 + r, |r| <= ln2 / 2, p the degree-6 Taylor polynomial (relative error
// < 2e-7). 0 below -87; x above 88 is clamped to 88 (no inf).
__attribute__((always_inline)) inline float exp_approx(float x) {
  using namespace exp_constants;
  const float clamped = std::min(std::max(x, kMin), kMax);
  const float n = std::nearbyint(clamped * kLog2e);
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  float p = kTaylor[0];
  for (int i = 1; i < 7; ++i) p = p * r + kTaylor[i];
  const float scale = float_from_bits((static_cast<int32_t>(n) + 127) << 23);
  return x < kMin ? 0.f : p * scale;
}

// max_i x[i] (-inf for size 0), with kLanes partial maxima so the loop vectorises without -ffast-math;
// inlined into each caller so it is compiled for the caller's target clones.
__attribute__((always_inline)) inline float row_max(const float* x, int64_t size) {
  float partial[kLanes];
  std::fill(partial, partial + kLanes, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= size; i += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) partial[lane] = std::max(partial[lane], x[i + lane]);
  }
  float top = *std::max_element(partial, partial + kLanes);
  for (; i < size; ++i) top = std::max(top, x[i]);
  return top;
}

// ln x for a normal float x > 0 (Cephes logf): x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// ln m = t - t^2/2 + t^3 P(t) with t = m - 1, and e ln2 added in two parts. Error about 1 ulp.
__attribute__((always_inline)) inline float log_approx(float x) {
  const int32_t bits = bits_from_float(x);
  int32_t exponent = ((bits >> 23) & 0xff) - 126;                 // x = m 2^exponent, m in [0.5, 1)
  const float mantissa = float_from_bits((bits & 0x007fffff) | 0x3f000000);
  const bool below = mantissa < 0.707106781186547524f;
  exponent -= below ? 1 : 0;
  const float t = below ? mantissa + mantissa - 1.f : mantissa - 1.f;  // m in [sqrt(1/2), sqrt(2)) minus 1
  const float z = t * t;
  float p = 7.0376836292e-2f;
  p = p * t - 1.1514610310e-1f;
  p = p * t + 1.1676998740e-1f;
  p = p * t - 1.2420140846e-1f;
  p = p * t + 1.4249322787e-1f;
  p = p * t - 1.6668057665e-1f;
  p = p * t + 2.0000714765e-1f;
  p = p * t - 2.4999993993e-1f;
  p = p * t + 3.3333331174e-1f;
  const float e = static_cast<float>(exponent);
  float y = p * t * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return t + y + 0.693359375f * e;
}

}  // namespace effreason::cpu

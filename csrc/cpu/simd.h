// Vector traits for the float32 CPU kernels: one struct per instruction-set level with the same static
// interface, so that the tiles and softmax passes are templates over the vector width.
//
//   SimdGeneric  4 lanes, GCC/Clang vector extensions (SSE2 on x86-64, NEON elsewhere): no intrinsics
//   Simd256      8 lanes, AVX2 + FMA intrinsics (compiled only where __AVX2__ and __FMA__ are defined)
//   Simd512     16 lanes, AVX-512F/DQ/BW/VL intrinsics (only where __AVX512F__ etc. are defined)
//
// Each kernel translation unit is compiled with its own -m flags and sees only the structs its flags allow;
// everything here has internal linkage (anonymous namespace), so that the copies compiled for different
// ISAs never meet at link time. The exp is the Cephes-style polynomial of the AVX2 kernel (relative error
// about 1e-7 over the clamped range), the same arithmetic at every width.
//
// Interface (V: vector, Mask: lane mask, W lanes, kRegs architectural vector registers):
//   zero, set1, load, store (unaligned), bcast (broadcast a float from memory), add, sub, mul, max,
//   fmadd(a, b, c) = a b + c, fnmadd(a, b, c) = c - a b, div, exp and log (both keep a NaN input; log for
//   positive normal inputs),
//   hmax, hsum, first(n) (lanes < n), load_first(p, mask) (zero elsewhere), store_first(p, mask, v),
//   select(mask, a, b) (a where set, else b), stream (non-temporal store, 4 W-byte aligned), keep(v)
//   (an empty asm that pins v in a register), prefetch_l1/l2.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define AGENTATTN_INLINE __attribute__((always_inline)) inline

// The inline namespace that holds this translation unit's copies (avx2, avx512, generic; base for the
// driver): symbols of different ISAs never share a name, and a disassembly attributes each function to its ISA.
#ifndef AGENTATTN_ISA_NS
#define AGENTATTN_ISA_NS base
#endif

namespace agentattn::cpu {
inline namespace AGENTATTN_ISA_NS {
namespace {

// exp constants (Cephes expf): clamp range, log2(e), ln2 in two parts, the degree-5 polynomial
constexpr float kExpLo = -87.3f, kExpHi = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
// exp2 on [-1/2, 1/2] (Cephes exp2f, highest degree first, then 1), and log2 e - float(log2 e)
constexpr float kE2[7] = {1.535336188319500e-4f,
                          1.339887440266574e-3f,
                          9.618437357674640e-3f,
                          5.550332471162809e-2f,
                          2.402264791363012e-1f,
                          6.931472028550421e-1f,
                          1.0f};
constexpr float kLog2eLo = 1.925963033500011e-08f;
// log constants (Cephes logf)
constexpr float kSqrtHalf = 0.707106781186547524f;
constexpr float kL[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,  -1.2420140846e-1f, 1.4249322787e-1f,
                         -1.6668057665e-1f, 2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};

AGENTATTN_INLINE void prefetch_l1(const void* p) { __builtin_prefetch(p, 0, 3); }
AGENTATTN_INLINE void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

// ------------------------------------------------------------------------------------------------ generic
struct SimdGeneric {
  static constexpr int W = 4;
  static constexpr int kRegs = 16;
  static constexpr const char* kName = "generic";
  typedef float V __attribute__((vector_size(16)));
  typedef int32_t Mask __attribute__((vector_size(16)));

  static AGENTATTN_INLINE V zero() { return V{0.0f, 0.0f, 0.0f, 0.0f}; }
  static AGENTATTN_INLINE V set1(float x) { return V{x, x, x, x}; }
  static AGENTATTN_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static AGENTATTN_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static AGENTATTN_INLINE V bcast(const float* p) { return set1(*p); }
  static AGENTATTN_INLINE V add(V a, V b) { return a + b; }
  static AGENTATTN_INLINE V sub(V a, V b) { return a - b; }
  static AGENTATTN_INLINE V mul(V a, V b) { return a * b; }
  static AGENTATTN_INLINE V div(V a, V b) { return a / b; }
  static AGENTATTN_INLINE V fmadd(V a, V b, V c) { return a * b + c; }
  static AGENTATTN_INLINE V fnmadd(V a, V b, V c) { return c - a * b; }
  static AGENTATTN_INLINE V select(Mask m, V a, V b) { return (V)((m & (Mask)a) | (~m & (Mask)b)); }
  // as the x86 max: b where either is NaN
  static AGENTATTN_INLINE V max(V a, V b) { return select(a > b, a, b); }
  static AGENTATTN_INLINE V min(V a, V b) { return select(a < b, a, b); }
  static AGENTATTN_INLINE V exp(V x) {
    x = min(set1(kExpHi), max(set1(kExpLo), x));  // this operand order keeps a NaN x (max/min give b)
    const V t = fmadd(x, set1(kLog2e), set1(kRound));
    const V n = t - set1(kRound);
    V r = fnmadd(n, set1(kLn2Hi), x);
    r = fnmadd(n, set1(kLn2Lo), r);
    V p = set1(kP0);
    p = fmadd(p, r, set1(kP1));
    p = fmadd(p, r, set1(kP2));
    p = fmadd(p, r, set1(kP3));
    p = fmadd(p, r, set1(kP4));
    p = fmadd(p, r, set1(kP5));
    p = fmadd(p, r * r, r + set1(1.0f));
    const Mask e = ((Mask)t + 127) << 23;
    return p * (V)e;
  }
  static AGENTATTN_INLINE V log(V x) {
    x = max(set1(1.17549435e-38f), x);  // keeps a NaN x
    const Mask xi = (Mask)x;
    V e = __builtin_convertvector((xi >> 23) - 126, V);
    V m = (V)((xi & 0x007fffff) | 0x3f000000);
    const Mask lt = m < set1(kSqrtHalf);
    e = e - (V)(lt & (Mask)set1(1.0f));
    m = m - set1(1.0f) + (V)(lt & (Mask)m);
    const V z = m * m;
    V y = set1(kL[0]);
    for (int i = 1; i < 9; ++i) y = fmadd(y, m, set1(kL[i]));
    y = y * m * z;
    y = fmadd(e, set1(kLn2Lo), y);
    y = fnmadd(z, set1(0.5f), y);
    return select(x != x, x, fmadd(e, set1(kLn2Hi), m + y));  // the bit tricks above would turn NaN finite
  }
  static AGENTATTN_INLINE float hmax(V v) {
    float m = v[0];
    for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  static AGENTATTN_INLINE float hsum(V v) { return (v[0] + v[2]) + (v[1] + v[3]); }
  static AGENTATTN_INLINE Mask first(int64_t n) { return Mask{0, 1, 2, 3} < static_cast<int32_t>(n); }
  static AGENTATTN_INLINE V load_first(const float* p, Mask m) {
    V v = zero();
    for (int i = 0; i < W; ++i)
      if (m[i]) v[i] = p[i];
    return v;
  }
  static AGENTATTN_INLINE void store_first(float* p, Mask m, V v) {
    for (int i = 0; i < W; ++i)
      if (m[i]) p[i] = v[i];
  }
  static AGENTATTN_INLINE void stream(float* p, V v) { store(p, v); }
  static AGENTATTN_INLINE void stream_fence() {}
  static AGENTATTN_INLINE void keep(V&) {}
};

// ------------------------------------------------------------------------------------------------ AVX2
#if defined(__AVX2__) && defined(__FMA__)
struct Simd256 {
  static constexpr int W = 8;
#ifdef __AVX512VL__
  static constexpr int kRegs = 32;  // EVEX encodings reach ymm16-31
#else
  static constexpr int kRegs = 16;
#endif
  static constexpr const char* kName = "avx2";
  using V = __m256;
  using Mask = __m256i;

  static AGENTATTN_INLINE V zero() { return _mm256_setzero_ps(); }
  static AGENTATTN_INLINE V set1(float x) { return _mm256_set1_ps(x); }
  static AGENTATTN_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static AGENTATTN_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static AGENTATTN_INLINE V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static AGENTATTN_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static AGENTATTN_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static AGENTATTN_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static AGENTATTN_INLINE V div(V a, V b) { return _mm256_div_ps(a, b); }
  static AGENTATTN_INLINE V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static AGENTATTN_INLINE V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static AGENTATTN_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static AGENTATTN_INLINE V min(V a, V b) { return _mm256_min_ps(a, b); }
  static AGENTATTN_INLINE V select(Mask m, V a, V b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
  static AGENTATTN_INLINE V exp(V x) {
    x = _mm256_min_ps(set1(kExpHi), _mm256_max_ps(set1(kExpLo), x));  // this operand order keeps a NaN x
    // n = round(x log2 e) by adding 1.5 * 2^23 (spacing 1 there: n lands in the low mantissa bits of t,
    // which also give 2^n below); one FMA and one subtraction instead of mul, round and convert
    const V magic = set1(kRound);
    const V t = _mm256_fmadd_ps(x, set1(kLog2e), magic);
    const V n = _mm256_sub_ps(t, magic);
    V r = _mm256_fnmadd_ps(n, set1(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, set1(kLn2Lo), r);
    V p = set1(kP0);
    p = _mm256_fmadd_ps(p, r, set1(kP1));
    p = _mm256_fmadd_ps(p, r, set1(kP2));
    p = _mm256_fmadd_ps(p, r, set1(kP3));
    p = _mm256_fmadd_ps(p, r, set1(kP4));
    p = _mm256_fmadd_ps(p, r, set1(kP5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, set1(1.0f)));
    // (bits(t) + 127) << 23 keeps the low 9 bits: n + 127, in [1, 254] for the clamped x
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static AGENTATTN_INLINE V log(V x) {
    const V one = set1(1.0f);
    x = _mm256_max_ps(set1(1.17549435e-38f), x);  // keeps a NaN x
    const __m256i xi = _mm256_castps_si256(x);
    V e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(126)));
    V m = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
    const V lt = _mm256_cmp_ps(m, set1(kSqrtHalf), _CMP_LT_OQ);
    e = _mm256_sub_ps(e, _mm256_and_ps(one, lt));
    m = _mm256_add_ps(_mm256_sub_ps(m, one), _mm256_and_ps(m, lt));
    const V z = _mm256_mul_ps(m, m);
    V y = set1(kL[0]);
    for (int i = 1; i < 9; ++i) y = _mm256_fmadd_ps(y, m, set1(kL[i]));
    y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
    y = _mm256_fmadd_ps(e, set1(kLn2Lo), y);
    y = _mm256_fnmadd_ps(z, set1(0.5f), y);
    const V r = _mm256_fmadd_ps(e, set1(kLn2Hi), _mm256_add_ps(m, y));
    return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // the bit tricks would turn NaN finite
  }
  static AGENTATTN_INLINE float hmax(V v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static AGENTATTN_INLINE float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static AGENTATTN_INLINE Mask first(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static AGENTATTN_INLINE V load_first(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static AGENTATTN_INLINE void store_first(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static AGENTATTN_INLINE void stream(float* p, V v) { _mm256_stream_ps(p, v); }
  static AGENTATTN_INLINE void stream_fence() { _mm_sfence(); }
#ifdef __AVX512VL__
  static AGENTATTN_INLINE void keep(V& v) { asm("" : "+v"(v)); }
#else
  static AGENTATTN_INLINE void keep(V& v) { asm("" : "+x"(v)); }
#endif

  // dst (8 x 8, row stride ldd) = src^T (8 x 8, row stride lds).
  static AGENTATTN_INLINE void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
    __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
      u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
      u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
      _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
    }
  }
};
#endif

// ------------------------------------------------------------------------------------------------ AVX-512
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
struct Simd512 {
  static constexpr int W = 16;
  static constexpr int kRegs = 32;
  static constexpr const char* kName = "avx512";
  using V = __m512;
  using Mask = __mmask16;

  static AGENTATTN_INLINE V zero() { return _mm512_setzero_ps(); }
  static AGENTATTN_INLINE V set1(float x) { return _mm512_set1_ps(x); }
  static AGENTATTN_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static AGENTATTN_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static AGENTATTN_INLINE V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static AGENTATTN_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static AGENTATTN_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static AGENTATTN_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static AGENTATTN_INLINE V div(V a, V b) { return _mm512_div_ps(a, b); }
  static AGENTATTN_INLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static AGENTATTN_INLINE V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static AGENTATTN_INLINE V max(V a, V b) { return _mm512_max_ps(a, b); }
  static AGENTATTN_INLINE V min(V a, V b) { return _mm512_min_ps(a, b); }
  static AGENTATTN_INLINE V select(Mask m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
  // exp(x) = 2^n 2^f with n = round(x log2 e), f = x log2 e - n in [-1/2, 1/2] (one rounding, in an FMA,
  // plus the low part of log2 e), 2^f by Cephes' degree-6 exp2f polynomial, 2^n applied by vscalefps
  // (overflow to inf; NaN propagates). 11 instructions against the 17 of the AVX2 form; max relative
  // error 1.6 ulp over [-87, 88] (the AVX2 form: 2.0). x below -87.3 is clamped there as in the AVX2 form.
  static AGENTATTN_INLINE V exp(V x) {
    x = _mm512_max_ps(set1(kExpLo), x);  // this operand order keeps a NaN x
    const V l2e = set1(kLog2e);
    const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f = _mm512_fmsub_ps(x, l2e, n);
    f = _mm512_fmadd_ps(x, set1(kLog2eLo), f);
    V p = set1(kE2[0]);
#pragma GCC unroll 6
    for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, set1(kE2[i]));
    return _mm512_scalef_ps(p, n);
  }
  static AGENTATTN_INLINE V log(V x) {
    const V one = set1(1.0f);
    x = _mm512_max_ps(set1(1.17549435e-38f), x);  // keeps a NaN x
    const __m512i xi = _mm512_castps_si512(x);
    V e = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(xi, 23), _mm512_set1_epi32(126)));
    V m = _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_and_si512(xi, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f000000)));
    const Mask lt = _mm512_cmp_ps_mask(m, set1(kSqrtHalf), _CMP_LT_OQ);
    e = _mm512_mask_sub_ps(e, lt, e, one);
    m = _mm512_mask_add_ps(_mm512_sub_ps(m, one), lt, _mm512_sub_ps(m, one), m);
    const V z = _mm512_mul_ps(m, m);
    V y = set1(kL[0]);
    for (int i = 1; i < 9; ++i) y = _mm512_fmadd_ps(y, m, set1(kL[i]));
    y = _mm512_mul_ps(_mm512_mul_ps(y, m), z);
    y = _mm512_fmadd_ps(e, set1(kLn2Lo), y);
    y = _mm512_fnmadd_ps(z, set1(0.5f), y);
    const V r = _mm512_fmadd_ps(e, set1(kLn2Hi), _mm512_add_ps(m, y));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, x);  // keep NaN (bit tricks above)
  }
  static AGENTATTN_INLINE float hmax(V v) {
    __m256 m = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static AGENTATTN_INLINE float hsum(V v) {
    __m256 m = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static AGENTATTN_INLINE Mask first(int64_t n) {
    return n >= 16 ? Mask(0xffff) : static_cast<Mask>((1u << (n > 0 ? n : 0)) - 1u);
  }
  static AGENTATTN_INLINE V load_first(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static AGENTATTN_INLINE void store_first(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static AGENTATTN_INLINE void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static AGENTATTN_INLINE void stream_fence() { _mm_sfence(); }
  static AGENTATTN_INLINE void keep(V& v) { asm("" : "+v"(v)); }
};
#endif

}  // namespace
}  // namespace AGENTATTN_ISA_NS
}  // namespace agentattn::cpu

// AVX-512 GEMV inner loops for one input row (batch 1: every decode step), included by
// sparse_kernels.cpp. Each is the same sum as the generic loops there with another summation
// order (fp32 accumulation throughout), written with intrinsics because the auto-vectorized loops
// are compute-bound on bf16 weights (two conversion ops per 16 weights) and pay a 16-lane scalar
// reduction per row on short rows (Gemma's d_in = 640).
//
//   row_gemv_*   y[j] = w[row(j), :] . x  for j in [j0, j1), one row at a time (read in order)
//                with four accumulators, so a row's result does not depend on the other rows.
//                bf16 uses VDPBF16PS (AVX512-BF16): 32 weights per instruction, products exact in
//                fp32 (bf16 x bf16), accumulated in fp32 with round-to-nearest-even.
//   axpy_pairs_bf16   acc += sum_j xs[j] * wt[row(j), :] over pairs of rows: the two rows' weights
//                are interleaved (VPUNPCK{L,H}WD) so one VDPBF16PS adds x0*w0[c] + x1*w1[c]; the
//                accumulator is then in "pair order" (see pair_col), undone when it is stored.
//
// Compiled only when the build targets AVX-512 (kernel_build.py adds -mavx512f ... when the CPU has it);
// otherwise TDA_GEMV_AVX512 stays 0 and the generic loops run.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TDA_GEMV_AVX512 1
#if defined(__AVX512BF16__)
#define TDA_GEMV_BF16DP 1
#else
#define TDA_GEMV_BF16DP 0
#endif
#else
#define TDA_GEMV_AVX512 0
#define TDA_GEMV_BF16DP 0
#endif

namespace tda_gemv {

#if TDA_GEMV_AVX512

inline __mmask16 tail16(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline __mmask32 tail32(int64_t n) { return static_cast<__mmask32>((1ull << n) - 1ull); }

// The four gathered rows idx[j..j+3] of a row-major w[., d_in] into r, the next four rows' first
// lines prefetched, and the four rows' four accumulators zeroed (gathered_rows4_*).
template <typename T>
inline void gathered_rows4_start(const T* w, int64_t d_in, const int64_t* idx, int64_t j, int64_t j1, const T* r[4],
                                 __m512 a[4][4]) {
  for (int q = 0; q < 4; ++q) r[q] = w + idx[j + q] * d_in;
  if (j + 8 <= j1)
    for (int q = 4; q < 8; ++q) _mm_prefetch(reinterpret_cast<const char*>(w + idx[j + q] * d_in), _MM_HINT_T0);
  for (int q = 0; q < 4; ++q)
    for (int u = 0; u < 4; ++u) a[q][u] = _mm512_setzero_ps();
}

// Gathered rows (idx), four at a time: y[j..j+3], each row with its own four accumulators in the
// order of the one-row loop below (the same sums, bit for bit), the next four rows' first lines
// prefetched. Four DRAM streams at once: one gathered row at a time runs 1.3-1.5x the time per byte
// of rows in order (the streamer restarts at every jump), four at a time 1.05-1.2x (AMD EPYC, fp32,
// 2048- and 640-wide rows, a random half of the rows, measured side by side).
inline void gathered_rows4_f32(const float* x, int64_t d_in, const int64_t* idx, int64_t j, int64_t j1,
                               const float* w, const float* bias, float* y) {
  const int64_t quad = d_in / 64 * 64, full = d_in / 16 * 16;
  const __mmask16 tm = tail16(d_in - full);
  const float* r[4];
  __m512 a[4][4];
  gathered_rows4_start(w, d_in, idx, j, j1, r, a);
  int64_t c = 0;
  for (; c < quad; c += 64) {
    const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
    const __m512 x2 = _mm512_loadu_ps(x + c + 32), x3 = _mm512_loadu_ps(x + c + 48);
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      a[q][0] = _mm512_fmadd_ps(_mm512_loadu_ps(r[q] + c), x0, a[q][0]);
      a[q][1] = _mm512_fmadd_ps(_mm512_loadu_ps(r[q] + c + 16), x1, a[q][1]);
      a[q][2] = _mm512_fmadd_ps(_mm512_loadu_ps(r[q] + c + 32), x2, a[q][2]);
      a[q][3] = _mm512_fmadd_ps(_mm512_loadu_ps(r[q] + c + 48), x3, a[q][3]);
    }
  }
  for (; c < full; c += 16) {
    const __m512 xv = _mm512_loadu_ps(x + c);
    for (int q = 0; q < 4; ++q) a[q][0] = _mm512_fmadd_ps(_mm512_loadu_ps(r[q] + c), xv, a[q][0]);
  }
  if (tm) {
    const __m512 xv = _mm512_maskz_loadu_ps(tm, x + c);
    for (int q = 0; q < 4; ++q) a[q][1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r[q] + c), xv, a[q][1]);
  }
  for (int q = 0; q < 4; ++q) {
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[q][0], a[q][1]), _mm512_add_ps(a[q][2], a[q][3])));
    y[j + q] = bias ? s + bias[idx[j + q]] : s;
  }
}

// y[j] = w[row(j), :] . x (+ bias[row(j)]) for j in [j0, j1), row(j) = idx ? idx[j] : j; fp32.
// Rows in order: one at a time (the hardware prefetcher streams them; interleaving four rows
// measured slower on Gemma's 640-wide rows), with four independent accumulators. Gathered rows:
// four at a time (gathered_rows4_f32), then one at a time.
inline void row_gemv_f32(const float* x, int64_t d_in, const int64_t* idx, int64_t j0, int64_t j1,
                         const float* w, const float* bias, float* y) {
  const int64_t quad = d_in / 64 * 64, full = d_in / 16 * 16;
  const __mmask16 tm = tail16(d_in - full);
  if (idx)
    for (; j0 + 4 <= j1; j0 += 4) gathered_rows4_f32(x, d_in, idx, j0, j1, w, bias, y);
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t rj = idx ? idx[j] : j;
    const float* r = w + rj * d_in;
    if (j + 2 < j1) _mm_prefetch(reinterpret_cast<const char*>(w + (idx ? idx[j + 2] : j + 2) * d_in), _MM_HINT_T0);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c < quad; c += 64) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c), _mm512_loadu_ps(x + c), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c + 16), _mm512_loadu_ps(x + c + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c + 32), _mm512_loadu_ps(x + c + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c + 48), _mm512_loadu_ps(x + c + 48), a3);
    }
    for (; c < full; c += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + c), _mm512_loadu_ps(x + c), a0);
    if (tm) a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r + c), _mm512_maskz_loadu_ps(tm, x + c), a1);
    const float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    y[j] = bias ? s + bias[rj] : s;
  }
}

#endif  // TDA_GEMV_AVX512

#if TDA_GEMV_BF16DP

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh>(v); }

// Gathered bf16 rows four at a time, as gathered_rows4_f32 (the one-row loop's sums, bit for bit).
// A random half of 2048-wide rows: 1.5x -> 1.04-1.10x the time per byte of rows in order; 640-wide
// rows (1.25 KB) gain nothing measurable (AMD EPYC, side by side).
inline void gathered_rows4_bf16(const uint16_t* x, int64_t d_in, const int64_t* idx, int64_t j, int64_t j1,
                                const uint16_t* w, float* y) {
  const int64_t quad = d_in / 128 * 128, full = d_in / 32 * 32;
  const __mmask32 tm = tail32(d_in - full);
  auto ld = [](const uint16_t* p) { return as_bh(_mm512_loadu_si512(p)); };
  const uint16_t* r[4];
  __m512 a[4][4];
  gathered_rows4_start(w, d_in, idx, j, j1, r, a);
  int64_t c = 0;
  for (; c < quad; c += 128) {
    const __m512bh x0 = ld(x + c), x1 = ld(x + c + 32), x2 = ld(x + c + 64), x3 = ld(x + c + 96);
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      a[q][0] = _mm512_dpbf16_ps(a[q][0], ld(r[q] + c), x0);
      a[q][1] = _mm512_dpbf16_ps(a[q][1], ld(r[q] + c + 32), x1);
      a[q][2] = _mm512_dpbf16_ps(a[q][2], ld(r[q] + c + 64), x2);
      a[q][3] = _mm512_dpbf16_ps(a[q][3], ld(r[q] + c + 96), x3);
    }
  }
  for (; c < full; c += 32) {
    const __m512bh xv = ld(x + c);
    for (int q = 0; q < 4; ++q) a[q][0] = _mm512_dpbf16_ps(a[q][0], ld(r[q] + c), xv);
  }
  if (tm) {
    const __m512bh xv = as_bh(_mm512_maskz_loadu_epi16(tm, x + c));
    for (int q = 0; q < 4; ++q) a[q][1] = _mm512_dpbf16_ps(a[q][1], as_bh(_mm512_maskz_loadu_epi16(tm, r[q] + c)), xv);
  }
  for (int q = 0; q < 4; ++q)
    y[j + q] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[q][0], a[q][1]), _mm512_add_ps(a[q][2], a[q][3])));
}

// bf16 weights and x (raw uint16 bits); y[j] is the fp32 sum (the caller rounds it to bf16).
// One row at a time, as row_gemv_f32, 32 weights per VDPBF16PS; gathered rows four at a time first.
inline void row_gemv_bf16(const uint16_t* x, int64_t d_in, const int64_t* idx, int64_t j0, int64_t j1,
                          const uint16_t* w, float* y) {
  const int64_t quad = d_in / 128 * 128, full = d_in / 32 * 32;
  const __mmask32 tm = tail32(d_in - full);
  auto ld = [](const uint16_t* p) { return as_bh(_mm512_loadu_si512(p)); };
  if (idx)
    for (; j0 + 4 <= j1; j0 += 4) gathered_rows4_bf16(x, d_in, idx, j0, j1, w, y);
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* r = w + (idx ? idx[j] : j) * d_in;
    if (j + 2 < j1) _mm_prefetch(reinterpret_cast<const char*>(w + (idx ? idx[j + 2] : j + 2) * d_in), _MM_HINT_T0);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c < quad; c += 128) {
      a0 = _mm512_dpbf16_ps(a0, ld(r + c), ld(x + c));
      a1 = _mm512_dpbf16_ps(a1, ld(r + c + 32), ld(x + c + 32));
      a2 = _mm512_dpbf16_ps(a2, ld(r + c + 64), ld(x + c + 64));
      a3 = _mm512_dpbf16_ps(a3, ld(r + c + 96), ld(x + c + 96));
    }
    for (; c < full; c += 32) a0 = _mm512_dpbf16_ps(a0, ld(r + c), ld(x + c));
    if (tm)
      a1 = _mm512_dpbf16_ps(a1, as_bh(_mm512_maskz_loadu_epi16(tm, r + c)), as_bh(_mm512_maskz_loadu_epi16(tm, x + c)));
    y[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

// Where output column col lives in a pair-order accumulator (blocks of 32 columns; in a block,
// 128-bit lane L holds columns 8L..8L+3 in the first 16 floats and 8L+4..8L+7 in the next 16).
inline int64_t pair_col(int64_t col) {
  const int64_t blk = col & ~int64_t{31}, o = col & 31, lane = o >> 3, i = o & 7;
  return blk + (i < 4 ? 4 * lane + i : 16 + 4 * lane + (i - 4));
}

// acc[pair order, n rounded up to 32] += sum_{j in [j0, j1)} xs[j] * wt[row(j), :], row(j) =
// idx ? idx[j] : j; xs are bf16 bits. Rows go eight at a time (four interleaved pairs per pass over
// the accumulator: more gathered rows in flight, measured +2-21% over four at 50% density, +18% on
// 1 KB rows), then four, then by pairs; an odd last row pairs with zero weights.
inline void axpy_pairs_bf16(const uint16_t* xs, const int64_t* idx, int64_t j0, int64_t j1,
                            const uint16_t* wt, int64_t n, float* acc) {
  auto row = [&](int64_t j) { return wt + (idx ? idx[j] : j) * n; };
  auto xpair = [&](int64_t j, bool two) {
    const uint32_t p = static_cast<uint32_t>(xs[j]) | (two ? static_cast<uint32_t>(xs[j + 1]) << 16 : 0u);
    return as_bh(_mm512_set1_epi32(static_cast<int>(p)));
  };
  const int64_t full = n / 32 * 32;
  const __mmask32 tm = tail32(n - full);
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8) {
    const uint16_t* r[8];
    for (int q = 0; q < 8; ++q) r[q] = row(j + q);
    const __m512bh xa = xpair(j, true), xb = xpair(j + 2, true), xc = xpair(j + 4, true), xd = xpair(j + 6, true);
    if (j + 16 <= j1) {
      for (int q = 8; q < 16; ++q) _mm_prefetch(reinterpret_cast<const char*>(row(j + q)), _MM_HINT_T0);
    }
    auto step = [&](int64_t c, const __m512i* w) {
      float* a = acc + c;
      __m512 lo = _mm512_loadu_ps(a), hi = _mm512_loadu_ps(a + 16);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w[0], w[1])), xa);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w[0], w[1])), xa);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w[2], w[3])), xb);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w[2], w[3])), xb);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w[4], w[5])), xc);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w[4], w[5])), xc);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w[6], w[7])), xd);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w[6], w[7])), xd);
      _mm512_storeu_ps(a, lo);
      _mm512_storeu_ps(a + 16, hi);
    };
    int64_t c = 0;
    __m512i w[8];
    for (; c < full; c += 32) {
      for (int q = 0; q < 8; ++q) w[q] = _mm512_loadu_si512(r[q] + c);
      step(c, w);
    }
    if (tm) {
      for (int q = 0; q < 8; ++q) w[q] = _mm512_maskz_loadu_epi16(tm, r[q] + c);
      step(c, w);
    }
  }
  for (; j + 4 <= j1; j += 4) {
    const uint16_t* r0 = row(j);
    const uint16_t* r1 = row(j + 1);
    const uint16_t* r2 = row(j + 2);
    const uint16_t* r3 = row(j + 3);
    const __m512bh xa = xpair(j, true), xb = xpair(j + 2, true);
    if (j + 8 <= j1) {
      for (int q = 4; q < 8; ++q) _mm_prefetch(reinterpret_cast<const char*>(row(j + q)), _MM_HINT_T0);
    }
    auto step = [&](int64_t c, __m512i w0, __m512i w1, __m512i w2, __m512i w3) {
      float* a = acc + c;
      __m512 lo = _mm512_loadu_ps(a), hi = _mm512_loadu_ps(a + 16);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w0, w1)), xa);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w0, w1)), xa);
      lo = _mm512_dpbf16_ps(lo, as_bh(_mm512_unpacklo_epi16(w2, w3)), xb);
      hi = _mm512_dpbf16_ps(hi, as_bh(_mm512_unpackhi_epi16(w2, w3)), xb);
      _mm512_storeu_ps(a, lo);
      _mm512_storeu_ps(a + 16, hi);
    };
    int64_t c = 0;
    for (; c < full; c += 32)
      step(c, _mm512_loadu_si512(r0 + c), _mm512_loadu_si512(r1 + c), _mm512_loadu_si512(r2 + c),
           _mm512_loadu_si512(r3 + c));
    if (tm)
      step(c, _mm512_maskz_loadu_epi16(tm, r0 + c), _mm512_maskz_loadu_epi16(tm, r1 + c),
           _mm512_maskz_loadu_epi16(tm, r2 + c), _mm512_maskz_loadu_epi16(tm, r3 + c));
  }
  for (; j < j1; j += 2) {
    const bool two = j + 1 < j1;
    const uint16_t* r0 = row(j);
    const uint16_t* r1 = two ? row(j + 1) : nullptr;
    const __m512bh xx = xpair(j, two);
    auto step = [&](int64_t c, __m512i w0, __m512i w1) {
      float* a = acc + c;
      _mm512_storeu_ps(a, _mm512_dpbf16_ps(_mm512_loadu_ps(a), as_bh(_mm512_unpacklo_epi16(w0, w1)), xx));
      _mm512_storeu_ps(a + 16, _mm512_dpbf16_ps(_mm512_loadu_ps(a + 16), as_bh(_mm512_unpackhi_epi16(w0, w1)), xx));
    };
    const __m512i z = _mm512_setzero_si512();
    int64_t c = 0;
    for (; c < full; c += 32) step(c, _mm512_loadu_si512(r0 + c), two ? _mm512_loadu_si512(r1 + c) : z);
    if (tm) step(c, _mm512_maskz_loadu_epi16(tm, r0 + c), two ? _mm512_maskz_loadu_epi16(tm, r1 + c) : z);
  }
}

#endif  // TDA_GEMV_BF16DP

}  // namespace tda_gemv

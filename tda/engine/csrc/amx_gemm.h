// Prefill (many rows of x) over group-scaled integer weights with Intel AMX tiles, exact to fp32
// rounding; included by quant_gemv.h; a fragment of torch.ops.tda_kernels.
//
// A quantized weight's value is W[j, i] = s[j, g] * q[j, i] - m[j, g] (g = i / G, q small integers:
// quant_gemv.h's group repack, or a GGUF block unpacked). Its product with fp32 activations is
//   y[t, j] = sum_g s[j, g] * (sum_{i in g} q[j, i] * x[t, i]) - sum_g m[j, g] * xsum[t, g],
// the group sums formed exactly as the GEMVs form them. Here each group sum is one AMX tile product
// (TDPBF16PS, fp32 accumulation) over bf16 operands with no rounding on the way in:
//   - q is an integer of at most 8 bits: exact in bf16;
//   - x is split into three bf16 limbs, x = x1 + x2 + x3 exactly (each limb the round-to-nearest
//     bf16 of what the previous ones left; 3 x 8 bits hold fp32's 24), and each limb's products
//     with q are exact in fp32, so the tile sums q * x1 + q * x2 + q * x3 in fp32 like an fp32 dot.
// The group's fp32 sum is then scaled once (and its minimum subtracted through the group's sum of
// x) with AVX-512, as in the GEMVs. What differs from at::mm on the de-quantised weights is the
// order of fp32 additions (and AMX's flushing of bf16 limbs below 2^-126 to zero: a limb that small
// is below fp32's resolution of any x it is part of, except for |x| < 2^-110). Tests:
// tests/test_amx_gemm.py against F.linear on the de-quantised weights in float64.
//
// Operand roles: a tile's A is 16 weight rows of one group (bf16, row-major: the repack as it is,
// converted on the fly, 32 rows a pass), B is one limb of 16 rows of x for that group (bf16 pairs,
// packed once per call), C[16 weight rows, 16 rows of x] in fp32: per group, the three limbs' B
// tiles are loaded once and serve both 16-row halves of a pass (five tile loads for six products:
// tile operations, not the products, bound the speed here). The AVX-512 epilogue keeps
// acc[weight row] as a vector over the 16 rows of x and writes y transposed.
//
// amx_prefill(x, T, K, G, ng, mins, N, fill, y, ldy) with fill(j0, nrows, q[32 * K], s[32 * ng], m)
// writing weight rows [j0, j0 + nrows) (at most 32) as int8 values and fp32 scales (and minimums):
// returns false (nothing written) where AMX is missing, not permitted by the OS, G is not 16 or 32,
// amx_worth() says the other path is faster for this weight, or x holds an infinity (its limbs
// would be inf - inf = NaN; the other path gives the IEEE result).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define TDA_AMX 1
#else
#define TDA_AMX 0
#endif

namespace tda_amx {

// AMX is built in, the kernel grants this process the tile data (arch_prctl), and TDA_NO_AMX is
// not set (tests compare both paths in one machine).
inline bool amx_ready() {
#if TDA_AMX
  static const bool ok = [] {
    if (std::getenv("TDA_NO_AMX") != nullptr) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

// Whether a weight's prefill takes the AMX product (else dequantised tiles through at::mm), by the
// measurements of benchmarks/amx_prefill.py on Gemma 3 270M: 32-value groups of at least 2^20 weights
// (the FFN's gate/up, 1.1-3.2x; the lm_head, 1.1-2.9x); smaller weights lose to the per-call set-up
// (packing x's limbs), and 16-value groups (Q6_K) to their half-size products (0.55-0.92x from 128
// rows). TDA_AMX_MIN_WEIGHTS (read per call) sets the threshold for both group sizes instead.
inline bool amx_worth(int64_t G, int64_t weights) {
  if (const char* v = std::getenv("TDA_AMX_MIN_WEIGHTS")) return weights >= std::atoll(v);
  return G == 32 && weights >= (int64_t{1} << 20);
}

struct TileConfig {  // the 64-byte LDTILECFG operand, palette 1 (amx_gemv.h uses it too)
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#if TDA_AMX

// Tiles: 0, 1 = C (weight rows 0..15, 16..31 of a pass), 2, 6 = A (those rows' weights),
// 3..5 = B (x's three limbs).
inline TileConfig tile_config(int64_t G) {
  TileConfig c;
  for (int t : {0, 1}) c.colsb[t] = 64, c.rows[t] = 16;
  for (int t : {2, 6}) c.colsb[t] = static_cast<uint16_t>(2 * G), c.rows[t] = 16;
  for (int t : {3, 4, 5}) c.colsb[t] = 64, c.rows[t] = static_cast<uint8_t>(G / 2);
  return c;
}

inline __m512 bf16_to_ps(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

// x[T, K] fp32 -> xb[limb][g][tt][G/2][16][2] bf16 bits (rows t >= T zero) and xsum[g][T16]. A pair
// of consecutive inputs is one 32-bit unit of B's row k2 = k / 2: each limb of 16 inputs is 8 units,
// scattered to 8 rows of its tile.
inline void pack_x(const float* x, int64_t T, int64_t K, int64_t G, int64_t ng, int64_t nT, bool mins, uint16_t* xb,
                   float* xsum) {
  const int64_t T16 = nT * 16, limb = ng * nT * G * 16;
  std::memset(xb, 0, sizeof(uint16_t) * 3 * limb);
  if (mins) std::memset(xsum, 0, sizeof(float) * ng * T16);
  const __m256i rows8 = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(16));
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t tt = t / 16, tr = t % 16;
      for (int64_t i = 0; i < K; i += 16) {  // G is 16 or 32: 16 inputs never straddle two groups
        const __m512 v = _mm512_loadu_ps(x + t * K + i);
        const __m256i h1 = (__m256i)_mm512_cvtneps_pbh(v);
        const __m512 r1 = _mm512_sub_ps(v, bf16_to_ps(h1));
        const __m256i h2 = (__m256i)_mm512_cvtneps_pbh(r1);
        const __m256i h3 = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(r1, bf16_to_ps(h2)));
        const int64_t g = i / G, k0 = i % G;  // this chunk's first input within the group (even)
        auto* dst = reinterpret_cast<int*>(xb + (g * nT + tt) * G * 16) + (k0 / 2) * 16 + tr;
        _mm256_i32scatter_epi32(dst, rows8, h1, 4);
        _mm256_i32scatter_epi32(dst + limb / 2, rows8, h2, 4);
        _mm256_i32scatter_epi32(dst + limb, rows8, h3, 4);
        if (mins) xsum[g * T16 + t] += _mm512_reduce_add_ps(v);
      }
    }
  });
}

// Some |x[i]| is infinite (i < n).
inline bool has_inf(const float* x, int64_t n) {
  const __m512 inf = _mm512_set1_ps(__builtin_inff());
  __mmask16 hit = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) hit |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + i)), inf, _CMP_EQ_OQ);
  for (; i < n; ++i) hit |= static_cast<__mmask16>(x[i] == __builtin_inff() || x[i] == -__builtin_inff());
  return hit != 0;
}

// int8 q[n] -> bf16 bits a[n] (exact: small integers); n = 16 * K16, a multiple of 32.
inline void q_to_bf16(const int8_t* q, int64_t K16, uint16_t* a) {
  for (int64_t i = 0; i < 16 * K16; i += 32) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i + 16))));
    _mm512_storeu_si512(a + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// acc[r] (over 16 rows of x) += C[r] * s[r, g] (- m[r, g] * xsum[g]): group g's sums (tile buffer c,
// [16 weight rows, 16 rows of x]) scaled once, its minimums subtracted through the group's sums of x.
inline void epilogue(const float* c, const float* s, const float* m, const float* xs, int64_t ng, int64_t g,
                     __m512* acc) {
  for (int r = 0; r < 16; ++r) acc[r] = _mm512_fmadd_ps(_mm512_load_ps(c + 16 * r), _mm512_set1_ps(s[r * ng + g]), acc[r]);
  if (m != nullptr) {
    const __m512 xv = _mm512_loadu_ps(xs);
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_fnmadd_ps(_mm512_set1_ps(m[r * ng + g]), xv, acc[r]);
  }
}
#endif

template <typename Fill>
bool amx_prefill(const float* x, int64_t T, int64_t K, int64_t G, int64_t ng, bool mins, int64_t N, const Fill& fill,
                 float* y, int64_t ldy) {
#if TDA_AMX
  if (!amx_ready() || (G != 16 && G != 32) || K != G * ng || K % 16 != 0 || T <= 0 || N <= 0 || !amx_worth(G, N * K) ||
      has_inf(x, T * K))
    return false;
  // Rows of x are taken in blocks whose limbs (6 bytes an input) stay in L2 while every pass of
  // weight rows reads them; each block runs the passes over again.
  const int64_t block = std::max<int64_t>(16, (int64_t{1} << 20) / (6 * K) / 16 * 16);
  if (T > block) {
    for (int64_t t0 = 0; t0 < T; t0 += block)
      amx_prefill(x + t0 * K, std::min(block, T - t0), K, G, ng, mins, N, fill, y + t0 * ldy, ldy);
    return true;
  }
  const int64_t nT = (T + 15) / 16, T16 = nT * 16, nP = (N + 31) / 32;  // passes of 32 weight rows
  std::vector<uint16_t> xb(static_cast<size_t>(3 * ng * nT * G * 16));
  std::vector<float> xsum(mins ? static_cast<size_t>(ng * T16) : 0);
  pack_x(x, T, K, G, ng, nT, mins, xb.data(), xsum.data());
  const int64_t limb = ng * nT * G * 16, gstride = nT * G * 16;
  const TileConfig cfg = tile_config(G);
  at::parallel_for(0, nP, 1, [&](int64_t p0, int64_t p1) {
    _tile_loadconfig(&cfg);
    std::vector<int8_t> q(static_cast<size_t>(32 * K));
    std::vector<float> s(static_cast<size_t>(32 * ng)), m(mins ? s.size() : 0);
    std::vector<uint16_t> a(static_cast<size_t>(32 * K));
    alignas(64) float c[2][256];
    alignas(64) float out[16][16];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = p * 32, nr = std::min<int64_t>(32, N - j0);
      fill(j0, nr, q.data(), s.data(), mins ? m.data() : nullptr);
      const int64_t rows = nr > 16 ? 32 : 16;  // one or two 16-row tiles of weights this pass
      if (nr < rows) {  // rows past the weight's end: zeros, never written out
        std::memset(q.data() + nr * K, 0, static_cast<size_t>((rows - nr) * K));
        std::memset(s.data() + nr * ng, 0, sizeof(float) * (rows - nr) * ng);
        if (mins) std::memset(m.data() + nr * ng, 0, sizeof(float) * (rows - nr) * ng);
      }
      q_to_bf16(q.data(), K * rows / 16, a.data());
      const float* s1 = s.data() + 16 * ng;
      const float* m0 = mins ? m.data() : nullptr;
      const float* m1 = mins ? m.data() + 16 * ng : nullptr;
      for (int64_t tt = 0; tt < nT; ++tt) {
        __m512 acc0[16], acc1[16];
        for (int r = 0; r < 16; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
        for (int64_t g = 0; g < ng; ++g) {
          // x's three limbs (tiles 3..5) once per group; weight rows 0..15 (tile 2 -> C tile 0) and
          // 16..31 (tile 6 -> C tile 1) each take all three, the limbs summed in the C tile
          const uint16_t* b = xb.data() + g * gstride + tt * G * 16;
          const float* xs = mins ? xsum.data() + g * T16 + tt * 16 : nullptr;
          _tile_loadd(3, b, 64);
          _tile_loadd(4, b + limb, 64);
          _tile_loadd(5, b + 2 * limb, 64);
          _tile_loadd(2, a.data() + g * G, 2 * K);
          _tile_zero(0);
          if (rows == 32) {
            _tile_loadd(6, a.data() + 16 * K + g * G, 2 * K);
            _tile_zero(1);
            _tile_dpbf16ps(0, 2, 3);
            _tile_dpbf16ps(1, 6, 3);
            _tile_dpbf16ps(0, 2, 4);
            _tile_dpbf16ps(1, 6, 4);
            _tile_dpbf16ps(0, 2, 5);
            _tile_dpbf16ps(1, 6, 5);
            _tile_stored(0, c[0], 64);
            _tile_stored(1, c[1], 64);
            epilogue(c[0], s.data(), m0, xs, ng, g, acc0);
            epilogue(c[1], s1, m1, xs, ng, g, acc1);
          } else {
            _tile_dpbf16ps(0, 2, 3);
            _tile_dpbf16ps(0, 2, 4);
            _tile_dpbf16ps(0, 2, 5);
            _tile_stored(0, c[0], 64);
            epilogue(c[0], s.data(), m0, xs, ng, g, acc0);
          }
        }
        const int64_t tn = std::min<int64_t>(16, T - tt * 16);
        const __m512i col = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(16));
        for (int h = 0; h * 16 < nr; ++h) {  // y[t, j0 + 16h + r] = acc_h[r][t]: a column of out per row of y
          const __m512* acc = h == 0 ? acc0 : acc1;
          for (int r = 0; r < 16; ++r) _mm512_store_ps(out[r], acc[r]);
          const __mmask16 keep = static_cast<__mmask16>((1u << std::min<int64_t>(16, nr - 16 * h)) - 1u);
          for (int64_t t = 0; t < tn; ++t)
            _mm512_mask_storeu_ps(y + (tt * 16 + t) * ldy + j0 + 16 * h, keep,
                                  _mm512_i32gather_ps(_mm512_add_epi32(col, _mm512_set1_epi32(static_cast<int>(t))), &out[0][0], 4));
        }
      }
    }
    _tile_release();
  });
  return true;
#else
  (void)x, (void)T, (void)K, (void)G, (void)ng, (void)mins, (void)N, (void)fill, (void)y, (void)ldy;
  return false;
#endif
}

}  // namespace tda_amx

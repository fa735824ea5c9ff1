// The integer tile layout of a quantized weight for decode steps, and the activations as exact
// integer limbs: shared by the AMX-INT8 GEMV (amx_gemv.h) and the AVX512-VNNI GEMV (vnni_gemv.h);
// included by quant_blocks.h after the block unpackers.
//
// W[j, i] = s[j, g] * q[j, i] - m[j, g] (g = i / G, G = 32, or 16 for Q6_K; q a small integer; m
// for Q4_K only). The weights are laid out once (gemv_tiles_pack) per 16 rows x 64 inputs ("tile"),
// in VNNI order (byte k % 4 of dword n of row k / 4 holds weight row n, input k): Q8_0 as 1024 int8;
// the others as q + off (0 .. 2^bits - 1) in 4 (Q4_K), 5 (Q5_0, Q4_0) or 6 (Q6_K) bits -- 512 bytes
// of nibble pairs (value v and v + 512 of the tile), then a 128-byte plane per further bit. Scales
// and Q4_K's minimums are fp32, [N / 16, K / G, 16]: a tile row's 16 weight rows side by side, in the
// order the kernels read them (one forward stream per thread, as the tiles are).
//
// The activations of each group of G inputs are one 23-bit integer per input in three int8 limbs
// (balanced base-256 digits) times a power of two: x_i ~= 2^e_g * (a_i * 65536 + b_i * 256 + c_i),
// rounded once to 2^-23 of a power of two above the group's largest |x| (at most two fp32 ulps of
// that largest value). Integer products of the limbs with q are exact in int32, and each group's
// fp32 sum a * 65536 + b * 256 + c is scaled once by s[j, g] * 2^e_g: the result equals F.linear on
// the de-quantised weights to fp32 rounding of the activations.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace tda_quant {

// A type's tile: values stored as q + off in `bits` bits (nibbles, then bit planes of 128 bytes for
// the fifth and sixth bits), or int8 as they are (bits 8); G inputs a group, minimums or not.
struct TileType {
  Blk kind;
  int bits, off, G;
  bool mins;
  int64_t tile_bytes() const { return bits == 8 ? 1024 : 512 + 128 * (bits - 4); }
  int64_t groups_per_chunk() const { return 64 / G; }
};

inline TileType tile_type(const std::string& qtype) {
  const BlkType t = blk_type(qtype);
  switch (t.kind) {
    case Blk::Q8_0: return {t.kind, 8, 0, 32, false};
    case Blk::Q5_0: return {t.kind, 5, 16, 32, false};
    case Blk::Q4_0: return {t.kind, 5, 16, 32, false};  // q in [-8, 7]: the Q5_0 layout holds it
    case Blk::Q4_K: return {t.kind, 4, 0, 32, true};
    case Blk::Q6_K: return {t.kind, 6, 32, 16, false};
  }
  TORCH_CHECK_VALUE(false, "gemv_tiles_pack: no layout for ", qtype);
}

std::vector<at::Tensor> gemv_tiles_pack(const at::Tensor& blocks, const std::string& qtype) {
  const TileType T = tile_type(qtype);
  const QB W = check_blocks(blocks, qtype);
  const int64_t N = W.d_out, K = W.d_in, ng = K / T.G, nN = N / 16, nk = K / 64, tb = T.tile_bytes();
  TORCH_CHECK_VALUE(N % 16 == 0 && K % 64 == 0, "gemv_tiles_pack: needs d_out % 16 == 0 and d_in % 64 == 0, got ",
                    N, " x ", K);
  TORCH_CHECK_VALUE(W.ng == ng, "gemv_tiles_pack: group size mismatch");
  at::Tensor packed = at::empty({nN * nk * tb}, blocks.options());
  std::vector<at::Tensor> out{packed, at::empty({nN, ng, 16}, blocks.options().dtype(at::kFloat))};
  if (T.mins) out.push_back(at::empty({nN, ng, 16}, blocks.options().dtype(at::kFloat)));
  uint8_t* pp = packed.mutable_data_ptr<uint8_t>();
  float* sp = out[1].mutable_data_ptr<float>();
  float* mp = T.mins ? out[2].mutable_data_ptr<float>() : nullptr;
  at::parallel_for(0, nN, 1, [&](int64_t a, int64_t b) {
    std::vector<int8_t> q(static_cast<size_t>(16 * K));
    std::vector<float> s(static_cast<size_t>(16 * ng)), m(T.mins ? s.size() : 0);
    int8_t v[1024];
    for (int64_t nt = a; nt < b; ++nt) {
      for (int64_t r = 0; r < 16; ++r)
        unpack_row(W, nt * 16 + r, q.data() + r * K, s.data() + r * ng, T.mins ? m.data() + r * ng : nullptr);
      for (int64_t r = 0; r < 16; ++r)
        for (int64_t g = 0; g < ng; ++g) {
          sp[(nt * ng + g) * 16 + r] = s[r * ng + g];
          if (mp) mp[(nt * ng + g) * 16 + r] = m[r * ng + g];
        }
      for (int64_t c = 0; c < nk; ++c) {
        for (int k = 0; k < 64; ++k)  // VNNI: row k / 4, column (weight row) n, byte k % 4
          for (int n = 0; n < 16; ++n) v[(k / 4) * 64 + n * 4 + k % 4] = q[n * K + c * 64 + k];
        uint8_t* dst = pp + (nt * nk + c) * tb;
        if (T.bits == 8) {
          std::memcpy(dst, v, 1024);
          continue;
        }
        std::memset(dst, 0, static_cast<size_t>(tb));
        for (int i = 0; i < 512; ++i) {  // byte i: values i (low nibble) and i + 512 (high nibble)
          const int lo = v[i] + T.off, hi = v[i + 512] + T.off;  // 0 .. 2^bits - 1
          dst[i] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
          for (int p = 0; p < T.bits - 4; ++p) {  // plane p: bit 4 + p, 64 bytes for each half
            if ((lo >> (4 + p)) & 1) dst[512 + 128 * p + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
            if ((hi >> (4 + p)) & 1) dst[512 + 128 * p + 64 + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
          }
        }
      }
    }
  });
  return out;
}

// x's limbs (see limbs_x) for one call: xl [3, K], sx [ng], ls [3, ng] and xsum [ng].
struct XLimbs {
  std::vector<int8_t> xl;
  std::vector<float> sx, xsum;
  std::vector<int32_t> ls;
  XLimbs(int64_t K, int64_t ng) : xl(static_cast<size_t>(3 * K)), sx(ng), xsum(ng), ls(static_cast<size_t>(3 * ng)) {}
};

// A decode call's checked arguments: the weight's type and sizes, its minimums and bias (or null),
// and y [..., N] to fill; then x's limbs (tile_call_limbs: false where some x is not finite, and
// the caller takes the blocks' own GEMV). ``what`` names the kernel in the messages.
struct TileCall {
  TileType T;
  int64_t ng, N, K, nN, nk;
  const float *mp, *bp;
  at::Tensor y;
  XLimbs L;
};

inline TileCall check_tile_call(const char* what, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st,
                                const c10::optional<at::Tensor>& mt, const std::string& qtype,
                                const c10::optional<at::Tensor>& bias) {
  TileCall c{tile_type(qtype), 0, 0, 0, 0, 0, nullptr, nullptr, at::Tensor(), XLimbs(0, 0)};
  TORCH_CHECK_VALUE(st.dim() == 3 && st.size(2) == 16 && st.scalar_type() == at::kFloat && st.is_contiguous(), what, ": bad st");
  c.ng = st.size(1), c.N = st.size(0) * 16, c.K = c.ng * c.T.G, c.nN = c.N / 16, c.nk = c.K / 64;
  TORCH_CHECK_VALUE(x.numel() == c.K && x.size(-1) == c.K && x.scalar_type() == at::kFloat && x.is_contiguous(),
                    what, ": x must be one contiguous fp32 row of ", c.K);
  TORCH_CHECK_VALUE(c.K % 64 == 0 && packed.scalar_type() == at::kByte && packed.numel() == c.nN * c.nk * c.T.tile_bytes() &&
                    packed.is_contiguous(), what, ": packed does not match st");
  if (c.T.mins) {
    TORCH_CHECK_VALUE(mt.has_value() && mt->defined() && mt->sizes() == st.sizes() && mt->is_contiguous() &&
                      mt->scalar_type() == at::kFloat, what, ": ", qtype, " needs its minimums mt shaped like st");
    c.mp = mt->const_data_ptr<float>();
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c.N && bias->is_contiguous() && bias->scalar_type() == at::kFloat,
                      what, ": bias must be fp32 [", c.N, "]");
    c.bp = bias->const_data_ptr<float>();
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = c.N;
  c.y = at::empty(sizes, x.options());
  c.L = XLimbs(c.K, c.ng);
  return c;
}

#if defined(__AVX512BW__)
// x[K] (G = 16 or 32) -> limbs xl[3 * K] int8 (limb l of input i at l * K + i; l = 0 the highest),
// the groups' scales sx[g] = 2^e_g (x_i ~= 2^e_g * (a 65536 + b 256 + c), |x_i| / 2^e_g <= 2^22,
// inside the balanced digits' range), each limb's integer sum over the group ls[l * ng + g] and,
// when xsum is given (Q4_K's minimums use them), the groups' fp32 sums of x (in input order). False when some x is not finite
// (the caller takes the blocks' GEMV).
inline bool limbs_x(const float* x, int64_t K, int64_t G, int8_t* xl, float* sx, int32_t* ls, float* xsum) {
  const int64_t ng = K / G, nv = G / 16;
  const __m512i k128 = _mm512_set1_epi32(128), k255 = _mm512_set1_epi32(255);
  for (int64_t g = 0; g < ng; ++g) {
    const float* xg = x + g * G;
    __m512 m = _mm512_setzero_ps();
    for (int64_t u = 0; u < nv; ++u) {
      const __m512 v = _mm512_loadu_ps(xg + 16 * u);
      if (_mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ) != 0xFFFF) return false;
      m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    const float mx = _mm512_reduce_max_ps(m);
    if (xsum) {
      float t = 0.0f;
      for (int64_t k = 0; k < G; ++k) t += xg[k];
      xsum[g] = t;
    }
    int e = 0;
    std::frexp(mx, &e);  // mx < 2^e
    sx[g] = mx > 0.0f ? std::ldexp(1.0f, e - 22) : 0.0f;
    const __m512 inv = _mm512_set1_ps(mx > 0.0f ? std::ldexp(1.0f, 22 - e) : 0.0f);
    __m512i sa = _mm512_setzero_si512(), sb = sa, sc = sa;
    for (int64_t u = 0; u < nv; ++u) {
      // an exact product (a power of two), rounded to the nearest integer as llrint does: |v| <= 2^22
      __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + 16 * u), inv));
      const __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(v, k128), k255), k128);
      v = _mm512_srai_epi32(_mm512_sub_epi32(v, c), 8);
      const __m512i b = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(v, k128), k255), k128);
      const __m512i a = _mm512_srai_epi32(_mm512_sub_epi32(v, b), 8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xl + g * G + 16 * u), _mm512_cvtepi32_epi8(a));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xl + K + g * G + 16 * u), _mm512_cvtepi32_epi8(b));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xl + 2 * K + g * G + 16 * u), _mm512_cvtepi32_epi8(c));
      sa = _mm512_add_epi32(sa, a), sb = _mm512_add_epi32(sb, b), sc = _mm512_add_epi32(sc, c);
    }
    ls[g] = _mm512_reduce_add_epi32(sa), ls[ng + g] = _mm512_reduce_add_epi32(sb), ls[2 * ng + g] = _mm512_reduce_add_epi32(sc);
  }
  return true;
}

// VNNI rows j and j + 8 of a packed tile (bits 4 to 6) as their stored values q + off: the nibbles,
// then the fifth and sixth bits as masked adds.
__attribute__((always_inline)) inline void tile_rows(const uint8_t* t, int bits, int j, __m512i& lo, __m512i& hi) {
  const __m512i m4 = _mm512_set1_epi8(15);
  const __m512i v = _mm512_loadu_si512(t + 64 * j);
  lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
  for (int p = 0; p < bits - 4; ++p) {  // plane p: bit 4 + p, 64 bytes for each half
    uint64_t bl, bh;
    std::memcpy(&bl, t + 512 + 128 * p + 8 * j, 8);
    std::memcpy(&bh, t + 512 + 128 * p + 64 + 8 * j, 8);
    const __m512i add = _mm512_set1_epi8(static_cast<char>(16 << p));
    lo = _mm512_mask_add_epi8(lo, bl, lo, add);
    hi = _mm512_mask_add_epi8(hi, bh, hi, add);
  }
}

// acc plus one group of 16 weight rows: its exact int32 limb sums a, b, c as one fp32 sum
// a * 65536 + b * 256 + c, scaled once by s16[r] * sx, less m16[r] * xsum where m16 (Q4_K's minimums) is given.
__attribute__((always_inline)) inline __m512 tile_group(__m512 acc, __m512i a, __m512i b, __m512i c, const float* s16, float sx,
                                                       const float* m16, float xsum) {
  const __m512 sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(65536.0f),
                                     _mm512_fmadd_ps(_mm512_cvtepi32_ps(b), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(c)));
  acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(_mm512_loadu_ps(s16), _mm512_set1_ps(sx)), acc);
  return m16 ? _mm512_fnmadd_ps(_mm512_loadu_ps(m16), _mm512_set1_ps(xsum), acc) : acc;
}
#endif

inline bool tile_call_limbs(TileCall& c, const at::Tensor& x) {
#if defined(__AVX512BW__)
  return limbs_x(x.const_data_ptr<float>(), c.K, c.T.G, c.L.xl.data(), c.L.sx.data(), c.L.ls.data(), c.L.xsum.data());
#else
  (void)c, (void)x;
  return false;
#endif
}

}  // namespace tda_quant

// Dense linears on a GGUF file's own blocks (tda/models/quant.py, BlockWeight), included after
// quant_gemv.h in sparse_kernels.cpp; a fragment of torch.ops.tda_kernels.
//
// A weight W[d_out, d_in] is held as the file holds it: blocks[d_out, row_bytes] uint8, each row
// d_in / per whole blocks of one type (Q8_0, Q5_0, Q4_0: 32 values per block; Q4_K, Q6_K: 256).
// A decode step reads these bytes and nothing else (the embedded Gemma 3 270M's layers: 68 MB, against
// 117 MB in the int8 group repack and 401 MB in fp32). With AVX-512, each block is decoded into fp32
// vectors in registers (nibbles through a 16-entry vpermps table, Q5_0's fifth bits as masked adds,
// Q6_K through 512-bit byte operations into an L1 buffer), q * x summed per group in fp32 and each
// group's sum scaled once (Q4_K's minimums subtracted through the groups' sums of x). Elsewhere a few
// rows at a time are unpacked into the group repack's form (int8 values with offsets applied, fp32
// group scales and minimums, computed exactly as gguf's dequantiser computes them) in an L1-resident
// buffer and run through quant_gemv.h's GEMV. Either way the products equal F.linear on the file's
// dequantised weights to fp32 rounding, with fp32 activations and accumulation.
//
//   quant_blocks_linear(x[..., d_in] fp32, blocks, qtype, bias?) -> y[..., d_out] fp32
//       up to kQuantMaxRows rows of x: the GEMV above; more (prefill): the AMX group product of
//       amx_gemm.h on the unpacked rows where the CPU has AMX, else tiles of rows unpacked,
//       dequantised and multiplied by at::mm.
//   quant_blocks_unpack(blocks, qtype, r0, r1) -> [q, scale, min?]: rows [r0, r1) in the group
//       repack (QuantWeight's q, scale, min) -- what the sparse methods' layouts are made from.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "quant_gemv.h"

namespace tda_quant {

#ifndef TDA_QBLK_R
#define TDA_QBLK_R 2  // weight rows per pass of the fused batch-1 GEMV
#endif

#ifndef TDA_QBLK_ROWS
#define TDA_QBLK_ROWS 4  // weight rows unpacked per pass (their int8 values stay in L1 for the GEMV)
#endif

enum class Blk { Q8_0, Q5_0, Q4_0, Q4_K, Q6_K };

struct BlkType {
  Blk kind;
  int64_t per, size, G;  // values per block, bytes per block, the repack's group length
  bool mins;
};

inline BlkType blk_type(const std::string& name) {
  if (name == "Q8_0") return {Blk::Q8_0, 32, 34, 32, false};
  if (name == "Q5_0") return {Blk::Q5_0, 32, 22, 32, false};
  if (name == "Q4_0") return {Blk::Q4_0, 32, 18, 32, false};
  if (name == "Q4_K") return {Blk::Q4_K, 256, 144, 32, true};
  if (name == "Q6_K") return {Blk::Q6_K, 256, 210, 16, false};
  TORCH_CHECK_VALUE(false, "quant_blocks: no kernel for block type '", name, "' (known: Q8_0, Q5_0, Q4_0, Q4_K, Q6_K)");
}

inline float h2f(const uint8_t* p) {  // a little-endian fp16 -> fp32 (exact)
  uint16_t bits;
  std::memcpy(&bits, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
#endif
}

// ---- one block -> its int8 values q[per], group scales s[per / G] (and minimums m for Q4_K) ----

inline void unpack_q8_0(const uint8_t* b, int8_t* q, float* s) {
  s[0] = h2f(b);
  std::memcpy(q, b + 2, 32);
}

inline void unpack_q4_0(const uint8_t* b, int8_t* q, float* s) {
  s[0] = h2f(b);
  const uint8_t* qs = b + 2;
#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)), m4 = _mm_set1_epi8(0x0F), o = _mm_set1_epi8(8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_sub_epi8(_mm_and_si128(v, m4), o));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), o));
#else
  for (int i = 0; i < 16; ++i) {
    q[i] = static_cast<int8_t>((qs[i] & 0x0F) - 8);
    q[i + 16] = static_cast<int8_t>((qs[i] >> 4) - 8);
  }
#endif
}

inline void unpack_q5_0(const uint8_t* b, int8_t* q, float* s) {  // value i's 5th bit is bit i of qh
  s[0] = h2f(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)), m4 = _mm_set1_epi8(0x0F);
  const __m128i o = _mm_set1_epi8(16);
  const __m128i lo = _mm_sub_epi8(_mm_and_si128(v, m4), o), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m4), o);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_mask_add_epi8(lo, static_cast<__mmask16>(qh & 0xFFFF), lo, o));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm_mask_add_epi8(hi, static_cast<__mmask16>(qh >> 16), hi, o));
#else
  for (int i = 0; i < 16; ++i) {
    q[i] = static_cast<int8_t>(((qs[i] & 0x0F) | (((qh >> i) & 1u) << 4)) - 16);
    q[i + 16] = static_cast<int8_t>(((qs[i] >> 4) | (((qh >> (i + 16)) & 1u) << 4)) - 16);
  }
#endif
}

// Q4_K's 8 sub-block scales s = d * sc and minimums m = dmin * mn (6-bit sc, mn packed in 12 bytes:
// [0..4) low, [4..8) mid, [8..12) high), each product in fp32 as gguf's dequantiser forms it.
inline void q4k_scales(const uint8_t* b, float* s, float* m) {
  const float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t* sc = b + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = d * static_cast<float>(sc[j] & 0x3F);
    m[j] = dmin * static_cast<float>(sc[j + 4] & 0x3F);
    s[j + 4] = d * static_cast<float>((sc[j + 8] & 0x0F) | ((sc[j] >> 2) & 0x30));
    m[j + 4] = dmin * static_cast<float>((sc[j + 8] >> 4) | ((sc[j + 4] >> 2) & 0x30));
  }
}

inline void unpack_q4_k(const uint8_t* b, int8_t* q, float* s, float* m) {  // 8 sub-blocks of 32
  q4k_scales(b, s, m);
  const uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c) {  // 32 bytes: sub-block 2c in the low nibbles, 2c + 1 in the high ones
#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c)), m4 = _mm256_set1_epi8(0x0F);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 64 * c), _mm256_and_si256(v, m4));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 64 * c + 32), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
#else
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = static_cast<int8_t>(qs[32 * c + l] & 0x0F);
      q[64 * c + 32 + l] = static_cast<int8_t>(qs[32 * c + l] >> 4);
    }
#endif
  }
}

inline void unpack_q6_k(const uint8_t* b, int8_t* q, float* s) {  // 16 sub-blocks of 16
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = h2f(b + 208);
  for (int i = 0; i < 16; ++i) s[i] = d * static_cast<float>(sc[i]);
  for (int h = 0; h < 2; ++h) {  // per 128 values: 64 bytes of low nibbles, 32 of 2-bit highs
    const uint8_t *l = ql + 64 * h, *hb = qh + 32 * h;
    int8_t* o = q + 128 * h;
#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
    const __m512i a = _mm512_loadu_si512(l), m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const __m256i h256 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hb));
    const __m512i hh = _mm512_inserti64x4(_mm512_castsi256_si512(h256), h256, 1);
    // runs 0|1 take bits (0,1)|(2,3) of qh as bits 4,5; runs 2|3 bits (4,5)|(6,7)
    const __m512i sh_a = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sh_b = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i ha = _mm512_and_si512(_mm512_sllv_epi16(hh, sh_a), m30);
    const __m512i hb2 = _mm512_and_si512(_mm512_srlv_epi16(hh, sh_b), m30);
    const __m512i o32 = _mm512_set1_epi8(32);
    _mm512_storeu_si512(o, _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(a, m4), ha), o32));
    _mm512_storeu_si512(o + 64, _mm512_sub_epi8(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(a, 4), m4), hb2), o32));
#else
    for (int i = 0; i < 32; ++i) {
      o[i] = static_cast<int8_t>(((l[i] & 0x0F) | ((hb[i] & 3) << 4)) - 32);
      o[i + 32] = static_cast<int8_t>(((l[i + 32] & 0x0F) | (((hb[i] >> 2) & 3) << 4)) - 32);
      o[i + 64] = static_cast<int8_t>(((l[i] >> 4) | (((hb[i] >> 4) & 3) << 4)) - 32);
      o[i + 96] = static_cast<int8_t>(((l[i + 32] >> 4) | (((hb[i] >> 6) & 3) << 4)) - 32);
    }
#endif
  }
}

struct QB {  // one weight in its file blocks, as raw pointers
  const uint8_t* b;
  int64_t d_out, d_in, row_bytes, ng;
  BlkType t;
};

template <Blk K>
inline void unpack_row_t(const uint8_t* src, int64_t nb, int8_t* q, float* s, float* m) {
  for (int64_t k = 0; k < nb; ++k) {
    if constexpr (K == Blk::Q8_0) unpack_q8_0(src + 34 * k, q + 32 * k, s + k);
    if constexpr (K == Blk::Q5_0) unpack_q5_0(src + 22 * k, q + 32 * k, s + k);
    if constexpr (K == Blk::Q4_0) unpack_q4_0(src + 18 * k, q + 32 * k, s + k);
    if constexpr (K == Blk::Q4_K) unpack_q4_k(src + 144 * k, q + 256 * k, s + 8 * k, m + 8 * k);
    if constexpr (K == Blk::Q6_K) unpack_q6_k(src + 210 * k, q + 256 * k, s + 16 * k);
  }
}

// Row j's blocks -> q[d_in], s[ng] (and m[ng] when the type has minimums).
inline void unpack_row(const QB& W, int64_t j, int8_t* q, float* s, float* m) {
  const uint8_t* src = W.b + j * W.row_bytes;
  const int64_t nb = W.d_in / W.t.per;
  switch (W.t.kind) {
    case Blk::Q8_0: return unpack_row_t<Blk::Q8_0>(src, nb, q, s, m);
    case Blk::Q5_0: return unpack_row_t<Blk::Q5_0>(src, nb, q, s, m);
    case Blk::Q4_0: return unpack_row_t<Blk::Q4_0>(src, nb, q, s, m);
    case Blk::Q4_K: return unpack_row_t<Blk::Q4_K>(src, nb, q, s, m);
    case Blk::Q6_K: return unpack_row_t<Blk::Q6_K>(src, nb, q, s, m);
  }
}

#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
// ---- fused GEMV on the blocks: each block decoded into fp32 vectors in registers ----
// For R weight rows and B rows of x at once: per group of G values, t = sum q * x (fp32), then
// acc += s_g * t; Q4_K's minimums come last (y -= sum_g min_g * xsum_g), as in quant_gemv.h.

inline __m512i u8x16(const uint8_t* p) {  // 16 bytes zero-extended into 32-bit lanes
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m512 i32f(__m512i v) { return _mm512_cvtepi32_ps(v); }

// Calls f(g, w) for each 16 values of block b, in order: g = the value's group within the block
// (its scale s[g]), w = the 16 integer values as fp32. Scales (and Q4_K minimums) into s[] / m[].
template <Blk K, typename F>
inline void decode_block(const uint8_t* b, float* s, float* m, F&& f) {
  if constexpr (K == Blk::Q8_0) {
    s[0] = h2f(b);
    f(0, 0, q16(reinterpret_cast<const int8_t*>(b + 2)));
    f(0, 1, q16(reinterpret_cast<const int8_t*>(b + 18)));
  } else if constexpr (K == Blk::Q4_0 || K == Blk::Q5_0) {
    // a nibble n (the low 4 bits of a 32-bit lane) -> fp32 n - 8 (Q4_0) or n - 16 (Q5_0) by a
    // 16-entry table (vpermps ignores the lane's other bits); Q5_0 adds 16 where the 5th bit is set
    s[0] = h2f(b);
    constexpr float o = K == Blk::Q5_0 ? 16.0f : 8.0f;
    const __m512 lut = _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(o));
    const __m512i v = u8x16(b + (K == Blk::Q5_0 ? 6 : 2));
    __m512 lo = _mm512_permutexvar_ps(v, lut), hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
    if constexpr (K == Blk::Q5_0) {
      uint32_t qh;
      std::memcpy(&qh, b + 2, 4);
      const __m512 sixteen = _mm512_set1_ps(16.0f);
      lo = _mm512_mask_add_ps(lo, static_cast<__mmask16>(qh & 0xFFFF), lo, sixteen);
      hi = _mm512_mask_add_ps(hi, static_cast<__mmask16>(qh >> 16), hi, sixteen);
    }
    f(0, 0, lo);
    f(0, 1, hi);
  } else if constexpr (K == Blk::Q4_K) {
    q4k_scales(b, s, m);
    const uint8_t* qs = b + 16;
    const __m512 lut = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);  // nibble -> fp32
    for (int c = 0; c < 4; ++c) {  // 32 bytes: sub-block 2c (low nibbles), 2c + 1 (high nibbles)
      const __m512i v0 = u8x16(qs + 32 * c), v1 = u8x16(qs + 32 * c + 16);
      f(2 * c, 0, _mm512_permutexvar_ps(v0, lut));
      f(2 * c, 1, _mm512_permutexvar_ps(v1, lut));
      f(2 * c + 1, 0, _mm512_permutexvar_ps(_mm512_srli_epi32(v0, 4), lut));
      f(2 * c + 1, 1, _mm512_permutexvar_ps(_mm512_srli_epi32(v1, 4), lut));
    }
  } else {  // Q6_K: 16 groups of 16, unpacked with 512-bit byte operations into an L1 buffer
    alignas(64) int8_t q[256];
    unpack_q6_k(b, q, s);
    for (int i = 0; i < 16; ++i) f(i, 0, q16(q + 16 * i));
  }
}

template <Blk K> constexpr int64_t kPer = (K == Blk::Q4_K || K == Blk::Q6_K) ? 256 : 32;
template <Blk K> constexpr int64_t kSize = K == Blk::Q8_0 ? 34 : K == Blk::Q5_0 ? 22 : K == Blk::Q4_0 ? 18 : K == Blk::Q4_K ? 144 : 210;
template <Blk K> constexpr int kG = K == Blk::Q6_K ? 16 : 32;
template <Blk K> constexpr int kGroups = static_cast<int>(kPer<K> / kG<K>);

// y[b * ldy + j] for rows j in [j0, j1) (R at a time) and B rows of x (row stride d_in).
template <Blk K, int R, int B>
void gemv_blocks(const QB& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y, int64_t ldy) {
  constexpr int64_t per = kPer<K>, size = kSize<K>;
  constexpr int G = kG<K>, NG = kGroups<K>;
  const int64_t nb = W.d_in / per, d = W.d_in, ng = W.ng;
  int64_t j = j0;
  for (; j + R <= j1; j += R) {
    const uint8_t* src[R];
    for (int r = 0; r < R; ++r) src[r] = W.b + (j + r) * W.row_bytes;
    __m512 acc[R][B];
    float macc[R][B];
    for (int r = 0; r < R; ++r)
      for (int bb = 0; bb < B; ++bb) acc[r][bb] = _mm512_setzero_ps(), macc[r][bb] = 0.0f;
    for (int64_t k = 0; k < nb; ++k) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = src[r] + k * size;
        // the row's stream TDA_QUANT_PF bytes ahead: one prefetch per 64 bytes of the block (a line
        // may be asked for twice; cheaper than tracking the last line fetched)
        for (int64_t o = 0; o < size; o += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + TDA_QUANT_PF + o), _MM_HINT_T0);
        float s[NG], m[NG];
        __m512 t[B];
        decode_block<K>(blk, s, m, [&](int g, int half, __m512 w) {
          const int64_t c = k * per + static_cast<int64_t>(g) * G + 16 * half;
          if (G == 16 || half == 0) {
            for (int bb = 0; bb < B; ++bb) t[bb] = _mm512_mul_ps(w, _mm512_loadu_ps(x + bb * d + c));
          } else {
            for (int bb = 0; bb < B; ++bb) t[bb] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + bb * d + c), t[bb]);
          }
          if (G == 16 || half == 1) {
            const __m512 sv = _mm512_set1_ps(s[g]);
            for (int bb = 0; bb < B; ++bb) acc[r][bb] = _mm512_fmadd_ps(t[bb], sv, acc[r][bb]);
          }
        });
        if constexpr (K == Blk::Q4_K) {
          for (int bb = 0; bb < B; ++bb) {
            const float* xs = xsum + bb * ng + k * NG;
            float mm = 0.0f;
            for (int g = 0; g < NG; ++g) mm += m[g] * xs[g];
            macc[r][bb] += mm;
          }
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int bb = 0; bb < B; ++bb) y[bb * ldy + j + r] = _mm512_reduce_add_ps(acc[r][bb]) - macc[r][bb];
  }
  if (j < j1) gemv_blocks<K, 1, B>(W, x, xsum, j, j1, y, ldy);
}

using BlkRowsFn = void (*)(const QB&, const float*, const float*, int64_t, int64_t, float*, int64_t);

template <Blk K>
inline BlkRowsFn blk_fn_t(int64_t B) {
  static const BlkRowsFn table[kQuantMaxRows] = {gemv_blocks<K, TDA_QBLK_R, 1>, gemv_blocks<K, 1, 2>, gemv_blocks<K, 1, 3>,
                                                 gemv_blocks<K, 1, 4>, gemv_blocks<K, 1, 5>, gemv_blocks<K, 1, 6>,
                                                 gemv_blocks<K, 1, 7>, gemv_blocks<K, 1, 8>};
  return table[B - 1];
}

inline BlkRowsFn blk_fn(Blk kind, int64_t B) {
  switch (kind) {
    case Blk::Q8_0: return blk_fn_t<Blk::Q8_0>(B);
    case Blk::Q5_0: return blk_fn_t<Blk::Q5_0>(B);
    case Blk::Q4_0: return blk_fn_t<Blk::Q4_0>(B);
    case Blk::Q4_K: return blk_fn_t<Blk::Q4_K>(B);
    case Blk::Q6_K: return blk_fn_t<Blk::Q6_K>(B);
  }
  return nullptr;
}
#endif

inline QB check_blocks(const at::Tensor& blocks, const std::string& qtype) {
  const BlkType t = blk_type(qtype);
  TORCH_CHECK_TYPE(blocks.scalar_type() == at::kByte, "quant_blocks: blocks must be uint8");
  TORCH_CHECK_VALUE(blocks.dim() == 2 && blocks.is_contiguous() && blocks.device().is_cpu(),
                    "quant_blocks: blocks must be a contiguous 2-D CPU tensor [d_out, row_bytes]");
  const int64_t row_bytes = blocks.size(1);
  TORCH_CHECK_VALUE(row_bytes > 0 && row_bytes % t.size == 0, "quant_blocks: a row of ", row_bytes,
                    " bytes is not whole ", qtype, " blocks of ", t.size, " bytes");
  const int64_t d_in = row_bytes / t.size * t.per;
  return QB{blocks.const_data_ptr<uint8_t>(), blocks.size(0), d_in, row_bytes, d_in / t.G, t};
}

// Rows [r0, r1) unpacked into q/s/m (row-major, [r1 - r0, d_in] and [r1 - r0, ng]), in parallel.
inline void unpack_rows(const QB& W, int64_t r0, int64_t r1, int8_t* q, float* s, float* m) {
  at::parallel_for(r0, r1, 64, [&](int64_t a, int64_t b) {
    for (int64_t j = a; j < b; ++j)
      unpack_row(W, j, q + (j - r0) * W.d_in, s + (j - r0) * W.ng, m ? m + (j - r0) * W.ng : nullptr);
  });
}

std::vector<at::Tensor> quant_blocks_unpack(const at::Tensor& blocks, const std::string& qtype, int64_t r0, int64_t r1) {
  const QB W = check_blocks(blocks, qtype);
  TORCH_CHECK_VALUE(0 <= r0 && r0 <= r1 && r1 <= W.d_out, "quant_blocks_unpack: rows [", r0, ", ", r1,
                    ") out of range [0, ", W.d_out, ")");
  at::Tensor q = at::empty({r1 - r0, W.d_in}, blocks.options().dtype(at::kChar));
  at::Tensor s = at::empty({r1 - r0, W.ng}, blocks.options().dtype(at::kFloat));
  std::vector<at::Tensor> out{q, s};
  float* mp = nullptr;
  if (W.t.mins) {
    out.push_back(at::empty({r1 - r0, W.ng}, blocks.options().dtype(at::kFloat)));
    mp = out.back().mutable_data_ptr<float>();
  }
  unpack_rows(W, r0, r1, q.mutable_data_ptr<int8_t>(), s.mutable_data_ptr<float>(), mp);
  return out;
}

at::Tensor quant_blocks_rows_impl(const at::Tensor& x, const QB& W, const c10::optional<at::Tensor>& bias) {
  const float* xp = check_x(x, W.d_in, "quant_blocks_linear");
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == W.d_out && bias->is_contiguous(), "quant_blocks_linear: bad bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, "quant_blocks_linear: bias must be fp32");
    bp = bias->const_data_ptr<float>();
  }
  const int64_t N = x.size(0), K = W.d_out, d = W.d_in, ng = W.ng;
  at::Tensor y = at::empty({N, K}, x.options());
  float* yp = y.mutable_data_ptr<float>();
  if (N > 0 && K > 0 && N <= kQuantMaxRows) {
    const RowsFn f = rows_fn(N);
    QW shape{nullptr, nullptr, nullptr, K, d, W.t.G, ng};
    const int64_t nc = quant_chunks(shape, K);
    std::vector<float> xsum(W.t.mins ? static_cast<size_t>(N * ng) : 0, 0.0f);  // groups' sums of x
    for (int64_t n = 0; W.t.mins && n < N; ++n)
      for (int64_t i = 0; i < d; ++i) xsum[n * ng + i / W.t.G] += xp[n * d + i];
#if TDA_QUANT_AVX512 && defined(__AVX512VL__)
    static const bool buffered = std::getenv("TDA_QBLK_BUFFER") != nullptr;  // the portable path, for tests
    if (!buffered) {
      const BlkRowsFn g = blk_fn(W.t.kind, N);
      for_chunks_q(nc, [&](int64_t c) { g(W, xp, xsum.data(), K * c / nc, K * (c + 1) / nc, yp, K); });
    } else
#endif
    for_chunks_q(nc, [&](int64_t c) {
      const int64_t j0 = K * c / nc, j1 = K * (c + 1) / nc;
      std::vector<int8_t> qb(static_cast<size_t>(TDA_QBLK_ROWS * d));
      std::vector<float> sb(static_cast<size_t>(TDA_QBLK_ROWS * ng)), mb(W.t.mins ? sb.size() : 0);
      for (int64_t j = j0; j < j1; j += TDA_QBLK_ROWS) {
        const int64_t u = std::min<int64_t>(TDA_QBLK_ROWS, j1 - j);
        const uint8_t* src = W.b + j * W.row_bytes;
#if TDA_QUANT_AVX512
        for (int64_t off = 0; off < u * W.row_bytes; off += 64)  // the stream, TDA_QUANT_PF bytes ahead
          _mm_prefetch(reinterpret_cast<const char*>(src + off + TDA_QUANT_PF), _MM_HINT_T0);
#else
        (void)src;
#endif
        for (int64_t r = 0; r < u; ++r)
          unpack_row(W, j + r, qb.data() + r * d, sb.data() + r * ng, W.t.mins ? mb.data() + r * ng : nullptr);
        QW B{qb.data(), sb.data(), W.t.mins ? mb.data() : nullptr, u, d, W.t.G, ng};
        B.ldy = K;
        B.prefetch = false;  // the buffer is in L1; the blocks were prefetched above
        f(B, xp, xsum.data(), 0, u, yp + j);
      }
    });
  } else if (N > 0 && K > 0 &&
             !tda_amx::amx_prefill(xp, N, d, W.t.G, ng, W.t.mins, K,
                                   [&](int64_t j0, int64_t nr, int8_t* q, float* s, float* m) {
                                     for (int64_t r = 0; r < nr; ++r)
                                       unpack_row(W, j0 + r, q + r * d, s + r * ng, m ? m + r * ng : nullptr);
                                   },
                                   yp, K)) {  // prefill without AMX: tiles of ~2 MB of fp32 rows through at::mm
    const int64_t tile = std::max<int64_t>(16, (int64_t{1} << 19) / d);
    const int64_t t0 = std::min(tile, K);
    at::Tensor buf = at::empty({t0, d}, x.options());
    std::vector<int8_t> qb(static_cast<size_t>(t0 * d));
    std::vector<float> sb(static_cast<size_t>(t0 * ng)), mb(W.t.mins ? sb.size() : 0);
    for (int64_t r0 = 0; r0 < K; r0 += tile) {
      const int64_t r1 = std::min(K, r0 + tile);
      unpack_rows(W, r0, r1, qb.data(), sb.data(), W.t.mins ? mb.data() : nullptr);
      const QW B{qb.data(), sb.data(), W.t.mins ? mb.data() : nullptr, r1 - r0, d, W.t.G, ng};
      dequant_rows(B, 0, r1 - r0, buf.mutable_data_ptr<float>());
      y.narrow(1, r0, r1 - r0).copy_(at::mm(x, buf.narrow(0, 0, r1 - r0).t()));
    }
  }
  if (bp)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < K; ++j) yp[n * K + j] += bp[j];
  return y;
}

at::Tensor quant_blocks_linear(const at::Tensor& x, const at::Tensor& blocks, const std::string& qtype,
                               const c10::optional<at::Tensor>& bias) {
  const QB W = check_blocks(blocks, qtype);
  return on_rows_q(x, W.d_out, [&](const at::Tensor& x2) { return quant_blocks_rows_impl(x2, W, bias); });
}

}  // namespace tda_quant

#include "int8_tiles.h"  // decode steps: the weights' integer tiles and x's limbs
#include "amx_gemv.h"   // ... on AMX-INT8
#include "vnni_gemv.h"  // ... on AVX512-VNNI
#include "vnni_sparse.h"  // input-sparse decode steps on AVX512-VNNI
#include "vnni_rows.h"  // a few decode rows at once (a speculative step's verification)

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("quant_blocks_linear(Tensor x, Tensor blocks, str qtype, Tensor? bias) -> Tensor");
  m.def("quant_blocks_unpack(Tensor blocks, str qtype, int r0, int r1) -> Tensor[]");
  m.def("gemv_tiles_pack(Tensor blocks, str qtype) -> Tensor[]");
  m.def("amx_gemv(Tensor x, Tensor packed, Tensor st, Tensor? mt, Tensor blocks, str qtype, Tensor? bias) -> Tensor");
  m.def("amx_gemv_ready() -> bool");
  m.def("vnni_gemv(Tensor x, Tensor packed, Tensor st, Tensor? mt, Tensor blocks, str qtype, Tensor? bias) -> Tensor");
  m.def("vnni_gemv_threshold(Tensor x, Tensor packed, Tensor st, Tensor? mt, str qtype, Tensor? bias, float t, "
        "Tensor? tvec, Tensor? count, Tensor? extra, float dense_from) -> Tensor");
  m.def("vnni_gemv_topk(Tensor x, Tensor scale, int k, Tensor packed, Tensor st, Tensor? mt, str qtype, Tensor? bias) -> Tensor");
  m.def("vnni_gemv_rows(Tensor x, Tensor packed, Tensor st, Tensor? mt, str qtype, Tensor? bias) -> Tensor");
  m.def("vnni_gemv_ready() -> bool");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("quant_blocks_linear", &tda_quant::quant_blocks_linear);
  m.impl("quant_blocks_unpack", &tda_quant::quant_blocks_unpack);
  m.impl("gemv_tiles_pack", &tda_quant::gemv_tiles_pack);
  m.impl("vnni_gemv", &tda_quant::vnni_gemv);
  m.impl("vnni_gemv_threshold", &tda_quant::vnni_gemv_threshold);
  m.impl("vnni_gemv_topk", &tda_quant::vnni_gemv_topk);
  m.impl("vnni_gemv_rows", &tda_quant::vnni_gemv_rows);
  m.impl("amx_gemv", &tda_quant::amx_gemv);
}

TORCH_LIBRARY_IMPL(tda_kernels, CatchAll, m) {
  m.impl("amx_gemv_ready", [] { return tda_quant::amx_gemv_ready(); });
  m.impl("vnni_gemv_ready", [] { return tda_quant::vnni_gemv_ready(); });
}

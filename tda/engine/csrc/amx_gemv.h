// Decode (one row of x) over quantized weights (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K) with AMX-INT8 tiles;
// included by quant_blocks.h after the block unpackers; a fragment of torch.ops.tda_kernels.
//
// W[j, i] = s[j, g] * q[j, i] - m[j, g] (g = i / G, G = 32, or 16 for Q6_K; q a small integer; m
// for Q4_K only, subtracted through the group's fp32 sum of x). The activations of each group of G
// inputs are held as one 23-bit integer per input in three int8 limbs (balanced base-256 digits)
// times a power of two: x_i ~= 2^e_g * (a_i * 65536 + b_i * 256 + c_i), rounded once to 2^-23 of a
// power of two above the group's largest |x| (at most two fp32 ulps of that largest value). One TDPBSSD per 16 weight rows and
// 64 inputs gives every (limb, group) sum exactly in int32 -- A is x's limbs, one row per (limb,
// group of the 64 inputs) with the other groups zero; B is the weights in the tile's VNNI order -- and each group's
// fp32 sum a * 65536 + b * 256 + c is scaled once by s[j, g] * 2^e_g. So the result equals F.linear on
// the de-quantised weights to fp32 rounding of the activations (tests/test_amx_gemv.py).
//
// The weights are laid out once (amx_gemv_pack) per 16 rows x 64 inputs ("tile"): Q8_0 as 1024
// int8 in VNNI order; the others as q + offset in 4 (Q4_K), 5 (Q5_0, Q4_0) or 6 (Q6_K) bits -- 512
// bytes of nibble pairs (value i and i + 512 of the tile), then a 128-byte plane per further bit --
// unpacked with AVX-512 into an L1 buffer per tile (0.5-0.75 bytes a weight, with fp32 scales and
// minimums transposed [ng, N]).
//
// Opt-in (tda.engine.quant_kernels.amx_layout, TDA_AMX_GEMV=1): on the 2-core Sapphire Rapids VM
// of ENGINEERING-NOTES the gate/up projections ran near the memory bandwidth (0.8-0.9 ms a step for
// 16 MB, against 1.2-1.3 on the blocks' GEMV) and Q4_K/Q6_K gained 10-20%, yet a whole dense decode
// step of Gemma 3 270M got 10% slower (22.2-23.3 ms against 20.2-20.9, separate processes): the code
// around AMX products (the lm_head GEMV, attention) runs slower in a step that uses them.
//
//   amx_gemv_pack(blocks, qtype) -> [packed uint8 [N/16 * K/64 * tile bytes], st fp32 [K/G, N], mt?]
//   amx_gemv(x[..., K] fp32 (one row), packed, st, mt?, blocks, qtype, bias?) -> y[..., N]; an x that is
//       not finite goes to the blocks' own GEMV (quant_blocks_linear), which gives the IEEE result
//   amx_gemv_ready() -> bool
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

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512BW__) && defined(__linux__)
#define TDA_AMX_INT8 1
#else
#define TDA_AMX_INT8 0
#endif

namespace tda_quant {

inline bool amx_gemv_ready() {
#if TDA_AMX_INT8
  return tda_amx::amx_ready();
#else
  return false;
#endif
}

// A type's tile: values stored as q + off in `bits` bits (nibbles, then bit planes of 128 bytes for
// the fifth and sixth bits), or int8 as they are (bits 8); G inputs a group, minimums or not.
struct AmxType {
  Blk kind;
  int bits, off, G;
  bool mins;
  int64_t tile_bytes() const { return bits == 8 ? 1024 : 512 + 128 * (bits - 4); }
  int64_t groups_per_chunk() const { return 64 / G; }
};

inline AmxType amx_type(const std::string& qtype) {
  const BlkType t = blk_type(qtype);
  switch (t.kind) {
    case Blk::Q8_0: return {t.kind, 8, 0, 32, false};
    case Blk::Q5_0: return {t.kind, 5, 16, 32, false};
    case Blk::Q4_0: return {t.kind, 5, 16, 32, false};  // q in [-8, 7]: the Q5_0 layout holds it
    case Blk::Q4_K: return {t.kind, 4, 0, 32, true};
    case Blk::Q6_K: return {t.kind, 6, 32, 16, false};
  }
  TORCH_CHECK_VALUE(false, "amx_gemv: no layout for ", qtype);
}

std::vector<at::Tensor> amx_gemv_pack(const at::Tensor& blocks, const std::string& qtype) {
  const AmxType T = amx_type(qtype);
  const QB W = check_blocks(blocks, qtype);
  const int64_t N = W.d_out, K = W.d_in, ng = K / T.G, nN = N / 16, nk = K / 64, tb = T.tile_bytes();
  TORCH_CHECK_VALUE(N % 16 == 0 && K % 64 == 0, "amx_gemv_pack: needs d_out % 16 == 0 and d_in % 64 == 0, got ",
                    N, " x ", K);
  TORCH_CHECK_VALUE(W.ng == ng, "amx_gemv_pack: group size mismatch");
  at::Tensor packed = at::empty({nN * nk * tb}, blocks.options());
  std::vector<at::Tensor> out{packed, at::empty({ng, N}, blocks.options().dtype(at::kFloat))};
  if (T.mins) out.push_back(at::empty({ng, N}, blocks.options().dtype(at::kFloat)));
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
          sp[g * N + nt * 16 + r] = s[r * ng + g];
          if (mp) mp[g * N + nt * 16 + r] = m[r * ng + g];
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

#if TDA_AMX_INT8
// x[K] -> A tiles [K/64][3 * 64/G rows][64] int8 (row l * (64/G) + h: limb l of the inputs of group
// h of the chunk, zeros elsewhere), the groups' scales 2^e_g (x_i ~= 2^e_g * (a 65536 + b 256 + c),
// |x_i| / 2^e_g <= 2^22, inside the balanced digits' range) and, for minimums, the groups' fp32 sums
// of x. False when some x is not finite (the caller takes the blocks' GEMV).
inline bool limbs_x(const float* x, int64_t K, int64_t G, int8_t* A, float* sx, float* xsum) {
  const int64_t per = 64 / G, rows = 3 * per;
  std::memset(A, 0, static_cast<size_t>(K / 64 * rows * 64));
  for (int64_t g = 0; g < K / G; ++g) {
    float m = 0.0f;
    for (int k = 0; k < G; ++k) {
      if (!std::isfinite(x[g * G + k])) return false;
      m = std::max(m, std::fabs(x[g * G + k]));
    }
    if (xsum) {
      float t = 0.0f;
      for (int k = 0; k < G; ++k) t += x[g * G + k];
      xsum[g] = t;
    }
    int e = 0;
    std::frexp(m, &e);  // m < 2^e
    sx[g] = m > 0.0f ? std::ldexp(1.0f, e - 22) : 0.0f;
    const float inv = m > 0.0f ? std::ldexp(1.0f, 22 - e) : 0.0f;
    const int64_t h = g % per;
    int8_t* tile = A + (g / per) * rows * 64 + h * G;
    for (int k = 0; k < G; ++k) {
      int64_t v = std::llrint(x[g * G + k] * inv);  // exact product (a power of two), |v| <= 2^22
      const int64_t c = ((v % 256) + 256 + 128) % 256 - 128;
      v = (v - c) / 256;
      const int64_t b = ((v % 256) + 256 + 128) % 256 - 128;
      v = (v - b) / 256;
      tile[(0 * per + h) * 64 + k] = static_cast<int8_t>(v);
      tile[(1 * per + h) * 64 + k] = static_cast<int8_t>(b);
      tile[(2 * per + h) * 64 + k] = static_cast<int8_t>(c);
    }
  }
  return true;
}

#endif

at::Tensor amx_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                    const at::Tensor& blocks, const std::string& qtype, const c10::optional<at::Tensor>& bias) {
  const AmxType T = amx_type(qtype);
  TORCH_CHECK_VALUE(amx_gemv_ready(), "amx_gemv: AMX-INT8 is not available in this process");
  TORCH_CHECK_VALUE(st.dim() == 2 && st.scalar_type() == at::kFloat && st.is_contiguous(), "amx_gemv: bad st");
  const int64_t ng = st.size(0), N = st.size(1), K = ng * T.G, nN = N / 16, nk = K / 64, tb = T.tile_bytes();
  const int64_t per = T.groups_per_chunk(), arows = 3 * per;
  TORCH_CHECK_VALUE(x.numel() == K && x.size(-1) == K && x.scalar_type() == at::kFloat && x.is_contiguous(),
                    "amx_gemv: x must be one contiguous fp32 row of ", K);
  TORCH_CHECK_VALUE(N % 16 == 0 && K % 64 == 0 && packed.scalar_type() == at::kByte && packed.numel() == nN * nk * tb &&
                    packed.is_contiguous(), "amx_gemv: packed does not match st");
  const float* mp = nullptr;
  if (T.mins) {
    TORCH_CHECK_VALUE(mt.has_value() && mt->defined() && mt->sizes() == st.sizes() && mt->is_contiguous() &&
                      mt->scalar_type() == at::kFloat, "amx_gemv: ", qtype, " needs its minimums mt shaped like st");
    mp = mt->const_data_ptr<float>();
  }
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous() && bias->scalar_type() == at::kFloat,
                      "amx_gemv: bias must be fp32 [", N, "]");
    bp = bias->const_data_ptr<float>();
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor y = at::empty(sizes, x.options());
#if TDA_AMX_INT8
  std::vector<int8_t> A(static_cast<size_t>(nk * arows * 64));
  std::vector<float> sx(static_cast<size_t>(ng)), xsum(T.mins ? static_cast<size_t>(ng) : 0);
  if (!limbs_x(x.const_data_ptr<float>(), K, T.G, A.data(), sx.data(), T.mins ? xsum.data() : nullptr))
    return quant_blocks_linear(x, blocks, qtype, bias);
  const uint8_t* pp = packed.const_data_ptr<uint8_t>();
  const float* sp = st.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, nN, 8, [&](int64_t a, int64_t b) {
    tda_amx::TileConfig cfg;
    cfg.colsb[0] = 64, cfg.rows[0] = static_cast<uint8_t>(arows);  // A: x's limbs, a row per (limb, group)
    cfg.colsb[1] = 64, cfg.rows[1] = 16;                           // B: 16 weight rows x 64 inputs
    cfg.colsb[2] = 64, cfg.rows[2] = static_cast<uint8_t>(arows);  // C: [(limb, group), 16 weight rows] int32
    _tile_loadconfig(&cfg);
    alignas(64) int8_t ub[1024];
    alignas(64) int32_t cb[12 * 16];
    const __m512i m4 = _mm512_set1_epi8(15), off = _mm512_set1_epi8(static_cast<char>(T.off));
    const __m512i b16 = _mm512_set1_epi8(16), b32 = _mm512_set1_epi8(32);
    const __m512 k65536 = _mm512_set1_ps(65536.0f), k256 = _mm512_set1_ps(256.0f);
    for (int64_t nt = a; nt < b; ++nt) {
      __m512 acc = _mm512_setzero_ps();
      const uint8_t* tiles = pp + nt * nk * tb;
      for (int64_t c = 0; c < nk; ++c) {
        const uint8_t* t = tiles + c * tb;
        for (int64_t o = 0; o < tb; o += 64) _mm_prefetch(reinterpret_cast<const char*>(t + 8 * tb + o), _MM_HINT_T0);
        if (T.bits == 8) {
          _tile_loadd(1, t, 64);
        } else {
          for (int j = 0; j < 8; ++j) {  // nibbles, then the fifth and sixth bits as masked adds
            const __m512i v = _mm512_loadu_si512(t + 64 * j);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            for (int p = 0; p < T.bits - 4; ++p) {
              uint64_t bl, bh;
              std::memcpy(&bl, t + 512 + 128 * p + 8 * j, 8);
              std::memcpy(&bh, t + 512 + 128 * p + 64 + 8 * j, 8);
              const __m512i add = p == 0 ? b16 : b32;
              lo = _mm512_mask_add_epi8(lo, bl, lo, add);
              hi = _mm512_mask_add_epi8(hi, bh, hi, add);
            }
            _mm512_store_si512(ub + 64 * j, _mm512_sub_epi8(lo, off));
            _mm512_store_si512(ub + 512 + 64 * j, _mm512_sub_epi8(hi, off));
          }
          _tile_loadd(1, ub, 64);
        }
        _tile_loadd(0, A.data() + c * arows * 64, 64);
        _tile_zero(2);
        _tile_dpbssd(2, 0, 1);
        _tile_stored(2, cb, 64);
        for (int64_t h = 0; h < per; ++h) {  // group g's limb sums -> one fp32 sum, scaled once
          const int64_t g = c * per + h;
          const __m512 va = _mm512_cvtepi32_ps(_mm512_load_si512(cb + h * 16));
          const __m512 vb = _mm512_cvtepi32_ps(_mm512_load_si512(cb + (per + h) * 16));
          const __m512 vc = _mm512_cvtepi32_ps(_mm512_load_si512(cb + (2 * per + h) * 16));
          const __m512 sum = _mm512_fmadd_ps(va, k65536, _mm512_fmadd_ps(vb, k256, vc));
          acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(_mm512_loadu_ps(sp + g * N + nt * 16), _mm512_set1_ps(sx[g])), acc);
          if (mp) acc = _mm512_fnmadd_ps(_mm512_loadu_ps(mp + g * N + nt * 16), _mm512_set1_ps(xsum[g]), acc);
        }
      }
      if (bp) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bp + nt * 16));
      _mm512_storeu_ps(yp + nt * 16, acc);
    }
    _tile_release();
  });
  return y;
#else
  (void)mp;
  return quant_blocks_linear(x, blocks, qtype, bias);
#endif
}

}  // namespace tda_quant

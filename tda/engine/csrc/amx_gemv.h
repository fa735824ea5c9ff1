// Decode (one row of x) over 32-value-group symmetric quantized weights (Q8_0, Q5_0, Q4_0) with
// AMX-INT8 tiles; included by quant_blocks.h after the block unpackers; a fragment of
// torch.ops.tda_kernels.
//
// W[j, i] = s[j, g] * q[j, i] (g = i / 32, q a small integer). The activations of each group of 32
// inputs are held as one 23-bit integer per input in three int8 limbs (balanced base-256 digits)
// times a power of two: x_i ~= 2^e_g * (a_i * 65536 + b_i * 256 + c_i), rounded once to 2^-23 of a
// power of two above the group's largest |x| (at most two fp32 ulps of that largest value). One TDPBSSD per 16 weight rows and
// 64 inputs gives every (limb, 32-input half) sum exactly in int32 -- A is x's limbs, one row per
// (limb, half) with the other half zero; B is the weights in the tile's VNNI order -- and each group's
// fp32 sum a * 65536 + b * 256 + c is scaled once by s[j, g] * 2^e_g. So the result equals F.linear on
// the de-quantised weights to fp32 rounding of the activations (tests/test_amx_gemv.py).
//
// The weights are laid out once (amx_gemv_pack) per 16 rows x 64 inputs ("tile"): Q8_0 as 1024
// int8 in VNNI order; Q5_0 and Q4_0 as q + 16 in five bits -- 512 bytes of nibble pairs (value i and
// i + 512 of the tile) and 128 bytes of fifth bits -- unpacked with AVX-512 into an L1 buffer per
// tile (0.625 bytes a weight, with fp32 scales transposed [ng, N]).
//
//   amx_gemv_pack(blocks, qtype) -> [packed uint8 [N/16 * K/64 * tile bytes], st fp32 [K/32, N]]
//   amx_gemv(x[..., K] fp32 (one row), packed, st, blocks, qtype, bias?) -> y[..., N]; an x that is
//       not finite goes to the blocks' own GEMV (quant_blocks_linear), which gives the IEEE result
//   amx_gemv_ready() -> bool
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

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
  return tda_amx::amx_ready() && std::getenv("TDA_NO_AMX_GEMV") == nullptr;
#else
  return false;
#endif
}

inline int64_t amx_tile_bytes(Blk kind) { return kind == Blk::Q8_0 ? 1024 : 640; }

inline Blk amx_gemv_kind(const std::string& qtype) {
  const BlkType t = blk_type(qtype);
  TORCH_CHECK_VALUE(t.kind == Blk::Q8_0 || t.kind == Blk::Q5_0 || t.kind == Blk::Q4_0,
                    "amx_gemv: block type ", qtype, " is not one of Q8_0, Q5_0, Q4_0");
  return t.kind;
}

std::vector<at::Tensor> amx_gemv_pack(const at::Tensor& blocks, const std::string& qtype) {
  const Blk kind = amx_gemv_kind(qtype);
  const QB W = check_blocks(blocks, qtype);
  const int64_t N = W.d_out, K = W.d_in, ng = K / 32, nN = N / 16, nk = K / 64, tb = amx_tile_bytes(kind);
  TORCH_CHECK_VALUE(N % 16 == 0 && K % 64 == 0, "amx_gemv_pack: needs d_out % 16 == 0 and d_in % 64 == 0, got ",
                    N, " x ", K);
  at::Tensor packed = at::empty({nN * nk * tb}, blocks.options());
  at::Tensor st = at::empty({ng, N}, blocks.options().dtype(at::kFloat));
  uint8_t* pp = packed.mutable_data_ptr<uint8_t>();
  float* sp = st.mutable_data_ptr<float>();
  at::parallel_for(0, nN, 1, [&](int64_t a, int64_t b) {
    std::vector<int8_t> q(static_cast<size_t>(16 * K));
    std::vector<float> s(static_cast<size_t>(16 * ng));
    int8_t v[1024];
    for (int64_t nt = a; nt < b; ++nt) {
      for (int64_t r = 0; r < 16; ++r) unpack_row(W, nt * 16 + r, q.data() + r * K, s.data() + r * ng, nullptr);
      for (int64_t r = 0; r < 16; ++r)
        for (int64_t g = 0; g < ng; ++g) sp[g * N + nt * 16 + r] = s[r * ng + g];
      for (int64_t c = 0; c < nk; ++c) {
        for (int k = 0; k < 64; ++k)  // VNNI: row k / 4, column (weight row) n, byte k % 4
          for (int n = 0; n < 16; ++n) v[(k / 4) * 64 + n * 4 + k % 4] = q[n * K + c * 64 + k];
        uint8_t* dst = pp + (nt * nk + c) * tb;
        if (kind == Blk::Q8_0) {
          std::memcpy(dst, v, 1024);
          continue;
        }
        std::memset(dst, 0, 640);
        for (int i = 0; i < 512; ++i) {
          const int lo = v[i] + 16, hi = v[i + 512] + 16;  // 0..31
          dst[i] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
          if (lo & 16) dst[512 + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
          if (hi & 16) dst[576 + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        }
      }
    }
  });
  return {packed, st};
}

#if TDA_AMX_INT8
// x[K] -> A tiles [K/64][6 rows][64] int8 (row 2l + h: limb l of the inputs of half h) and the
// groups' scales 2^e_g (x_i ~= 2^e_g * (a 65536 + b 256 + c), |x_i| / 2^e_g <= 2^22, inside the
// balanced digits' range). False when some x is not finite (the caller takes the blocks' GEMV).
inline bool limbs_x(const float* x, int64_t K, int8_t* A, float* sx) {
  std::memset(A, 0, static_cast<size_t>(K / 64 * 384));
  for (int64_t g = 0; g < K / 32; ++g) {
    float m = 0.0f;
    for (int k = 0; k < 32; ++k) m = std::fmax(m, std::fabs(x[g * 32 + k]));
    if (!std::isfinite(m)) return false;
    for (int k = 0; k < 32; ++k)
      if (std::isnan(x[g * 32 + k])) return false;
    int e = 0;
    std::frexp(m, &e);  // m < 2^e
    sx[g] = m > 0.0f ? std::ldexp(1.0f, e - 22) : 0.0f;
    const float inv = m > 0.0f ? std::ldexp(1.0f, 22 - e) : 0.0f;
    int8_t* rows = A + (g / 2) * 384 + (g % 2) * 32;
    for (int k = 0; k < 32; ++k) {
      int64_t v = std::llrint(x[g * 32 + k] * inv);  // exact product (a power of two), |v| <= 2^22
      const int64_t c = ((v % 256) + 256 + 128) % 256 - 128;
      v = (v - c) / 256;
      const int64_t b = ((v % 256) + 256 + 128) % 256 - 128;
      v = (v - b) / 256;
      rows[(0 + (g % 2)) * 64 + k] = static_cast<int8_t>(v);
      rows[(2 + (g % 2)) * 64 + k] = static_cast<int8_t>(b);
      rows[(4 + (g % 2)) * 64 + k] = static_cast<int8_t>(c);
    }
  }
  return true;
}

struct AmxCfg {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
#endif

at::Tensor amx_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st, const at::Tensor& blocks,
                    const std::string& qtype, const c10::optional<at::Tensor>& bias) {
  const Blk kind = amx_gemv_kind(qtype);
  TORCH_CHECK_VALUE(amx_gemv_ready(), "amx_gemv: AMX-INT8 is not available in this process");
  TORCH_CHECK_VALUE(st.dim() == 2 && st.scalar_type() == at::kFloat && st.is_contiguous(), "amx_gemv: bad st");
  const int64_t ng = st.size(0), N = st.size(1), K = ng * 32, nN = N / 16, nk = K / 64, tb = amx_tile_bytes(kind);
  TORCH_CHECK_VALUE(x.numel() == K && x.size(-1) == K && x.scalar_type() == at::kFloat && x.is_contiguous(),
                    "amx_gemv: x must be one contiguous fp32 row of ", K);
  TORCH_CHECK_VALUE(packed.scalar_type() == at::kByte && packed.numel() == nN * nk * tb && packed.is_contiguous(),
                    "amx_gemv: packed does not match st");
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
  std::vector<int8_t> A(static_cast<size_t>(nk * 384));
  std::vector<float> sx(static_cast<size_t>(ng));
  if (!limbs_x(x.const_data_ptr<float>(), K, A.data(), sx.data()))
    return quant_blocks_linear(x, blocks, qtype, bias);
  const uint8_t* pp = packed.const_data_ptr<uint8_t>();
  const float* sp = st.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::parallel_for(0, nN, 8, [&](int64_t a, int64_t b) {
    AmxCfg cfg;
    cfg.colsb[0] = 64, cfg.rows[0] = 6;   // A: x's limbs
    cfg.colsb[1] = 64, cfg.rows[1] = 16;  // B: 16 weight rows x 64 inputs
    cfg.colsb[2] = 64, cfg.rows[2] = 6;   // C: [6 (limb, half), 16 weight rows] int32
    _tile_loadconfig(&cfg);
    alignas(64) int8_t ub[1024];
    alignas(64) int32_t cb[96];
    const __m512i m4 = _mm512_set1_epi8(15), s16 = _mm512_set1_epi8(16);
    const __m512 k65536 = _mm512_set1_ps(65536.0f), k256 = _mm512_set1_ps(256.0f);
    for (int64_t nt = a; nt < b; ++nt) {
      __m512 acc = _mm512_setzero_ps();
      const uint8_t* tiles = pp + nt * nk * tb;
      for (int64_t c = 0; c < nk; ++c) {
        const uint8_t* t = tiles + c * tb;
        _mm_prefetch(reinterpret_cast<const char*>(t + 8 * tb), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(t + 8 * tb + 64 * 5), _MM_HINT_T0);
        if (kind == Blk::Q8_0) {
          _tile_loadd(1, t, 64);
        } else {
          for (int j = 0; j < 8; ++j) {
            const __m512i v = _mm512_loadu_si512(t + 64 * j);
            __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            uint64_t bl, bh;
            std::memcpy(&bl, t + 512 + 8 * j, 8);
            std::memcpy(&bh, t + 576 + 8 * j, 8);
            lo = _mm512_sub_epi8(_mm512_mask_add_epi8(lo, bl, lo, s16), s16);
            hi = _mm512_sub_epi8(_mm512_mask_add_epi8(hi, bh, hi, s16), s16);
            _mm512_store_si512(ub + 64 * j, lo);
            _mm512_store_si512(ub + 512 + 64 * j, hi);
          }
          _tile_loadd(1, ub, 64);
        }
        _tile_loadd(0, A.data() + c * 384, 64);
        _tile_zero(2);
        _tile_dpbssd(2, 0, 1);
        _tile_stored(2, cb, 64);
        for (int h = 0; h < 2; ++h) {
          const int64_t g = 2 * c + h;
          const __m512 va = _mm512_cvtepi32_ps(_mm512_load_si512(cb + h * 16));
          const __m512 vb = _mm512_cvtepi32_ps(_mm512_load_si512(cb + (2 + h) * 16));
          const __m512 vc = _mm512_cvtepi32_ps(_mm512_load_si512(cb + (4 + h) * 16));
          const __m512 sum = _mm512_fmadd_ps(va, k65536, _mm512_fmadd_ps(vb, k256, vc));
          acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(_mm512_loadu_ps(sp + g * N + nt * 16), _mm512_set1_ps(sx[g])), acc);
        }
      }
      if (bp) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bp + nt * 16));
      _mm512_storeu_ps(yp + nt * 16, acc);
    }
    _tile_release();
  });
  return y;
#else
  return quant_blocks_linear(x, blocks, qtype, bias);
#endif
}

}  // namespace tda_quant

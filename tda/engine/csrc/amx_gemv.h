// Decode (one row of x) over quantized weights (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K) with AMX-INT8 tiles;
// included by quant_blocks.h after int8_tiles.h (the weights' tile layout and x's integer limbs);
// a fragment of torch.ops.tda_kernels.
//
// One TDPBSSD per 16 weight rows and 64 inputs gives every (limb, group) sum exactly in int32 -- A is
// x's limbs, one row per (limb, group of the 64 inputs) with the other groups zero; B is the
// weights' tile, unpacked with AVX-512 into an L1 buffer (q, signed) -- and each group's fp32 sum
// a * 65536 + b * 256 + c is scaled once by s[j, g] * 2^e_g (Q4_K's minimums subtracted through the
// group's fp32 sum of x). So the result equals F.linear on the de-quantised weights to fp32 rounding
// of the activations (tests/test_int8_gemv.py), and equals vnni_gemv.h's bit for bit.
//
// Opt-in (tda.engine.quant_kernels.decode_kernel, TDA_AMX_GEMV=1): on the 2-core Sapphire Rapids VM
// of ENGINEERING-NOTES the gate/up projections ran near the memory bandwidth (0.8-0.9 ms a step for
// 16 MB, against 1.2-1.3 on the blocks' GEMV) and Q4_K/Q6_K gained 10-20%, yet a whole dense decode
// step of Gemma 3 270M got 10% slower (22.2-23.3 ms against 20.2-20.9, separate processes): the code
// around AMX products (the lm_head GEMV, attention) runs slower in a step that uses them.
//
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

at::Tensor amx_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                    const at::Tensor& blocks, const std::string& qtype, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(amx_gemv_ready(), "amx_gemv: AMX-INT8 is not available in this process");
  TileCall C = check_tile_call("amx_gemv", x, packed, st, mt, qtype, bias);
  if (!tile_call_limbs(C, x)) return quant_blocks_linear(x, blocks, qtype, bias);
  const TileType T = C.T;
  const int64_t ng = C.ng, K = C.K, nN = C.nN, nk = C.nk, tb = T.tile_bytes(), per = T.groups_per_chunk(), arows = 3 * per;
  const float *mp = C.mp, *bp = C.bp;
  at::Tensor y = C.y;
#if TDA_AMX_INT8
  std::vector<int8_t> A(static_cast<size_t>(nk * arows * 64), 0);
  const std::vector<int8_t>& xl = C.L.xl;
  const std::vector<float>&sx = C.L.sx, &xsum = C.L.xsum;
  for (int64_t g = 0; g < ng; ++g)  // A of chunk g / per: row l * per + h holds limb l of group h, zeros elsewhere
    for (int l = 0; l < 3; ++l)
      std::memcpy(A.data() + (g / per) * arows * 64 + (l * per + g % per) * 64 + (g % per) * T.G, xl.data() + l * K + g * T.G,
                  static_cast<size_t>(T.G));
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
    const __m512i off = _mm512_set1_epi8(static_cast<char>(T.off));
    for (int64_t nt = a; nt < b; ++nt) {
      __m512 acc = _mm512_setzero_ps();
      const uint8_t* tiles = pp + nt * nk * tb;
      for (int64_t c = 0; c < nk; ++c) {
        const uint8_t* t = tiles + c * tb;
        for (int64_t o = 0; o < tb; o += 64) _mm_prefetch(reinterpret_cast<const char*>(t + 8 * tb + o), _MM_HINT_T0);
        if (T.bits == 8) {
          _tile_loadd(1, t, 64);
        } else {
          for (int j = 0; j < 8; ++j) {  // q (signed) into an L1 buffer
            __m512i lo, hi;
            tile_rows(t, T.bits, j, lo, hi);
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
          acc = tile_group(acc, _mm512_load_si512(cb + h * 16), _mm512_load_si512(cb + (per + h) * 16),
                           _mm512_load_si512(cb + (2 * per + h) * 16), sp + (nt * ng + g) * 16, sx[g],
                           mp ? mp + (nt * ng + g) * 16 : nullptr, xsum[g]);
        }
      }
      if (bp) acc = _mm512_add_ps(acc, _mm512_loadu_ps(bp + nt * 16));
      _mm512_storeu_ps(yp + nt * 16, acc);
    }
    _tile_release();
  });
  return y;
#else
  (void)mp, (void)bp, (void)ng, (void)K, (void)nN, (void)nk, (void)tb, (void)arows, (void)y;
  return quant_blocks_linear(x, blocks, qtype, bias);
#endif
}

}  // namespace tda_quant

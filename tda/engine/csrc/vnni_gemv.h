// Decode (one row of x) over quantized weights (Q8_0, Q5_0, Q4_0, Q4_K, Q6_K) with AVX512-VNNI;
// included by quant_blocks.h after int8_tiles.h (the weights' tile layout and x's integer limbs);
// a fragment of torch.ops.tda_kernels.
//
// Per tile (16 weight rows x 64 inputs) the stored values u = q + off (unsigned; Q8_0's int8 with
// its sign bit flipped, off 128) are unpacked into 16 registers, one VNNI row of 4 inputs each, and
// VPDPBUSD multiplies each with a broadcast of the same 4 inputs of one limb of x (signed): every
// (limb, group) sum sum_i u_i * limb_i lands exactly in int32 per weight row. Subtracting
// off * sum_i limb_i (one integer per group and limb, from limbs_x) leaves sum_i q_i * limb_i, the
// same integers as the AMX-INT8 kernel's tiles (amx_gemv.h), combined and scaled the same way: the
// two kernels agree bit for bit, and equal F.linear on the de-quantised weights to fp32 rounding of
// the activations (tests/test_int8_gemv.py). No tile state, so nothing around it slows down.
//
// Measured on the 2-core Sapphire Rapids VM of ENGINEERING-NOTES, Gemma 3 270M in the gguf format,
// greedy decode, separate processes alternating (2026-12-06): a whole dense step 18.2 / 19.5 ms on
// these tiles against 20.3 / 20.8 on the blocks' fp32 GEMVs; the layer linears alone, in the order
// a step calls them (the lm_head between steps), 7.0-7.1 ms against 7.5-7.8. Weights that come cold
// from memory bound both: their tiles' scales are stored in the order they are read, so each thread
// reads two forward streams.
//
//   vnni_gemv(x[..., K] fp32 (one row), packed, st, mt?, blocks, qtype, bias?) -> y[..., N]; an x
//       that is not finite goes to the blocks' own GEMV (quant_blocks_linear), the IEEE result
//   vnni_gemv_threshold(...) -> y: a threshold rule's product on these tiles (below)
//   vnni_gemv_topk(...) -> y: WINA's top-k rule's product on these tiles (below)
//   vnni_gemv_ready() -> bool (built with AVX-512 BW and the CPU has AVX512-VNNI)
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "argmax.h"  // tda_argmax::topk_row: WINA's selection, as kernels.topk_sorted makes it

#if defined(__AVX512BW__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TDA_VNNI 1
#define TDA_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#else
#define TDA_VNNI 0
#endif

#ifndef TDA_TILE_PF
#define TDA_TILE_PF 8192  // bytes of the tile stream requested ahead of the reads
#endif

namespace tda_quant {

inline bool vnni_gemv_ready() {
#if TDA_VNNI
  static const bool ok = __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

#if TDA_VNNI
struct VnniArgs {
  const uint8_t* packed;
  const float *st, *mt, *bias;  // st, mt: [N / 16, ng, 16]
  const int8_t* xl;             // [3, K]
  const float *sx, *xsum;       // [ng]
  const int32_t* ls;            // [3, ng]
  int64_t K;
  float* y;
};

TDA_VNNI_TARGET inline __m512i bcast4(const int8_t* p) {  // 4 int8 inputs in every dword
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// VNNI rows j (inputs 4j ..) and j + 8 (inputs 32 + 4j ..) of a tile as their stored values: the
// int8 tile's with the sign bit flipped (u = q + 128), a packed one's unpacked (tile_rows).
template <int BITS>
TDA_VNNI_TARGET __attribute__((always_inline)) inline void vnni_tile_rows(const uint8_t* t, int j, __m512i& lo, __m512i& hi) {
  if constexpr (BITS == 8) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    lo = _mm512_xor_si512(_mm512_loadu_si512(t + 64 * j), flip);
    hi = _mm512_xor_si512(_mm512_loadu_si512(t + 512 + 64 * j), flip);
  } else {
    tile_rows(t, BITS, j, lo, hi);
  }
}

// A thread's tiles and scales of tile rows [a, b) are two forward streams: their first TDA_TILE_PF
// bytes are requested at once (start), then each stays that far ahead of the reads (ahead, at every
// tile): a call starts cold, the weights come from memory, and the hardware prefetchers stop at
// every 4 KiB page.
struct TileStreams {
  const uint8_t* packed;
  const float* st;
  int64_t tb, nk, ng, per;
  const char *w1, *s1;
  TDA_VNNI_TARGET __attribute__((always_inline)) inline TileStreams(const uint8_t* p, const float* s, int64_t tb_, int64_t K,
                                                                    int64_t G, int64_t a, int64_t b)
      : packed(p), st(s), tb(tb_), nk(K / 64), ng(K / G), per(64 / G),
        w1(reinterpret_cast<const char*>(p + b * (K / 64) * tb_)), s1(reinterpret_cast<const char*>(s + b * (K / G) * 16)) {
    const char *w0 = reinterpret_cast<const char*>(p + a * nk * tb), *s0 = reinterpret_cast<const char*>(s + a * ng * 16);
    for (int64_t o = 0; o < TDA_TILE_PF && w0 + o < w1; o += 64) _mm_prefetch(w0 + o, _MM_HINT_T0);
    for (int64_t o = 0; o < TDA_TILE_PF / 4 && s0 + o < s1; o += 64) _mm_prefetch(s0 + o, _MM_HINT_T0);
  }
  TDA_VNNI_TARGET __attribute__((always_inline)) inline void ahead(int64_t nt, int64_t c) const {
    const char* wp = reinterpret_cast<const char*>(packed + (nt * nk + c) * tb) + TDA_TILE_PF;
    for (int64_t o = 0; o < tb && wp + o < w1; o += 64) _mm_prefetch(wp + o, _MM_HINT_T0);
    const char* sp = reinterpret_cast<const char*>(st + (nt * ng + c * per) * 16) + TDA_TILE_PF / 4;
    for (int64_t o = 0; o < ng * 64 / nk && sp + o < s1; o += 64) _mm_prefetch(sp + o, _MM_HINT_T0);  // a chunk's scales
  }
};

// Weight rows [16 a, 16 b): BITS 4, 5, 6 (packed) or 8 (int8), G 32 or 16 inputs a group, OFF the
// stored offset (128 for int8).
template <int BITS, int G, int OFF>
TDA_VNNI_TARGET void vnni_tiles(const VnniArgs& A, int64_t a, int64_t b) {
  constexpr int64_t tb = BITS == 8 ? 1024 : 512 + 128 * (BITS - 4), per = 64 / G;
  const int64_t K = A.K, nk = K / 64, ng = K / G;
  const int8_t *x0 = A.xl, *x1 = A.xl + K, *x2 = A.xl + 2 * K;
  const TileStreams streams(A.packed, A.st, tb, K, G, a, b);
  for (int64_t nt = a; nt < b; ++nt) {
    __m512 acc = _mm512_setzero_ps();
    const uint8_t* tiles = A.packed + nt * nk * tb;
    for (int64_t c = 0; c < nk; ++c) {
      const uint8_t* t = tiles + c * tb;
      streams.ahead(nt, c);
      __m512i s[3][per];
      for (int l = 0; l < 3; ++l)
        for (int h = 0; h < per; ++h) s[l][h] = _mm512_setzero_si512();
      const int64_t i0 = c * 64;
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {  // VNNI rows j (inputs 4j ..) and j + 8 (inputs 32 + 4j ..)
        __m512i lo, hi;
        vnni_tile_rows<BITS>(t, j, lo, hi);
        const int hl = (4 * j) / G, hh = (32 + 4 * j) / G;  // the groups (within the chunk) of rows j and j + 8
        s[0][hl] = _mm512_dpbusd_epi32(s[0][hl], lo, bcast4(x0 + i0 + 4 * j));
        s[1][hl] = _mm512_dpbusd_epi32(s[1][hl], lo, bcast4(x1 + i0 + 4 * j));
        s[2][hl] = _mm512_dpbusd_epi32(s[2][hl], lo, bcast4(x2 + i0 + 4 * j));
        s[0][hh] = _mm512_dpbusd_epi32(s[0][hh], hi, bcast4(x0 + i0 + 32 + 4 * j));
        s[1][hh] = _mm512_dpbusd_epi32(s[1][hh], hi, bcast4(x1 + i0 + 32 + 4 * j));
        s[2][hh] = _mm512_dpbusd_epi32(s[2][hh], hi, bcast4(x2 + i0 + 32 + 4 * j));
      }
      for (int64_t h = 0; h < per; ++h) {  // group g's limb sums (offset removed) -> one fp32 sum, scaled once
        const int64_t g = c * per + h;
        acc = tile_group(acc, _mm512_sub_epi32(s[0][h], _mm512_set1_epi32(OFF * A.ls[g])),
                         _mm512_sub_epi32(s[1][h], _mm512_set1_epi32(OFF * A.ls[ng + g])),
                         _mm512_sub_epi32(s[2][h], _mm512_set1_epi32(OFF * A.ls[2 * ng + g])), A.st + (nt * ng + g) * 16,
                         A.sx[g], A.mt ? A.mt + (nt * ng + g) * 16 : nullptr, A.mt ? A.xsum[g] : 0.0f);
      }
    }
    if (A.bias) acc = _mm512_add_ps(acc, _mm512_loadu_ps(A.bias + nt * 16));
    _mm512_storeu_ps(A.y + nt * 16, acc);
  }
}

// C.y = the tiles times x's limbs in C.L (made by limbs_x), the tile rows split over the threads.
inline void vnni_run(TileCall& C, const at::Tensor& packed, const at::Tensor& st) {
  const TileType T = C.T;
  const VnniArgs args{packed.const_data_ptr<uint8_t>(), st.const_data_ptr<float>(), C.mp, C.bp, C.L.xl.data(), C.L.sx.data(),
                      T.mins ? C.L.xsum.data() : nullptr, C.L.ls.data(), C.K, C.y.mutable_data_ptr<float>()};
  auto run = [&](auto fn) { at::parallel_for(0, C.nN, 8, [&](int64_t a, int64_t b) { fn(args, a, b); }); };
  if (T.bits == 8) run(vnni_tiles<8, 32, 128>);
  else if (T.bits == 5) run(vnni_tiles<5, 32, 16>);
  else if (T.bits == 4) run(vnni_tiles<4, 32, 0>);
  else run(vnni_tiles<6, 16, 32>);
}
#endif

at::Tensor vnni_gemv(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                     const at::Tensor& blocks, const std::string& qtype, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(vnni_gemv_ready(), "vnni_gemv: AVX512-VNNI is not available in this build or CPU");
  TileCall C = check_tile_call("vnni_gemv", x, packed, st, mt, qtype, bias);
  if (!tile_call_limbs(C, x)) return quant_blocks_linear(x, blocks, qtype, bias);
#if TDA_VNNI
  vnni_run(C, packed, st);
  return C.y;
#else
  return quant_blocks_linear(x, blocks, qtype, bias);
#endif
}

// A threshold rule's input-sparse product (TEAL's |x_i| >= t; x_i != 0) on the dense tiles, for kept
// fractions where reading every weight beats reading the kept inputs' rows (the input-sparse kernels
// of quant_gemv.h and vnni_sparse.h convert and multiply each kept weight on its own, 2-3x the work
// per weight of the tiles' integer dot products): x's inactive inputs are zeroed, its limbs made
// from what is kept, and the tiles multiplied as vnni_gemv does -- F.linear on the de-quantised
// weights of the masked x to fp32 rounding, as the input-sparse kernels give it.
//   vnni_gemv_threshold(x[K] fp32 (one row), packed, st, mt?, qtype, bias?, t, tvec?, count?, extra?, dense_from)
//       -> y[..., N], count (int64, one value) grown by the kept inputs and extra by the others (whose
//       weights were read all the same); an empty tensor (nothing counted) where fewer than
//       dense_from * K inputs are kept or a kept x is not finite: the caller then takes an
//       input-sparse kernel.
at::Tensor vnni_gemv_threshold(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st,
                               const c10::optional<at::Tensor>& mt, const std::string& qtype,
                               const c10::optional<at::Tensor>& bias, double t, const c10::optional<at::Tensor>& tvec,
                               const c10::optional<at::Tensor>& count, const c10::optional<at::Tensor>& extra,
                               double dense_from) {
  TORCH_CHECK_VALUE(vnni_gemv_ready(), "vnni_gemv_threshold: AVX512-VNNI is not available in this build or CPU");
  TileCall C = check_tile_call("vnni_gemv_threshold", x, packed, st, mt, qtype, bias);
  const float* tv = nullptr;
  if (tvec.has_value() && tvec->defined()) {
    TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == C.K && tvec->scalar_type() == at::kFloat && tvec->is_contiguous(),
                      "vnni_gemv_threshold: tvec must be fp32 [", C.K, "]");
    tv = tvec->const_data_ptr<float>();
  }
  for (const auto* acc : {&count, &extra})
    if (acc->has_value() && (*acc)->defined())
      TORCH_CHECK_VALUE((*acc)->numel() == 1 && (*acc)->scalar_type() == at::kLong, "vnni_gemv_threshold: count and extra must be int64 [1]");
  const float* xp = x.const_data_ptr<float>();
  const float tf = static_cast<float>(t);
  std::vector<float> xm(static_cast<size_t>(C.K));
  int64_t kept = 0;
  for (int64_t i = 0; i < C.K; ++i) {
    const float v = xp[i];
    const bool k = v != 0.0f && std::fabs(v) >= (tv ? tv[i] : tf);
    xm[i] = k ? v : 0.0f;
    kept += k;
  }
  if (static_cast<double>(kept) < dense_from * static_cast<double>(C.K)) return at::empty({0}, x.options());
#if TDA_VNNI
  if (!limbs_x(xm.data(), C.K, C.T.G, C.L.xl.data(), C.L.sx.data(), C.L.ls.data(), C.L.xsum.data()))
    return at::empty({0}, x.options());
  if (count.has_value() && count->defined()) count->mutable_data_ptr<int64_t>()[0] += kept;
  if (extra.has_value() && extra->defined()) extra->mutable_data_ptr<int64_t>()[0] += C.K - kept;
  vnni_run(C, packed, st);
  return C.y;
#else
  return at::empty({0}, x.options());
#endif
}

// WINA's rule on the dense tiles: the k inputs with the largest |x_i| * scale_i kept (ties at the k-th
// score to the lower index, as tda_argmax::topk_row and kernels.topk_sorted choose), the others
// zeroed, then the tiles as vnni_gemv_threshold multiplies them.
//   vnni_gemv_topk(x[K] fp32 (one row), scale[K] fp32, k, packed, st, mt?, qtype, bias?) -> y[..., N];
//       an empty tensor where some x is not finite (the caller then takes the input-sparse kernel).
at::Tensor vnni_gemv_topk(const at::Tensor& x, const at::Tensor& scale, int64_t k, const at::Tensor& packed,
                          const at::Tensor& st, const c10::optional<at::Tensor>& mt, const std::string& qtype,
                          const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(vnni_gemv_ready(), "vnni_gemv_topk: AVX512-VNNI is not available in this build or CPU");
  TileCall C = check_tile_call("vnni_gemv_topk", x, packed, st, mt, qtype, bias);
  TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == C.K && scale.scalar_type() == at::kFloat && scale.is_contiguous(),
                    "vnni_gemv_topk: scale must be fp32 [", C.K, "]");
  TORCH_CHECK_VALUE(k >= 1 && k <= C.K, "vnni_gemv_topk: k must be in [1, ", C.K, "], got ", k);
  const float *xp = x.const_data_ptr<float>(), *sp = scale.const_data_ptr<float>();
  std::vector<float> score(static_cast<size_t>(C.K)), work(static_cast<size_t>(C.K)), xm(static_cast<size_t>(C.K), 0.0f);
  for (int64_t i = 0; i < C.K; ++i) {
    if (!std::isfinite(xp[i])) return at::empty({0}, x.options());
    score[i] = std::fabs(xp[i]) * sp[i];
  }
  std::vector<int64_t> idx(static_cast<size_t>(k));
  if (std::any_of(score.begin(), score.end(), [](float a) { return std::isnan(a); }))
    tda_argmax::topk_row(score.data(), C.K, k, work, idx.data(), tda_argmax::ranks_above);
  else
    tda_argmax::topk_row(score.data(), C.K, k, work, idx.data(), std::greater<float>());
  for (const int64_t i : idx) xm[i] = xp[i];
#if TDA_VNNI
  if (!limbs_x(xm.data(), C.K, C.T.G, C.L.xl.data(), C.L.sx.data(), C.L.ls.data(), C.L.xsum.data()))
    return at::empty({0}, x.options());
  vnni_run(C, packed, st);
  return C.y;
#else
  return at::empty({0}, x.options());
#endif
}

}  // namespace tda_quant

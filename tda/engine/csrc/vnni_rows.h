// A few rows of x (2-4: the positions a speculative decode verifies at once) over the integer tiles
// of a quantized weight with AVX512-VNNI, each tile read once for every row; included by
// quant_blocks.h after vnni_gemv.h; a fragment of torch.ops.tda_kernels.
//
// Row r of the result is vnni_gemv's result for row r alone, bit for bit: the same exact int32 limb
// sums per (row, limb, group), combined and scaled by the same tile_group calls in the same order,
// the bias added last. What is shared is the weights: a tile's VNNI rows are unpacked once and
// multiplied with every row's limbs, so R rows cost one pass over the weights plus R times the
// integer dot products (the lm_head of Gemma 3 270M streams at 27-38 GB/s cold, and its tiles run at
// 82 GB/s on 2 threads in cache: a few rows fit in the headroom).
//
//   vnni_gemv_rows(x[R, K] fp32 (R in 1..4, contiguous), packed, st, mt?, qtype, bias?) -> y[R, N];
//       an empty tensor where some x is not finite (the caller then takes another path).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tda_quant {

constexpr int64_t VNNI_MAX_ROWS = 4;

#if TDA_VNNI
struct VnniRowsArgs {
  const uint8_t* packed;
  const float *st, *mt, *bias;  // st, mt: [N / 16, ng, 16]
  const int8_t* xl;             // [R, 3, K]
  const float *sx, *xsum;       // [R, ng]
  const int32_t* ls;            // [R, 3, ng]
  int64_t K, N;
  float* y;                     // [R, N]
};

template <int BITS, int G, int OFF, int R>
TDA_VNNI_TARGET void vnni_tiles_rows(const VnniRowsArgs& A, int64_t a, int64_t b) {
  constexpr int64_t tb = BITS == 8 ? 1024 : 512 + 128 * (BITS - 4), per = 64 / G;
  const int64_t K = A.K, nk = K / 64, ng = K / G;
  const TileStreams streams(A.packed, A.st, tb, K, G, a, b);
  for (int64_t nt = a; nt < b; ++nt) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const uint8_t* tiles = A.packed + nt * nk * tb;
    for (int64_t c = 0; c < nk; ++c) {
      const uint8_t* t = tiles + c * tb;
      streams.ahead(nt, c);
      __m512i s[R][3][per];
      for (int r = 0; r < R; ++r)
        for (int l = 0; l < 3; ++l)
          for (int h = 0; h < per; ++h) s[r][l][h] = _mm512_setzero_si512();
      const int64_t i0 = c * 64;
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {  // VNNI rows j (inputs 4j ..) and j + 8 (inputs 32 + 4j ..), as vnni_tiles
        __m512i lo, hi;
        vnni_tile_rows<BITS>(t, j, lo, hi);
        const int hl = (4 * j) / G, hh = (32 + 4 * j) / G;
        for (int r = 0; r < R; ++r) {
          const int8_t* x0 = A.xl + r * 3 * K;
          for (int l = 0; l < 3; ++l) {
            s[r][l][hl] = _mm512_dpbusd_epi32(s[r][l][hl], lo, bcast4(x0 + l * K + i0 + 4 * j));
            s[r][l][hh] = _mm512_dpbusd_epi32(s[r][l][hh], hi, bcast4(x0 + l * K + i0 + 32 + 4 * j));
          }
        }
      }
      for (int r = 0; r < R; ++r) {
        const int32_t* ls = A.ls + r * 3 * ng;
        for (int64_t h = 0; h < per; ++h) {  // the order of vnni_tiles: the same fp32 result
          const int64_t g = c * per + h;
          acc[r] = tile_group(acc[r], _mm512_sub_epi32(s[r][0][h], _mm512_set1_epi32(OFF * ls[g])),
                              _mm512_sub_epi32(s[r][1][h], _mm512_set1_epi32(OFF * ls[ng + g])),
                              _mm512_sub_epi32(s[r][2][h], _mm512_set1_epi32(OFF * ls[2 * ng + g])),
                              A.st + (nt * ng + g) * 16, A.sx[r * ng + g], A.mt ? A.mt + (nt * ng + g) * 16 : nullptr,
                              A.mt ? A.xsum[r * ng + g] : 0.0f);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      __m512 v = acc[r];
      if (A.bias) v = _mm512_add_ps(v, _mm512_loadu_ps(A.bias + nt * 16));
      _mm512_storeu_ps(A.y + r * A.N + nt * 16, v);
    }
  }
}

template <int R>
inline void vnni_rows_run(const TileType& T, const VnniRowsArgs& args, int64_t nN) {
  auto run = [&](auto fn) { at::parallel_for(0, nN, 8, [&](int64_t a, int64_t b) { fn(args, a, b); }); };
  if (T.bits == 8) run(vnni_tiles_rows<8, 32, 128, R>);
  else if (T.bits == 5) run(vnni_tiles_rows<5, 32, 16, R>);
  else if (T.bits == 4) run(vnni_tiles_rows<4, 32, 0, R>);
  else run(vnni_tiles_rows<6, 16, 32, R>);
}
#endif

at::Tensor vnni_gemv_rows(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& st,
                          const c10::optional<at::Tensor>& mt, const std::string& qtype,
                          const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(vnni_gemv_ready(), "vnni_gemv_rows: AVX512-VNNI is not available in this build or CPU");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= VNNI_MAX_ROWS && x.scalar_type() == at::kFloat &&
                    x.is_contiguous(), "vnni_gemv_rows: x must be contiguous fp32 [R, K] with R in 1..", VNNI_MAX_ROWS,
                    ", got ", x.sizes());
  const int64_t R = x.size(0);
  TileCall C = check_tile_call("vnni_gemv_rows", x[0], packed, st, mt, qtype, bias);
  const int64_t K = C.K, ng = C.ng;
  std::vector<int8_t> xl(static_cast<size_t>(R * 3 * K));
  std::vector<float> sx(static_cast<size_t>(R * ng)), xsum(static_cast<size_t>(R * ng));
  std::vector<int32_t> ls(static_cast<size_t>(R * 3 * ng));
#if TDA_VNNI
  const float* xp = x.const_data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    if (!limbs_x(xp + r * K, K, C.T.G, xl.data() + r * 3 * K, sx.data() + r * ng, ls.data() + r * 3 * ng,
                 xsum.data() + r * ng))
      return at::empty({0}, x.options());
  at::Tensor y = at::empty({R, C.N}, x.options());
  const VnniRowsArgs args{packed.const_data_ptr<uint8_t>(), st.const_data_ptr<float>(), C.mp, C.bp, xl.data(), sx.data(),
                          C.T.mins ? xsum.data() : nullptr, ls.data(), K, C.N, y.mutable_data_ptr<float>()};
  switch (R) {
    case 1: vnni_rows_run<1>(C.T, args, C.nN); break;
    case 2: vnni_rows_run<2>(C.T, args, C.nN); break;
    case 3: vnni_rows_run<3>(C.T, args, C.nN); break;
    default: vnni_rows_run<4>(C.T, args, C.nN); break;
  }
  return y;
#else
  return at::empty({0}, x.options());
#endif
}

}  // namespace tda_quant

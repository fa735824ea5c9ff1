// Input-sparse decode (one row of x) over quantized weights with AVX512-VNNI: TEAL's threshold rule
// or a given set of active inputs, reading only the active inputs' weights; included by
// quant_blocks.h after vnni_gemv.h; a fragment of torch.ops.tda_kernels.
//
// The weights, "VNNI columns" (tda.models.quant.vnni_columns): for each block of OB outputs (64 for
// 8-bit storage, 128 for 4-bit), each input's stored values u = q + off (unsigned: Q8_0 q + 128,
// Q5_0/Q4_0 q + 16, Q6_K q + 32, Q4_K q) in one 64-byte line, vq[N / OB, K, 64]: byte p of input i's
// line holds output 16 k + 4 L + d of the block for p = 16 L + 4 k + d (4-bit: the low nibble that
// output, the high nibble the output 64 further on). One line a kept input and block, so a step reads
// the kept inputs' lines only, in ascending order (a forward stream with gaps).
//
// x is split into exact integer limbs per group of G inputs (limbs_x of int8_tiles.h, over x with its
// inactive inputs zeroed). The kept inputs of a group, in fours ("quads"; the last one padded with
// zero limbs), are interleaved on the fly -- unpacklo/hi_epi8 then _epi16 of four lines give four
// registers whose dword n holds the four inputs' values for output 16 k + n, the byte order above
// making it so -- and VPDPBUSD multiplies them with a broadcast of the quad's limbs: each (limb,
// group) sum lands exactly in int32, is corrected for the offset (off * the group's limb sum) and
// combined and scaled once per group exactly as the dense tile GEMV does (tile_group). The result
// equals F.linear on the de-quantised weights of the masked x to fp32 rounding of the activations
// (tests/test_vnni_sparse.py). The group scales are read as the input-major repack holds them
// (QuantWeightT: fp32 or fp16 st, or integer factors st of an fp16 sd, and Q4_K's minimums alike).
//
//   vnni_input_sparse(x[K] fp32, vq, bits, off, group, st, mt?, sd?, md?, idx?, bias?, t, tvec?, count?)
//       -> y[..., N]: the active inputs are idx (ascending, unique) where given, else x_i != 0 and
//       |x_i| >= (tvec[i] or t); count (int64, one value) grows by their number. Returns an empty
//       tensor where some x is not finite (the caller then takes the input-major kernel).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>
#include <vector>

#ifndef TDA_VSPARSE_PF
#define TDA_VSPARSE_PF 2  // blocks of a group whose lines are requested ahead of the reads
#endif

namespace tda_quant {

// The group scales (and minimums) of an input-sparse weight: [ng, N] fp32 or fp16, or integer
// factors (uint8 / int8) of an fp16 [ng / R, N].
struct VScales {
  const void *st, *mt;
  const at::Half *sd, *md;
  int kind;  // 0 fp32, 1 fp16, 2 uint8 x sd, 3 int8 x sd
  int64_t N, R;
};

#if TDA_VNNI
TDA_VNNI_TARGET inline __m512 vs_load(const VScales& S, const void* p, const at::Half* d, int64_t g, int64_t j) {
  const int64_t o = g * S.N + j;
  switch (S.kind) {
    case 0: return _mm512_loadu_ps(static_cast<const float*>(p) + o);
    case 1: return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const at::Half*>(p) + o)));
    default: {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(p) + o));
      const __m512 f = _mm512_cvtepi32_ps(S.kind == 2 ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b));
      const __m512 dd = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + (g / S.R) * S.N + j)));
      return _mm512_mul_ps(dd, f);  // exact: the blocks' own product
    }
  }
}

struct VSparseArgs {
  const uint8_t* vq;     // [K, nB, 64]
  int64_t K, ng, G, nB;
  VScales S;
  const int64_t* qi;     // [4 * nq] the quads' lines: 64 * nB * input
  const int32_t* ql;     // [3 * nq] the quads' limbs, four bytes a dword (limb l of quad q at l * nq + q)
  const int64_t* gq;     // [ng + 1] quad offsets of the groups
  const int64_t* gs;     // the groups that have quads, ascending
  int64_t ngs;
  const int32_t* ls;     // [3, ng] the groups' limb sums (of the masked x)
  const float *sx, *xsum, *bias;
  int64_t nq;
  float* y;
};

// The quads [q0, q1) of one group and block into the limb sums s0, s1, s2 (four registers each:
// outputs 16 k .. 16 k + 15 of the half), HALF 0 or 1 (4-bit: the low or high nibbles).
template <int BITS, int HALF>
TDA_VNNI_TARGET __attribute__((always_inline)) inline void vsparse_quads(const VSparseArgs& A, const uint8_t* base, int64_t q0,
                                                                        int64_t q1, __m512i* s0, __m512i* s1, __m512i* s2) {
  const __m512i m4 = _mm512_set1_epi8(15);
  __m512i a0 = s0[0], a1 = s0[1], a2 = s0[2], a3 = s0[3], b0 = s1[0], b1 = s1[1], b2 = s1[2], b3 = s1[3];
  __m512i c0 = s2[0], c1 = s2[1], c2 = s2[2], c3 = s2[3];
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t* ii = A.qi + 4 * q;
    __m512i c[4];
    for (int u = 0; u < 4; ++u) {
      const __m512i v = _mm512_loadu_si512(base + ii[u]);
      if constexpr (BITS == 8) c[u] = v;
      else if constexpr (HALF == 0) c[u] = _mm512_and_si512(v, m4);
      else c[u] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    const __m512i ab0 = _mm512_unpacklo_epi8(c[0], c[1]), ab1 = _mm512_unpackhi_epi8(c[0], c[1]);
    const __m512i cd0 = _mm512_unpacklo_epi8(c[2], c[3]), cd1 = _mm512_unpackhi_epi8(c[2], c[3]);
    const __m512i r0 = _mm512_unpacklo_epi16(ab0, cd0), r1 = _mm512_unpackhi_epi16(ab0, cd0);
    const __m512i r2 = _mm512_unpacklo_epi16(ab1, cd1), r3 = _mm512_unpackhi_epi16(ab1, cd1);
    const __m512i x0 = _mm512_set1_epi32(A.ql[q]), x1 = _mm512_set1_epi32(A.ql[A.nq + q]), x2 = _mm512_set1_epi32(A.ql[2 * A.nq + q]);
    a0 = _mm512_dpbusd_epi32(a0, r0, x0), a1 = _mm512_dpbusd_epi32(a1, r1, x0);
    a2 = _mm512_dpbusd_epi32(a2, r2, x0), a3 = _mm512_dpbusd_epi32(a3, r3, x0);
    b0 = _mm512_dpbusd_epi32(b0, r0, x1), b1 = _mm512_dpbusd_epi32(b1, r1, x1);
    b2 = _mm512_dpbusd_epi32(b2, r2, x1), b3 = _mm512_dpbusd_epi32(b3, r3, x1);
    c0 = _mm512_dpbusd_epi32(c0, r0, x2), c1 = _mm512_dpbusd_epi32(c1, r1, x2);
    c2 = _mm512_dpbusd_epi32(c2, r2, x2), c3 = _mm512_dpbusd_epi32(c3, r3, x2);
  }
  s0[0] = a0, s0[1] = a1, s0[2] = a2, s0[3] = a3, s1[0] = b0, s1[1] = b1, s1[2] = b2, s1[3] = b3;
  s2[0] = c0, s2[1] = c1, s2[2] = c2, s2[3] = c3;
}

// Group g's quads over one half (64 outputs from j0) of a block, its limb sums (offset removed)
// combined and scaled once, as tile_group does, and added to y.
template <int BITS, int OFF, int HALF>
TDA_VNNI_TARGET __attribute__((always_inline)) inline void vsparse_half(const VSparseArgs& A, const uint8_t* base, int64_t g,
                                                                       int64_t j0) {
  __m512i s[3][4];
  for (int l = 0; l < 3; ++l)
    for (int k = 0; k < 4; ++k) s[l][k] = _mm512_setzero_si512();
  vsparse_quads<BITS, HALF>(A, base, A.gq[g], A.gq[g + 1], s[0], s[1], s[2]);
  const __m512 sx = _mm512_set1_ps(A.sx[g]);
  const __m512i o0 = _mm512_set1_epi32(OFF * A.ls[g]), o1 = _mm512_set1_epi32(OFF * A.ls[A.ng + g]),
                o2 = _mm512_set1_epi32(OFF * A.ls[2 * A.ng + g]);
  for (int k = 0; k < 4; ++k) {
    const int64_t j = j0 + 16 * k;
    const __m512 sum = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(_mm512_sub_epi32(s[0][k], o0)), _mm512_set1_ps(65536.0f),
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(s[1][k], o1)), _mm512_set1_ps(256.0f),
                        _mm512_cvtepi32_ps(_mm512_sub_epi32(s[2][k], o2))));
    __m512 acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(vs_load(A.S, A.S.st, A.S.sd, g, j), sx), _mm512_loadu_ps(A.y + j));
    if (A.S.mt) acc = _mm512_fnmadd_ps(vs_load(A.S, A.S.mt, A.S.md, g, j), _mm512_set1_ps(A.xsum[g]), acc);
    _mm512_storeu_ps(A.y + j, acc);
  }
}

// Output blocks [a, b) (BITS 8: 64 outputs a block; 4: 128, the low nibbles the first 64 outputs,
// the high nibbles the next 64): group by group, block by block, so that a thread reads its lines
// in the order they are stored, and requests the lines of the block two on before its reads.
template <int BITS, int OFF>
TDA_VNNI_TARGET void vnni_sparse_blocks(const VSparseArgs& A, int64_t a, int64_t b) {
  constexpr int64_t OB = BITS == 8 ? 64 : 128;
  for (int64_t j = a * OB; j < b * OB; j += 16)
    _mm512_storeu_ps(A.y + j, A.bias ? _mm512_loadu_ps(A.bias + j) : _mm512_setzero_ps());
  const int64_t n = b - a;
  for (int64_t t = 0; t < A.ngs; ++t) {
    const int64_t g = A.gs[t];
    for (int64_t ob = a; ob < b; ++ob) {
      // prefetch: the same group's lines two blocks on, or the next group's in its first blocks
      const int64_t ahead = ob - a + TDA_VSPARSE_PF;
      const int64_t gp = ahead < n ? g : (t + 1 < A.ngs ? A.gs[t + 1] : -1);
      if (gp >= 0) {
        const char* pb = reinterpret_cast<const char*>(A.vq + (a + ahead % n) * 64);
        for (int64_t q = A.gq[gp]; q < A.gq[gp + 1]; ++q)
          for (int u = 0; u < 4; ++u) _mm_prefetch(pb + A.qi[4 * q + u], _MM_HINT_T0);
      }
      const uint8_t* base = A.vq + ob * 64;
      if constexpr (BITS == 8) {
        vsparse_half<8, OFF, 0>(A, base, g, ob * 64);
      } else {
        vsparse_half<4, OFF, 0>(A, base, g, ob * 128);
        vsparse_half<4, OFF, 1>(A, base, g, ob * 128 + 64);
      }
    }
  }
}
#endif

inline VScales check_vscales(const at::Tensor& st, const c10::optional<at::Tensor>& mt, const c10::optional<at::Tensor>& sd,
                             const c10::optional<at::Tensor>& md, int64_t ng, int64_t N) {
  const char* what = "vnni_input_sparse";
  auto ok2 = [&](const at::Tensor& t, int64_t rows) { return t.dim() == 2 && t.size(0) == rows && t.size(1) == N && t.is_contiguous() && t.device().is_cpu(); };
  TORCH_CHECK_VALUE(ok2(st, ng), what, ": st must be a contiguous [", ng, ", ", N, "] CPU tensor");
  VScales S{st.const_data_ptr(), nullptr, nullptr, nullptr, 0, N, 1};
  const bool has_sd = sd.has_value() && sd->defined(), has_mt = mt.has_value() && mt->defined();
  if (!has_sd) {
    TORCH_CHECK_VALUE(st.scalar_type() == at::kFloat || st.scalar_type() == at::kHalf, what, ": st must be fp32 or fp16 without sd");
    S.kind = st.scalar_type() == at::kFloat ? 0 : 1;
    if (has_mt) {
      TORCH_CHECK_VALUE(ok2(*mt, ng) && mt->scalar_type() == st.scalar_type(), what, ": mt must be shaped and typed like st");
      S.mt = mt->const_data_ptr();
    }
    return S;
  }
  TORCH_CHECK_VALUE(sd->dim() == 2 && sd->size(0) > 0 && ng % sd->size(0) == 0 && ok2(*sd, sd->size(0)) &&
                    sd->scalar_type() == at::kHalf, what, ": sd must be fp16 [ng / R, N]");
  TORCH_CHECK_VALUE(st.scalar_type() == at::kByte || st.scalar_type() == at::kChar, what, ": factored st must be uint8 or int8");
  S.kind = st.scalar_type() == at::kByte ? 2 : 3;
  S.sd = sd->const_data_ptr<at::Half>();
  S.R = ng / sd->size(0);
  if (has_mt) {
    TORCH_CHECK_VALUE(md.has_value() && md->defined() && ok2(*mt, ng) && mt->scalar_type() == st.scalar_type() &&
                      md->sizes() == sd->sizes() && md->is_contiguous() && md->scalar_type() == at::kHalf,
                      what, ": factored minimums need mt like st and md like sd");
    S.mt = mt->const_data_ptr();
    S.md = md->const_data_ptr<at::Half>();
  }
  return S;
}

at::Tensor vnni_input_sparse(const at::Tensor& x, const at::Tensor& vq, int64_t bits, int64_t off, int64_t group,
                             const at::Tensor& st, const c10::optional<at::Tensor>& mt, const c10::optional<at::Tensor>& sd,
                             const c10::optional<at::Tensor>& md, const c10::optional<at::Tensor>& idx,
                             const c10::optional<at::Tensor>& bias, double t, const c10::optional<at::Tensor>& tvec,
                             const c10::optional<at::Tensor>& count) {
  const char* what = "vnni_input_sparse";
  TORCH_CHECK_VALUE(vnni_gemv_ready(), what, ": AVX512-VNNI is not available in this build or CPU");
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, what, ": bits must be 4 or 8");
  TORCH_CHECK_VALUE((bits == 4 && off == 0) || (bits == 8 && (off == 0 || off == 16 || off == 32 || off == 128)), what,
                    ": no kernel for bits ", bits, " and offset ", off);
  TORCH_CHECK_VALUE(group == 16 || group == 32, what, ": group must be 16 or 32");
  TORCH_CHECK_VALUE(vq.dim() == 3 && vq.size(2) == 64 && vq.size(0) % group == 0 && vq.scalar_type() == at::kByte &&
                    vq.is_contiguous() && vq.device().is_cpu(), what, ": vq must be uint8 [K, N / OB, 64], K whole groups");
  const int64_t K = vq.size(0), ng = K / group, OB = bits == 8 ? 64 : 128, nB = vq.size(1), N = nB * OB;
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() == K && x.size(-1) == K && x.device().is_cpu(),
                    what, ": x must be one contiguous fp32 row of ", K);
  VScales S = check_vscales(st, mt, sd, md, ng, N);
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous() && bias->scalar_type() == at::kFloat,
                      what, ": bias must be fp32 [", N, "]");
    bp = bias->const_data_ptr<float>();
  }
  const float* xp = x.const_data_ptr<float>();
  // the active inputs, and x with the others zeroed
  std::vector<float> xm(static_cast<size_t>(K), 0.0f);
  std::vector<uint8_t> keep(static_cast<size_t>(K), 0);
  int64_t kept = 0;
  if (idx.has_value() && idx->defined()) {
    TORCH_CHECK_VALUE(idx->dim() == 1 && idx->scalar_type() == at::kLong && idx->is_contiguous(), what, ": idx must be int64 [k]");
    const int64_t* ip = idx->const_data_ptr<int64_t>();
    for (int64_t n = 0; n < idx->numel(); ++n) {
      TORCH_CHECK_VALUE(ip[n] >= 0 && ip[n] < K && (n == 0 || ip[n] > ip[n - 1]), what, ": idx must be ascending, unique and in [0, ", K, ")");
      keep[ip[n]] = 1;
    }
  } else {
    const float* tv = nullptr;
    if (tvec.has_value() && tvec->defined()) {
      TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == K && tvec->scalar_type() == at::kFloat && tvec->is_contiguous(),
                        what, ": tvec must be fp32 [", K, "]");
      tv = tvec->const_data_ptr<float>();
    }
    const float tf = static_cast<float>(t);
    for (int64_t i = 0; i < K; ++i) keep[i] = xp[i] != 0.0f && std::fabs(xp[i]) >= (tv ? tv[i] : tf);
  }
  for (int64_t i = 0; i < K; ++i)
    if (keep[i]) xm[i] = xp[i], ++kept;
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
#if TDA_VNNI
  XLimbs L(K, ng);
  if (!limbs_x(xm.data(), K, group, L.xl.data(), L.sx.data(), L.ls.data(), L.xsum.data())) return at::empty({0}, x.options());
  if (count.has_value() && count->defined()) {
    TORCH_CHECK_VALUE(count->numel() == 1 && count->scalar_type() == at::kLong, what, ": bad count");
    count->mutable_data_ptr<int64_t>()[0] += kept;
  }
  // the quads: each group's kept inputs in fours, the last padded with zero limbs (on a kept input's line)
  std::vector<int64_t> gq(static_cast<size_t>(ng + 1), 0);
  std::vector<int64_t> qi;
  std::vector<int32_t> ql0, ql1, ql2;
  qi.reserve(static_cast<size_t>(kept + 4 * ng));
  for (int64_t g = 0; g < ng; ++g) {
    int n = 0;
    uint8_t b[3][4];
    int64_t first = -1;
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      if (!keep[i]) continue;
      if (first < 0) first = 64 * nB * i;
      qi.push_back(64 * nB * i);
      for (int l = 0; l < 3; ++l) b[l][n] = static_cast<uint8_t>(L.xl[l * K + i]);
      if (++n == 4) {
        int32_t v[3];
        for (int l = 0; l < 3; ++l) std::memcpy(&v[l], b[l], 4);
        ql0.push_back(v[0]), ql1.push_back(v[1]), ql2.push_back(v[2]);
        n = 0;
      }
    }
    if (n > 0) {
      for (; n < 4; ++n) {
        qi.push_back(first);
        for (int l = 0; l < 3; ++l) b[l][n] = 0;
      }
      int32_t v[3];
      for (int l = 0; l < 3; ++l) std::memcpy(&v[l], b[l], 4);
      ql0.push_back(v[0]), ql1.push_back(v[1]), ql2.push_back(v[2]);
    }
    gq[g + 1] = static_cast<int64_t>(ql0.size());
  }
  const int64_t nq = static_cast<int64_t>(ql0.size());
  std::vector<int64_t> gs;
  for (int64_t g = 0; g < ng; ++g)
    if (gq[g + 1] > gq[g]) gs.push_back(g);
  std::vector<int32_t> ql(static_cast<size_t>(3 * nq));
  std::copy(ql0.begin(), ql0.end(), ql.begin());
  std::copy(ql1.begin(), ql1.end(), ql.begin() + nq);
  std::copy(ql2.begin(), ql2.end(), ql.begin() + 2 * nq);
  at::Tensor y = at::empty(sizes, x.options());
  const VSparseArgs A{vq.const_data_ptr<uint8_t>(), K, ng, group, nB, S, qi.data(), ql.data(), gq.data(), gs.data(),
                      static_cast<int64_t>(gs.size()), L.ls.data(), L.sx.data(), L.xsum.data(), bp, nq, y.mutable_data_ptr<float>()};
  auto run = [&](auto fn) { at::parallel_for(0, nB, 4, [&](int64_t a, int64_t b) { fn(A, a, b); }); };
  if (bits == 4) run(vnni_sparse_blocks<4, 0>);
  else if (off == 128) run(vnni_sparse_blocks<8, 128>);
  else if (off == 32) run(vnni_sparse_blocks<8, 32>);
  else if (off == 16) run(vnni_sparse_blocks<8, 16>);
  else run(vnni_sparse_blocks<8, 0>);
  return y;
#else
  (void)S, (void)bp, (void)kept, (void)count;
  return at::empty({0}, x.options());
#endif
}

}  // namespace tda_quant

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("vnni_input_sparse(Tensor x, Tensor vq, int bits, int off, int group, Tensor st, Tensor? mt, Tensor? sd, "
        "Tensor? md, Tensor? idx, Tensor? bias, float t, Tensor? tvec, Tensor(a!)? count=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) { m.impl("vnni_input_sparse", &tda_quant::vnni_input_sparse); }

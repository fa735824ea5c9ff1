// Input-sparse decode (one row of x) over quantized weights with AVX512-VNNI: TEAL's threshold rule
// or a given set of active inputs, reading only the active inputs' weights; included by
// quant_blocks.h after vnni_gemv.h; a fragment of torch.ops.tda_kernels. Opt-in (TDA_VNNI_SPARSE=1,
// tda.engine.quant_kernels.vnni_columns_wanted, which says what it measured).
//
// The weights, "VNNI columns" (tda.models.quant.vnni_columns): vq[K, N / OB, 64], for each input
// and block of OB outputs (64 for 8-bit storage, 128 for 4-bit) one 64-byte line of its stored
// values u = q + off (unsigned: Q8_0 q + 128, Q5_0/Q4_0 q + 16, Q6_K q + 32, Q4_K q); byte p of a
// line holds output 16 k + 4 L + d of the block for p = 16 L + 4 k + d (4-bit: the low nibble that
// output, the high nibble the output 64 further on). An input's lines are contiguous, so a step
// reads the kept inputs' runs and nothing else -- except for weights with more output blocks than
// input groups (an lm_head), whose columns are block-major, vq[N / OB, K, 64], read block by block.
//
// x is split into exact integer limbs per group of G inputs (limbs_x of int8_tiles.h, over x with its
// inactive inputs zeroed). The kept inputs of a group, in fours ("quads"; the last one padded with
// zero limbs), are interleaved on the fly -- unpacklo/hi_epi8 then _epi16 of four lines give four
// registers whose dword n holds the four inputs' values for output 16 k + n, the byte order above
// making it so -- and VPDPBUSD multiplies them with a broadcast of the quad's limbs: each (limb,
// group) sum lands exactly in int32 (started at -off * the group's limb sum, which removes the
// offset), and is combined and scaled once per group as the dense tile GEMV does (tile_group).
// Input-major columns: the groups are split over threads, each summing into its own copy of y,
// added up at the end; block-major: the output blocks are, each block's sums kept in registers. The
// result equals F.linear on the de-quantised weights of the masked x to fp32 rounding of the
// activations (tests/test_vnni_sparse.py). The group scales are read as the input-major repack holds
// them (QuantWeightT: fp32 or fp16 st, or integer factors st of an fp16 sd, and Q4_K's minimums alike).
//
//   vnni_input_sparse(x[K] fp32, vq, bits, off, group, st, mt?, sd?, md?, idx?, bias?, t, tvec?, count?)
//       -> y[..., N]: the active inputs are idx (ascending, unique) where given, else x_i != 0 and
//       |x_i| >= (tvec[i] or t); count (int64, one value) grows by their number. Returns an empty
//       tensor where an active x is not finite (the caller then takes the input-major kernel).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifndef TDA_VSPARSE_PF
#define TDA_VSPARSE_PF 2  // groups whose lines are requested ahead of the reads
#endif
#ifndef TDA_VSPARSE_CHUNK
#define TDA_VSPARSE_CHUNK 4  // blocks of outputs a pass over the groups covers
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
  int64_t K, ng, G, nB, bstride;  // bstride: bytes from one output block's lines to the next's
  VScales S;
  const int64_t* qi;     // [4 * nq] the quads' lines: 64 * nB * input
  const int32_t* ql;     // [nq, 3] the quads' limbs, four bytes a dword
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
    const __m512i x0 = _mm512_set1_epi32(A.ql[3 * q]), x1 = _mm512_set1_epi32(A.ql[3 * q + 1]), x2 = _mm512_set1_epi32(A.ql[3 * q + 2]);
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
// combined and scaled once, as tile_group does, and added to acc (outputs j0 + 16 k ..).
template <int BITS, int OFF, int HALF>
TDA_VNNI_TARGET __attribute__((always_inline)) inline void vsparse_half(const VSparseArgs& A, const uint8_t* base, int64_t g,
                                                                       int64_t j0, __m512* acc) {
  __m512i s[3][4];  // start at -off * the group's limb sums: the offsets' share, removed in int32
  for (int l = 0; l < 3; ++l)
    for (int k = 0; k < 4; ++k) s[l][k] = _mm512_set1_epi32(-OFF * A.ls[l * A.ng + g]);
  vsparse_quads<BITS, HALF>(A, base, A.gq[g], A.gq[g + 1], s[0], s[1], s[2]);
  const __m512 sx = _mm512_set1_ps(A.sx[g]);
  for (int k = 0; k < 4; ++k) {
    const int64_t j = j0 + 16 * k;
    const __m512 sum = _mm512_fmadd_ps(
        _mm512_cvtepi32_ps(s[0][k]), _mm512_set1_ps(65536.0f),
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[1][k]), _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(s[2][k])));
    acc[k] = _mm512_fmadd_ps(sum, _mm512_mul_ps(vs_load(A.S, A.S.st, A.S.sd, g, j), sx), acc[k]);
    if (A.S.mt) acc[k] = _mm512_fnmadd_ps(vs_load(A.S, A.S.mt, A.S.md, g, j), _mm512_set1_ps(A.xsum[g]), acc[k]);
  }
}

// y[j0 .. j0 + 64) plus one group's sums over that half (the groups order: y is a thread's partial sums).
template <int BITS, int OFF, int HALF>
TDA_VNNI_TARGET __attribute__((always_inline)) inline void vsparse_half_y(const VSparseArgs& A, const uint8_t* base, int64_t g,
                                                                         int64_t j0) {
  __m512 acc[4];
  for (int k = 0; k < 4; ++k) acc[k] = _mm512_loadu_ps(A.y + j0 + 16 * k);
  vsparse_half<BITS, OFF, HALF>(A, base, g, j0, acc);
  for (int k = 0; k < 4; ++k) _mm512_storeu_ps(A.y + j0 + 16 * k, acc[k]);
}

// The blocks order, for weights with more output blocks than input groups (an lm_head; their
// columns are block-major): output blocks [a, b), each half's sums over every group kept in
// registers and stored once (with the bias).
template <int BITS, int OFF>
TDA_VNNI_TARGET void vnni_sparse_blocks(const VSparseArgs& A, int64_t a, int64_t b) {
  constexpr int H = BITS == 8 ? 1 : 2;
  for (int64_t ob = a; ob < b; ++ob) {
    const uint8_t* base = A.vq + ob * A.bstride;  // the block's lines: one forward stream with gaps
    for (int h = 0; h < H; ++h) {
      const int64_t j0 = (ob * H + h) * 64;
      __m512 acc[4];
      for (int k = 0; k < 4; ++k) acc[k] = A.bias ? _mm512_loadu_ps(A.bias + j0 + 16 * k) : _mm512_setzero_ps();
      for (int64_t t = 0; t < A.ngs; ++t) {
        if constexpr (BITS == 8) vsparse_half<8, OFF, 0>(A, base, A.gs[t], j0, acc);
        else if (h == 0) vsparse_half<4, OFF, 0>(A, base, A.gs[t], j0, acc);
        else vsparse_half<4, OFF, 1>(A, base, A.gs[t], j0, acc);
      }
      for (int k = 0; k < 4; ++k) _mm512_storeu_ps(A.y + j0 + 16 * k, acc[k]);
    }
  }
}

// The groups gs[t0 .. t1) over every output block (BITS 8: 64 outputs a block; 4: 128, the low
// nibbles the first 64 outputs, the high nibbles the next 64), added to y (this thread's partial
// sums): group by group, block by block, so each kept input's lines are one forward stream; the
// lines of the group TDA_VSPARSE_PF on are requested block by block ahead of the reads.
template <int BITS, int OFF>
TDA_VNNI_TARGET void vnni_sparse_groups(const VSparseArgs& A, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t g = A.gs[t], tp = t + TDA_VSPARSE_PF < t1 ? A.gs[t + TDA_VSPARSE_PF] : -1;
    for (int64_t ob = 0; ob < A.nB; ++ob) {
      if (tp >= 0) {
        const char* pb = reinterpret_cast<const char*>(A.vq + ob * A.bstride);
        for (int64_t q = A.gq[tp]; q < A.gq[tp + 1]; ++q)
          for (int u = 0; u < 4; ++u) _mm_prefetch(pb + A.qi[4 * q + u], _MM_HINT_T0);
      }
      const uint8_t* base = A.vq + ob * A.bstride;
      if constexpr (BITS == 8) {
        vsparse_half_y<8, OFF, 0>(A, base, g, ob * 64);
      } else {
        vsparse_half_y<4, OFF, 0>(A, base, g, ob * 128);
        vsparse_half_y<4, OFF, 1>(A, base, g, ob * 128 + 64);
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
  const int64_t K = x.numel(), ng = K / group, OB = bits == 8 ? 64 : 128, N = st.dim() == 2 ? st.size(1) : -1, nB = N / OB;
  TORCH_CHECK_VALUE(K > 0 && K % group == 0 && N > 0 && N % OB == 0, what, ": x must be whole groups and st [K / group, N]");
  const bool block_major = nB > ng;  // tda.models.quant.vnni_columns: [N / OB, K, 64], else [K, N / OB, 64]
  TORCH_CHECK_VALUE(vq.dim() == 3 && vq.size(0) == (block_major ? nB : K) && vq.size(1) == (block_major ? K : nB) &&
                    vq.size(2) == 64 && vq.scalar_type() == at::kByte && vq.is_contiguous() && vq.device().is_cpu(),
                    what, ": vq must be uint8 ", block_major ? "[N / OB, K, 64]" : "[K, N / OB, 64]", " for these sizes");
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
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
#if TDA_VNNI
  // per call, in buffers this thread keeps: x with its inactive inputs zeroed, the active inputs as
  // one bit mask per 16, x's limbs and the quads
  thread_local std::vector<float> xm;
  thread_local std::vector<uint16_t> km;
  thread_local XLimbs L(0, 0);
  thread_local std::vector<int64_t> gq, gs, qi;
  thread_local std::vector<int32_t> ql;
  xm.resize(static_cast<size_t>(K));
  km.assign(static_cast<size_t>(K / 16), 0);
  int64_t kept = 0;
  if (idx.has_value() && idx->defined()) {
    TORCH_CHECK_VALUE(idx->dim() == 1 && idx->scalar_type() == at::kLong && idx->is_contiguous(), what, ": idx must be int64 [k]");
    const int64_t* ip = idx->const_data_ptr<int64_t>();
    for (int64_t n = 0; n < idx->numel(); ++n) {
      TORCH_CHECK_VALUE(ip[n] >= 0 && ip[n] < K && (n == 0 || ip[n] > ip[n - 1]), what, ": idx must be ascending, unique and in [0, ", K, ")");
      km[ip[n] / 16] |= static_cast<uint16_t>(1u << (ip[n] % 16));
    }
    for (int64_t c = 0; c < K / 16; ++c) {
      const __mmask16 m = km[c];
      _mm512_storeu_ps(xm.data() + 16 * c, _mm512_maskz_mov_ps(m, _mm512_loadu_ps(xp + 16 * c)));
      kept += __builtin_popcount(m);
    }
  } else {
    const float* tv = nullptr;
    if (tvec.has_value() && tvec->defined()) {
      TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == K && tvec->scalar_type() == at::kFloat && tvec->is_contiguous(),
                        what, ": tvec must be fp32 [", K, "]");
      tv = tvec->const_data_ptr<float>();
    }
    const __m512 tf = _mm512_set1_ps(static_cast<float>(t)), zero = _mm512_setzero_ps();
    for (int64_t c = 0; c < K / 16; ++c) {  // x_i != 0 and |x_i| >= t_i (NaN never)
      const __m512 v = _mm512_loadu_ps(xp + 16 * c);
      const __mmask16 m = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ) &
                          _mm512_cmp_ps_mask(_mm512_abs_ps(v), tv ? _mm512_loadu_ps(tv + 16 * c) : tf, _CMP_GE_OQ);
      km[c] = m;
      _mm512_storeu_ps(xm.data() + 16 * c, _mm512_maskz_mov_ps(m, v));
      kept += __builtin_popcount(m);
    }
  }
  if (L.xl.size() != static_cast<size_t>(3 * K) || L.sx.size() != static_cast<size_t>(ng)) L = XLimbs(K, ng);
  if (!limbs_x(xm.data(), K, group, L.xl.data(), L.sx.data(), L.ls.data(), L.xsum.data())) return at::empty({0}, x.options());
  if (count.has_value() && count->defined()) {
    TORCH_CHECK_VALUE(count->numel() == 1 && count->scalar_type() == at::kLong, what, ": bad count");
    count->mutable_data_ptr<int64_t>()[0] += kept;
  }
  // the quads: each group's kept inputs in fours, the last padded with zero limbs (on a kept input's line)
  gq.assign(static_cast<size_t>(ng + 1), 0);
  gs.clear(), qi.clear(), ql.clear();
  const int64_t row = block_major ? 64 : 64 * nB;  // bytes from one input's line to the next's
  for (int64_t g = 0; g < ng; ++g) {
    int n = 0;
    uint8_t b[3][4];
    for (int64_t c = g * group / 16; c < (g + 1) * group / 16; ++c)
      for (uint32_t bits = km[c]; bits; bits &= bits - 1) {
        const int64_t i = 16 * c + __builtin_ctz(bits);
        qi.push_back(row * i);
        for (int l = 0; l < 3; ++l) b[l][n] = static_cast<uint8_t>(L.xl[l * K + i]);
        if (++n == 4) {
          for (int l = 0; l < 3; ++l) ql.push_back(0), std::memcpy(&ql.back(), b[l], 4);
          n = 0;
        }
      }
    if (n > 0) {
      const int64_t first = qi[qi.size() - n];
      for (; n < 4; ++n) {
        qi.push_back(first);
        for (int l = 0; l < 3; ++l) b[l][n] = 0;
      }
      for (int l = 0; l < 3; ++l) ql.push_back(0), std::memcpy(&ql.back(), b[l], 4);
    }
    gq[g + 1] = static_cast<int64_t>(ql.size() / 3);
    if (gq[g + 1] > gq[g]) gs.push_back(g);
  }
  const int64_t nq = gq[ng];
  at::Tensor y = at::empty(sizes, x.options());
  float* yp = y.mutable_data_ptr<float>();
  VSparseArgs A0{vq.const_data_ptr<uint8_t>(), K, ng, group, nB, block_major ? 64 * K : 64, S, qi.data(), ql.data(), gq.data(), gs.data(),
                 static_cast<int64_t>(gs.size()), L.ls.data(), L.sx.data(), L.xsum.data(), bp, nq, yp};
  if (block_major) {  // the blocks order: output blocks split over threads, sums in registers
    auto run = [&](auto fn) { at::parallel_for(0, nB, 1, [&](int64_t a, int64_t b) { fn(A0, a, b); }); };
    if (bits == 4) run(vnni_sparse_blocks<4, 0>);
    else if (off == 128) run(vnni_sparse_blocks<8, 128>);
    else if (off == 32) run(vnni_sparse_blocks<8, 32>);
    else if (off == 16) run(vnni_sparse_blocks<8, 16>);
    else run(vnni_sparse_blocks<8, 0>);
    return y;
  }
  // the groups order: the groups split over threads, each summing into its own outputs, then added up
  const int nt = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), (static_cast<int64_t>(gs.size()) + 7) / 8));
  thread_local std::vector<float> part;
  part.assign(static_cast<size_t>(nt * N), 0.0f);
  float* const pp = part.data();  // (a thread_local named inside the workers would be theirs)
  auto run = [&](auto fn) {
    at::parallel_for(0, nt, 1, [&](int64_t a, int64_t b) {
      for (int64_t w = a; w < b; ++w) {
        VSparseArgs A = A0;
        A.y = pp + w * N;
        const int64_t per = (A.ngs + nt - 1) / nt;
        fn(A, std::min(A.ngs, w * per), std::min(A.ngs, (w + 1) * per));
      }
    });
  };
  if (bits == 4) run(vnni_sparse_groups<4, 0>);
  else if (off == 128) run(vnni_sparse_groups<8, 128>);
  else if (off == 32) run(vnni_sparse_groups<8, 32>);
  else if (off == 16) run(vnni_sparse_groups<8, 16>);
  else run(vnni_sparse_groups<8, 0>);
  for (int64_t j = 0; j < N; j += 16) {
    __m512 v = bp ? _mm512_loadu_ps(bp + j) : _mm512_setzero_ps();
    for (int w = 0; w < nt; ++w) v = _mm512_add_ps(v, _mm512_loadu_ps(pp + w * N + j));
    _mm512_storeu_ps(yp + j, v);
  }
  return y;
#else
  (void)S, (void)bp, (void)count, (void)idx, (void)tvec, (void)t, (void)xp;
  return at::empty({0}, x.options());
#endif
}

}  // namespace tda_quant

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("vnni_input_sparse(Tensor x, Tensor vq, int bits, int off, int group, Tensor st, Tensor? mt, Tensor? sd, "
        "Tensor? md, Tensor? idx, Tensor? bias, float t, Tensor? tvec, Tensor(a!)? count=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) { m.impl("vnni_input_sparse", &tda_quant::vnni_input_sparse); }

// Linears over quantized weights in the int8 "group" repack of GGUF blocks (tda/models/quant.py),
// included at the end of sparse_kernels.cpp; a fragment of torch.ops.tda_kernels.
//
// A weight W[d_out, d_in] is held as
//   q[d_out, d_in]        int8 values (the blocks' integers, offsets already applied),
//   scale[d_out, d_in/G]  fp32, one per group of G consecutive inputs of a row (G = 16 or 32),
//   min[d_out, d_in/G]    fp32 or undefined (Q4_K's sub-block minimums),
// and its value is W[j, i] = scale[j, g] * q[j, i] - min[j, g], g = i / G: exactly the file's
// dequantised value (for Q8_0, Q5_0, Q4_0, Q6_K the product is exact in fp32; Q4_K's difference is
// rounded once, as gguf's dequantiser rounds it). The AVX-512 GEMV sums q * x over each group in
// fp32 and scales the group's sum once (s * sum q x - min * sum x: the same sum as F.linear on the
// de-quantised weights, the scale factored out of its group, so it equals it to fp32 rounding);
// activations and accumulation are fp32 throughout. The generic loops and the prefill tiles
// rebuild each weight exactly (quant_dequant) and multiply-add it.
//
//   quant_linear(x[..., d_in] fp32, q, scale, min?, bias?) -> y[..., d_out] fp32
//       up to kQuantMaxRows rows: one pass over the weight rows (every row of x per weight row,
//       each weight rebuilt once); more rows (prefill): the AMX group product of amx_gemm.h where
//       the CPU has AMX, else tiles of rows dequantised into an fp32 buffer and multiplied by at::mm.
//   quant_dequant(q, scale, min?, r0, r1) -> W[r1 - r0, d_in] fp32 (the rows' exact values).
//   quant_rows(x, q, scale, min?, idx, bias?) -> y[..., k]: output-sparse, the rows idx only.
//   quant_input_sparse(x, qt, st, mt?, idx, bias?, compact) -> y[..., d_out]: input-sparse over the
//       input-major repack (QuantWeight.input_major), the active inputs idx only (compact: x holds
//       just those inputs, in idx's order: a prompt-fixed slice's activations).
//   quant_input_sparse_threshold(x, qt, st, mt?, bias?, t, tvec?, count?): TEAL's rule and product.
//   amx_prefill_ready() -> bool: the prefill of quant_linear / quant_rows / quant_blocks_linear runs
//       on AMX tiles (amx_gemm.h) rather than dequantised tiles through at::mm.
//   Both input-sparse ops also take the scales as compact as the blocks hold them, the same results
//   bit for bit: st fp16 (Q8_0/Q5_0/Q4_0: QWTH), st int8 factors of an fp16 sd (Q6_K: QWTK), or Q4_K
//   packed (qt uint8 with 4-bit values two a byte, st/mt uint8, sd/md fp16: QWT4).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TDA_QUANT_AVX512 1
#else
#define TDA_QUANT_AVX512 0
#endif

#include "amx_gemm.h"  // prefill on AMX tiles where the CPU has them

namespace tda_quant {

constexpr int64_t kQuantMaxRows = 8;  // rows of x that the GEMV path takes; more go to tiles + mm

struct QW {  // one quantized weight, as raw pointers
  const int8_t* q;
  const float* scale;
  const float* min;  // nullptr: no minimums
  int64_t d_out, d_in, G, ng;
  const int64_t* idx = nullptr;  // output j is weight row idx[j] (nullptr: row j)
  int64_t ldy = 0;               // y's row stride (outputs per row of x)
  bool prefetch = true;          // rows stream from memory: prefetch TDA_QUANT_PF ahead (false: an L1 buffer)
  int64_t row(int64_t j) const { return idx ? idx[j] : j; }
};

// The exact value of row j's inputs [g*G, g*G + G) into w[0..G).
inline void dequant_group(const QW& W, int64_t j, int64_t g, float* w) {
  const int8_t* qr = W.q + j * W.d_in + g * W.G;
  const float s = W.scale[j * W.ng + g];
  if (W.min) {
    const float m = W.min[j * W.ng + g];
    for (int64_t i = 0; i < W.G; ++i) w[i] = std::fma(static_cast<float>(qr[i]), s, -m);
  } else {
    for (int64_t i = 0; i < W.G; ++i) w[i] = static_cast<float>(qr[i]) * s;
  }
}

#ifndef TDA_QUANT_ROWS
#define TDA_QUANT_ROWS 2  // weight rows per pass at batch 1 (in-cache, 1 thread: 2 rows ~+25% over 1, 4 rows slower than 2)
#endif

#ifndef TDA_QUANT_PF
#define TDA_QUANT_PF 8192  // software prefetch distance in the int8 stream (bytes): lm_head from DRAM, 2 threads,
                           // none 15.6 ms, 1 KiB 11.5, 4 KiB 10.0, 8 KiB 9.7, 16 KiB 10.4
#endif

#ifndef TDA_QUANT_SPARSE_PF
#define TDA_QUANT_SPARSE_PF 256  // input-sparse: each active row's bytes this far ahead (64 outputs a pass)
#endif
constexpr int64_t kSparseNextMax = 8192;  // input-sparse: rows up to this many outputs prefetch the next groups' rows

#if TDA_QUANT_AVX512
inline __m512 q16(const int8_t* q) {  // 16 int8 values as fp32 (exact)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}

// Rows [j0, j1) for B rows of x, groups of G = 16 * P inputs. Per group the integer-weighted sum
// t = sum_i q_i x_i is formed first (fp32 products and sums) and scaled once, acc += s * t: the
// block scale factored out of its group (fewer multiplies per weight; the same sum up to fp32
// rounding). Minimums (Q4_K) come last: y -= sum_g min_g * xsum_g, with xsum the groups' sums of x.
template <int B, int P>
void gemv_rows_avx512(const QW& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y);

inline float min_dot(const QW& W, int64_t rj, const float* xs) {  // sum_g min[rj, g] * xsum[g], 16 groups at a time
  const int64_t ng = W.ng;
  const float* mr = W.min + rj * ng;
  __m512 m = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= ng; g += 16) m = _mm512_fmadd_ps(_mm512_loadu_ps(mr + g), _mm512_loadu_ps(xs + g), m);
  if (g < ng) {
    const __mmask16 k = static_cast<__mmask16>((1u << (ng - g)) - 1u);
    m = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, mr + g), _mm512_maskz_loadu_ps(k, xs + g), m);
  }
  return _mm512_reduce_add_ps(m);
}

// Batch 1, R rows per pass: each 16 inputs of x loaded once for all R rows, two accumulators per
// row (even and odd groups).
template <int R, int P>
void gemv_rowsR_b1(const QW& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y) {
  const int64_t d = W.d_in, ng = W.ng;
  int64_t j = j0;
  for (; j + R <= j1; j += R) {
    const int8_t* q[R];
    const float* s[R];
    for (int r = 0; r < R; ++r) {
      q[r] = W.q + W.row(j + r) * d;
      s[r] = W.scale + W.row(j + r) * ng;
    }
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c = g * 16 * P;
      if (W.prefetch && !W.idx && (c & 63) == 0)  // rows are consecutive: fetch the stream TDA_QUANT_PF bytes ahead
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(q[r] + c + TDA_QUANT_PF), _MM_HINT_T0);
      const __m512 xa = _mm512_loadu_ps(x + c);
      __m512 t[R];
      for (int r = 0; r < R; ++r) t[r] = _mm512_mul_ps(q16(q[r] + c), xa);
      if (P == 2) {
        const __m512 xb = _mm512_loadu_ps(x + c + 16);
        for (int r = 0; r < R; ++r) t[r] = _mm512_fmadd_ps(q16(q[r] + c + 16), xb, t[r]);
      }
      for (int r = 0; r < R; ++r) acc[r][g & 1] = _mm512_fmadd_ps(t[r], _mm512_set1_ps(s[r][g]), acc[r][g & 1]);
    }
    for (int r = 0; r < R; ++r) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
      if (W.min) v -= min_dot(W, W.row(j + r), xsum);
      y[j + r] = v;
    }
  }
  if (j < j1) gemv_rows_avx512<1, P>(W, x, xsum, j, j1, y);
}

template <int B, int P>
void gemv_rows_avx512(const QW& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y) {
  const int64_t d = W.d_in, ng = W.ng;
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* qr = W.q + W.row(j) * d;
    const float* sr = W.scale + W.row(j) * ng;
    __m512 acc[B][2];
    for (int b = 0; b < B; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c0 = g * 16 * P;
      const __m512 s = _mm512_set1_ps(sr[g]);
      const __m512 w0 = q16(qr + c0);
      __m512 t[B];
      for (int b = 0; b < B; ++b) t[b] = _mm512_mul_ps(w0, _mm512_loadu_ps(x + b * d + c0));
      for (int p = 1; p < P; ++p) {
        const __m512 w = q16(qr + c0 + 16 * p);
        for (int b = 0; b < B; ++b) t[b] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + b * d + c0 + 16 * p), t[b]);
      }
      for (int b = 0; b < B; ++b) acc[b][g & 1] = _mm512_fmadd_ps(t[b], s, acc[b][g & 1]);
    }
    for (int b = 0; b < B; ++b) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]));
      if (W.min) v -= min_dot(W, W.row(j), xsum + b * ng);
      y[b * W.ldy + j] = v;
    }
  }
}
#endif

// y[b, j] = W[j, :] . x[b, :] for rows j in [j0, j1), B rows of x (row stride d_in, y stride d_out).
template <int B>
void gemv_rows(const QW& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y) {
#if TDA_QUANT_AVX512
  if (B == 1 && W.G == 32) return gemv_rowsR_b1<TDA_QUANT_ROWS, 2>(W, x, xsum, j0, j1, y);
  if (B == 1 && W.G == 16) return gemv_rowsR_b1<TDA_QUANT_ROWS, 1>(W, x, xsum, j0, j1, y);
  if (W.G == 32) return gemv_rows_avx512<B, 2>(W, x, xsum, j0, j1, y);
  if (W.G == 16) return gemv_rows_avx512<B, 1>(W, x, xsum, j0, j1, y);
#endif
  (void)xsum;
  const int64_t d = W.d_in;
  std::vector<float> w(static_cast<size_t>(W.G));
  for (int64_t j = j0; j < j1; ++j) {
    float acc[B][16] = {};
    for (int64_t g = 0; g < W.ng; ++g) {
      dequant_group(W, W.row(j), g, w.data());
      for (int b = 0; b < B; ++b) {
        const float* xb = x + b * d + g * W.G;
        for (int64_t i = 0; i < W.G; ++i) acc[b][i % 16] += w[i] * xb[i];
      }
    }
    for (int b = 0; b < B; ++b) {
      float s = 0.0f;
      for (int l = 0; l < 16; ++l) s += acc[b][l];
      y[b * W.ldy + j] = s;
    }
  }
}

using RowsFn = void (*)(const QW&, const float*, const float*, int64_t, int64_t, float*);

inline RowsFn rows_fn(int64_t B) {
  static const RowsFn table[kQuantMaxRows] = {gemv_rows<1>, gemv_rows<2>, gemv_rows<3>, gemv_rows<4>,
                                              gemv_rows<5>, gemv_rows<6>, gemv_rows<7>, gemv_rows<8>};
  return table[B - 1];
}

// Chunks of K output rows per thread: at least ~64k weights each, so small linears do not pay a fork/join each.
inline int64_t quant_chunks(const QW& W, int64_t K) {
  const int64_t by_work = std::max<int64_t>(1, K * W.d_in / (int64_t{1} << 16));
  return std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, K}));
}

template <typename F>
void for_chunks_q(int64_t nc, const F& body) {
  if (nc == 1) {
    body(0);
    return;
  }
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c);
  });
}

inline QW check_weight(const at::Tensor& q, const at::Tensor& scale, const c10::optional<at::Tensor>& min) {
  TORCH_CHECK_VALUE(q.dim() == 2 && scale.dim() == 2, "quant: q and scale must be 2-D");
  TORCH_CHECK_TYPE(q.scalar_type() == at::kChar, "quant: q must be int8");
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, "quant: scale must be fp32");
  TORCH_CHECK_VALUE(q.device().is_cpu() && scale.device().is_cpu(), "quant: CPU tensors only");
  TORCH_CHECK_VALUE(q.is_contiguous() && scale.is_contiguous(), "quant: q and scale must be contiguous");
  const int64_t d_out = q.size(0), d_in = q.size(1), ng = scale.size(1);
  TORCH_CHECK_VALUE(scale.size(0) == d_out && ng > 0 && d_in % ng == 0, "quant: scale must be [d_out, d_in/G]");
  const int64_t G = d_in / ng;
  TORCH_CHECK_VALUE(G % 16 == 0, "quant: the group size must be a multiple of 16, got ", G);
  const float* mp = nullptr;
  if (min.has_value() && min->defined()) {
    TORCH_CHECK_VALUE(min->sizes() == scale.sizes() && min->is_contiguous() && min->device().is_cpu(),
                      "quant: min must be contiguous and shaped like scale");
    TORCH_CHECK_TYPE(min->scalar_type() == at::kFloat, "quant: min must be fp32");
    mp = min->const_data_ptr<float>();
  }
  return QW{q.const_data_ptr<int8_t>(), scale.const_data_ptr<float>(), mp, d_out, d_in, G, ng};
}

// out[j - r0, :] = the exact values of weight row W.row(j), j in [r0, r1).
inline void dequant_rows(const QW& W, int64_t r0, int64_t r1, float* out) {
  at::parallel_for(r0, r1, 64, [&](int64_t a, int64_t b) {
    for (int64_t j = a; j < b; ++j)
      for (int64_t g = 0; g < W.ng; ++g) dequant_group(W, W.row(j), g, out + (j - r0) * W.d_in + g * W.G);
  });
}

at::Tensor quant_dequant(const at::Tensor& q, const at::Tensor& scale, const c10::optional<at::Tensor>& min,
                         int64_t r0, int64_t r1) {
  const QW W = check_weight(q, scale, min);
  TORCH_CHECK_VALUE(0 <= r0 && r0 <= r1 && r1 <= W.d_out, "quant_dequant: rows [", r0, ", ", r1,
                    ") out of range [0, ", W.d_out, ")");
  at::Tensor out = at::empty({r1 - r0, W.d_in}, q.options().dtype(at::kFloat));
  dequant_rows(W, r0, r1, out.mutable_data_ptr<float>());
  return out;
}

inline const float* check_x(const at::Tensor& x, int64_t d_in, const char* op) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be fp32");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), op, ": x must be a contiguous CPU tensor");
  TORCH_CHECK_VALUE(x.size(1) == d_in, op, ": x has ", x.size(1), " features, expected ", d_in);
  return x.const_data_ptr<float>();
}

// y[N, K] = x[N, d_in] @ W[row(j), :].T (+ bias[row(j)]) for the K outputs j (every row, or idx).
at::Tensor quant_rows_impl(const at::Tensor& x, QW W, int64_t K, const c10::optional<at::Tensor>& bias) {
  const float* xp = check_x(x, W.d_in, "quant_linear");
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == W.d_out && bias->is_contiguous(), "quant_linear: bad bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, "quant_linear: bias must be fp32");
    bp = bias->const_data_ptr<float>();
  }
  const int64_t N = x.size(0);
  W.ldy = K;
  at::Tensor y = at::empty({N, K}, x.options());
  float* yp = y.mutable_data_ptr<float>();
  if (N <= kQuantMaxRows) {
    if (N > 0 && K > 0) {
      const RowsFn f = rows_fn(N);
      const int64_t nc = quant_chunks(W, K);
      std::vector<float> xsum(W.min ? static_cast<size_t>(N * W.ng) : 0, 0.0f);  // groups' sums of x
      for (int64_t n = 0; W.min && n < N; ++n)
        for (int64_t i = 0; i < W.d_in; ++i) xsum[n * W.ng + i / W.G] += xp[n * W.d_in + i];
      for_chunks_q(nc, [&](int64_t c) { f(W, xp, xsum.data(), K * c / nc, K * (c + 1) / nc, yp); });
    }
  } else if (!tda_amx::amx_prefill(xp, N, W.d_in, W.G, W.ng, W.min != nullptr, K,
                                     [&](int64_t j0, int64_t nr, int8_t* q, float* s, float* m) {
                                       for (int64_t r = 0; r < nr; ++r) {
                                         const int64_t j = W.row(j0 + r);
                                         std::memcpy(q + r * W.d_in, W.q + j * W.d_in, static_cast<size_t>(W.d_in));
                                         std::memcpy(s + r * W.ng, W.scale + j * W.ng, sizeof(float) * W.ng);
                                         if (m) std::memcpy(m + r * W.ng, W.min + j * W.ng, sizeof(float) * W.ng);
                                       }
                                     },
                                     yp, K)) {  // prefill without AMX: dequantised tiles of ~2 MB through at::mm
    const int64_t tile = std::max<int64_t>(16, (int64_t{1} << 19) / W.d_in);
    at::Tensor buf = at::empty({std::max<int64_t>(1, std::min(tile, K)), W.d_in}, x.options());
    for (int64_t r0 = 0; r0 < K; r0 += tile) {
      const int64_t r1 = std::min(K, r0 + tile);
      dequant_rows(W, r0, r1, buf.mutable_data_ptr<float>());
      y.narrow(1, r0, r1 - r0).copy_(at::mm(x, buf.narrow(0, 0, r1 - r0).t()));
    }
  }
  if (bp)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < K; ++j) yp[n * K + j] += bp[W.row(j)];
  return y;
}

template <typename F>
at::Tensor on_rows_q(const at::Tensor& x, int64_t d_out, F&& f) {  // x[..., d_in] -> y[..., d_out]
  if (x.dim() == 2) return f(x);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.is_contiguous(), "quant: x must be a contiguous tensor [..., d_in]");
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = d_out;
  return f(x.view({-1, x.size(-1)})).view(sizes);
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                        const c10::optional<at::Tensor>& min, const c10::optional<at::Tensor>& bias) {
  const QW W = check_weight(q, scale, min);
  return on_rows_q(x, W.d_out, [&](const at::Tensor& x2) { return quant_rows_impl(x2, W, W.d_out, bias); });
}

// Output-sparse: y[..., k] = x @ W[idx, :].T (+ bias[idx]) -- the rows a method keeps (CATS/CHESS's
// gate and up, the predictor's rows, a prompt-fixed slice of gate/up), every row of x on every index.
at::Tensor quant_rows(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                      const c10::optional<at::Tensor>& min, const at::Tensor& idx, const c10::optional<at::Tensor>& bias) {
  QW W = check_weight(q, scale, min);
  TORCH_CHECK_VALUE(idx.dim() == 1 && idx.is_contiguous() && idx.device().is_cpu(), "quant_rows: idx must be 1-D");
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, "quant_rows: idx must be int64");
  const int64_t k = idx.size(0);
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j)
    TORCH_CHECK_VALUE(ix[j] >= 0 && ix[j] < W.d_out, "quant_rows: index ", ix[j], " out of range [0, ", W.d_out, ")");
  W.idx = ix;
  return on_rows_q(x, k, [&](const at::Tensor& x2) { return quant_rows_impl(x2, W, k, bias); });
}

// ---------------------------------------------------------------------------------------------
// Input-sparse over the input-major repack: qt[d_in, d_out] int8 (row i = input i's weights to
// every output), st/mt[ng, d_out] fp32 (group g's scale/minimum of each output). For the active
// inputs idx (ascending, unique): y[b, j] = sum_g st[g, j] * (sum_{i in idx, i in g} x[b, i] qt[i, j])
//                                           - mt[g, j] * (sum_{i in idx, i in g} x[b, i])
// = x_masked @ W.T with W's exact values: the rows of the inputs a method keeps, and nothing else, read
// (TEAL/WINA, TT's and CATS's down projection, R-Sparse's sparse part). Columns split over threads.
// ---------------------------------------------------------------------------------------------
#if TDA_QUANT_AVX512
inline __m512 half16_ps(const at::Half* p) {  // 16 fp16 values as fp32 (exact)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 u8_16_ps(const uint8_t* p) {  // 16 uint8 values as fp32 (exact)
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// The int8 values of an input-major weight, qt[d_in, d_out]: what QWTT and QWTK read the same way.
struct I8Rows {
  const int8_t* q;
  int64_t d_in, d_out;
  static constexpr int64_t kAlign = 16;  // thread chunks of outputs start at multiples of this
  const void* line(int64_t i, int64_t j) const { return q + i * d_out + j; }
  float value(int64_t i, int64_t j) const { return static_cast<float>(q[i * d_out + j]); }
#if TDA_QUANT_AVX512
  static constexpr int64_t kLineAhead = TDA_QUANT_SPARSE_PF;  // bytes of a row prefetched ahead
  // t[0..3] += input i's values at outputs [j, j + 64) times x
  void acc64(int64_t i, int64_t j, __m512 xv, __m512* t) const {
    const int8_t* row = q + i * d_out + j;
    for (int u = 0; u < 4; ++u) t[u] = _mm512_fmadd_ps(q16(row + 16 * u), xv, t[u]);
  }
#endif
};

// An input-major quantized weight, as raw pointers; scales fp32 (QWT) or fp16 (QWTH: Q8_0, Q5_0 and
// Q4_0 scales are the blocks' fp16 d, exact in half the bytes; no minimums).
template <typename S>
struct QWTT : I8Rows {
  const S* s;       // [ng, d_out]
  const float* m;   // [ng, d_out] or nullptr
  int64_t ng, G;
  float scale(int64_t g, int64_t j) const { return static_cast<float>(s[g * d_out + j]); }
  float minimum(int64_t g, int64_t j) const { return m ? m[g * d_out + j] : 0.0f; }
  bool has_min() const { return m != nullptr; }
#if TDA_QUANT_AVX512
  __m512 scale16(int64_t g, int64_t j) const {
    if constexpr (std::is_same<S, float>::value) return _mm512_loadu_ps(s + g * d_out + j);
    else return half16_ps(s + g * d_out + j);
  }
  __m512 min16(int64_t g, int64_t j) const { return _mm512_loadu_ps(m + g * d_out + j); }
#endif
};
using QWT = QWTT<float>;
using QWTH = QWTT<at::Half>;

// Q4_K input-major and compact: 4-bit values, two per byte, and the scales as the blocks hold them.
//   q4[d_in, d_out / 2] uint8: for each 64 outputs c*64 .. c*64+63 of input i, 32 bytes whose low
//       nibbles are outputs c*64 + b and high nibbles c*64 + 32 + b (b = 0..31);
//   sc, mq[ng, d_out] uint8: the 6-bit sub-block scales and minimums;
//   sd, md[ng / R, d_out] fp16: the super-block's d and dmin (R groups a super-block);
// scale = fp32(sd) * sc and min = fp32(md) * mq are exact in fp32: the same values as QWT's s and m.
struct QWT4 {
  const uint8_t* q;
  const uint8_t* sc;
  const uint8_t* mq;  // nullptr: no minimums
  const at::Half* sd;
  const at::Half* md;
  int64_t d_in, d_out, ng, G, R;
  static constexpr int64_t kAlign = 64;
  const void* line(int64_t i, int64_t j) const { return q + i * (d_out / 2) + j / 2; }
  float value(int64_t i, int64_t j) const {
    const uint8_t b = q[i * (d_out / 2) + j / 64 * 32 + j % 32];
    return static_cast<float>(j % 64 < 32 ? b & 0x0F : b >> 4);
  }
  float scale(int64_t g, int64_t j) const {
    return static_cast<float>(sd[g / R * d_out + j]) * static_cast<float>(sc[g * d_out + j]);
  }
  float minimum(int64_t g, int64_t j) const {
    return mq ? static_cast<float>(md[g / R * d_out + j]) * static_cast<float>(mq[g * d_out + j]) : 0.0f;
  }
#if TDA_QUANT_AVX512
  static constexpr int64_t kLineAhead = TDA_QUANT_SPARSE_PF / 2;
  void acc64(int64_t i, int64_t j, __m512 xv, __m512* t) const {
    const uint8_t* row = q + i * (d_out / 2) + j / 2;
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16));
    const __m128i v[4] = {_mm_and_si128(a, lo4), _mm_and_si128(b, lo4), _mm_and_si128(_mm_srli_epi16(a, 4), lo4),
                          _mm_and_si128(_mm_srli_epi16(b, 4), lo4)};
    for (int u = 0; u < 4; ++u) t[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v[u])), xv, t[u]);
  }
  __m512 scale16(int64_t g, int64_t j) const { return _mm512_mul_ps(half16_ps(sd + g / R * d_out + j), u8_16_ps(sc + g * d_out + j)); }
  __m512 min16(int64_t g, int64_t j) const { return _mm512_mul_ps(half16_ps(md + g / R * d_out + j), u8_16_ps(mq + g * d_out + j)); }
#endif
  bool has_min() const { return mq != nullptr; }
};

// Q6_K input-major and compact: int8 values as QWT's, the scales as the blocks hold them -- sc[ng, d_out]
// int8 sub-block factors and sd[ng / R, d_out] fp16 super-block d: scale = fp32(sd) * sc, exact in fp32.
struct QWTK : I8Rows {
  const int8_t* sc;
  const at::Half* sd;
  int64_t ng, G, R;
  float scale(int64_t g, int64_t j) const {
    return static_cast<float>(sd[g / R * d_out + j]) * static_cast<float>(sc[g * d_out + j]);
  }
  float minimum(int64_t, int64_t) const { return 0.0f; }
  bool has_min() const { return false; }
#if TDA_QUANT_AVX512
  __m512 scale16(int64_t g, int64_t j) const { return _mm512_mul_ps(half16_ps(sd + g / R * d_out + j), q16(sc + g * d_out + j)); }
  __m512 min16(int64_t, int64_t) const { return _mm512_setzero_ps(); }
#endif
};

inline QWTK check_weight_tk(const at::Tensor& qt, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                            const at::Tensor& sd, const c10::optional<at::Tensor>& md) {
  TORCH_CHECK_VALUE(qt.dim() == 2 && st.dim() == 2 && sd.dim() == 2 && qt.is_contiguous() && st.is_contiguous() &&
                        sd.is_contiguous(), "quant_input_sparse (factored scales): qt, st and sd must be contiguous 2-D tensors");
  TORCH_CHECK_TYPE(qt.scalar_type() == at::kChar && st.scalar_type() == at::kChar && sd.scalar_type() == at::kHalf,
                   "quant_input_sparse (factored scales): qt and st must be int8 and sd fp16");
  TORCH_CHECK_VALUE(!(mt.has_value() && mt->defined()) && !(md.has_value() && md->defined()),
                    "quant_input_sparse (factored scales): no minimums");
  TORCH_CHECK_VALUE(qt.device().is_cpu() && st.device().is_cpu() && sd.device().is_cpu(), "quant_input_sparse: CPU tensors only");
  const int64_t d_in = qt.size(0), d_out = qt.size(1), ng = st.size(0), ns = sd.size(0);
  TORCH_CHECK_VALUE(st.size(1) == d_out && ng > 0 && d_in % ng == 0 && ns > 0 && ng % ns == 0 && sd.size(1) == d_out,
                    "quant_input_sparse (factored scales): st must be [d_in/G, d_out] and sd [d_in/G/R, d_out]");
  return QWTK{{qt.const_data_ptr<int8_t>(), d_in, d_out}, st.const_data_ptr<int8_t>(), sd.const_data_ptr<at::Half>(), ng,
              d_in / ng, ng / ns};
}

template <typename S>
inline QWTT<S> check_weight_t(const at::Tensor& qt, const at::Tensor& st, const c10::optional<at::Tensor>& mt) {
  TORCH_CHECK_VALUE(qt.dim() == 2 && st.dim() == 2 && qt.is_contiguous() && st.is_contiguous(),
                    "quant_input_sparse: qt and st must be contiguous 2-D tensors");
  TORCH_CHECK_TYPE(qt.scalar_type() == at::kChar && st.scalar_type() == c10::CppTypeToScalarType<S>::value,
                   "quant_input_sparse: qt must be int8 and st fp32 (or fp16)");
  TORCH_CHECK_VALUE(qt.device().is_cpu() && st.device().is_cpu(), "quant_input_sparse: CPU tensors only");
  const int64_t d_in = qt.size(0), d_out = qt.size(1), ng = st.size(0);
  TORCH_CHECK_VALUE(st.size(1) == d_out && ng > 0 && d_in % ng == 0, "quant_input_sparse: st must be [d_in/G, d_out]");
  const float* mp = nullptr;
  if (mt.has_value() && mt->defined()) {
    TORCH_CHECK_VALUE((std::is_same<S, float>::value), "quant_input_sparse: fp16 scales come without minimums");
    TORCH_CHECK_VALUE(mt->sizes() == st.sizes() && mt->is_contiguous() && mt->scalar_type() == at::kFloat,
                      "quant_input_sparse: mt must be fp32 and shaped like st");
    mp = mt->const_data_ptr<float>();
  }
  return QWTT<S>{{qt.const_data_ptr<int8_t>(), d_in, d_out}, st.const_data_ptr<S>(), mp, ng, d_in / ng};
}

// The packed layout (QWT4): qt uint8 [d_in, d_out / 2], st (and mt) uint8 [ng, d_out], sd (and md) fp16 [ng / R, d_out].
inline QWT4 check_weight_t4(const at::Tensor& qt, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                            const at::Tensor& sd, const c10::optional<at::Tensor>& md) {
  TORCH_CHECK_VALUE(qt.dim() == 2 && st.dim() == 2 && sd.dim() == 2 && qt.is_contiguous() && st.is_contiguous() &&
                        sd.is_contiguous(), "quant_input_sparse (packed): qt, st and sd must be contiguous 2-D tensors");
  TORCH_CHECK_TYPE(qt.scalar_type() == at::kByte && st.scalar_type() == at::kByte && sd.scalar_type() == at::kHalf,
                   "quant_input_sparse (packed): qt and st must be uint8, sd fp16");
  TORCH_CHECK_VALUE(qt.device().is_cpu() && st.device().is_cpu() && sd.device().is_cpu(),
                    "quant_input_sparse: CPU tensors only");
  const int64_t d_in = qt.size(0), d_out = st.size(1), ng = st.size(0), ns = sd.size(0);
  TORCH_CHECK_VALUE(d_out % 64 == 0 && qt.size(1) * 2 == d_out, "quant_input_sparse (packed): qt must be [d_in, d_out / 2], d_out a multiple of 64");
  TORCH_CHECK_VALUE(ng > 0 && d_in % ng == 0 && ns > 0 && ng % ns == 0 && sd.size(1) == d_out,
                    "quant_input_sparse (packed): st must be [d_in/G, d_out] and sd [d_in/G/R, d_out]");
  const uint8_t* mp = nullptr;
  const at::Half* mdp = nullptr;
  const bool has_mt = mt.has_value() && mt->defined(), has_md = md.has_value() && md->defined();
  TORCH_CHECK_VALUE(has_mt == has_md, "quant_input_sparse (packed): mt and md go together");
  if (has_mt) {
    TORCH_CHECK_VALUE(mt->sizes() == st.sizes() && mt->is_contiguous() && mt->scalar_type() == at::kByte &&
                          md->sizes() == sd.sizes() && md->is_contiguous() && md->scalar_type() == at::kHalf,
                      "quant_input_sparse (packed): mt must be uint8 like st, md fp16 like sd");
    mp = mt->const_data_ptr<uint8_t>();
    mdp = md->const_data_ptr<at::Half>();
  }
  return QWT4{qt.const_data_ptr<uint8_t>(), st.const_data_ptr<uint8_t>(), mp, sd.const_data_ptr<at::Half>(), mdp,
              d_in, d_out, ng, d_in / ng, ng / ns};
}

inline const float* check_bias_t(const c10::optional<at::Tensor>& bias, int64_t d_out) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == d_out && bias->scalar_type() == at::kFloat &&
                        bias->is_contiguous(), "quant_input_sparse: bad bias");
  return bias->const_data_ptr<float>();
}

// y[N, d_out] (zeroed by the caller) += the product of x's inputs ix[0..k) (ascending, unique)
// with W (a QWT or a QWT4), columns split over threads; per group the active inputs' x * q summed,
// then scaled once. ``compact``: x's rows hold only the active inputs, x[b, a] for input ix[a] (row
// stride k) -- a prompt-fixed slice's activations; else x[b, i] for every input i (row stride d_in).
template <typename WT>
inline void input_sparse_core(const WT& W, const float* xp, int64_t N, const int64_t* ix, int64_t k,
                              const float* bp, float* yp, bool compact = false) {
  const int64_t d_out = W.d_out, ng = W.ng, G = W.G, A = WT::kAlign;
  const int64_t ldx = compact ? k : W.d_in;
  // the runs of active inputs per group: [starts[g], starts[g + 1]) in ix
  std::vector<int64_t> starts(static_cast<size_t>(ng + 1), k);
  for (int64_t a = k - 1; a >= 0; --a) starts[ix[a] / G] = a;
  for (int64_t g = ng - 1; g >= 0; --g) starts[g] = std::min(starts[g], starts[g + 1]);
  const int64_t work = k * d_out * std::max<int64_t>(N, 1);
  const int64_t nc = std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()),
                                                             work / (int64_t{1} << 15) + 1, (d_out + 63) / 64}));
  for_chunks_q(nc, [&](int64_t c) {
    const int64_t c0 = d_out * c / nc / A * A, c1 = c + 1 == nc ? d_out : d_out * (c + 1) / nc / A * A;
    for (int64_t b = 0; b < N; ++b) {
      const float* xb = xp + b * ldx;
      float* yb = yp + b * d_out;
      auto xa = [&](int64_t a) { return compact ? xb[a] : xb[ix[a]]; };
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t a0 = starts[g], a1 = starts[g + 1];
        if (a0 == a1) continue;
        float xs = 0.0f;
        for (int64_t a = a0; a < a1; ++a) xs += xa(a);
        const bool mins = W.has_min();
        int64_t j = c0;
#if TDA_QUANT_AVX512
        // 64 outputs at a time: the group's active inputs summed in four registers, scaled once.
        // Rows of at most kSparseNextMax outputs also fetch, line by line, the active rows of the
        // groups that follow (in decode their bytes come from memory, and a group's few short rows
        // give the prefetchers no stream to follow; Gemma 3 270M gguf, teal@0.5: ~4% off a step).
        // Longer rows (the lm_head's 262k outputs) are streams themselves: the in-row prefetch serves them.
        const bool pf_next = d_out <= kSparseNextMax;
        const int64_t na = a1 - a0;
        for (; j + 64 <= c1; j += 64) {
          __m512 t[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
          for (int64_t a = a0; a < a1; ++a) {
            _mm_prefetch(static_cast<const char*>(W.line(ix[a], j)) + WT::kLineAhead, _MM_HINT_T0);  // this row, blocks ahead
            if (pf_next && a + na < k)  // the same line of an active row of the groups that follow
              _mm_prefetch(static_cast<const char*>(W.line(ix[a + na], j)), _MM_HINT_T0);
            W.acc64(ix[a], j, _mm512_set1_ps(xa(a)), t);
          }
          const __m512 xsv = _mm512_set1_ps(xs);
          for (int u = 0; u < 4; ++u) {
            __m512 y = _mm512_fmadd_ps(W.scale16(g, j + 16 * u), t[u], _mm512_loadu_ps(yb + j + 16 * u));
            if (mins) y = _mm512_fnmadd_ps(W.min16(g, j + 16 * u), xsv, y);
            _mm512_storeu_ps(yb + j + 16 * u, y);
          }
        }
#endif
        for (; j < c1; ++j) {  // the vector loop's operations, one output at a time (the same bits)
          float t = 0.0f;
          for (int64_t a = a0; a < a1; ++a) t = std::fma(W.value(ix[a], j), xa(a), t);
          const float y = std::fma(W.scale(g, j), t, yb[j]);
          yb[j] = mins ? std::fma(-W.minimum(g, j), xs, y) : y;
        }
      }
      if (bp)
        for (int64_t j = c0; j < c1; ++j) yb[j] += bp[j];
    }
  });
}

// f(W) with the weight's layout: QWT (fp32 scales), QWTH (fp16 scales), or with sd given QWT4 (packed Q4_K) / QWTK (Q6_K)
template <typename F>
auto with_weight_t(const at::Tensor& qt, const at::Tensor& st, const c10::optional<at::Tensor>& mt,
                   const c10::optional<at::Tensor>& sd, const c10::optional<at::Tensor>& md, const F& f) {
  if (sd.has_value() && sd->defined())  // factored scales: 4-bit values two a byte (Q4_K) or int8 ones (Q6_K)
    return qt.scalar_type() == at::kByte ? f(check_weight_t4(qt, st, mt, *sd, md)) : f(check_weight_tk(qt, st, mt, *sd, md));
  TORCH_CHECK_VALUE(!(md.has_value() && md->defined()), "quant_input_sparse: md needs sd");
  if (st.scalar_type() == at::kHalf) return f(check_weight_t<at::Half>(qt, st, mt));
  return f(check_weight_t<float>(qt, st, mt));
}

template <typename WT>
at::Tensor quant_input_sparse_rows(const at::Tensor& x, const WT& W, const at::Tensor& idx,
                                   const c10::optional<at::Tensor>& bias, bool compact) {
  TORCH_CHECK_VALUE(idx.dim() == 1 && idx.is_contiguous() && idx.scalar_type() == at::kLong,
                    "quant_input_sparse: idx must be a 1-D int64 tensor");
  const float* xp = check_x(x, compact ? idx.size(0) : W.d_in, "quant_input_sparse");
  const int64_t k = idx.size(0), N = x.size(0);
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  for (int64_t a = 0; a < k; ++a) {
    TORCH_CHECK_VALUE(ix[a] >= 0 && ix[a] < W.d_in, "quant_input_sparse: active index ", ix[a], " out of range [0, ", W.d_in, ")");
    TORCH_CHECK_VALUE(a == 0 || ix[a] > ix[a - 1], "quant_input_sparse: active indices must be ascending and unique");
  }
  at::Tensor y = at::zeros({N, W.d_out}, x.options());
  input_sparse_core(W, xp, N, ix, k, check_bias_t(bias, W.d_out), y.mutable_data_ptr<float>(), compact);
  return y;
}

// TEAL's rule in one call: the inputs with |x| >= t (t, or tvec[i] per input; exact zeros never),
// the union over the rows (each row's own others zeroed), then input_sparse_core. ``count`` (int64
// [1], optional) accumulates the union's size; with every input kept, the same kernel over all.
template <typename WT>
at::Tensor quant_input_sparse_threshold_rows(const at::Tensor& x, const WT& W, const c10::optional<at::Tensor>& bias,
                                             double t, const c10::optional<at::Tensor>& tvec,
                                             const c10::optional<at::Tensor>& count) {
  const float* xp = check_x(x, W.d_in, "quant_input_sparse_threshold");
  const int64_t N = x.size(0), d_in = W.d_in;
  const float* tv = nullptr;
  if (tvec.has_value() && tvec->defined()) {
    TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == d_in && tvec->scalar_type() == at::kFloat &&
                          tvec->is_contiguous(), "quant_input_sparse_threshold: tvec must be fp32 [d_in]");
    tv = tvec->const_data_ptr<float>();
  }
  const float tf = static_cast<float>(t);
  std::vector<int64_t> ix;
  ix.reserve(static_cast<size_t>(d_in));
  std::vector<uint8_t> keep(static_cast<size_t>(N * d_in));
  for (int64_t i = 0; i < d_in; ++i) {
    const float c = tv ? tv[i] : tf;
    bool any = false;
    for (int64_t b = 0; b < N; ++b) {
      const float v = xp[b * d_in + i];
      const bool k = v != 0.0f && std::fabs(v) >= c;
      keep[b * d_in + i] = k;
      any = any || k;
    }
    if (any) ix.push_back(i);
  }
  const float* xs = xp;
  std::vector<float> xm;
  if (N > 1) {  // each row's own inactive inputs zeroed: every row gets what it would get alone
    xm.assign(xp, xp + N * d_in);
    for (int64_t i = 0; i < N * d_in; ++i)
      if (!keep[i]) xm[i] = 0.0f;
    xs = xm.data();
  }
  if (count.has_value() && count->defined()) {
    TORCH_CHECK_VALUE(count->numel() == 1 && count->scalar_type() == at::kLong, "quant_input_sparse_threshold: bad count");
    count->mutable_data_ptr<int64_t>()[0] += static_cast<int64_t>(ix.size());
  }
  at::Tensor y = at::zeros({N, W.d_out}, x.options());
  input_sparse_core(W, xs, N, ix.data(), static_cast<int64_t>(ix.size()), check_bias_t(bias, W.d_out),
                    y.mutable_data_ptr<float>());
  return y;
}

at::Tensor quant_input_sparse_threshold(const at::Tensor& x, const at::Tensor& qt, const at::Tensor& st,
                                        const c10::optional<at::Tensor>& mt, const c10::optional<at::Tensor>& bias,
                                        double t, const c10::optional<at::Tensor>& tvec,
                                        const c10::optional<at::Tensor>& count, const c10::optional<at::Tensor>& sd,
                                        const c10::optional<at::Tensor>& md) {
  return with_weight_t(qt, st, mt, sd, md, [&](const auto& W) {
    return on_rows_q(x, W.d_out, [&](const at::Tensor& x2) {
      return quant_input_sparse_threshold_rows(x2, W, bias, t, tvec, count);
    });
  });
}

at::Tensor quant_input_sparse(const at::Tensor& x, const at::Tensor& qt, const at::Tensor& st,
                              const c10::optional<at::Tensor>& mt, const at::Tensor& idx,
                              const c10::optional<at::Tensor>& bias, bool compact, const c10::optional<at::Tensor>& sd,
                              const c10::optional<at::Tensor>& md) {
  return with_weight_t(qt, st, mt, sd, md, [&](const auto& W) {
    return on_rows_q(x, W.d_out, [&](const at::Tensor& x2) {
      return quant_input_sparse_rows(x2, W, idx, bias, compact);
    });
  });
}

}  // namespace tda_quant

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("quant_linear(Tensor x, Tensor q, Tensor scale, Tensor? min, Tensor? bias) -> Tensor");
  m.def("quant_dequant(Tensor q, Tensor scale, Tensor? min, int r0, int r1) -> Tensor");
  m.def("quant_rows(Tensor x, Tensor q, Tensor scale, Tensor? min, Tensor idx, Tensor? bias) -> Tensor");
  m.def("quant_input_sparse(Tensor x, Tensor qt, Tensor st, Tensor? mt, Tensor idx, Tensor? bias, "
        "bool compact=False, Tensor? sd=None, Tensor? md=None) -> Tensor");
  m.def("quant_input_sparse_threshold(Tensor x, Tensor qt, Tensor st, Tensor? mt, Tensor? bias, float t, "
        "Tensor? tvec, Tensor(a!)? count=None, Tensor? sd=None, Tensor? md=None) -> Tensor");
  m.def("amx_prefill_ready() -> bool");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("quant_linear", &tda_quant::quant_linear);
  m.impl("quant_dequant", &tda_quant::quant_dequant);
  m.impl("quant_rows", &tda_quant::quant_rows);
  m.impl("quant_input_sparse", &tda_quant::quant_input_sparse);
  m.impl("quant_input_sparse_threshold", &tda_quant::quant_input_sparse_threshold);
}

TORCH_LIBRARY_IMPL(tda_kernels, CatchAll, m) {
  m.impl("amx_prefill_ready", [] { return tda_amx::amx_ready(); });
}

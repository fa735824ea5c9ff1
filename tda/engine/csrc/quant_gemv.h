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
//       each weight rebuilt once); more rows (prefill): tiles of rows dequantised into an fp32
//       buffer and multiplied by at::mm.
//   quant_dequant(q, scale, min?, r0, r1) -> W[r1 - r0, d_in] fp32 (the rows' exact values).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TDA_QUANT_AVX512 1
#else
#define TDA_QUANT_AVX512 0
#endif

namespace tda_quant {

constexpr int64_t kQuantMaxRows = 8;  // rows of x that the GEMV path takes; more go to tiles + mm

struct QW {  // one quantized weight, as raw pointers
  const int8_t* q;
  const float* scale;
  const float* min;  // nullptr: no minimums
  int64_t d_out, d_in, G, ng;
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

inline float min_dot(const QW& W, int64_t j, const float* xs) {  // sum_g min[j, g] * xsum[g], 16 groups at a time
  const int64_t ng = W.ng;
  const float* mr = W.min + j * ng;
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
    const int8_t* q = W.q + j * d;
    const float* s = W.scale + j * ng;
    __m512 acc[R][2];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t c = g * 16 * P;
      const __m512 xa = _mm512_loadu_ps(x + c);
      __m512 t[R];
      for (int r = 0; r < R; ++r) t[r] = _mm512_mul_ps(q16(q + r * d + c), xa);
      if (P == 2) {
        const __m512 xb = _mm512_loadu_ps(x + c + 16);
        for (int r = 0; r < R; ++r) t[r] = _mm512_fmadd_ps(q16(q + r * d + c + 16), xb, t[r]);
      }
      for (int r = 0; r < R; ++r) acc[r][g & 1] = _mm512_fmadd_ps(t[r], _mm512_set1_ps(s[r * ng + g]), acc[r][g & 1]);
    }
    for (int r = 0; r < R; ++r) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
      if (W.min) v -= min_dot(W, j + r, xsum);
      y[j + r] = v;
    }
  }
  if (j < j1) gemv_rows_avx512<1, P>(W, x, xsum, j, j1, y);
}

template <int B, int P>
void gemv_rows_avx512(const QW& W, const float* x, const float* xsum, int64_t j0, int64_t j1, float* y) {
  const int64_t d = W.d_in, ng = W.ng;
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* qr = W.q + j * d;
    const float* sr = W.scale + j * ng;
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
      if (W.min) v -= min_dot(W, j, xsum + b * ng);
      y[b * W.d_out + j] = v;
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
      dequant_group(W, j, g, w.data());
      for (int b = 0; b < B; ++b) {
        const float* xb = x + b * d + g * W.G;
        for (int64_t i = 0; i < W.G; ++i) acc[b][i % 16] += w[i] * xb[i];
      }
    }
    for (int b = 0; b < B; ++b) {
      float s = 0.0f;
      for (int l = 0; l < 16; ++l) s += acc[b][l];
      y[b * W.d_out + j] = s;
    }
  }
}

using RowsFn = void (*)(const QW&, const float*, const float*, int64_t, int64_t, float*);

inline RowsFn rows_fn(int64_t B) {
  static const RowsFn table[kQuantMaxRows] = {gemv_rows<1>, gemv_rows<2>, gemv_rows<3>, gemv_rows<4>,
                                              gemv_rows<5>, gemv_rows<6>, gemv_rows<7>, gemv_rows<8>};
  return table[B - 1];
}

// Rows per thread chunk: at least ~64k weights, so small linears do not pay a fork/join each.
inline int64_t quant_chunks(const QW& W) {
  const int64_t by_work = std::max<int64_t>(1, W.d_out * W.d_in / (int64_t{1} << 16));
  return std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, W.d_out}));
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

inline void dequant_rows(const QW& W, int64_t r0, int64_t r1, float* out) {
  at::parallel_for(r0, r1, 64, [&](int64_t a, int64_t b) {
    for (int64_t j = a; j < b; ++j)
      for (int64_t g = 0; g < W.ng; ++g) dequant_group(W, j, g, out + (j - r0) * W.d_in + g * W.G);
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

at::Tensor quant_linear_rows(const at::Tensor& x, const QW& W, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "quant_linear: x must be fp32");
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "quant_linear: x must be a contiguous CPU tensor");
  TORCH_CHECK_VALUE(x.size(1) == W.d_in, "quant_linear: x has ", x.size(1), " features, expected ", W.d_in);
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == W.d_out && bias->is_contiguous(), "quant_linear: bad bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, "quant_linear: bias must be fp32");
    bp = bias->const_data_ptr<float>();
  }
  const int64_t N = x.size(0);
  at::Tensor y = at::empty({N, W.d_out}, x.options());
  float* yp = y.mutable_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  if (N <= kQuantMaxRows) {
    if (N > 0) {
      const RowsFn f = rows_fn(N);
      const int64_t nc = quant_chunks(W);
      std::vector<float> xsum(W.min ? static_cast<size_t>(N * W.ng) : 0, 0.0f);  // groups' sums of x
      for (int64_t n = 0; W.min && n < N; ++n)
        for (int64_t i = 0; i < W.d_in; ++i) xsum[n * W.ng + i / W.G] += xp[n * W.d_in + i];
      auto body = [&](int64_t c) { f(W, xp, xsum.data(), W.d_out * c / nc, W.d_out * (c + 1) / nc, yp); };
      if (nc == 1) {
        body(0);
      } else {
        at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) body(c);
        });
      }
    }
  } else {  // prefill: dequantised tiles of ~2 MB through at::mm
    const int64_t tile = std::max<int64_t>(16, (int64_t{1} << 19) / W.d_in);
    at::Tensor buf = at::empty({std::min(tile, W.d_out), W.d_in}, x.options());
    for (int64_t r0 = 0; r0 < W.d_out; r0 += tile) {
      const int64_t r1 = std::min(W.d_out, r0 + tile);
      dequant_rows(W, r0, r1, buf.mutable_data_ptr<float>());
      y.narrow(1, r0, r1 - r0).copy_(at::mm(x, buf.narrow(0, 0, r1 - r0).t()));
    }
  }
  if (bp)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < W.d_out; ++j) yp[n * W.d_out + j] += bp[j];
  return y;
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                        const c10::optional<at::Tensor>& min, const c10::optional<at::Tensor>& bias) {
  const QW W = check_weight(q, scale, min);
  if (x.dim() == 2) return quant_linear_rows(x, W, bias);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.is_contiguous(), "quant_linear: x must be a contiguous tensor [..., d_in]");
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = W.d_out;
  return quant_linear_rows(x.view({-1, x.size(-1)}), W, bias).view(sizes);
}

}  // namespace tda_quant

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("quant_linear(Tensor x, Tensor q, Tensor scale, Tensor? min, Tensor? bias) -> Tensor");
  m.def("quant_dequant(Tensor q, Tensor scale, Tensor? min, int r0, int r1) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("quant_linear", &tda_quant::quant_linear);
  m.impl("quant_dequant", &tda_quant::quant_dequant);
}

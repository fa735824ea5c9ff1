// Greedy decoding's argmax over a vocabulary row, on every thread. torch.argmax runs one thread
// and ~200 us over Gemma 3's 262,144 logits (~1% of an fp32 decode step, 1.5% in bf16). Included
// at the end of sparse_kernels.cpp; a fragment of torch.ops.tda_kernels.
//
//   argmax_rows(x[B, V] fp32 contiguous) -> idx[B] int64 (and topk_rows_sorted below)
//   exactly torch.argmax(x, dim=-1): the first index of the largest value; a row holding NaN
//   gives the index of its first NaN (torch orders NaN above every number).
//
// Each row is cut into chunks (one or more per thread); a chunk's maximum is a vectorizable
// reduction (NaN never wins "v > m", so NaNs are only counted), then its first index of that
// value is found; the chunks are merged in order (ties keep the earlier chunk).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

namespace tda_argmax {

struct Best {
  float v;
  int64_t i;  // -1: empty chunk
  bool nan;   // i is then the chunk's first NaN
};

#if defined(__AVX512F__)
// The same result in two vector passes: the chunk's maximum (VMAXPS returns its second operand
// when the first is NaN, so NaNs never enter it; they are flagged) and the first index holding
// it. The lane-wise loop below did not vectorize (~0.9 ns a value: 230 us over 262k logits on one
// thread); these take ~0.1 ns a value.
inline Best chunk_best_avx512(const float* __restrict x, int64_t lo, int64_t hi) {
  const float* p = x + lo;
  const int64_t n = hi - lo, full = n / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - full)) - 1u);
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = ninf, m1 = ninf;
  __mmask16 nan = 0;
  int64_t j = 0;
  for (; j + 32 <= full; j += 32) {
    const __m512 a = _mm512_loadu_ps(p + j), b = _mm512_loadu_ps(p + j + 16);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(a, m0);
    m1 = _mm512_max_ps(b, m1);
  }
  for (; j < full; j += 16) {
    const __m512 a = _mm512_loadu_ps(p + j);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(a, m0);
  }
  if (tail) {
    const __m512 a = _mm512_mask_loadu_ps(ninf, tail, p + full);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    m0 = _mm512_max_ps(a, m0);
  }
  if (nan) {
    for (int64_t k = 0; k < n; ++k)
      if (p[k] != p[k]) return {p[k], lo + k, true};
  }
  const float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  const __m512 mv = _mm512_set1_ps(m);
  for (j = 0; j < full; j += 16) {
    const __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j), mv, _CMP_EQ_OQ);
    if (eq) return {m, lo + j + __builtin_ctz(eq), false};
  }
  for (; j < n; ++j)
    if (p[j] == m) return {m, lo + j, false};
  return {m, lo, false};  // not reached: m is one of the values
}
#endif

inline Best chunk_best(const float* __restrict x, int64_t lo, int64_t hi) {
  if (lo >= hi) return {0.f, -1, false};
#if defined(__AVX512F__)
  return chunk_best_avx512(x, lo, hi);
#else
  // 16 lanes, each keeping its first maximum (strict ">": NaN never wins) and counting NaNs;
  // written lane-wise so the compiler vectorizes it without reassociating anything
  constexpr int L = 16;
  float mv[L];
  int32_t mi[L], nans[L];
  for (int l = 0; l < L; ++l) mv[l] = -std::numeric_limits<float>::infinity(), mi[l] = -1, nans[l] = 0;
  const float* p = x + lo;
  const int64_t n = hi - lo;
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    for (int l = 0; l < L; ++l) {
      const float v = p[j + l];
      const bool up = v > mv[l];
      mv[l] = up ? v : mv[l];
      mi[l] = up ? static_cast<int32_t>(j + l) : mi[l];
      nans[l] += v != v;
    }
  }
  float m = -std::numeric_limits<float>::infinity();
  int64_t at = -1;
  int64_t nan_count = 0;
  for (int l = 0; l < L; ++l) {
    nan_count += nans[l];
    if (mi[l] >= 0 && (mv[l] > m || (mv[l] == m && (at < 0 || mi[l] < at)))) m = mv[l], at = mi[l];
  }
  for (; j < n; ++j) {
    const float v = p[j];
    nan_count += v != v;
    if (v > m) m = v, at = j;
  }
  if (nan_count) {
    for (int64_t k = 0; k < n; ++k)
      if (p[k] != p[k]) return {p[k], lo + k, true};
  }
  if (at < 0) {  // every value -inf
    for (int64_t k = 0; k < n; ++k)
      if (p[k] == m) return {m, lo + k, false};
  }
  return {m, lo + at, false};
#endif
}

// a is the earlier chunk: it wins ties and an earlier NaN
inline Best merge(const Best& a, const Best& b) {
  if (a.i < 0) return b;
  if (b.i < 0 || a.nan) return a;
  if (b.nan) return b;
  return b.v > a.v ? b : a;
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "tda_kernels: argmax_rows takes a contiguous fp32 CPU tensor [B, V]");
  TORCH_CHECK(x.size(1) > 0, "tda_kernels: argmax_rows over an empty row");
  const int64_t B = x.size(0), V = x.size(1);
  auto out = at::empty({B}, x.options().dtype(at::kLong));
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const float* xp = x.const_data_ptr<float>();
  constexpr int64_t kGrain = 16384;  // values per chunk at least (64 KiB)
  const int64_t nc = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 2, V / kGrain));
  std::vector<Best> best(static_cast<size_t>(B * nc));
  at::parallel_for(0, B * nc, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / nc, c = t % nc;
      best[t] = chunk_best(xp + r * V, V * c / nc, V * (c + 1) / nc);
    }
  });
  for (int64_t r = 0; r < B; ++r) {
    Best b = best[r * nc];
    for (int64_t c = 1; c < nc; ++c) b = merge(b, best[r * nc + c]);
    o[r] = b.i;
  }
  return out;
}

// topk_rows_sorted(x[B, n] fp32 contiguous, k) -> idx[B, k] int64: each row's k largest values'
// indices, ascending (what a sparse product over the kept neurons wants next); NaN ranks above
// every number, as in torch.topk, and ties at the k-th value keep the lower indices. One
// nth_element and one ordered scan a row (torch.topk + sort: ~250 us on 5632 scores; this ~20).
inline bool ranks_above(float a, float b) {  // a before b: NaN first, then larger values
  const bool na = std::isnan(a), nb = std::isnan(b);
  return na ? !nb : (!nb && a > b);
}

// One row's k (>= 1) top indices into o, ascending, for a strict order "above" (ties at the k-th: lower indices).
template <typename Above>
inline void topk_row(const float* row, int64_t n, int64_t k, std::vector<float>& v, int64_t* o, Above above) {
  std::copy(row, row + n, v.begin());
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), above);
  const float kth = v[static_cast<size_t>(k - 1)];
  int64_t ties = k;  // how many of the values tied with the k-th are kept
  for (int64_t i = 0; i < n; ++i) ties -= above(row[i], kth);
  for (int64_t i = 0, m = 0; i < n && m < k; ++i) {
    if (above(row[i], kth)) o[m++] = i;
    else if (ties > 0 && !above(kth, row[i])) o[m++] = i, --ties;
  }
}

inline at::Tensor topk_rows_sorted(const at::Tensor& x, int64_t k) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
                    "topk_rows_sorted: x must be a contiguous fp32 CPU tensor [rows, n]");
  const int64_t B = x.size(0), n = x.size(1);
  TORCH_CHECK_VALUE(k >= 0 && k <= n, "topk_rows_sorted: k must be in [0, ", n, "], got ", k);
  at::Tensor out = at::empty({B, k}, x.options().dtype(at::kLong));
  const float* xp = x.const_data_ptr<float>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  if (k == 0) return out;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t r = 0; r < B; ++r) {
    const float* row = xp + r * n;
    if (std::none_of(row, row + n, [](float a) { return std::isnan(a); }))
      topk_row(row, n, k, v, o + r * k, std::greater<float>());  // the common case: plain comparisons
    else
      topk_row(row, n, k, v, o + r * k, ranks_above);
  }
  return out;
}

// threshold_indices(x[B, n] fp32 contiguous, t, tvec?) -> idx[k] int64: the inputs i with
// |x[b, i]| >= t (or tvec[i]) in any row, ascending -- one pass (CATS/CHESS: abs, compare, any and
// nonzero are four torch ops and ~100 us a layer on llama-1b's 5632 channels). NaN is never kept.
inline at::Tensor threshold_indices(const at::Tensor& x, double t, const c10::optional<at::Tensor>& tvec) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
                    "threshold_indices: x must be a contiguous fp32 CPU tensor [rows, n]");
  const int64_t B = x.size(0), n = x.size(1);
  const float* tv = nullptr;
  if (tvec.has_value() && tvec->defined()) {
    TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == n && tvec->scalar_type() == at::kFloat &&
                          tvec->is_contiguous() && tvec->device().is_cpu(), "threshold_indices: tvec must be fp32 [n]");
    tv = tvec->const_data_ptr<float>();
  }
  const float tf = static_cast<float>(t), *xp = x.const_data_ptr<float>();
  std::vector<int64_t> idx;
  idx.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float c = tv ? tv[i] : tf;
    bool any = false;
    for (int64_t b = 0; b < B && !any; ++b) any = std::fabs(xp[b * n + i]) >= c;
    if (any) idx.push_back(i);
  }
  at::Tensor out = at::empty({static_cast<int64_t>(idx.size())}, x.options().dtype(at::kLong));
  std::copy(idx.begin(), idx.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

}  // namespace tda_argmax

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("topk_rows_sorted(Tensor x, int k) -> Tensor");
  m.def("threshold_indices(Tensor x, float t, Tensor? tvec=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("argmax_rows", &tda_argmax::argmax_rows);
  m.impl("topk_rows_sorted", &tda_argmax::topk_rows_sorted);
  m.impl("threshold_indices", &tda_argmax::threshold_indices);
}

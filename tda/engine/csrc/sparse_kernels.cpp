// tda-workbench sparse linear kernels (CPU). Built lazily by tda/engine/kernel_build.py.
// Registered as torch.ops.tda_kernels.*; the Python wrapper validates the arguments, the checks
// here are a backstop. Accumulation is always fp32; loops are written to auto-vectorize at -O3.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "bf16.h"
#include "gemv_avx512.h"  // intrinsics for batch-1 GEMVs when the build targets AVX-512

namespace {

struct F32 {
  using T = float;
  static inline float ld(const T* p, int64_t i) { return p[i]; }
  static inline T st(float v) { return v; }
};
struct BF16 {
  using T = uint16_t;
  static inline float ld(const T* p, int64_t i) { return tda_bf16::to_float(p[i]); }
  static inline T st(float v) { return tda_bf16::from_float(v); }  // round to nearest even
};
struct F16 {
  using T = uint16_t;
#if defined(__FLT16_MAX__)
  static inline float ld(const T* p, int64_t i) {
    _Float16 h;
    std::memcpy(&h, p + i, 2);
    return static_cast<float>(h);
  }
#else
  static inline float ld(const T* p, int64_t i) {
    return static_cast<float>(c10::Half(p[i], c10::Half::from_bits()));
  }
#endif
  static inline T st(float v) { return c10::Half(v).x; }
};

// Multiply-adds below which a chunk is not worth a thread (fork/join costs a few microseconds).
constexpr int64_t kMinWork = int64_t{1} << 15;
constexpr int kPrefetchRows = 4;

int64_t n_chunks(int64_t work, int64_t items) {
  int64_t c = std::min<int64_t>(at::get_num_threads(), work / kMinWork);
  c = std::min<int64_t>(c, items);
  return std::max<int64_t>(c, 1);
}

// Runs body(c) for c in [0, nc): in parallel when nc > 1, inline otherwise.
template <typename F>
void for_chunks(int64_t nc, const F& body) {
  if (nc <= 1) {
    body(0);
    return;
  }
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c);
  });
}

// acc[b, :] += sum_{j in [j0, j1)} xs[b, j] * wt[row(j), :], row(j) = idx ? idx[j] : j.
// Eight rows per pass over the accumulator (then four, then one): eight gathered rows in flight
// keep more DRAM streams open than four (measured side by side, fp32 input-sparse at 50%:
// llama-1b k/v rows of 1 KB +10-29%, gate/up and down +5-15%), and the accumulator is read and
// written half as often.
template <typename E>
void axpy_rows(const float* xs, int64_t ldx, int64_t B, const int64_t* idx, int64_t j0, int64_t j1,
               const typename E::T* wt, int64_t n, float* acc) {
  using T = typename E::T;
  auto row = [&](int64_t j) { return wt + (idx ? idx[j] : j) * n; };
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8) {
    const T* __restrict r0 = row(j);
    const T* __restrict r1 = row(j + 1);
    const T* __restrict r2 = row(j + 2);
    const T* __restrict r3 = row(j + 3);
    const T* __restrict r4 = row(j + 4);
    const T* __restrict r5 = row(j + 5);
    const T* __restrict r6 = row(j + 6);
    const T* __restrict r7 = row(j + 7);
    if (j + 16 <= j1) {
      for (int q = 8; q < 16; ++q) __builtin_prefetch(row(j + q), 0, 0);
    }
    for (int64_t b = 0; b < B; ++b) {
      float* __restrict a = acc + b * n;
      const float* xb = xs + b * ldx + j;
      const float x0 = xb[0], x1 = xb[1], x2 = xb[2], x3 = xb[3], x4 = xb[4], x5 = xb[5], x6 = xb[6], x7 = xb[7];
      for (int64_t c = 0; c < n; ++c)
        a[c] += (x0 * E::ld(r0, c) + x1 * E::ld(r1, c) + x2 * E::ld(r2, c) + x3 * E::ld(r3, c)) +
                (x4 * E::ld(r4, c) + x5 * E::ld(r5, c) + x6 * E::ld(r6, c) + x7 * E::ld(r7, c));
    }
  }
  for (; j + 4 <= j1; j += 4) {
    const T* __restrict r0 = row(j);
    const T* __restrict r1 = row(j + 1);
    const T* __restrict r2 = row(j + 2);
    const T* __restrict r3 = row(j + 3);
    if (j + 4 + kPrefetchRows <= j1) {
      for (int q = 4; q < 4 + kPrefetchRows; ++q) __builtin_prefetch(row(j + q), 0, 0);
    }
    for (int64_t b = 0; b < B; ++b) {
      float* __restrict a = acc + b * n;
      const float* xb = xs + b * ldx + j;
      const float x0 = xb[0], x1 = xb[1], x2 = xb[2], x3 = xb[3];
      for (int64_t c = 0; c < n; ++c)
        a[c] += x0 * E::ld(r0, c) + x1 * E::ld(r1, c) + x2 * E::ld(r2, c) + x3 * E::ld(r3, c);
    }
  }
  for (; j < j1; ++j) {
    const T* __restrict r0 = row(j);
    for (int64_t b = 0; b < B; ++b) {
      float* __restrict a = acc + b * n;
      const float x0 = xs[b * ldx + j];
      for (int64_t c = 0; c < n; ++c) a[c] += x0 * E::ld(r0, c);
    }
  }
}

// y[b, :] = sum_j xs[b, j] * wt[row(j), :] (+ bias). Rows are split into contiguous chunks, one
// per thread, each with its own fp32 accumulator; the chunks are summed in a fixed order, so the
// result does not depend on scheduling.
template <typename E>
void in_sparse(const float* xs, int64_t B, const int64_t* idx, int64_t k,
               const typename E::T* wt, int64_t d_out, const typename E::T* bias,
               typename E::T* y) {
#if TDA_GEMV_BF16DP
  if constexpr (std::is_same_v<E, BF16>) {
    if (B == 1) {  // pairs of rows through VDPBF16PS, accumulator in pair order (gemv_avx512.h)
      const int64_t nc = n_chunks(k * d_out, k), np = (d_out + 31) / 32 * 32;
      std::vector<uint16_t> xb(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) xb[j] = E::st(xs[j]);  // exact: xs hold bf16 values (or 0)
      std::vector<float> acc(static_cast<size_t>(nc * np), 0.0f);
      for_chunks(nc, [&](int64_t c) {
        tda_gemv::axpy_pairs_bf16(xb.data(), idx, k * c / nc, k * (c + 1) / nc, wt, d_out, acc.data() + c * np);
      });
      for (int64_t c = 1; c < nc; ++c)
        for (int64_t i = 0; i < np; ++i) acc[i] += acc[c * np + i];
      for (int64_t i = 0; i < d_out; ++i) {
        const float v = acc[tda_gemv::pair_col(i)];
        y[i] = E::st(bias ? v + E::ld(bias, i) : v);
      }
      return;
    }
  }
#endif
  const int64_t nc = n_chunks(B * k * d_out, k);
  const int64_t len = B * d_out;
  std::vector<float> acc(static_cast<size_t>(nc * len), 0.0f);
  for_chunks(nc, [&](int64_t c) {
    axpy_rows<E>(xs, k, B, idx, k * c / nc, k * (c + 1) / nc, wt, d_out, acc.data() + c * len);
  });
  for (int64_t c = 1; c < nc; ++c) {
    const float* __restrict src = acc.data() + c * len;
    float* __restrict dst = acc.data();
    for (int64_t i = 0; i < len; ++i) dst[i] += src[i];
  }
  const float* a = acc.data();
  for (int64_t b = 0; b < B; ++b) {
    if (bias) {
      for (int64_t i = 0; i < d_out; ++i)
        y[b * d_out + i] = E::st(a[b * d_out + i] + E::ld(bias, i));
    } else {
      for (int64_t i = 0; i < d_out; ++i) y[b * d_out + i] = E::st(a[b * d_out + i]);
    }
  }
}

// y[b, j] = w[row(j), :] . x[b, :] (+ bias[row(j)]), row(j) = idx ? idx[j] : j; w is [d_out, d_in]
// row-major. One row at a time (a four-row variant measured slower: it vectorized worse),
// prefetching two rows ahead. With idx == nullptr this is the dense row-major GEMV.
template <typename E>
void out_sparse(const float* xf, int64_t B, int64_t d_in, const int64_t* idx, int64_t k,
                const typename E::T* w, const typename E::T* bias, typename E::T* y) {
  using T = typename E::T;
  constexpr int64_t L = 16;
  auto rix = [&](int64_t j) { return idx ? idx[j] : j; };
  const int64_t nc = n_chunks(B * k * d_in, k);
  for_chunks(nc, [&](int64_t ch) {
    const int64_t j0 = k * ch / nc, j1 = k * (ch + 1) / nc;
    for (int64_t j = j0; j < j1; ++j) {
      const T* __restrict r = w + rix(j) * d_in;
      if (j + 2 < j1) __builtin_prefetch(w + rix(j + 2) * d_in, 0, 0);
      for (int64_t b = 0; b < B; ++b) {
        const float* __restrict xb = xf + b * d_in;
        float acc[L] = {0};
        int64_t c = 0;
        for (; c + L <= d_in; c += L)
          for (int64_t l = 0; l < L; ++l) acc[l] += E::ld(r, c + l) * xb[c + l];
        float s = 0.0f;
        for (; c < d_in; ++c) s += E::ld(r, c) * xb[c];
        for (int64_t l = 0; l < L; ++l) s += acc[l];
        if (bias) s += E::ld(bias, rix(j));
        y[b * k + j] = E::st(s);
      }
    }
  });
}

void check_idx(const int64_t* idx, int64_t k, int64_t n, bool unique) {
  std::vector<uint8_t> seen(unique ? static_cast<size_t>(n) : 0, 0);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t i = idx[j];
    TORCH_CHECK_VALUE(i >= 0 && i < n, "active index ", i, " out of range [0, ", n, ")");
    if (unique) {
      TORCH_CHECK_VALUE(!seen[i], "active index ", i, " repeated (indices must be unique)");
      seen[i] = 1;
    }
  }
}

void check_args(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                int64_t x_cols, int64_t bias_len) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w.dim() == 2, "tda_kernels: x and weight must be 2-D");
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu(), "tda_kernels: CPU tensors only");
  TORCH_CHECK_VALUE(x.is_contiguous() && w.is_contiguous(), "tda_kernels: need contiguous tensors");
  TORCH_CHECK_TYPE(x.scalar_type() == w.scalar_type(), "tda_kernels: x and weight dtypes differ");
  TORCH_CHECK_VALUE(x.size(1) == x_cols, "tda_kernels: x has ", x.size(1), " features, expected ",
                    x_cols);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == bias_len && bias->is_contiguous() &&
                          bias->device().is_cpu(),
                      "tda_kernels: bad bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == w.scalar_type(), "tda_kernels: bias dtype differs");
  }
}

// x[..., d_in] of any rank (decode steps pass [B, 1, d]): f on the rows x[N, d_in], the result
// viewed back as [..., d_out] (views only: x must be contiguous, as f checks).
template <typename F>
at::Tensor on_rows(const at::Tensor& x, int64_t d_out, F&& f) {
  if (x.dim() == 2) return f(x);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.is_contiguous(), "tda_kernels: x must be a contiguous tensor [..., d_in]");
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = d_out;
  return f(x.view({-1, x.size(-1)})).view(sizes);
}

void check_index_tensor(const at::Tensor& idx) {
  TORCH_CHECK_VALUE(idx.dim() == 1 && idx.device().is_cpu() && idx.is_contiguous(),
                    "tda_kernels: indices must be a contiguous 1-D CPU tensor");
  TORCH_CHECK_TYPE(idx.scalar_type() == at::kLong, "tda_kernels: indices must be int64");
}

template <typename E>
const typename E::T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename E::T*>(t.const_data_ptr());
}
template <typename E>
const typename E::T* bias_ptr(const c10::optional<at::Tensor>& b) {
  return (b.has_value() && b->defined()) ? ptr<E>(*b) : nullptr;
}
template <typename E>
typename E::T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<typename E::T*>(t.mutable_data_ptr());
}

#define TDA_DISPATCH(dtype, ...)                     \
  switch (dtype) {                                   \
    case at::kFloat: {                               \
      using E = F32;                                 \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    case at::kBFloat16: {                            \
      using E = BF16;                                \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    case at::kHalf: {                                \
      using E = F16;                                 \
      __VA_ARGS__;                                   \
      break;                                         \
    }                                                \
    default:                                         \
      TORCH_CHECK_TYPE(false, "tda_kernels: unsupported dtype ", dtype); \
  }

// The optional int64 [1] accumulator of active-input counts, or nullptr.
int64_t* count_ptr(const c10::optional<at::Tensor>& count) {
  if (!count.has_value() || !count->defined()) return nullptr;
  TORCH_CHECK_VALUE(count->numel() == 1 && count->device().is_cpu() &&
                        count->scalar_type() == at::kLong && count->is_contiguous(),
                    "tda_kernels: count must be an int64 [1] CPU tensor");
  return count->mutable_data_ptr<int64_t>();
}

// y[B, d_out] = sum_{j} x[:, idx[j]] * wt[idx[j], :] (+ bias); wt is [d_in, d_out].
at::Tensor input_sparse(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& wt,
                        const c10::optional<at::Tensor>& bias) {
  check_args(x, wt, bias, wt.size(0), wt.size(1));
  check_index_tensor(idx);
  const int64_t B = x.size(0), d_in = x.size(1), k = idx.size(0), d_out = wt.size(1);
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  check_idx(ix, k, d_in, true);
  at::Tensor y = at::empty({B, d_out}, x.options());
  TDA_DISPATCH(x.scalar_type(), {
    const auto* xp = ptr<E>(x);
    std::vector<float> xs(static_cast<size_t>(B * k));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < k; ++j) xs[b * k + j] = E::ld(xp + b * d_in, ix[j]);
    in_sparse<E>(xs.data(), B, ix, k, ptr<E>(wt), d_out, bias_ptr<E>(bias), mut_ptr<E>(y));
  })
  return y;
}

// Same, with the active set chosen here: input i is active when |x[b, i]| >= thr_i for some row
// b (the union over rows), thr_i = tvec[i] if given else t; each row's own inactive entries are
// zeroed, so every row gets exactly W @ (x[b] * (|x[b]| >= thr)).
// When `count` (an int64 [1] CPU tensor) is given, the number of active inputs (of the union) is
// added to it: callers that report densities count without extra ops per call.
at::Tensor input_sparse_threshold_rows(const at::Tensor& x, const at::Tensor& wt,
                                       const c10::optional<at::Tensor>& bias, double t,
                                       const c10::optional<at::Tensor>& tvec,
                                       const c10::optional<at::Tensor>& count) {
  int64_t* cnt = count_ptr(count);
  check_args(x, wt, bias, wt.size(0), wt.size(1));
  const int64_t B = x.size(0), d_in = x.size(1), d_out = wt.size(1);
  const float* tv = nullptr;
  if (tvec.has_value() && tvec->defined()) {
    TORCH_CHECK_VALUE(tvec->dim() == 1 && tvec->size(0) == d_in && tvec->is_contiguous() &&
                          tvec->device().is_cpu() && tvec->scalar_type() == at::kFloat,
                      "tda_kernels: per-input thresholds must be a contiguous fp32 [d_in] tensor");
    tv = tvec->const_data_ptr<float>();
  }
  const float ts = static_cast<float>(t);
  at::Tensor y = at::empty({B, d_out}, x.options());
  TDA_DISPATCH(x.scalar_type(), {
    const auto* xp = ptr<E>(x);
    std::vector<int64_t> ix(static_cast<size_t>(d_in));
    std::vector<float> xs;
    int64_t k = 0;
    if (B == 1) {
      xs.resize(static_cast<size_t>(d_in));
      for (int64_t i = 0; i < d_in; ++i) {  // branch-free compaction
        const float v = E::ld(xp, i);
        ix[k] = i;
        xs[k] = v;
        k += std::fabs(v) >= (tv ? tv[i] : ts);
      }
    } else {
      std::vector<uint8_t> act(static_cast<size_t>(d_in), 0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < d_in; ++i)
          act[i] |= std::fabs(E::ld(xp + b * d_in, i)) >= (tv ? tv[i] : ts);
      for (int64_t i = 0; i < d_in; ++i) {
        ix[k] = i;
        k += act[i];
      }
      xs.resize(static_cast<size_t>(B * k));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < k; ++j) {
          const float v = E::ld(xp + b * d_in, ix[j]);
          xs[b * k + j] = std::fabs(v) >= (tv ? tv[ix[j]] : ts) ? v : 0.0f;
        }
    }
    if (cnt) *cnt += k;
    in_sparse<E>(xs.data(), B, ix.data(), k, ptr<E>(wt), d_out, bias_ptr<E>(bias), mut_ptr<E>(y));
  })
  return y;
}

// One row: y = W @ x over the k inputs with the largest |x_i| * scale_i (WINA's rule; ties at
// the k-th score go to the lower indices). `count` as in input_sparse_threshold.
at::Tensor input_sparse_topk(const at::Tensor& x, const at::Tensor& wt,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& scale,
                             int64_t k, const c10::optional<at::Tensor>& count) {
  check_args(x, wt, bias, wt.size(0), wt.size(1));
  const int64_t d_in = x.size(1), d_out = wt.size(1);
  TORCH_CHECK_VALUE(x.size(0) == 1, "tda_kernels: input_sparse_topk takes one row");
  TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == d_in && scale.is_contiguous() &&
                        scale.device().is_cpu() && scale.scalar_type() == at::kFloat,
                    "tda_kernels: scale must be a contiguous fp32 [d_in] tensor");
  TORCH_CHECK_VALUE(k >= 1 && k <= d_in, "tda_kernels: k must be in [1, d_in]");
  int64_t* cnt = count_ptr(count);
  const float* sp = scale.const_data_ptr<float>();
  at::Tensor y = at::empty({1, d_out}, x.options());
  TDA_DISPATCH(x.scalar_type(), {
    const auto* xp = ptr<E>(x);
    std::vector<float> sc(static_cast<size_t>(d_in)), tmp;
    for (int64_t i = 0; i < d_in; ++i) sc[i] = std::fabs(E::ld(xp, i)) * sp[i];
    tmp = sc;
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    const float kth = tmp[k - 1];
    int64_t above = 0;
    for (int64_t i = 0; i < d_in; ++i) above += sc[i] > kth;
    int64_t ties = k - above;
    std::vector<int64_t> ix;
    std::vector<float> xs;
    ix.reserve(static_cast<size_t>(k));
    xs.reserve(static_cast<size_t>(k));
    for (int64_t i = 0; i < d_in; ++i) {
      if (sc[i] > kth || (sc[i] == kth && ties-- > 0)) {
        ix.push_back(i);
        xs.push_back(E::ld(xp, i));
      }
    }
    const int64_t n = static_cast<int64_t>(ix.size());
    if (cnt) *cnt += n;
    in_sparse<E>(xs.data(), 1, ix.data(), n, ptr<E>(wt), d_out, bias_ptr<E>(bias), mut_ptr<E>(y));
  })
  return y;
}

// y[B, d_out] = x @ wt (+ bias): every row of wt, streamed in order.
at::Tensor input_dense_rows(const at::Tensor& x, const at::Tensor& wt,
                            const c10::optional<at::Tensor>& bias) {
  check_args(x, wt, bias, wt.size(0), wt.size(1));
  const int64_t B = x.size(0), d_in = x.size(1), d_out = wt.size(1);
  at::Tensor y = at::empty({B, d_out}, x.options());
  TDA_DISPATCH(x.scalar_type(), {
    const auto* xp = ptr<E>(x);
    std::vector<float> xs(static_cast<size_t>(B * d_in));
    for (int64_t i = 0; i < B * d_in; ++i) xs[i] = E::ld(xp, i);
    in_sparse<E>(xs.data(), B, nullptr, d_in, ptr<E>(wt), d_out, bias_ptr<E>(bias),
                 mut_ptr<E>(y));
  })
  return y;
}

// y[B, k] = x @ w[row(j), :].T (+ bias[row(j)]), row(j) = ix ? ix[j] : j; w is [d_out, d_in].
at::Tensor out_rows(const at::Tensor& x, const int64_t* ix, int64_t k, const at::Tensor& w,
                    const c10::optional<at::Tensor>& bias) {
  const int64_t B = x.size(0), d_in = x.size(1);
  at::Tensor y = at::empty({B, k}, x.options());
  const int64_t nc = n_chunks(B * k * d_in, k);
#if TDA_GEMV_AVX512
  if (B == 1 && x.scalar_type() == at::kFloat) {  // four rows at a time (gemv_avx512.h)
    const float* b = bias_ptr<F32>(bias);
    for_chunks(nc, [&](int64_t c) {
      tda_gemv::row_gemv_f32(ptr<F32>(x), d_in, ix, k * c / nc, k * (c + 1) / nc, ptr<F32>(w), b,
                             mut_ptr<F32>(y));
    });
    return y;
  }
#endif
#if TDA_GEMV_BF16DP
  if (B == 1 && x.scalar_type() == at::kBFloat16) {  // VDPBF16PS, four rows at a time
    std::vector<float> acc(static_cast<size_t>(k));
    for_chunks(nc, [&](int64_t c) {
      tda_gemv::row_gemv_bf16(ptr<BF16>(x), d_in, ix, k * c / nc, k * (c + 1) / nc, ptr<BF16>(w), acc.data());
    });
    const uint16_t* b = bias_ptr<BF16>(bias);
    uint16_t* yp = mut_ptr<BF16>(y);
    for (int64_t j = 0; j < k; ++j) yp[j] = BF16::st(b ? acc[j] + BF16::ld(b, ix ? ix[j] : j) : acc[j]);
    return y;
  }
#endif
  TDA_DISPATCH(x.scalar_type(), {
    const auto* xp = ptr<E>(x);
    std::vector<float> xf(static_cast<size_t>(B * d_in));
    for (int64_t i = 0; i < B * d_in; ++i) xf[i] = E::ld(xp, i);
    out_sparse<E>(xf.data(), B, d_in, ix, k, ptr<E>(w), bias_ptr<E>(bias), mut_ptr<E>(y));
  })
  return y;
}

// y[B, k] = x @ w[idx, :].T (+ bias[idx]); w is [d_out, d_in].
at::Tensor output_sparse(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& w,
                         const c10::optional<at::Tensor>& bias) {
  check_args(x, w, bias, w.size(1), w.size(0));
  check_index_tensor(idx);
  const int64_t k = idx.size(0);
  const int64_t* ix = idx.const_data_ptr<int64_t>();
  check_idx(ix, k, w.size(0), false);
  return out_rows(x, ix, k, w, bias);
}

// y[B, d_out] = x @ w.T (+ bias); w is [d_out, d_in] row-major: every row, streamed in order.
at::Tensor row_dense_rows(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  check_args(x, w, bias, w.size(1), w.size(0));
  return out_rows(x, nullptr, w.size(0), w, bias);
}

// The dense GEMVs and the threshold kernel also take x[..., d_in] (see on_rows).
at::Tensor row_dense(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  return on_rows(x, w.size(0), [&](const at::Tensor& x2) { return row_dense_rows(x2, w, bias); });
}

at::Tensor input_dense(const at::Tensor& x, const at::Tensor& wt, const c10::optional<at::Tensor>& bias) {
  return on_rows(x, wt.size(1), [&](const at::Tensor& x2) { return input_dense_rows(x2, wt, bias); });
}

at::Tensor input_sparse_threshold(const at::Tensor& x, const at::Tensor& wt, const c10::optional<at::Tensor>& bias,
                                  double t, const c10::optional<at::Tensor>& tvec,
                                  const c10::optional<at::Tensor>& count) {
  return on_rows(x, wt.size(1), [&](const at::Tensor& x2) {
    return input_sparse_threshold_rows(x2, wt, bias, t, tvec, count);
  });
}

}  // namespace

TORCH_LIBRARY(tda_kernels, m) {
  m.def("input_sparse(Tensor x, Tensor idx, Tensor wt, Tensor? bias) -> Tensor");
  m.def(
      "input_sparse_threshold(Tensor x, Tensor wt, Tensor? bias, float t, Tensor? tvec, "
      "Tensor(a!)? count=None) -> Tensor");
  m.def("input_dense(Tensor x, Tensor wt, Tensor? bias) -> Tensor");
  m.def("output_sparse(Tensor x, Tensor idx, Tensor w, Tensor? bias) -> Tensor");
  m.def("row_dense(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("input_sparse_topk(Tensor x, Tensor wt, Tensor? bias, Tensor scale, int k, "
        "Tensor(a!)? count=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("input_sparse", &input_sparse);
  m.impl("input_sparse_threshold", &input_sparse_threshold);
  m.impl("input_dense", &input_dense);
  m.impl("output_sparse", &output_sparse);
  m.impl("row_dense", &row_dense);
  m.impl("input_sparse_topk", &input_sparse_topk);
}

#include "norms.h"  // torch.ops.tda_kernels.rms_norm, rms_norm_bf16, residual_norm
#include "decode_attention.h"  // torch.ops.tda_kernels.rope_qk, decode_attention
#include "argmax.h"  // torch.ops.tda_kernels.argmax_rows
#include "kv_cache.h"  // torch.ops.tda_kernels.kv_write
#include "quant_gemv.h"  // torch.ops.tda_kernels.quant_linear, quant_dequant
#include "quant_blocks.h"  // torch.ops.tda_kernels.quant_blocks_linear, quant_blocks_unpack

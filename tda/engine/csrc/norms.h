// RMSNorms of a decode step in one call each (HF's module runs ~8 small ops per norm, ~110 norms
// per Gemma decode step), and the residual add fused with the norms around it. Included at the
// end of sparse_kernels.cpp; a fragment of torch.ops.tda_kernels.
//
//   rms_norm(x, w, eps)                      fp32: y = (x * inv) * w
//   rms_norm_bf16(x, w, eps, round_normed)   bf16 x, fp32 scale w:
//       y = bf16( (x * inv) * w )            round_normed = false (Gemma: w = 1 + weight, in fp32)
//       y = bf16( bf16(x * inv) * w )        round_normed = true  (Llama: weight * normed.to(bf16))
//   inv = 1 / sqrt(mean(x^2) + eps), accumulated in fp32 (16 lanes), as HF computes it in fp32.
//
//   residual_norm(h, a, wa, eps_a, w, eps, round_normed) -> (h', y)
//       h' = h + (wa defined ? norm(a, wa, eps_a) : a);  y = norm(h', w, eps)
//   exactly the separate calls (each norm and the add rounded to the activations' dtype as the
//   unfused ops round them): one call where a layer made three (Gemma's sandwich: post-norm, add,
//   next pre-norm) or two (pre-norm families: add, next norm).
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "bf16.h"

namespace tda_norms {

using tda_bf16::from_float;
using tda_bf16::to_float;
inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) { return to_float(p[i]); }

template <typename T>
float inv_rms(const T* __restrict x, int64_t d, double eps) {
  constexpr int64_t L = 16;
  float acc[L] = {0};
  int64_t c = 0;
  for (; c + L <= d; c += L)
    for (int64_t l = 0; l < L; ++l) {
      const float v = ld(x, c + l);
      acc[l] += v * v;
    }
  float ss = 0.0f;
  for (; c < d; ++c) {
    const float v = ld(x, c);
    ss += v * v;
  }
  for (int64_t l = 0; l < L; ++l) ss += acc[l];
  return 1.0f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
}

inline void norm_row(const float* __restrict x, const float* __restrict w, int64_t d, double eps, bool,
                     float* __restrict y) {
  const float inv = inv_rms(x, d, eps);
  for (int64_t i = 0; i < d; ++i) y[i] = (x[i] * inv) * w[i];
}

inline void norm_row(const uint16_t* __restrict x, const float* __restrict w, int64_t d, double eps, bool round_normed,
                     uint16_t* __restrict y) {
  const float inv = inv_rms(x, d, eps);
  for (int64_t i = 0; i < d; ++i) {
    float t = to_float(x[i]) * inv;
    if (round_normed) t = to_float(from_float(t));
    y[i] = from_float(t * w[i]);
  }
}

inline float add_round(float a, float b) { return a + b; }
inline uint16_t add_round(uint16_t a, uint16_t b) { return from_float(to_float(a) + to_float(b)); }

inline void check_norm(const at::Tensor& x, const at::Tensor& w, const char* what) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu() && x.is_contiguous() && w.is_contiguous() &&
                        w.dim() == 1 && x.dim() >= 1 && x.size(-1) == w.size(0),
                    "tda_kernels: ", what, " needs contiguous CPU x[..., d] and w[d]");
  TORCH_CHECK_TYPE((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                       w.scalar_type() == at::kFloat,
                   "tda_kernels: ", what, " takes fp32 or bf16 x and an fp32 scale w");
}

template <typename T>
T* data(at::Tensor& t) { return reinterpret_cast<T*>(t.mutable_data_ptr()); }
template <typename T>
const T* cdata(const at::Tensor& t) { return reinterpret_cast<const T*>(t.const_data_ptr()); }

template <typename T>
void norm_rows(const at::Tensor& x, const at::Tensor& w, double eps, bool round_normed, at::Tensor& y) {
  const int64_t d = w.size(0), n = d ? x.numel() / d : 0;
  for (int64_t r = 0; r < n; ++r)
    norm_row(cdata<T>(x) + r * d, w.const_data_ptr<float>(), d, eps, round_normed, data<T>(y) + r * d);
}

inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_norm(x, w, "rms_norm");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "tda_kernels: rms_norm is fp32 only");
  at::Tensor y = at::empty_like(x);
  norm_rows<float>(x, w, eps, false, y);
  return y;
}

inline at::Tensor rms_norm_bf16(const at::Tensor& x, const at::Tensor& w, double eps, bool round_normed) {
  check_norm(x, w, "rms_norm_bf16");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16, "tda_kernels: rms_norm_bf16 takes bf16 x");
  at::Tensor y = at::empty_like(x);
  norm_rows<uint16_t>(x, w, eps, round_normed, y);
  return y;
}

template <typename T>
void residual_rows(const at::Tensor& h, const at::Tensor& a, const at::Tensor* wa, double eps_a, const at::Tensor& w,
                   double eps, bool round_normed, at::Tensor& h2, at::Tensor& y) {
  const int64_t d = w.size(0), n = d ? h.numel() / d : 0;
  std::vector<T> na(wa ? static_cast<size_t>(d) : 0);
  for (int64_t r = 0; r < n; ++r) {
    const T* ar = cdata<T>(a) + r * d;
    if (wa) {
      norm_row(ar, wa->const_data_ptr<float>(), d, eps_a, round_normed, na.data());
      ar = na.data();
    }
    const T* hr = cdata<T>(h) + r * d;
    T* h2r = data<T>(h2) + r * d;
    for (int64_t i = 0; i < d; ++i) h2r[i] = add_round(hr[i], ar[i]);
    norm_row(h2r, w.const_data_ptr<float>(), d, eps, round_normed, data<T>(y) + r * d);
  }
}

inline std::tuple<at::Tensor, at::Tensor> residual_norm(const at::Tensor& h, const at::Tensor& a,
                                                        const c10::optional<at::Tensor>& wa, double eps_a,
                                                        const at::Tensor& w, double eps, bool round_normed) {
  check_norm(h, w, "residual_norm");
  TORCH_CHECK_VALUE(a.sizes() == h.sizes() && a.is_contiguous() && a.device().is_cpu(),
                    "tda_kernels: residual_norm: the residual and the branch must have one shape");
  TORCH_CHECK_TYPE(a.scalar_type() == h.scalar_type(), "tda_kernels: residual_norm: dtypes differ");
  const at::Tensor* pa = nullptr;
  if (wa.has_value() && wa->defined()) {
    check_norm(a, *wa, "residual_norm");
    pa = &*wa;
  }
  at::Tensor h2 = at::empty_like(h), y = at::empty_like(h);
  if (h.scalar_type() == at::kFloat)
    residual_rows<float>(h, a, pa, eps_a, w, eps, round_normed, h2, y);
  else
    residual_rows<uint16_t>(h, a, pa, eps_a, w, eps, round_normed, h2, y);
  return {h2, y};
}

}  // namespace tda_norms

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("rms_norm_bf16(Tensor x, Tensor w, float eps, bool round_normed) -> Tensor");
  m.def("residual_norm(Tensor h, Tensor a, Tensor? wa, float eps_a, Tensor w, float eps, bool round_normed) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("rms_norm", &tda_norms::rms_norm);
  m.impl("rms_norm_bf16", &tda_norms::rms_norm_bf16);
  m.impl("residual_norm", &tda_norms::residual_norm);
}

// RMSNorm of bf16 activations in one call (HF's module runs ~8 small ops per norm, ~110 norms per
// Gemma decode step). Included at the end of sparse_kernels.cpp; registers
// torch.ops.tda_kernels.rms_norm_bf16 as a fragment of the same library.
//
//   y[r, i] = bf16( (x[r, i] * inv_r) * w[i] )                  round_normed = false (Gemma: w = 1 + weight, fp32)
//   y[r, i] = bf16( bf16(x[r, i] * inv_r) * w[i] )             round_normed = true  (Llama: weight * normed.to(bf16))
//   inv_r = 1 / sqrt(mean_i x[r, i]^2 + eps), accumulated in fp32, as HF computes it in fp32.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace tda_rms_bf16 {

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline at::Tensor rms_norm_bf16(const at::Tensor& x, const at::Tensor& w, double eps, bool round_normed) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu() && x.is_contiguous() &&
                        w.is_contiguous() && w.dim() == 1 && x.dim() >= 1 &&
                        x.size(-1) == w.size(0),
                    "tda_kernels: rms_norm_bf16 needs contiguous CPU x[..., d] and w[d]");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kFloat,
                   "tda_kernels: rms_norm_bf16 takes bf16 x and an fp32 scale w");
  const int64_t d = w.size(0), n = d ? x.numel() / d : 0;
  at::Tensor y = at::empty_like(x);
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
  const float* wp = w.const_data_ptr<float>();
  uint16_t* yp = reinterpret_cast<uint16_t*>(y.mutable_data_ptr<at::BFloat16>());
  for (int64_t r = 0; r < n; ++r) {
    const uint16_t* __restrict xr = xp + r * d;
    uint16_t* __restrict yr = yp + r * d;
    constexpr int64_t L = 16;
    float acc[L] = {0};
    int64_t c = 0;
    for (; c + L <= d; c += L)
      for (int64_t l = 0; l < L; ++l) {
        const float v = bf16_to_float(xr[c + l]);
        acc[l] += v * v;
      }
    float ss = 0.0f;
    for (; c < d; ++c) {
      const float v = bf16_to_float(xr[c]);
      ss += v * v;
    }
    for (int64_t l = 0; l < L; ++l) ss += acc[l];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
    for (int64_t i = 0; i < d; ++i) {
      float t = bf16_to_float(xr[i]) * inv;
      if (round_normed) t = static_cast<float>(c10::BFloat16(t));
      yr[i] = c10::BFloat16(t * wp[i]).x;
    }
  }
  return y;
}

}  // namespace tda_rms_bf16

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("rms_norm_bf16(Tensor x, Tensor w, float eps, bool round_normed) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("rms_norm_bf16", &tda_rms_bf16::rms_norm_bf16);
}

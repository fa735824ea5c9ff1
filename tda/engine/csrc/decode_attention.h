// One decode position's attention in two calls instead of ~20 small torch ops per layer (included
// at the end of sparse_kernels.cpp; a fragment of torch.ops.tda_kernels):
//
//   rope_qk(q[B, 1, Hq, D], k[B, 1, Hk, D], cos[B, 1, D], sin[B, 1, D], wq?, eps_q, wk?, eps_k, round_normed)
//       -> (q'[B, Hq, 1, D], k'[B, Hk, 1, D])
//       Hugging Face's apply_rotary_pos_emb (rotate_half form) with its roundings:
//       x' = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]); fp32 without
//       fused multiply-adds (bit-identical to torch's mul, mul, add), bf16 rounding each product
//       and the sum to bf16 as torch's bf16 ops do.
//       With wq / wk given (Gemma 3's q_norm / k_norm, fp32 scales [D]), each head row is first
//       RMS-normalised exactly as norms.h's rms_norm / rms_norm_bf16 would (eps_q, eps_k,
//       round_normed), then rotated: the same numbers as the three separate calls.
//   decode_attention(q[B, Hq, 1, D], k[B, Hk, T, D], v[B, Hk, T, D], scale, window) -> y[B, 1, Hq * D]
//       softmax(scale * q . k[t]) . v over the last `window` keys (0: all of them), query head h
//       reading key/value head h / (Hq / Hk) (grouped-query attention); fp32 accumulation and an
//       fp32 softmax, the output rounded once to q's dtype. k and v may be strided views (the
//       KV cache's filled prefix); the last dimension must be contiguous.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "bf16.h"
#include "norms.h"

namespace tda_attn {

using tda_bf16::from_float;
using tda_bf16::to_float;

// x' = x * c + rot(x) * s, each product and the sum rounded as torch rounds them (no FMA).
__attribute__((optimize("fp-contract=off"))) inline void rope_f32(const float* x, const float* c, const float* s,
                                                                   int64_t D, float* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) {
    const float r = i < h ? -x[i + h] : x[i - h];
    const float a = x[i] * c[i];
    const float b = r * s[i];
    out[i] = a + b;
  }
}

inline void rope_bf16(const uint16_t* x, const uint16_t* c, const uint16_t* s, int64_t D, uint16_t* out) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) {
    const float r = i < h ? -to_float(x[i + h]) : to_float(x[i - h]);
    const float a = to_float(from_float(to_float(x[i]) * to_float(c[i])));
    const float b = to_float(from_float(r * to_float(s[i])));
    out[i] = from_float(a + b);
  }
}

inline void check_rope_arg(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(1) == 1 && t.is_contiguous() && t.device().is_cpu(), "tda_kernels: rope_qk: ",
                    what, " must be a contiguous CPU [B, 1, heads, head_dim] tensor");
}

inline void check_qk_norm(const c10::optional<at::Tensor>& w, int64_t D, const char* what) {
  if (!w.has_value() || !w->defined()) return;
  TORCH_CHECK_VALUE(w->dim() == 1 && w->size(0) == D && w->is_contiguous() && w->device().is_cpu() &&
                        w->scalar_type() == at::kFloat,
                    "tda_kernels: rope_qk: ", what, " must be a contiguous fp32 CPU [head_dim] scale");
}

inline const float* opt_ptr(const c10::optional<at::Tensor>& w) {
  return w.has_value() && w->defined() ? w->const_data_ptr<float>() : nullptr;
}

inline std::tuple<at::Tensor, at::Tensor> rope_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                  const at::Tensor& sin, const c10::optional<at::Tensor>& wq,
                                                  double eps_q, const c10::optional<at::Tensor>& wk, double eps_k,
                                                  bool round_normed) {
  check_rope_arg(q, "q");
  check_rope_arg(k, "k");
  const int64_t B = q.size(0), Hq = q.size(2), Hk = k.size(2), D = q.size(3);
  TORCH_CHECK_VALUE(k.size(0) == B && k.size(3) == D && D % 2 == 0, "tda_kernels: rope_qk: q and k shapes differ");
  TORCH_CHECK_VALUE(cos.sizes() == sin.sizes() && cos.numel() == B * D && cos.is_contiguous() && sin.is_contiguous() &&
                        cos.device().is_cpu() && sin.device().is_cpu(),
                    "tda_kernels: rope_qk: cos and sin must be contiguous CPU [B, 1, head_dim] tensors");
  const auto dt = q.scalar_type();
  TORCH_CHECK_TYPE(k.scalar_type() == dt && cos.scalar_type() == dt && sin.scalar_type() == dt &&
                       (dt == at::kFloat || dt == at::kBFloat16),
                   "tda_kernels: rope_qk takes fp32 or bf16 q, k, cos, sin of one dtype");
  check_qk_norm(wq, D, "wq");
  check_qk_norm(wk, D, "wk");
  at::Tensor qo = at::empty({B, Hq, 1, D}, q.options()), ko = at::empty({B, Hk, 1, D}, k.options());
  std::vector<float> nf(static_cast<size_t>(D));
  std::vector<uint16_t> nb(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b) {
    for (int which = 0; which < 2; ++which) {
      const at::Tensor& src = which ? k : q;
      at::Tensor& dst = which ? ko : qo;
      const int64_t H = which ? Hk : Hq;
      const float* w = opt_ptr(which ? wk : wq);
      const double eps = which ? eps_k : eps_q;
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t off = (b * H + hh) * D;
        if (dt == at::kFloat) {
          const float* x = src.const_data_ptr<float>() + off;
          if (w) tda_norms::norm_row(x, w, D, eps, round_normed, nf.data()), x = nf.data();
          rope_f32(x, cos.const_data_ptr<float>() + b * D, sin.const_data_ptr<float>() + b * D, D,
                   dst.mutable_data_ptr<float>() + off);
        } else {
          auto p = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.const_data_ptr()); };
          const uint16_t* x = p(src) + off;
          if (w) tda_norms::norm_row(x, w, D, eps, round_normed, nb.data()), x = nb.data();
          rope_bf16(x, p(cos) + b * D, p(sin) + b * D, D, reinterpret_cast<uint16_t*>(dst.mutable_data_ptr()) + off);
        }
      }
    }
  }
  return {qo, ko};
}

// One query head: out[D] (fp32) = softmax(scale * q . k[t]) . v[t] over t in [t0, t1).
template <typename T, typename Ld>
void one_head(const T* q, const T* k, int64_t ks, const T* v, int64_t vs, int64_t t0, int64_t t1, int64_t D,
              float scale, const Ld& ld, float* qf, float* p, float* out) {
  for (int64_t i = 0; i < D; ++i) qf[i] = ld(q, i);
  float m = -INFINITY;
  for (int64_t t = t0; t < t1; ++t) {
    const T* kt = k + t * ks;
    constexpr int64_t L = 16;  // lanes: the reduction vectorizes without reassociation flags
    float acc[L] = {0};
    int64_t i = 0;
    for (; i + L <= D; i += L)
      for (int64_t l = 0; l < L; ++l) acc[l] += qf[i + l] * ld(kt, i + l);
    float s = 0.0f;
    for (; i < D; ++i) s += qf[i] * ld(kt, i);
    for (int64_t l = 0; l < L; ++l) s += acc[l];
    s *= scale;
    p[t - t0] = s;
    m = std::max(m, s);
  }
  float sum = 0.0f;
  for (int64_t t = t0; t < t1; ++t) {
    const float e = std::exp(p[t - t0] - m);
    p[t - t0] = e;
    sum += e;
  }
  std::fill(out, out + D, 0.0f);
  for (int64_t t = t0; t < t1; ++t) {
    const T* vt = v + t * vs;
    const float w = p[t - t0];
    for (int64_t i = 0; i < D; ++i) out[i] += w * ld(vt, i);
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < D; ++i) out[i] *= inv;
}

inline at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                   int64_t window) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1,
                    "tda_kernels: decode_attention takes q[B, Hq, 1, D], k and v [B, Hk, T, D]");
  TORCH_CHECK_VALUE(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
                    "tda_kernels: decode_attention: CPU tensors only");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3), Hk = k.size(1), T = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && v.size(0) == B && v.size(1) == Hk && v.size(2) == T && k.size(3) == D &&
                        v.size(3) == D && Hk > 0 && Hq % Hk == 0 && T > 0,
                    "tda_kernels: decode_attention: q, k, v shapes do not fit");
  TORCH_CHECK_VALUE(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                    "tda_kernels: decode_attention: the head dimension must be contiguous");
  const auto dt = q.scalar_type();
  TORCH_CHECK_TYPE(k.scalar_type() == dt && v.scalar_type() == dt && (dt == at::kFloat || dt == at::kBFloat16),
                   "tda_kernels: decode_attention takes fp32 or bf16 q, k, v of one dtype");
  const int64_t t0 = window > 0 ? std::max<int64_t>(0, T - window) : 0, n = T - t0;
  const int64_t group = Hq / Hk, heads = B * Hq;
  at::Tensor y = at::empty({B, 1, Hq * D}, q.options());
  const float sc = static_cast<float>(scale);
  // one head is ~2 n D multiply-adds: threads only when each gets enough of them
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, 2 * n * D));
  at::parallel_for(0, heads, grain, [&](int64_t h0, int64_t h1) {
    std::vector<float> qf(D), p(n), out(D);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq, g = h / group;
      if (dt == at::kFloat) {
        auto ld = [](const float* a, int64_t i) { return a[i]; };
        const float* base_q = q.const_data_ptr<float>() + b * q.stride(0) + h * q.stride(1);
        const float* base_k = k.const_data_ptr<float>() + b * k.stride(0) + g * k.stride(1);
        const float* base_v = v.const_data_ptr<float>() + b * v.stride(0) + g * v.stride(1);
        one_head(base_q, base_k, k.stride(2), base_v, v.stride(2), t0, T, D, sc, ld, qf.data(), p.data(), out.data());
        float* yo = y.mutable_data_ptr<float>() + (b * Hq + h) * D;
        std::copy(out.begin(), out.end(), yo);
      } else {
        auto ld = [](const uint16_t* a, int64_t i) { return to_float(a[i]); };
        auto P = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.const_data_ptr()); };
        const uint16_t* base_q = P(q) + b * q.stride(0) + h * q.stride(1);
        const uint16_t* base_k = P(k) + b * k.stride(0) + g * k.stride(1);
        const uint16_t* base_v = P(v) + b * v.stride(0) + g * v.stride(1);
        one_head(base_q, base_k, k.stride(2), base_v, v.stride(2), t0, T, D, sc, ld, qf.data(), p.data(), out.data());
        uint16_t* yo = reinterpret_cast<uint16_t*>(y.mutable_data_ptr()) + (b * Hq + h) * D;
        for (int64_t i = 0; i < D; ++i) yo[i] = from_float(out[i]);
      }
    }
  });
  return y;
}

}  // namespace tda_attn

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("rope_qk(Tensor q, Tensor k, Tensor cos, Tensor sin, Tensor? wq=None, float eps_q=0., Tensor? wk=None, "
        "float eps_k=0., bool round_normed=False) -> (Tensor, Tensor)");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, float scale, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) {
  m.impl("rope_qk", &tda_attn::rope_qk);
  m.impl("decode_attention", &tda_attn::decode_attention);
}

// A decode step's KV-cache write in one call (included at the end of sparse_kernels.cpp; a
// fragment of torch.ops.tda_kernels). tda/engine/kvcache.py's in-place cache layers wrote each
// step's key and value with two slice-and-copy_ pairs (~10 us per layer with their bookkeeping).
//
//   kv_write(kbuf[B, H, C, D], vbuf[B, H, C, D], k[B, H, 1, D], v[B, H, 1, D], pos)
//       kbuf[:, :, pos] = k[:, :, 0];  vbuf[:, :, pos] = v[:, :, 0]
//   any dtype (a byte copy); the buffers contiguous, k and v of any strides.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace tda_kv {

inline void check_pair(const at::Tensor& buf, const at::Tensor& x, int64_t pos, const char* what) {
  TORCH_CHECK_VALUE(buf.dim() == 4 && buf.is_contiguous() && buf.device().is_cpu(), "tda_kernels: kv_write: the ",
                    what, " buffer must be a contiguous CPU [B, H, C, D] tensor");
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(0) == buf.size(0) && x.size(1) == buf.size(1) && x.size(2) == 1 &&
                        x.size(3) == buf.size(3) && x.scalar_type() == buf.scalar_type() && x.device().is_cpu(),
                    "tda_kernels: kv_write: ", what, " must be [B, H, 1, D] like its buffer, same dtype");
  TORCH_CHECK_VALUE(pos >= 0 && pos < buf.size(2), "tda_kernels: kv_write: position ", pos, " outside the ",
                    buf.size(2), " positions of the buffer");
}

inline void write_one(at::Tensor& buf, const at::Tensor& x, int64_t pos) {
  const int64_t B = buf.size(0), H = buf.size(1), C = buf.size(2), D = buf.size(3);
  const int64_t es = buf.element_size();
  auto* dst = static_cast<char*>(buf.data_ptr());
  const auto* src = static_cast<const char*>(x.const_data_ptr());
  const int64_t sd = x.stride(3);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      char* d = dst + (((b * H + h) * C + pos) * D) * es;
      const char* s = src + (b * x.stride(0) + h * x.stride(1)) * es;
      if (sd == 1 || D <= 1)
        std::memcpy(d, s, static_cast<size_t>(D * es));
      else
        for (int64_t i = 0; i < D; ++i) std::memcpy(d + i * es, s + i * sd * es, static_cast<size_t>(es));
    }
}

inline void kv_write(at::Tensor kbuf, at::Tensor vbuf, const at::Tensor& k, const at::Tensor& v, int64_t pos) {
  check_pair(kbuf, k, pos, "key");
  check_pair(vbuf, v, pos, "value");
  write_one(kbuf, k, pos);
  write_one(vbuf, v, pos);
}

}  // namespace tda_kv

TORCH_LIBRARY_FRAGMENT(tda_kernels, m) {
  m.def("kv_write(Tensor(a!) kbuf, Tensor(b!) vbuf, Tensor k, Tensor v, int pos) -> ()");
}

TORCH_LIBRARY_IMPL(tda_kernels, CPU, m) { m.impl("kv_write", &tda_kv::kv_write); }

// bf16 <-> fp32 for the kernels' scalar loops (bf16 bits held as uint16_t). Widening is exact (the
// bits shifted into an fp32); narrowing rounds to nearest even as torch's bf16 ops do.
#pragma once
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace tda_bf16 {

inline float to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t from_float(float v) { return c10::BFloat16(v).x; }

}  // namespace tda_bf16

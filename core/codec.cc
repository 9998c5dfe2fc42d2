#include "core/codec.h"

#include <Eigen/Core>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// The wire layouts are little-endian; loads and stores below are plain
// memcpy, which is only right on a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "effadam's codecs assume a little-endian host");

namespace effadam {
namespace {

size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void StoreF32(uint8_t* p, float v) { std::memcpy(p, &v, sizeof v); }
uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }

absl::Status NonFiniteInput(const CodecSpec& spec) {
  return absl::InvalidArgumentError(
      absl::StrCat(spec.ToString(), " encode: the update holds NaN or Inf"));
}

absl::Status CheckErrorSpan(absl::Span<const float> update,
                            absl::Span<float> error) {
  if (!error.empty() && error.size() != update.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("error memory has ", error.size(),
                     " elements, update has ", update.size()));
  }
  return absl::OkStatus();
}

// p_j = update_j + error_j, the value error feedback quantizes. Both passes
// over a block call this, so they see the same float.
inline float Feedback(const float* update, const float* error, size_t j) {
  return error ? update[j] + error[j] : update[j];
}

// Sum of |p| over a block with eight independent lanes, combined in a fixed
// order: vectorizable, and the same bits on every run.
float SumAbs(const float* u, const float* e, size_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t j = 0;
#if defined(__SSE2__)
  // The same eight lanes as the loops below, four at a time.
  {
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 lo = _mm_setzero_ps(), hi = _mm_setzero_ps();
    for (; j + 8 <= n; j += 8) {
      __m128 p0 = _mm_loadu_ps(u + j), p1 = _mm_loadu_ps(u + j + 4);
      if (e) {
        p0 = _mm_add_ps(p0, _mm_loadu_ps(e + j));
        p1 = _mm_add_ps(p1, _mm_loadu_ps(e + j + 4));
      }
      lo = _mm_add_ps(lo, _mm_and_ps(p0, abs_mask));
      hi = _mm_add_ps(hi, _mm_and_ps(p1, abs_mask));
    }
    _mm_storeu_ps(lane, lo);
    _mm_storeu_ps(lane + 4, hi);
  }
#endif
  if (e) {
    for (; j + 8 <= n; j += 8)
      for (int l = 0; l < 8; ++l) lane[l] += std::fabs(u[j + l] + e[j + l]);
  } else {
    for (; j + 8 <= n; j += 8)
      for (int l = 0; l < 8; ++l) lane[l] += std::fabs(u[j + l]);
  }
  for (; j < n; ++j) lane[j % 8] += std::fabs(Feedback(u, e, j));
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// mean |p| over n elements in double: the fallback when SumAbs's float sum
// overflows although every p is finite (n values near FLT_MAX / n). Each
// |p| <= FLT_MAX, so the mean is a finite float again.
float MeanAbsWide(const float* u, const float* e, size_t n) {
  double sum = 0;
  for (size_t j = 0; j < n; ++j) sum += std::fabs(Feedback(u, e, j));
  return static_cast<float>(sum / static_cast<double>(n));
}

float MaxAbs(const float* u, const float* e, size_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t j = 0;
#if defined(__SSE2__)
  {
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 lo = _mm_setzero_ps(), hi = _mm_setzero_ps();
    __m128 nan = _mm_setzero_ps();  // all-ones lanes once a NaN was seen
    for (; j + 8 <= n; j += 8) {
      __m128 p0 = _mm_loadu_ps(u + j), p1 = _mm_loadu_ps(u + j + 4);
      if (e) {
        p0 = _mm_add_ps(p0, _mm_loadu_ps(e + j));
        p1 = _mm_add_ps(p1, _mm_loadu_ps(e + j + 4));
      }
      nan = _mm_or_ps(
          nan, _mm_or_ps(_mm_cmpunord_ps(p0, p0), _mm_cmpunord_ps(p1, p1)));
      lo = _mm_max_ps(lo, _mm_and_ps(p0, abs_mask));
      hi = _mm_max_ps(hi, _mm_and_ps(p1, abs_mask));
    }
    if (_mm_movemask_ps(nan)) return std::numeric_limits<float>::quiet_NaN();
    _mm_storeu_ps(lane, lo);
    _mm_storeu_ps(lane + 4, hi);
  }
#endif
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      float a = std::fabs(Feedback(u, e, j + l));
      // `a > lane || a != a` keeps a NaN, so the caller sees it.
      lane[l] = (a > lane[l] || a != a) ? a : lane[l];
    }
  for (; j < n; ++j) {
    float a = std::fabs(Feedback(u, e, j));
    lane[j % 8] = (a > lane[j % 8] || a != a) ? a : lane[j % 8];
  }
  float m = 0;
  for (float l : lane) m = (l > m || l != l) ? l : m;
  return m;
}

// out[j] = base[j] + weight * value(element begin + j) for a layout of
// kWidth bytes per element.
template <size_t kWidth, typename Value>
void DecodeFixedWidth(const uint8_t* bytes, size_t begin, float weight,
                      const float* base, absl::Span<float> out, Value value) {
  const uint8_t* in = bytes + kWidth * begin;
  for (size_t j = 0; j < out.size(); ++j)
    out[j] = base[j] + weight * value(in + kWidth * j);
}

// Checks the bits of `bytes` past `used_bits` are zero.
bool PaddingIsZero(absl::Span<const uint8_t> bytes, size_t used_bits) {
  if (used_bits % 8 == 0) return true;
  uint8_t last = bytes[used_bits / 8];
  return (last >> (used_bits % 8)) == 0;
}

// Whether the `count` float32 at p (any alignment) are all finite: an
// exponent field of all ones is Inf or NaN.
bool FloatsFinite(const uint8_t* p, size_t count) {
  size_t i = 0;
#if defined(__SSE2__)
  {
    const __m128i exponent = _mm_set1_epi32(0x7f800000);
    __m128i bad = _mm_setzero_si128();
    for (; i + 8 <= count; i += 8) {
      const __m128i a =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * i));
      const __m128i b =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * i + 16));
      bad = _mm_or_si128(
          bad,
          _mm_or_si128(_mm_cmpeq_epi32(_mm_and_si128(a, exponent), exponent),
                       _mm_cmpeq_epi32(_mm_and_si128(b, exponent), exponent)));
    }
    if (_mm_movemask_epi8(bad) != 0) return false;
  }
#endif
  for (; i < count; ++i) {
    if (!std::isfinite(LoadF32(p + 4 * i))) return false;
  }
  return true;
}

// ---------------------------------------------------------------- fp32 ---
// Layout: n float32 values.
class Fp32Codec final : public Codec {
 public:
  explicit Fp32Codec(CodecSpec spec, size_t block) : Codec(spec, block) {}

  size_t EncodedSize(size_t n) const override { return 4 * n; }
  double Delta(size_t) const override { return 1.0; }

  absl::Status EncodeRange(size_t n, size_t begin,
                           absl::Span<const float> update,
                           const float* error_in, float* error_out, uint64_t,
                           uint8_t* out) const override {
    if (auto s = CheckRange(n, begin, update.size()); !s.ok()) return s;
    out += 4 * begin;
    bool finite = true;
    for (size_t j = 0; j < update.size(); ++j) {
      float p = Feedback(update.data(), error_in, j);
      finite &= std::fabs(p) <= FLT_MAX;
      StoreF32(out + 4 * j, p);
    }
    if (!finite) return NonFiniteInput(spec());
    // Q(p) = p, so the residual is exactly zero.
    if (error_out) std::fill(error_out, error_out + update.size(), 0.0f);
    return absl::OkStatus();
  }

  absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                           size_t begin, float weight, const float* base,
                           absl::Span<float> out) const override {
    if (auto s = CheckDecodeRange(bytes, n, begin, out.size()); !s.ok())
      return s;
    DecodeFixedWidth<4>(bytes.data(), begin, weight, base, out, LoadF32);
    return absl::OkStatus();
  }

  absl::Status Validate(absl::Span<const uint8_t> bytes,
                        size_t n) const override {
    if (auto s = CheckSize(bytes, n); !s.ok()) return s;
    if (!FloatsFinite(bytes.data(), n))
      return absl::InvalidArgumentError("fp32 payload holds NaN or Inf");
    return absl::OkStatus();
  }
};

// ------------------------------------------------------- bf16 and fp16 ---
// Layout: n 16-bit floats (bfloat16 or IEEE binary16), round to nearest
// even. Values beyond the format's largest finite value saturate to it.
template <typename Half>
class HalfCodec final : public Codec {
 public:
  HalfCodec(CodecSpec spec, size_t block) : Codec(spec, block) {}

  size_t EncodedSize(size_t n) const override { return 2 * n; }
  // Holds for inputs in the format's normal range, where rounding to
  // nearest errs by at most u = 2^-digits relative; 2u keeps a margin for
  // the few elements that land in the subnormal range.
  double Delta(size_t) const override {
    return 1.0 - std::ldexp(1.0, 2 - 2 * Eigen::NumTraits<Half>::digits());
  }

  absl::Status EncodeRange(size_t n, size_t begin,
                           absl::Span<const float> update,
                           const float* error_in, float* error_out, uint64_t,
                           uint8_t* out) const override {
    if (auto s = CheckRange(n, begin, update.size()); !s.ok()) return s;
    out += 2 * begin;
    const float max = static_cast<float>(Eigen::NumTraits<Half>::highest());
    bool finite = true;
    for (size_t j = 0; j < update.size(); ++j) {
      float p = Feedback(update.data(), error_in, j);
      finite &= std::fabs(p) <= FLT_MAX;
      Half h(std::clamp(p, -max, max));
      StoreU16(out + 2 * j, Eigen::numext::bit_cast<uint16_t>(h));
      if (error_out) error_out[j] = p - static_cast<float>(h);
    }
    if (!finite) return NonFiniteInput(spec());
    return absl::OkStatus();
  }

  absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                           size_t begin, float weight, const float* base,
                           absl::Span<float> out) const override {
    if (auto s = CheckDecodeRange(bytes, n, begin, out.size()); !s.ok())
      return s;
    DecodeFixedWidth<2>(bytes.data(), begin, weight, base, out, Value);
    return absl::OkStatus();
  }

  absl::Status Validate(absl::Span<const uint8_t> bytes,
                        size_t n) const override {
    if (auto s = CheckSize(bytes, n); !s.ok()) return s;
    for (size_t j = 0; j < n; ++j) {
      if (!std::isfinite(Value(bytes.data() + 2 * j)))
        return absl::InvalidArgumentError(
            absl::StrCat(spec().ToString(), " payload holds NaN or Inf"));
    }
    return absl::OkStatus();
  }

 private:
  static float Value(const uint8_t* p) {
    return static_cast<float>(Eigen::numext::bit_cast<Half>(LoadU16(p)));
  }
};

// Shared frame of the two block-scaled codecs: `blocks` float32 scales, then
// a little-endian bit stream of `bits` per element (element j occupies bits
// [j*bits, (j+1)*bits), least significant bit first).
struct ScaledFrame {
  size_t blocks;
  size_t code_bytes;
  size_t size() const { return 4 * blocks + code_bytes; }
};

ScaledFrame FrameFor(size_t n, size_t block, int bits) {
  return {CeilDiv(n, block), CeilDiv(n * static_cast<size_t>(bits), 8)};
}

absl::Status CheckScales(const CodecSpec& spec, absl::Span<const uint8_t> bytes,
                         size_t blocks) {
  for (size_t b = 0; b < blocks; ++b) {
    float s = LoadF32(bytes.data() + 4 * b);
    if (!(s >= 0.0f && s <= FLT_MAX)) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.ToString(), " payload: scale of block ", b,
                       " is not a finite non-negative number"));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- sign ---
#if defined(__SSE2__)
// For each byte of sign bits, its eight lanes with just the float sign bit
// set where the bit is 1 (8 KiB, in L1 while a block decodes).
struct SignMaskTable {
  alignas(16) float lanes[256][8];
  constexpr SignMaskTable() : lanes{} {
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) lanes[b][k] = ((b >> k) & 1) ? -0.0f : 0.0f;
  }
};
// Built by the compiler: no static initialization order to worry about.
constexpr SignMaskTable kSignMasks;
#endif

// Q(p)_j = s * sign(p_j), s = mean |p| over the block. Layout: ScaledFrame
// with one bit per element, 1 meaning -s (the float sign bit of p).
class SignCodec final : public Codec {
 public:
  SignCodec(CodecSpec spec, size_t block) : Codec(spec, block) {}

  size_t EncodedSize(size_t n) const override {
    return FrameFor(n, block_size(), 1).size();
  }
  // ||Q(p)-p||^2 = ||p||^2 - ||p||_1^2 / n_b per block; half of the exact
  // 1/n_b leaves room for float rounding of the scale.
  double Delta(size_t n) const override {
    return 0.5 / static_cast<double>(std::min(n, block_size()));
  }

  absl::Status EncodeRange(size_t n, size_t begin,
                           absl::Span<const float> update,
                           const float* error_in, float* error_out, uint64_t,
                           uint8_t* out) const override {
    if (auto s = CheckRange(n, begin, update.size()); !s.ok()) return s;
    const size_t size = update.size();
    const ScaledFrame frame = FrameFor(n, block_size(), 1);
    // Blocks are multiples of 8 elements, so each starts on a byte.
    uint8_t* bits = out + 4 * frame.blocks + begin / 8;
    uint8_t* scales = out + 4 * (begin / block_size());
    const float* u = update.data();
    for (size_t b = 0; b * block_size() < size; ++b) {
      const size_t first = b * block_size();
      const size_t nb = std::min(block_size(), size - first);
      const float* eb = error_in ? error_in + first : nullptr;
      float s = SumAbs(u + first, eb, nb) / static_cast<float>(nb);
      // A float sum of finite values can overflow; only a NaN or Inf in p
      // keeps the wide mean from being finite.
      if (!(s <= FLT_MAX)) s = MeanAbsWide(u + first, eb, nb);
      if (!(s <= FLT_MAX)) return NonFiniteInput(spec());
      StoreF32(scales + 4 * b, s);
      EncodeBlock(u + first, eb, error_out ? error_out + first : nullptr, nb, s,
                  bits + first / 8);
    }
    return absl::OkStatus();
  }

  absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                           size_t begin, float weight, const float* base,
                           absl::Span<float> out) const override {
    const ScaledFrame frame = FrameFor(n, block_size(), 1);
    if (auto s = CheckDecodeRange(bytes, n, begin, out.size()); !s.ok())
      return s;
    const size_t size = out.size();
    const uint8_t* bits = bytes.data() + 4 * frame.blocks + begin / 8;
    const uint8_t* scales = bytes.data() + 4 * (begin / block_size());
    for (size_t b = 0; b * block_size() < size; ++b) {
      const size_t first = b * block_size();
      const size_t nb = std::min(block_size(), size - first);
      const float s = LoadF32(scales + 4 * b);
      const float pos = weight * s, neg = weight * -s;
      const float* in = base + first;
      float* a = out.data() + first;
      const uint8_t* bb = bits + first / 8;
      size_t j = 0;
#if defined(__SSE2__)
      // neg is pos with the sign flipped (IEEE products are symmetric in
      // sign), so q is pos xor the byte's sign masks.
      const __m128 vpos = _mm_set1_ps(pos);
      for (; j + 8 <= nb; j += 8) {
        const float* mask = kSignMasks.lanes[bb[j / 8]];
        const __m128 q0 = _mm_xor_ps(vpos, _mm_load_ps(mask));
        const __m128 q1 = _mm_xor_ps(vpos, _mm_load_ps(mask + 4));
        _mm_storeu_ps(a + j, _mm_add_ps(_mm_loadu_ps(in + j), q0));
        _mm_storeu_ps(a + j + 4, _mm_add_ps(_mm_loadu_ps(in + j + 4), q1));
      }
#endif
      for (; j < nb; ++j)
        a[j] = in[j] + (((bb[j / 8] >> (j % 8)) & 1) ? neg : pos);
    }
    return absl::OkStatus();
  }

  absl::Status Validate(absl::Span<const uint8_t> bytes,
                        size_t n) const override {
    const ScaledFrame frame = FrameFor(n, block_size(), 1);
    if (auto s = CheckSize(bytes, n); !s.ok()) return s;
    if (auto s = CheckScales(spec(), bytes, frame.blocks); !s.ok()) return s;
    if (!PaddingIsZero(bytes.subspan(4 * frame.blocks), n))
      return absl::InvalidArgumentError("sign payload: padding bits not zero");
    return absl::OkStatus();
  }

 private:
  // q_j = copysign(s, p_j), p_j = u_j + e_in_j, e_out_j = p_j - q_j, bit j
  // = sign bit of p_j.
  static void EncodeBlock(const float* u, const float* e_in, float* e_out,
                          size_t nb, float s, uint8_t* bits) {
    size_t j = 0;
#if defined(__SSE2__)
    const __m128 sv = _mm_set1_ps(s);
    const __m128 sign_mask = _mm_set1_ps(-0.0f);
    for (; j + 8 <= nb; j += 8) {
      __m128 p0 = _mm_loadu_ps(u + j), p1 = _mm_loadu_ps(u + j + 4);
      if (e_in) {
        p0 = _mm_add_ps(p0, _mm_loadu_ps(e_in + j));
        p1 = _mm_add_ps(p1, _mm_loadu_ps(e_in + j + 4));
      }
      if (e_out) {
        __m128 q0 = _mm_or_ps(_mm_and_ps(p0, sign_mask), sv);
        __m128 q1 = _mm_or_ps(_mm_and_ps(p1, sign_mask), sv);
        _mm_storeu_ps(e_out + j, _mm_sub_ps(p0, q0));
        _mm_storeu_ps(e_out + j + 4, _mm_sub_ps(p1, q1));
      }
      bits[j / 8] = static_cast<uint8_t>(_mm_movemask_ps(p0) |
                                         (_mm_movemask_ps(p1) << 4));
    }
#endif
    for (; j < nb; j += 8) {
      uint8_t byte = 0;
      for (size_t k = 0; k < 8 && j + k < nb; ++k) {
        float p = Feedback(u, e_in, j + k);
        bool neg = std::signbit(p);
        if (e_out) e_out[j + k] = p - (neg ? -s : s);
        byte |= static_cast<uint8_t>(neg) << k;
      }
      bits[j / 8] = byte;
    }
  }
};

// ------------------------------------------------------------------ qN ---
// Symmetric N-bit levels -L..L, L = 2^(N-1) - 1, per block step = s / L with
// s = max |p|; Q(p)_j = level_j * step. Layout: ScaledFrame whose N-bit codes
// are level + L (0..2L; 2^N - 1 is never used).
class QuantCodec final : public Codec {
 public:
  QuantCodec(CodecSpec spec, size_t block)
      : Codec(spec, block), levels_((1 << (spec.bits - 1)) - 1) {}

  size_t EncodedSize(size_t n) const override {
    return FrameFor(n, block_size(), spec().bits).size();
  }
  // The block's largest element is kept (up to rounding of the step), every
  // other element's error is at most |p_j| (nearest rounding); half of the
  // exact 1/n_b leaves room for float rounding. Stochastic rounding can err
  // by more than |p_j| on small elements, so it promises no contraction.
  double Delta(size_t n) const override {
    if (spec().stochastic) return 0.0;
    return 0.5 / static_cast<double>(std::min(n, block_size()));
  }

  absl::Status EncodeRange(size_t n, size_t range_begin,
                           absl::Span<const float> update,
                           const float* error_in, float* error_out,
                           uint64_t seed, uint8_t* out) const override {
    if (auto s = CheckRange(n, range_begin, update.size()); !s.ok()) return s;
    const size_t size = update.size();
    const int bits = spec().bits;
    const ScaledFrame frame = FrameFor(n, block_size(), bits);
    // Blocks are multiples of 8 elements, so each starts on a byte.
    uint8_t* codes = out + 4 * frame.blocks + range_begin * bits / 8;
    uint8_t* scales = out + 4 * (range_begin / block_size());
    const float* u = update.data();
    const float* ein = error_in;
    float* eout = error_out;
    const float lf = static_cast<float>(levels_);
    int32_t level[8];
    for (size_t b = 0; b * block_size() < size; ++b) {
      const size_t begin = b * block_size();
      const size_t nb = std::min(block_size(), size - begin);
      const float s = MaxAbs(u + begin, ein ? ein + begin : nullptr, nb);
      if (!(s <= FLT_MAX)) return NonFiniteInput(spec());
      StoreF32(scales + 4 * b, s);
      const float step = Step(s);
      const float inv = s > 0 ? lf / s : 0.0f;
      // A block of subnormals (Adam's m decaying on a dead unit) makes L / s
      // overflow float; double holds L / s for every positive float s.
      const bool exact_in_float = inv <= FLT_MAX && !spec().stochastic;
      const double inv_d = s > 0 ? static_cast<double>(lf) / s : 0.0;
      for (size_t j = 0; j < nb; j += 8) {
        const size_t g = std::min<size_t>(8, nb - j);
        if (exact_in_float) {
          // The common case, in float so it vectorizes: adding and removing
          // 1.5 * 2^23 rounds |x| < 2^22 to the nearest integer, ties to
          // even, as nearbyint does.
          const float* uj = u + begin + j;
          const float* ej = ein ? ein + begin + j : nullptr;
          float* oj = eout ? eout + begin + j : nullptr;
          size_t k = 0;
#if defined(__SSE2__)
          if (g == 8) {
            const __m128 vinv = _mm_set1_ps(inv), vstep = _mm_set1_ps(step);
            const __m128 magic = _mm_set1_ps(0x1.8p23f);
            const __m128 hi = _mm_set1_ps(lf), lo = _mm_set1_ps(-lf);
            for (; k < 8; k += 4) {
              __m128 p = _mm_loadu_ps(uj + k);
              if (ej) p = _mm_add_ps(p, _mm_loadu_ps(ej + k));
              __m128 r =
                  _mm_sub_ps(_mm_add_ps(_mm_mul_ps(p, vinv), magic), magic);
              r = _mm_min_ps(_mm_max_ps(r, lo), hi);
              const __m128i l = _mm_cvttps_epi32(r);
              _mm_storeu_si128(reinterpret_cast<__m128i*>(level + k), l);
              if (oj) {
                _mm_storeu_ps(
                    oj + k,
                    _mm_sub_ps(p, _mm_mul_ps(_mm_cvtepi32_ps(l), vstep)));
              }
            }
          }
#endif
          for (; k < g; ++k) {
            const float p = ej ? uj[k] + ej[k] : uj[k];
            float r = (p * inv + 0x1.8p23f) - 0x1.8p23f;
            r = std::min(std::max(r, -lf), lf);
            level[k] = static_cast<int32_t>(r);
            if (oj) oj[k] = p - static_cast<float>(level[k]) * step;
          }
        } else {
          for (size_t k = 0; k < g; ++k) {
            const size_t i = begin + j + k;
            const float p = Feedback(u, ein, i);
            const double x = p * inv_d;  // |x| <= L up to rounding
            // Drawn by the element's index in the whole span.
            double r = spec().stochastic
                           ? std::floor(x + Uniform(seed, range_begin + i))
                           : std::nearbyint(x);
            r = std::clamp(r, -static_cast<double>(lf),
                           static_cast<double>(lf));
            level[k] = static_cast<int32_t>(r);
            if (eout) eout[i] = p - static_cast<float>(level[k]) * step;
          }
        }
        PackGroup(level, g, bits, codes + (begin + j) * bits / 8);
      }
    }
    return absl::OkStatus();
  }

  absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                           size_t range_begin, float weight, const float* base,
                           absl::Span<float> out) const override {
    const int bits = spec().bits;
    const ScaledFrame frame = FrameFor(n, block_size(), bits);
    if (auto s = CheckDecodeRange(bytes, n, range_begin, out.size()); !s.ok())
      return s;
    const size_t size = out.size();
    const uint8_t* codes =
        bytes.data() + 4 * frame.blocks + range_begin * bits / 8;
    const uint8_t* scales = bytes.data() + 4 * (range_begin / block_size());
    int32_t level[8];
    for (size_t b = 0; b * block_size() < size; ++b) {
      const size_t begin = b * block_size();
      const size_t nb = std::min(block_size(), size - begin);
      const float step = Step(LoadF32(scales + 4 * b));
      for (size_t j = 0; j < nb; j += 8) {
        const size_t g = std::min<size_t>(8, nb - j);
        UnpackGroup(codes + (begin + j) * bits / 8, g, bits, level);
        for (size_t k = 0; k < g; ++k) {
          const size_t i = begin + j + k;
          out[i] = base[i] + weight * (static_cast<float>(level[k]) * step);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Validate(absl::Span<const uint8_t> bytes,
                        size_t n) const override {
    const int bits = spec().bits;
    const ScaledFrame frame = FrameFor(n, block_size(), bits);
    if (auto s = CheckSize(bytes, n); !s.ok()) return s;
    if (auto s = CheckScales(spec(), bytes, frame.blocks); !s.ok()) return s;
    const uint8_t* codes = bytes.data() + 4 * frame.blocks;
    int32_t level[8];
    for (size_t j = 0; j < n; j += 8) {
      const size_t g = std::min<size_t>(8, n - j);
      UnpackGroup(codes + j * bits / 8, g, bits, level);
      for (size_t k = 0; k < g; ++k) {
        if (level[k] > levels_) {
          return absl::InvalidArgumentError(
              absl::StrCat(spec().ToString(), " payload: code of element ",
                           j + k, " is out of range"));
        }
      }
    }
    if (!PaddingIsZero(bytes.subspan(4 * frame.blocks), n * bits))
      return absl::InvalidArgumentError(
          absl::StrCat(spec().ToString(), " payload: padding bits not zero"));
    return absl::OkStatus();
  }

 private:
  // One definition of the step for encoder and decoder, so e = p - Q(p) is
  // computed from exactly the Q(p) a decoder sees. For a finite s within
  // rounding of FLT_MAX, L * (s / L) can round past it, and the largest
  // level would decode to infinity (and e to -infinity): such a step is
  // lowered by an ulp or two. Every other s keeps s / L exactly (a
  // non-finite s, which Validate refuses, too).
  float Step(float s) const {
    const float lf = static_cast<float>(levels_);
    float step = s / lf;
    if (s <= FLT_MAX) {
      while (lf * step > FLT_MAX) step = std::nextafter(step, 0.0f);
    }
    return step;
  }

  // Counter-based uniform in [0, 1) from (seed, element index): the same
  // draw whatever order or chunking encodes the element.
  static float Uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * 0x1p-24f;
  }

  // Packs g <= 8 levels as codes (level + L) into g*bits bits at out, which
  // starts on a byte since groups are 8 elements and blocks multiples of 8.
  void PackGroup(const int32_t* level, size_t g, int bits, uint8_t* out) const {
    uint64_t word = 0;
    for (size_t k = 0; k < g; ++k)
      word |= static_cast<uint64_t>(level[k] + levels_) << (k * bits);
    std::memcpy(out, &word, CeilDiv(g * bits, 8));
  }

  void UnpackGroup(const uint8_t* in, size_t g, int bits,
                   int32_t* level) const {
    uint64_t word = 0;
    std::memcpy(&word, in, CeilDiv(g * bits, 8));
    const uint64_t mask = (uint64_t{1} << bits) - 1;
    for (size_t k = 0; k < g; ++k)
      level[k] = static_cast<int32_t>((word >> (k * bits)) & mask) - levels_;
  }

  int32_t levels_;
};

// ---------------------------------------------------------------- topk ---
// Per block of n_b elements keeps the k_b = max(1, ceil(R * n_b)) largest
// |p_j| (ties to the lower index). Layout per block, blocks in order: k_b
// uint16 indices relative to the block start, strictly ascending, then k_b
// float32 values.
class TopKCodec final : public Codec {
 public:
  TopKCodec(CodecSpec spec, size_t block) : Codec(spec, block) {}

  size_t EncodedSize(size_t n) const override {
    const size_t full = n / block_size(), tail = n % block_size();
    return 6 * (full * Keep(block_size()) + (tail ? Keep(tail) : 0));
  }
  // The dropped elements are at most a (1 - k_b/n_b) share of ||p||^2.
  double Delta(size_t n) const override {
    const size_t nb = std::min(n, block_size());
    return static_cast<double>(Keep(nb)) / static_cast<double>(nb) * 0.999;
  }

  absl::Status EncodeRange(size_t n_span, size_t range_begin,
                           absl::Span<const float> update,
                           const float* error_in, float* error_out, uint64_t,
                           uint8_t* out) const override {
    if (auto s = CheckRange(n_span, range_begin, update.size()); !s.ok())
      return s;
    // Every block before the range is a full one.
    out += BlockOffset(range_begin);
    const size_t n = update.size();
    const float* u = update.data();
    const float* e = error_in;
    std::vector<float> mag(std::min(n, block_size()));
    std::vector<uint16_t> order(mag.size());
    for (size_t begin = 0; begin < n; begin += block_size()) {
      const size_t nb = std::min(block_size(), n - begin);
      const size_t k = Keep(nb);
      bool finite = true;
      for (size_t j = 0; j < nb; ++j) {
        mag[j] = std::fabs(Feedback(u, e, begin + j));
        finite &= mag[j] <= FLT_MAX;
      }
      if (!finite) return NonFiniteInput(spec());
      std::iota(order.begin(), order.begin() + nb, 0);
      auto larger = [&](uint16_t a, uint16_t b) {
        return mag[a] > mag[b] || (mag[a] == mag[b] && a < b);
      };
      std::nth_element(order.begin(), order.begin() + (k - 1),
                       order.begin() + nb, larger);
      std::sort(order.begin(), order.begin() + k);
      uint8_t* idx = out;
      uint8_t* val = out + 2 * k;
      size_t next = 0;  // position in the sorted kept indices
      for (size_t j = 0; j < nb; ++j) {
        const float p = Feedback(u, e, begin + j);
        if (next < k && order[next] == j) {
          StoreU16(idx + 2 * next, static_cast<uint16_t>(j));
          StoreF32(val + 4 * next, p);
          ++next;
          if (error_out) error_out[begin + j] = 0.0f;
        } else if (error_out) {
          error_out[begin + j] = p;
        }
      }
      out += 6 * k;
    }
    return absl::OkStatus();
  }

  absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                           size_t begin, float weight, const float* base,
                           absl::Span<float> out) const override {
    if (auto s = CheckDecodeRange(bytes, n, begin, out.size()); !s.ok())
      return s;
    // Accumulating adds only at the kept elements; the others keep base.
    if (base != out.data()) std::copy(base, base + out.size(), out.begin());
    return Walk(bytes, n, begin, out.size(),
                [&](size_t i, float v) { out[i] = base[i] + weight * v; });
  }

  absl::Status Validate(absl::Span<const uint8_t> bytes,
                        size_t n) const override {
    return Walk(
        bytes, n, 0, n, [](size_t, float) {}, /*strict=*/true);
  }

 private:
  size_t Keep(size_t nb) const {
    // The small subtraction absorbs decimal ratios such as 0.07 * 100 that
    // land a hair above an integer in binary floating point.
    double k = std::ceil(spec().ratio * static_cast<double>(nb) - 1e-9);
    return std::clamp<size_t>(static_cast<size_t>(std::max(k, 1.0)), 1, nb);
  }

  // Bytes of the blocks before element `begin`, which starts a block:
  // all of them full.
  size_t BlockOffset(size_t begin) const {
    return 6 * Keep(block_size()) * (begin / block_size());
  }

  // Calls visit(index from range_begin, value) for every kept element of the
  // blocks of elements [range_begin, range_begin + size) of an n-element
  // encoding (a range CheckRange accepts), after checking the length and
  // that each block's indices are in range; `strict` also checks ascending
  // order and finite values.
  template <typename Visit>
  absl::Status Walk(absl::Span<const uint8_t> bytes, size_t n,
                    size_t range_begin, size_t size, Visit visit,
                    bool strict = false) const {
    if (auto s = CheckSize(bytes, n); !s.ok()) return s;
    const uint8_t* in = bytes.data() + BlockOffset(range_begin);
    for (size_t begin = 0; begin < size; begin += block_size()) {
      const size_t nb = std::min(block_size(), size - begin);
      const size_t k = Keep(nb);
      for (size_t t = 0; t < k; ++t) {
        const size_t j = LoadU16(in + 2 * t);
        const float v = LoadF32(in + 2 * k + 4 * t);
        if (j >= nb || (strict && t > 0 && j <= LoadU16(in + 2 * t - 2))) {
          return absl::InvalidArgumentError(absl::StrCat(
              "topk payload: index ", j, " in block at element ",
              range_begin + begin, " is out of range or out of order"));
        }
        if (strict && !std::isfinite(v))
          return absl::InvalidArgumentError("topk payload holds NaN or Inf");
        visit(begin + j, v);
      }
      in += 6 * k;
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::Status Codec::CheckSize(absl::Span<const uint8_t> bytes, size_t n) const {
  if (bytes.size() == EncodedSize(n)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(spec_.ToString(), " payload for ", n, " elements must be ",
                   EncodedSize(n), " bytes, got ", bytes.size()));
}

absl::Status Codec::CheckRange(size_t n, size_t begin, size_t size) const {
  const size_t end = begin + size;
  if ((begin % block_size_ == 0 || begin == n) && begin <= n &&
      size <= n - begin && (end == n || end % block_size_ == 0)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(spec_.ToString(), ": elements [", begin, ", ", end, ") of ",
                   n, " are not a range of whole blocks of ", block_size_));
}

absl::Status Codec::CheckDecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                                     size_t begin, size_t size) const {
  if (auto s = CheckSize(bytes, n); !s.ok()) return s;
  return CheckRange(n, begin, size);
}

absl::Status Codec::EncodeWithFeedback(absl::Span<const float> update,
                                       absl::Span<float> error, uint64_t seed,
                                       uint8_t* out) const {
  if (auto s = CheckErrorSpan(update, error); !s.ok()) return s;
  float* e = error.empty() ? nullptr : error.data();
  return EncodeRange(update.size(), 0, update, e, e, seed, out);
}

absl::Status Codec::DecodeAccumulate(absl::Span<const uint8_t> bytes,
                                     float weight,
                                     absl::Span<float> acc) const {
  return DecodeRange(bytes, acc.size(), 0, weight, acc.data(), acc);
}

absl::Status Codec::Decode(absl::Span<const uint8_t> bytes,
                           absl::Span<float> out) const {
  // -0 + q == q for every float q, -0 included, so out gets Q bit-exactly.
  std::fill(out.begin(), out.end(), -0.0f);
  return DecodeAccumulate(bytes, 1.0f, out);
}

bool AllFinite(absl::Span<const float> values) {
  return FloatsFinite(reinterpret_cast<const uint8_t*>(values.data()),
                      values.size());
}

absl::Status CheckBlockSize(int64_t block_size) {
  if (block_size > 0 && block_size % 8 == 0 && block_size <= 65536) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "must be a positive multiple of 8 up to 65536, got ", block_size));
}

absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(const CodecSpec& spec,
                                                 size_t block_size) {
  // Sizes beyond int64 are far past the limit; clamp rather than wrap.
  const int64_t block = static_cast<int64_t>(
      std::min<size_t>(block_size, std::numeric_limits<int64_t>::max()));
  if (absl::Status s = CheckBlockSize(block); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("block size ", s.message()));
  }
  switch (spec.kind) {
    case CodecKind::kFp32:
      return std::make_unique<Fp32Codec>(spec, block_size);
    case CodecKind::kBf16:
      return std::make_unique<HalfCodec<Eigen::bfloat16>>(spec, block_size);
    case CodecKind::kFp16:
      return std::make_unique<HalfCodec<Eigen::half>>(spec, block_size);
    case CodecKind::kSign:
      return std::make_unique<SignCodec>(spec, block_size);
    case CodecKind::kQuant:
      if (spec.bits < 2 || spec.bits > 8)
        return absl::InvalidArgumentError("qN needs 2 <= N <= 8");
      return std::make_unique<QuantCodec>(spec, block_size);
    case CodecKind::kTopK:
      if (!(spec.ratio > 0.0 && spec.ratio <= 1.0))
        return absl::InvalidArgumentError("topk ratio must be in (0, 1]");
      return std::make_unique<TopKCodec>(spec, block_size);
  }
  return absl::InvalidArgumentError("unknown codec kind");
}

}  // namespace effadam

#ifndef EFFADAM_CORE_CODEC_H_
#define EFFADAM_CORE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/codec_spec.h"

namespace effadam {

// A Codec is the quantizer Q of one direction. It packs a span of n floats
// into exactly EncodedSize(n) bytes in a documented little-endian layout
// (docs/wire_format.md) and reads them back. Blocks of block_size() elements
// start at the span's first element; a scale is per block.
//
// Every deterministic codec is a compressor: ||Q(p) - p||^2 <= (1 - delta)
// ||p||^2 with the delta that Delta(n) promises. Stochastic rounding (qNs)
// trades that for unbiasedness, E[Q(p)] = p, with variance at most
// step^2 / 4 per element; its Delta is 0.
//
// Codecs are immutable after construction and safe to share across threads.
class Codec {
 public:
  virtual ~Codec() = default;

  const CodecSpec& spec() const { return spec_; }
  size_t block_size() const { return block_size_; }

  // Exact number of bytes an encoding of n elements occupies.
  virtual size_t EncodedSize(size_t n) const = 0;

  // The compressor constant the codec guarantees for spans of n elements.
  virtual double Delta(size_t n) const = 0;

  // Error-feedback encoding in one pass: p = update + error (p = update when
  // error is empty), writes Q(p) into out[0, EncodedSize(n)) and, when error
  // is not empty, error = p - Q(p), computed as decoding would compute Q(p).
  // `seed` drives stochastic rounding only. Fails with InvalidArgument when p
  // holds NaN or Inf; out and error are then unspecified.
  absl::Status EncodeWithFeedback(absl::Span<const float> update,
                                  absl::Span<float> error, uint64_t seed,
                                  uint8_t* out) const;

  // The same for elements [begin, begin + update.size()) of an n-element
  // span whose encoding is out[0, EncodedSize(n)): writes only that range's
  // part of it (its blocks' scales, codes and values), with the bytes one
  // call over the whole span writes, so a caller can encode a span tile by
  // tile while each tile is in cache. p = update + error_in (update when
  // error_in is null); error_out, when not null, gets p - Q(p); it may be
  // error_in (in place) or other memory (the old E stays as it was).
  // InvalidArgument unless begin starts a block and the range ends at n or
  // at a block's end (CheckRange), or when p holds NaN or Inf.
  virtual absl::Status EncodeRange(size_t n, size_t begin,
                                   absl::Span<const float> update,
                                   const float* error_in, float* error_out,
                                   uint64_t seed, uint8_t* out) const = 0;

  // acc += weight * Q, where Q is decoded from `bytes` (n = acc.size()).
  // Never reads outside `bytes` nor writes outside `acc`, whatever the bytes
  // hold; it checks only what that needs (the length, topk indices), so
  // callers that must not change state on bad input call Validate first.
  absl::Status DecodeAccumulate(absl::Span<const uint8_t> bytes, float weight,
                                absl::Span<float> acc) const;

  // out[j] = base[j] + weight * Q[begin + j] for the elements [begin,
  // begin + out.size()) of the n-element encoding `bytes`, the same float
  // operation as DecodeAccumulate; base may be out.data() (accumulate in
  // place) or other memory (x - q into a staging buffer without copying x
  // first). Checks the length, the range (as EncodeRange) and what memory
  // safety needs, as DecodeAccumulate.
  virtual absl::Status DecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                                   size_t begin, float weight,
                                   const float* base,
                                   absl::Span<float> out) const = 0;

  // Checks that `bytes` is the canonical encoding of n elements: its length,
  // finite non-negative scales, finite values, codes and indices in range,
  // zero padding bits.
  virtual absl::Status Validate(absl::Span<const uint8_t> bytes,
                                size_t n) const = 0;

  // out = Q decoded from bytes.
  absl::Status Decode(absl::Span<const uint8_t> bytes,
                      absl::Span<float> out) const;

 protected:
  Codec(CodecSpec spec, size_t block_size)
      : spec_(spec), block_size_(block_size) {}

  // InvalidArgument unless bytes.size() == EncodedSize(n).
  absl::Status CheckSize(absl::Span<const uint8_t> bytes, size_t n) const;
  // InvalidArgument unless [begin, begin + size) lies in [0, n], begins a
  // block (or at n, empty) and ends at n or at the end of a block.
  absl::Status CheckRange(size_t n, size_t begin, size_t size) const;
  // CheckSize, then CheckRange.
  absl::Status CheckDecodeRange(absl::Span<const uint8_t> bytes, size_t n,
                                size_t begin, size_t size) const;

 private:
  CodecSpec spec_;
  size_t block_size_;
};

// The length of a tile for the passes that keep a tile in cache across
// several steps (the server's close, the worker's step): about `elements`,
// rounded down to whole blocks of `block` elements, and at least one block.
inline size_t TileOfWholeBlocks(size_t block, size_t elements) {
  return block * (elements / block > 0 ? elements / block : 1);
}

// Whether every value is finite (no NaN, no Inf): a vectorized check of the
// exponent fields, for the passes that must refuse a non-finite input before
// they change anything (the worker's gradient) and fp32's Validate.
bool AllFinite(absl::Span<const float> values);

// OK for a block size every codec accepts: a positive multiple of 8 (so
// blocks start on byte boundaries), at most 65536 (topk's indices are
// 16-bit). Otherwise InvalidArgument "must be a positive multiple ...".
absl::Status CheckBlockSize(int64_t block_size);

// Builds the codec for `spec` with blocks of `block_size` elements
// (CheckBlockSize).
absl::StatusOr<std::unique_ptr<Codec>> MakeCodec(const CodecSpec& spec,
                                                 size_t block_size);

}  // namespace effadam

#endif  // EFFADAM_CORE_CODEC_H_

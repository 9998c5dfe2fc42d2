#ifndef EFFADAM_CORE_UPDATE_CODEC_H_
#define EFFADAM_CORE_UPDATE_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "core/codec.h"
#include "core/tensor_layout.h"

namespace effadam {

// How a direction's codec is applied to a whole model.
struct CompressionOptions {
  // Elements per scale block of sign and qN, per top-k selection of topk.
  size_t block_size = 1024;
  // Tensors with fewer elements travel as fp32 (biases, norms); their error
  // memory stays zero.
  size_t min_compress_elements = 1024;
  // Longest segment, in elements; rounded down to a multiple of block_size.
  // Bounds one wire chunk: 262144 fp32 elements are 1 MiB.
  size_t max_segment_elements = 262144;
};

// A contiguous range of x, inside one tensor, that is encoded on its own.
struct Segment {
  size_t begin = 0;       // first element in x
  size_t size = 0;        // elements
  size_t byte_begin = 0;  // offset in the encoded update
  size_t byte_size = 0;
  const Codec* codec = nullptr;
};

// Encodes the flattened parameter vector of a model: each tensor is cut into
// segments of at most max_segment_elements (a multiple of the block size, so
// blocks never straddle tensors or segments) and each segment is encoded by
// the direction's codec, or fp32 for small tensors. The encoded update is the
// segments' bytes in order; its size depends only on the layout and options.
// Immutable after Create; safe to share across threads.
class UpdateCodec {
 public:
  static absl::StatusOr<std::unique_ptr<UpdateCodec>> Create(
      const TensorLayout& layout, const CodecSpec& spec,
      const CompressionOptions& options);

  // The codec of segments [first_segment, end_segment) alone, as one shard
  // of the model holds them: elements and bytes count from the slice's
  // start. Stochastic rounding draws as in this codec, so the slices'
  // encodings of the slices of an update, concatenated, are this codec's
  // encoding of the whole update, bit for bit. InvalidArgument for an empty
  // or out-of-range slice.
  absl::StatusOr<std::unique_ptr<UpdateCodec>> Slice(size_t first_segment,
                                                     size_t end_segment) const;

  const CodecSpec& spec() const { return spec_; }
  // Where this codec's elements start in the whole model's x: 0 unless it
  // is a Slice.
  size_t element_offset() const { return element_offset_; }
  size_t num_elements() const { return num_elements_; }
  size_t encoded_size() const { return encoded_size_; }
  const std::vector<Segment>& segments() const { return segments_; }

  // The three whole-update operations below run segment by segment; with a
  // `pool` the segments run on its threads. Each segment's result depends on
  // that segment alone, so the bytes and floats are the same for any pool
  // (or none); a failure reported is that of the first failing segment.

  // Codec::EncodeWithFeedback over every segment into *out (resized to
  // encoded_size()). `error` empty means no error feedback.
  absl::Status EncodeWithFeedback(absl::Span<const float> update,
                                  absl::Span<float> error, uint64_t seed,
                                  std::string* out,
                                  ThreadPool* pool = nullptr) const;

  // The encoding of an update of zeros without error feedback into *out:
  // the bytes EncodeWithFeedback(zeros, {}, 0) writes, built tile by tile
  // from a small buffer of zeros, so no model-sized vector is made (the
  // delta of a round the server drops).
  absl::Status EncodeZeros(std::string* out) const;

  // The same bytes for segments [first_segment, end_segment) only, written
  // at their place in `out`, a whole encoding (encoded_size() bytes): a
  // worker's delta part for a shard that sent none, made when it is needed
  // instead of kept (for fp32 that would be a copy of the model's size).
  // InvalidArgument for a segment range that does not fit.
  absl::Status EncodeZeros(size_t first_segment, size_t end_segment,
                           absl::Span<uint8_t> out) const;

  // Full check of an encoded update (see Codec::Validate).
  absl::Status Validate(absl::string_view bytes,
                        ThreadPool* pool = nullptr) const;

  // acc += weight * Q(bytes); memory-safe on any input, but only Validate
  // guarantees acc is untouched when the bytes are bad.
  absl::Status DecodeAccumulate(absl::string_view bytes, float weight,
                                absl::Span<float> acc,
                                ThreadPool* pool = nullptr) const;

  // The same for segment i alone (i < segments().size()); `update`,
  // `error`, `acc` are the whole vectors and `bytes`/`out` the whole encoded
  // update, of which only segment i's part is read or written. The passes
  // that fuse several steps per segment (RoundEngine, WorkerOptimizer) and
  // the incremental check of ChunkAssembler build on these.
  absl::Status EncodeSegment(size_t i, absl::Span<const float> update,
                             absl::Span<float> error, uint64_t seed,
                             uint8_t* out) const;
  // Fails with "segment at element <begin>: <what is wrong>".
  absl::Status ValidateSegment(size_t i, absl::string_view bytes) const;
  absl::Status DecodeAccumulateSegment(size_t i, absl::string_view bytes,
                                       float weight,
                                       absl::Span<float> acc) const;

  // Tiles of segment i, for passes that keep a tile in cache across several
  // steps: elements [begin, begin + update.size()) of the segment (begin
  // counted from the segment's start; whole blocks, Codec::CheckRange).
  // Here `update`, `error_in`, `error_out`, `base` and `out` hold just the
  // tile's elements (error_in/error_out empty: none); `bytes`/`encoded` are
  // the whole encoded update. A segment encoded tile by tile gets the bytes
  // EncodeSegment writes. Codec::EncodeRange and DecodeRange say the rest.
  absl::Status EncodeSegmentRange(size_t i, size_t begin,
                                  absl::Span<const float> update,
                                  absl::Span<const float> error_in,
                                  absl::Span<float> error_out, uint64_t seed,
                                  uint8_t* encoded) const;
  absl::Status DecodeSegmentRange(size_t i, size_t begin,
                                  absl::string_view bytes, float weight,
                                  absl::Span<const float> base,
                                  absl::Span<float> out) const;

 private:
  UpdateCodec() = default;

  CodecSpec spec_;
  size_t block_size_ = 0;
  size_t element_offset_ = 0;
  std::unique_ptr<Codec> codec_;
  std::unique_ptr<Codec> fp32_;
  std::vector<Segment> segments_;
  size_t num_elements_ = 0;
  size_t encoded_size_ = 0;
};

// f(i) for i in [0, n), in order and stopping at the first failure without
// a pool (or a pool of one thread), else on the pool's threads; returns the
// failure of the lowest i that failed, or OK.
absl::Status ForEachSegment(size_t n, ThreadPool* pool,
                            const std::function<absl::Status(size_t)>& f);

}  // namespace effadam

#endif  // EFFADAM_CORE_UPDATE_CODEC_H_

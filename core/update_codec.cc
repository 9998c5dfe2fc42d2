#include "core/update_codec.h"

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

absl::Span<const uint8_t> Bytes(absl::string_view bytes, const Segment& s) {
  return absl::Span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(bytes.data()) + s.byte_begin,
      s.byte_size);
}

// Stochastic rounding draws per element from (seed, index in segment); mixing
// the segment's start into the seed keeps segments independent.
uint64_t SegmentSeed(uint64_t seed, size_t begin) {
  return seed ^ (0xd1b54a32d192ed03ULL * (static_cast<uint64_t>(begin) + 1));
}

}  // namespace

absl::Status ForEachSegment(size_t n, ThreadPool* pool,
                            const std::function<absl::Status(size_t)>& f) {
  if (pool == nullptr || pool->threads() == 1) {
    for (size_t i = 0; i < n; ++i) {
      if (absl::Status s = f(i); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::vector<absl::Status> status(n);
  pool->ParallelFor(n, [&](size_t i) { status[i] = f(i); });
  for (absl::Status& s : status) {
    if (!s.ok()) return std::move(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<UpdateCodec>> UpdateCodec::Create(
    const TensorLayout& layout, const CodecSpec& spec,
    const CompressionOptions& options) {
  std::unique_ptr<UpdateCodec> uc(new UpdateCodec);
  uc->spec_ = spec;
  uc->block_size_ = options.block_size;
  auto codec = MakeCodec(spec, options.block_size);
  if (!codec.ok()) return codec.status();
  auto fp32 = MakeCodec(CodecSpec{}, options.block_size);
  if (!fp32.ok()) return fp32.status();
  uc->codec_ = *std::move(codec);
  uc->fp32_ = *std::move(fp32);

  const size_t max_segment =
      options.max_segment_elements / options.block_size * options.block_size;
  if (max_segment == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max segment of ", options.max_segment_elements,
        " elements is smaller than one block of ", options.block_size));
  }
  size_t bytes = 0;
  for (size_t t = 0; t < layout.tensors().size(); ++t) {
    const size_t n = layout.tensors()[t].num_elements();
    const Codec* c =
        n < options.min_compress_elements ? uc->fp32_.get() : uc->codec_.get();
    for (size_t off = 0; off < n; off += max_segment) {
      Segment s;
      s.begin = layout.offset(t) + off;
      s.size = std::min(max_segment, n - off);
      s.codec = c;
      s.byte_begin = bytes;
      s.byte_size = c->EncodedSize(s.size);
      bytes += s.byte_size;
      uc->segments_.push_back(s);
    }
  }
  uc->num_elements_ = layout.num_elements();
  uc->encoded_size_ = bytes;
  return uc;
}

absl::Status UpdateCodec::EncodeWithFeedback(absl::Span<const float> update,
                                             absl::Span<float> error,
                                             uint64_t seed, std::string* out,
                                             ThreadPool* pool) const {
  if (update.size() != num_elements_ ||
      (!error.empty() && error.size() != num_elements_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "update has ", update.size(), " elements and error memory ",
        error.size(), "; the layout has ", num_elements_));
  }
  out->resize(encoded_size_);
  uint8_t* base = reinterpret_cast<uint8_t*>(out->data());
  return ForEachSegment(segments_.size(), pool, [&](size_t i) {
    return EncodeSegment(i, update, error, seed, base);
  });
}

absl::Status UpdateCodec::EncodeZeros(std::string* out) const {
  out->resize(encoded_size_);
  return EncodeZeros(
      0, segments_.size(),
      absl::MakeSpan(reinterpret_cast<uint8_t*>(out->data()), out->size()));
}

absl::Status UpdateCodec::EncodeZeros(size_t first_segment, size_t end_segment,
                                      absl::Span<uint8_t> out) const {
  if (first_segment > end_segment || end_segment > segments_.size() ||
      out.size() != encoded_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("zero encoding of segments [", first_segment, ", ",
                     end_segment, ") of ", segments_.size(), " into ",
                     out.size(), " bytes (want ", encoded_size_, ")"));
  }
  uint8_t* base = out.data();
  // Tiles of about 64K elements, whole blocks of the segment's codec.
  constexpr size_t kTileElements = 65536;
  std::vector<float> zeros;
  for (size_t i = first_segment; i < end_segment; ++i) {
    const Segment& s = segments_[i];
    const size_t block = s.codec->block_size();
    const size_t tile = TileOfWholeBlocks(block, kTileElements);
    if (zeros.size() < std::min(tile, s.size)) {
      zeros.assign(std::min(tile, s.size), 0.0f);
    }
    for (size_t begin = 0; begin < s.size; begin += tile) {
      const size_t n = std::min(tile, s.size - begin);
      if (absl::Status st = EncodeSegmentRange(
              i, begin, absl::MakeConstSpan(zeros.data(), n), {}, {}, 0, base);
          !st.ok()) {
        return st;
      }
    }
  }
  return absl::OkStatus();
}

absl::Status UpdateCodec::EncodeSegment(size_t i,
                                        absl::Span<const float> update,
                                        absl::Span<float> error, uint64_t seed,
                                        uint8_t* out) const {
  const Segment& s = segments_[i];
  absl::Span<float> e =
      error.empty() ? absl::Span<float>() : error.subspan(s.begin, s.size);
  return EncodeSegmentRange(i, 0, update.subspan(s.begin, s.size), e, e, seed,
                            out);
}

absl::Status UpdateCodec::EncodeSegmentRange(size_t i, size_t begin,
                                             absl::Span<const float> update,
                                             absl::Span<const float> error_in,
                                             absl::Span<float> error_out,
                                             uint64_t seed,
                                             uint8_t* encoded) const {
  const Segment& s = segments_[i];
  if ((!error_in.empty() && error_in.size() != update.size()) ||
      (!error_out.empty() && error_out.size() != update.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "error memory of ", error_in.size(), " and ", error_out.size(),
        " elements for an update of ", update.size()));
  }
  return s.codec->EncodeRange(
      s.size, begin, update, error_in.empty() ? nullptr : error_in.data(),
      error_out.empty() ? nullptr : error_out.data(),
      SegmentSeed(seed, element_offset_ + s.begin), encoded + s.byte_begin);
}

absl::Status UpdateCodec::DecodeSegmentRange(size_t i, size_t begin,
                                             absl::string_view bytes,
                                             float weight,
                                             absl::Span<const float> base,
                                             absl::Span<float> out) const {
  if (base.size() != out.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decoding ", base.size(), " base elements into ", out.size()));
  }
  const Segment& s = segments_[i];
  if (bytes.size() < s.byte_begin + s.byte_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec_.ToString(), " update of ", bytes.size(),
                     " bytes ends before segment at element ", s.begin));
  }
  return s.codec->DecodeRange(Bytes(bytes, s), s.size, begin, weight,
                              base.data(), out);
}

absl::StatusOr<std::unique_ptr<UpdateCodec>> UpdateCodec::Slice(
    size_t first_segment, size_t end_segment) const {
  if (first_segment >= end_segment || end_segment > segments_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("slice of segments [", first_segment, ", ", end_segment,
                     ") of a codec with ", segments_.size(), " segments"));
  }
  std::unique_ptr<UpdateCodec> uc(new UpdateCodec);
  uc->spec_ = spec_;
  uc->block_size_ = block_size_;
  auto codec = MakeCodec(spec_, block_size_);
  if (!codec.ok()) return codec.status();
  auto fp32 = MakeCodec(CodecSpec{}, block_size_);
  if (!fp32.ok()) return fp32.status();
  uc->codec_ = *std::move(codec);
  uc->fp32_ = *std::move(fp32);
  const Segment& first = segments_[first_segment];
  for (size_t i = first_segment; i < end_segment; ++i) {
    Segment s = segments_[i];
    s.begin -= first.begin;
    s.byte_begin -= first.byte_begin;
    s.codec = s.codec == fp32_.get() ? uc->fp32_.get() : uc->codec_.get();
    uc->num_elements_ += s.size;
    uc->encoded_size_ += s.byte_size;
    uc->segments_.push_back(s);
  }
  uc->element_offset_ = element_offset_ + first.begin;
  return uc;
}

absl::Status UpdateCodec::Validate(absl::string_view bytes,
                                   ThreadPool* pool) const {
  if (bytes.size() != encoded_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec_.ToString(), " update must be ", encoded_size_,
                     " bytes, got ", bytes.size()));
  }
  return ForEachSegment(segments_.size(), pool,
                        [&](size_t i) { return ValidateSegment(i, bytes); });
}

absl::Status UpdateCodec::ValidateSegment(size_t i,
                                          absl::string_view bytes) const {
  const Segment& s = segments_[i];
  absl::Status st = s.codec->Validate(Bytes(bytes, s), s.size);
  if (st.ok()) return st;
  return absl::InvalidArgumentError(
      absl::StrCat("segment at element ", s.begin, ": ", st.message()));
}

absl::Status UpdateCodec::DecodeAccumulate(absl::string_view bytes,
                                           float weight, absl::Span<float> acc,
                                           ThreadPool* pool) const {
  if (bytes.size() != encoded_size_ || acc.size() != num_elements_) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec_.ToString(), " update must be ", encoded_size_,
                     " bytes for ", num_elements_, " elements, got ",
                     bytes.size(), " bytes for ", acc.size()));
  }
  return ForEachSegment(segments_.size(), pool, [&](size_t i) {
    return DecodeAccumulateSegment(i, bytes, weight, acc);
  });
}

absl::Status UpdateCodec::DecodeAccumulateSegment(size_t i,
                                                  absl::string_view bytes,
                                                  float weight,
                                                  absl::Span<float> acc) const {
  const Segment& s = segments_[i];
  absl::Span<float> a = acc.subspan(s.begin, s.size);
  return DecodeSegmentRange(i, 0, bytes, weight, a, a);
}

}  // namespace effadam

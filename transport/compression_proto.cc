#include "transport/compression_proto.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace effadam {

google::protobuf::RepeatedPtrField<v1::TensorSpec> LayoutToProto(
    const TensorLayout& layout) {
  google::protobuf::RepeatedPtrField<v1::TensorSpec> out;
  for (const TensorSpec& t : layout.tensors()) {
    v1::TensorSpec* spec = out.Add();
    spec->set_name(t.name);
    for (int64_t d : t.shape) spec->add_shape(d);
  }
  return out;
}

absl::StatusOr<TensorLayout> LayoutFromProto(
    const google::protobuf::RepeatedPtrField<v1::TensorSpec>& specs,
    size_t max_num_elements) {
  std::vector<TensorSpec> tensors;
  tensors.reserve(specs.size());
  for (const v1::TensorSpec& t : specs) {
    tensors.push_back(TensorSpec{
        t.name(), std::vector<int64_t>(t.shape().begin(), t.shape().end())});
  }
  absl::StatusOr<TensorLayout> layout =
      TensorLayout::Create(std::move(tensors));
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid layout: ", layout.status().message()));
  }
  if (layout->num_elements() > max_num_elements) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the layout has ", layout->num_elements(),
        " elements; this server accepts at most ", max_num_elements));
  }
  return layout;
}

v1::CompressionSettings CompressionToProto(const CompressionConfig& c) {
  v1::CompressionSettings p;
  p.set_worker_codec(c.worker_codec.ToString());
  p.set_server_codec(c.server_codec.ToString());
  p.set_block_size(static_cast<int64_t>(c.options.block_size));
  p.set_min_compress_elements(
      static_cast<int64_t>(c.options.min_compress_elements));
  p.set_worker_error_feedback(c.worker_error_feedback);
  p.set_server_error_feedback(c.server_error_feedback);
  return p;
}

absl::StatusOr<CompressionConfig> CompressionFromProto(
    const v1::CompressionSettings& p) {
  return MakeCompressionConfig(p.worker_codec(), p.server_codec(),
                               p.block_size(), p.min_compress_elements(),
                               p.worker_error_feedback(),
                               p.server_error_feedback());
}

absl::Status CheckCompressionMatches(const v1::CompressionSettings& theirs,
                                     const CompressionConfig& ours,
                                     absl::string_view ours_name,
                                     absl::string_view theirs_name) {
  absl::StatusOr<CompressionConfig> parsed = CompressionFromProto(theirs);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        theirs_name,
        " sent malformed compression settings: ", parsed.status().message()));
  }
  std::vector<std::string> diffs;
  auto codec = [&](const char* field, const std::string& name,
                   const CodecSpec& spec, const CodecSpec& theirs_spec) {
    if (!(theirs_spec == spec)) {
      diffs.push_back(absl::StrCat(field, ": ", ours_name, " uses '",
                                   spec.ToString(), "', ", theirs_name,
                                   " sent '", name, "'"));
    }
  };
  auto number = [&](const char* field, int64_t value, int64_t mine) {
    if (value != mine) {
      diffs.push_back(absl::StrCat(field, ": ", ours_name, " uses ", mine, ", ",
                                   theirs_name, " sent ", value));
    }
  };
  codec("worker_codec", theirs.worker_codec(), ours.worker_codec,
        parsed->worker_codec);
  codec("server_codec", theirs.server_codec(), ours.server_codec,
        parsed->server_codec);
  number("block_size", theirs.block_size(),
         static_cast<int64_t>(ours.options.block_size));
  number("min_compress_elements", theirs.min_compress_elements(),
         static_cast<int64_t>(ours.options.min_compress_elements));
  number("worker_error_feedback", theirs.worker_error_feedback(),
         ours.worker_error_feedback);
  number("server_error_feedback", theirs.server_error_feedback(),
         ours.server_error_feedback);
  if (diffs.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "compression settings differ: ", absl::StrJoin(diffs, "; ")));
}

}  // namespace effadam

#ifndef EFFADAM_TRANSPORT_COMPRESSION_PROTO_H_
#define EFFADAM_TRANSPORT_COMPRESSION_PROTO_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/compression_config.h"
#include "core/tensor_layout.h"
#include "effadam/v1/parameter_server.pb.h"

namespace effadam {

// The wire form of a layout: its tensors' names and shapes, in order.
google::protobuf::RepeatedPtrField<v1::TensorSpec> LayoutToProto(
    const TensorLayout& layout);

// The layout a JoinRequest carries, checked as Join checks it:
// TensorLayout::Create (InvalidArgument "invalid layout: ..."), then at most
// `max_num_elements` elements in all (InvalidArgument).
absl::StatusOr<TensorLayout> LayoutFromProto(
    const google::protobuf::RepeatedPtrField<v1::TensorSpec>& specs,
    size_t max_num_elements);

// The wire form of a CompressionConfig, as Join requests and replies carry
// it; codec names are canonical (CodecSpec::ToString).
v1::CompressionSettings CompressionToProto(const CompressionConfig& config);

// The config a CompressionSettings message describes, every field checked
// (MakeCompressionConfig); InvalidArgument naming the bad field.
absl::StatusOr<CompressionConfig> CompressionFromProto(
    const v1::CompressionSettings& settings);

// OK when `theirs` means the same settings as `ours` (codec names compared
// after parsing, so "topk:0.010" equals "topk:0.01"). InvalidArgument when
// `theirs` is malformed on its own (CompressionFromProto: an unknown codec
// name, a block size no codec accepts); otherwise FailedPrecondition
// listing every field that differs as
// "field: <ours_name> uses A, <theirs_name> sent B".
absl::Status CheckCompressionMatches(const v1::CompressionSettings& theirs,
                                     const CompressionConfig& ours,
                                     absl::string_view ours_name,
                                     absl::string_view theirs_name);

}  // namespace effadam

#endif  // EFFADAM_TRANSPORT_COMPRESSION_PROTO_H_

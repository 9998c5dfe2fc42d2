#ifndef EFFADAM_CORE_SHARD_PLAN_H_
#define EFFADAM_CORE_SHARD_PLAN_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/compression_config.h"
#include "core/tensor_layout.h"
#include "core/update_codec.h"

namespace effadam {

// One shard's part of the model: whole segments of the update codec, so no
// codec block straddles two shards, and a contiguous range of x and of the
// encoded update.
struct ShardRange {
  size_t first_segment = 0;  // segments [first_segment, end_segment)
  size_t end_segment = 0;
  size_t begin = 0;  // elements of x
  size_t size = 0;
  size_t byte_begin = 0;  // bytes of the codec's encoded update
  size_t byte_size = 0;

  bool operator==(const ShardRange& o) const {
    return first_segment == o.first_segment && end_segment == o.end_segment;
  }
};

// Splits `codec`'s segments into `num_shards` contiguous ranges whose
// element counts are as even as segment boundaries allow: boundary k sits
// at the segment boundary nearest to k/num_shards of the elements. A
// function of the segments and num_shards alone, so every worker and every
// shard computes the same plan. Worker and server codecs of one layout and
// CompressionOptions have the same segments and so the same element ranges.
// InvalidArgument when num_shards < 1 or exceeds the number of segments.
absl::StatusOr<std::vector<ShardRange>> PlanShards(const UpdateCodec& codec,
                                                   int num_shards);

// What a server holding shard `shard` of `num_shards` of a model encodes
// and decodes: the worker and server codecs of its part (the whole codecs
// without sharding) and the range.
struct ShardCodecs {
  std::shared_ptr<const UpdateCodec> worker, server;
  ShardRange range;
};
// InvalidArgument when a codec refuses the layout or the layout has fewer
// segments than there are shards.
absl::StatusOr<ShardCodecs> MakeShardCodecs(const TensorLayout& layout,
                                            const CompressionConfig& config,
                                            int shard, int num_shards);

}  // namespace effadam

#endif  // EFFADAM_CORE_SHARD_PLAN_H_

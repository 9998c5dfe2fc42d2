#include "core/shard_plan.h"

#include <cstdint>

#include "absl/strings/str_cat.h"

namespace effadam {

absl::StatusOr<std::vector<ShardRange>> PlanShards(const UpdateCodec& codec,
                                                   int num_shards) {
  const std::vector<Segment>& segs = codec.segments();
  if (num_shards < 1 || static_cast<size_t>(num_shards) > segs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot split a model of ", segs.size(), " segments (",
                     codec.num_elements(), " elements) into ", num_shards,
                     " shards: every shard needs at least one segment"));
  }
  const size_t shards = static_cast<size_t>(num_shards);
  const size_t total = codec.num_elements();
  // ends[k]: one past the last segment of shard k.
  std::vector<size_t> ends(shards);
  ends[shards - 1] = segs.size();
  size_t first = 0;  // the next shard's first segment
  for (size_t k = 0; k + 1 < shards; ++k) {
    // No overflow: total is below 2^40 for any model that fits in memory.
    const size_t target = total * (k + 1) / shards;
    // Leave at least one segment for each shard after this one.
    const size_t last_end = segs.size() - (shards - 1 - k);
    size_t best = first + 1;
    for (size_t end = first + 1; end <= last_end; ++end) {
      const size_t at = segs[end - 1].begin + segs[end - 1].size;
      const size_t best_at = segs[best - 1].begin + segs[best - 1].size;
      const size_t d = at > target ? at - target : target - at;
      const size_t best_d =
          best_at > target ? best_at - target : target - best_at;
      if (d < best_d) best = end;
      if (at >= target) break;
    }
    ends[k] = best;
    first = best;
  }
  std::vector<ShardRange> plan(shards);
  size_t begin_segment = 0;
  for (size_t k = 0; k < shards; ++k) {
    ShardRange& r = plan[k];
    r.first_segment = begin_segment;
    r.end_segment = ends[k];
    const Segment& a = segs[r.first_segment];
    const Segment& b = segs[r.end_segment - 1];
    r.begin = a.begin;
    r.size = b.begin + b.size - a.begin;
    r.byte_begin = a.byte_begin;
    r.byte_size = b.byte_begin + b.byte_size - a.byte_begin;
    begin_segment = ends[k];
  }
  return plan;
}

absl::StatusOr<ShardCodecs> MakeShardCodecs(const TensorLayout& layout,
                                            const CompressionConfig& config,
                                            int shard, int num_shards) {
  absl::StatusOr<std::unique_ptr<UpdateCodec>> wc =
      UpdateCodec::Create(layout, config.worker_codec, config.options);
  if (!wc.ok()) return absl::InvalidArgumentError(wc.status().message());
  absl::StatusOr<std::unique_ptr<UpdateCodec>> sc =
      UpdateCodec::Create(layout, config.server_codec, config.options);
  if (!sc.ok()) return absl::InvalidArgumentError(sc.status().message());
  absl::StatusOr<std::vector<ShardRange>> plan = PlanShards(**wc, num_shards);
  if (!plan.ok()) return plan.status();
  if (shard < 0 || shard >= num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard ", shard, " is outside [0, ", num_shards, ")"));
  }
  const ShardRange range = (*plan)[shard];
  if (num_shards == 1)
    return ShardCodecs{*std::move(wc), *std::move(sc), range};
  absl::StatusOr<std::unique_ptr<UpdateCodec>> ws =
      (*wc)->Slice(range.first_segment, range.end_segment);
  if (!ws.ok()) return ws.status();
  absl::StatusOr<std::unique_ptr<UpdateCodec>> ss =
      (*sc)->Slice(range.first_segment, range.end_segment);
  if (!ss.ok()) return ss.status();
  return ShardCodecs{*std::move(ws), *std::move(ss), range};
}

}  // namespace effadam

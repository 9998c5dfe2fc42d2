#ifndef EFFADAM_CORE_ROUND_ENGINE_H_
#define EFFADAM_CORE_ROUND_ENGINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/thread_pool.h"
#include "core/update_codec.h"

namespace effadam {

// What a RoundEngine carries from one round to the next: enough to go on
// after a restart (a checkpoint holds exactly this).
struct RoundEngineState {
  int64_t round = 1;                // the round being collected
  std::vector<float> params;        // x
  std::vector<float> error_memory;  // E; empty means all zero
};

struct RoundEngineOptions {
  // Server-side error feedback: keep E = p - Qs(p) and add it next round.
  bool error_feedback = true;
  // Seeds the server codec's stochastic rounding (qNs only).
  uint64_t seed = 0;
  // Threads CloseRound runs on, segment by segment; 1 runs it on the
  // calling thread alone. x, E and the delta are the same bits for every
  // count.
  int threads = AvailableCores();
};

// The server's math for synchronous rounds (docs/design.md, "The algorithm"):
// holds the model x and the error memory E, collects the workers' encoded
// updates for the current round, and closing the round computes
//   avg = mean of the updates in ascending rank,  p = avg + E,
//   q = Qs(p),  E = p - q,  x = x - q
// and returns encode(q), the one delta every worker applies.
// A rejected update leaves the engine exactly as it was. A round whose
// result is not finite (finite updates can still sum past FLT_MAX, and
// x - q or E can overflow) is dropped: x and E stay as they were and the
// delta is zero, so every replica stays in step and x stays finite. No
// sequence of valid updates makes CloseRound fail.
//
// CloseRound makes two passes over memory, each segment by segment on the
// engine's threads: the first sums the updates of a segment in rank order
// into the average and measures it (finite? how large?), the second, once
// the round is known to be applied, encodes the segment with feedback and
// applies it to x while its bytes are still in cache. Not thread-safe.
class RoundEngine {
 public:
  // The codecs must describe the same number of elements as x0, in the
  // same segments.
  static absl::StatusOr<std::unique_ptr<RoundEngine>> Create(
      std::shared_ptr<const UpdateCodec> worker_codec,
      std::shared_ptr<const UpdateCodec> server_codec, std::vector<float> x0,
      const RoundEngineOptions& options);
  // Goes on from a saved state (round, x, E). InvalidArgument when the sizes
  // disagree with the codecs, the round is < 1 or a value is not finite.
  static absl::StatusOr<std::unique_ptr<RoundEngine>> Restore(
      std::shared_ptr<const UpdateCodec> worker_codec,
      std::shared_ptr<const UpdateCodec> server_codec, RoundEngineState state,
      const RoundEngineOptions& options);

  // The round being collected; the first is 1.
  int64_t round() const { return round_; }

  // Takes worker `rank`'s encoded update for `round`. FailedPrecondition for
  // another round or a second update from the same rank in this round,
  // InvalidArgument for a negative rank or bytes that do not validate.
  absl::Status Submit(int rank, int64_t round, std::string update);
  // The same for bytes the caller shares (a stream's buffer that lives
  // across rounds): the engine holds them, unchanged, until the round
  // closes and then lets go of them. `validated`: the caller checked them
  // with worker_codec().Validate (or ValidateSegment for every segment), so
  // they are not checked again.
  absl::Status Submit(int rank, int64_t round,
                      std::shared_ptr<const std::string> update,
                      bool validated);

  size_t num_submitted() const { return pending_.size(); }
  bool HasSubmitted(int rank) const { return pending_.count(rank) > 0; }

  // Closes the round over the updates submitted so far and starts the next;
  // returns the encoded delta. FailedPrecondition when none was submitted.
  absl::StatusOr<std::string> CloseRound();
  // The same into *delta, whose memory is reused when it has room (a
  // buffer recycled from an earlier round).
  absl::Status CloseRoundInto(std::string* delta);

  // Rounds closed with a zero delta because their result was not finite.
  int64_t dropped_rounds() const { return dropped_rounds_; }

  absl::Span<const float> params() const { return x_; }
  absl::Span<const float> error_memory() const { return error_; }
  const UpdateCodec& worker_codec() const { return *worker_codec_; }
  const UpdateCodec& server_codec() const { return *server_codec_; }

 private:
  RoundEngine() = default;
  // With the average in sum_, avg + E known to be finite, and the largest
  // |avg + E| and |x|: the round applied, or a zero delta with x and E as
  // they were when its result would not be finite.
  absl::Status ApplyWithin(float max_p, float max_x, std::string* delta);
  // Encodes avg + E (sum_) with feedback into E and applies x -= q;
  // *delta = encode(q).
  absl::Status ApplyRound(std::string* delta);
  // Counts a dropped round; *delta = the encoding of a zero delta.
  absl::Status ZeroDelta(std::string* delta);

  std::shared_ptr<const UpdateCodec> worker_codec_;
  std::shared_ptr<const UpdateCodec> server_codec_;
  RoundEngineOptions options_;
  int64_t round_ = 1;
  int64_t dropped_rounds_ = 0;
  std::vector<float> x_;
  std::vector<float> error_;
  std::vector<float> sum_;  // scratch for the average
  // rank -> update, ascending rank
  std::map<int, std::shared_ptr<const std::string>> pending_;
  std::unique_ptr<ThreadPool> pool_;
  // x and E before a round near the top of float, to undo it; empty else.
  std::vector<float> backup_x_, backup_error_;
};

}  // namespace effadam

#endif  // EFFADAM_CORE_ROUND_ENGINE_H_

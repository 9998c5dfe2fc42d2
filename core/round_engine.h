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
// A round closes segment by segment (the update codec's segments are
// independent): BeginClose fixes the updates it averages, CloseSegment(i)
// sums segment i of those updates in rank order, encodes it with feedback
// into the delta and computes x and E of that segment into staging (tile by
// tile, each tile's steps while it is in cache; x and E are read, never
// copied or written), and
// FinishClose commits the staged x and E when every segment's result is
// finite, or drops the round (zero delta, x and E as they were). So a
// server may close segment i, and send its bytes, while later segments of
// the updates are still arriving (docs/design.md, "The data path of one
// round"); CloseRound runs the same steps over every segment on the
// engine's threads. x, E and the delta are the same bits either way and
// for any thread count. Not thread-safe, except that CloseSegment may run
// for different segments on different threads at once.
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

  // The same in steps. BeginClose fixes the round's updates (those
  // submitted so far; Submit is refused until FinishClose or AbortClose)
  // and sizes *delta; FailedPrecondition when none was submitted or the
  // round is already closing. A shared update may still be filling:
  // CloseSegment(i) reads segment i of every update, so the caller calls it
  // once that segment of every update is in place and validated, and
  // *delta's segment i holds the delta's bytes when it returns. Call it
  // once per segment, in any order, with the same *delta. FinishClose, once
  // every segment is closed, commits the round, or drops it (*dropped
  // says which), and starts the next round; only a drop writes *delta (a
  // zero delta), so it may be another buffer than CloseSegment's. AbortClose
  // forgets the segments closed so far (x and E were not touched) and reopens
  // the round, so updates can be withdrawn.
  absl::Status BeginClose(std::string* delta);
  absl::Status CloseSegment(size_t i, std::string* delta);
  // CloseSegment for segments [begin, end) on the engine's threads.
  absl::Status CloseSegments(size_t begin, size_t end, std::string* delta);
  absl::Status FinishClose(std::string* delta, bool* dropped);
  void AbortClose();
  bool closing() const { return closing_; }
  // Takes back `rank`'s update of the open round (a worker that left
  // before sending all of it); false when there is none or the round is
  // closing.
  bool Withdraw(int rank);
  // The ranks whose updates the round averages, ascending.
  std::vector<int> submitted_ranks() const;

  // Rounds closed with a zero delta because their result was not finite.
  int64_t dropped_rounds() const { return dropped_rounds_; }

  absl::Span<const float> params() const { return x_; }
  absl::Span<const float> error_memory() const { return error_; }
  // ||E||, kept up to date as rounds close (summed segment by segment
  // while each is in cache), so that monitoring needs no pass over E.
  double error_memory_norm() const { return error_norm_; }
  const UpdateCodec& worker_codec() const { return *worker_codec_; }
  const UpdateCodec& server_codec() const { return *server_codec_; }

 private:
  RoundEngine() = default;
  // What closing a segment learned: whether p = avg + E was finite, whether
  // it stayed far enough from the top of float that x - q and p - q cannot
  // overflow, the codec's refusal if any, and whether the staged x and E
  // are finite.
  struct SegmentClose {
    bool closed = false;
    bool p_finite = true;
    bool safe = true;
    absl::Status encoded;
    bool result_finite = true;
    double error_sum_squares = 0;  // of the staged E's segment
  };
  // Counts a dropped round; *delta = the encoding of a zero delta.
  absl::Status ZeroDelta(std::string* delta);

  std::shared_ptr<const UpdateCodec> worker_codec_;
  std::shared_ptr<const UpdateCodec> server_codec_;
  RoundEngineOptions options_;
  int64_t round_ = 1;
  int64_t dropped_rounds_ = 0;
  double error_norm_ = 0;
  std::vector<float> x_;
  std::vector<float> error_;
  // rank -> update, ascending rank
  std::map<int, std::shared_ptr<const std::string>> pending_;
  std::unique_ptr<ThreadPool> pool_;
  // The closing round: its segments, and x and E as it leaves them, which
  // FinishClose swaps in when the round is committed.
  bool closing_ = false;
  std::vector<SegmentClose> segment_close_;
  std::vector<float> staged_x_, staged_error_;
};

}  // namespace effadam

#endif  // EFFADAM_CORE_ROUND_ENGINE_H_

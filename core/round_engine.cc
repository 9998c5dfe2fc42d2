#include "core/round_engine.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

// Sum of squares of n floats in double (a large model's sum keeps its small
// entries) with eight independent lanes combined in a fixed order: the
// same bits on every run, and not one long chain of dependent adds.
double SumSquares(const float* v, size_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      lane[l] += static_cast<double>(v[j + l]) * static_cast<double>(v[j + l]);
    }
  }
  for (; j < n; ++j) lane[j % 8] += static_cast<double>(v[j]) * v[j];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(
    std::shared_ptr<const UpdateCodec> worker_codec,
    std::shared_ptr<const UpdateCodec> server_codec, std::vector<float> x0,
    const RoundEngineOptions& options) {
  RoundEngineState state;
  state.params = std::move(x0);
  return Restore(std::move(worker_codec), std::move(server_codec),
                 std::move(state), options);
}

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Restore(
    std::shared_ptr<const UpdateCodec> worker_codec,
    std::shared_ptr<const UpdateCodec> server_codec, RoundEngineState state,
    const RoundEngineOptions& options) {
  const size_t n = state.params.size();
  if (!worker_codec || !server_codec || worker_codec->num_elements() != n ||
      server_codec->num_elements() != n) {
    return absl::InvalidArgumentError(
        "round engine: codecs and initial parameters disagree on the size");
  }
  const std::vector<Segment>& ws = worker_codec->segments();
  const std::vector<Segment>& ss = server_codec->segments();
  bool same_segments = ws.size() == ss.size();
  for (size_t i = 0; same_segments && i < ws.size(); ++i) {
    same_segments = ws[i].begin == ss[i].begin && ws[i].size == ss[i].size;
  }
  if (!same_segments) {
    return absl::InvalidArgumentError(
        "round engine: the worker and server codecs cut x into different "
        "segments");
  }
  if (state.error_memory.empty()) state.error_memory.assign(n, 0.0f);
  if (state.error_memory.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("round engine: ", state.error_memory.size(),
                     " error memory values for ", n, " parameters"));
  }
  if (state.round < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("round engine: round must be >= 1, got ", state.round));
  }
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(state.params[i]) ||
        !std::isfinite(state.error_memory[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "round engine: element ", i, " of x or E is not finite"));
    }
  }
  std::unique_ptr<RoundEngine> engine(new RoundEngine);
  engine->worker_codec_ = std::move(worker_codec);
  engine->server_codec_ = std::move(server_codec);
  engine->options_ = options;
  engine->round_ = state.round;
  engine->error_ = std::move(state.error_memory);
  engine->error_norm_ =
      std::sqrt(SumSquares(engine->error_.data(), engine->error_.size()));
  engine->sum_.assign(n, 0.0f);
  engine->x_ = std::move(state.params);
  engine->pool_ = std::make_unique<ThreadPool>(options.threads);
  return engine;
}

absl::Status RoundEngine::Submit(int rank, int64_t round, std::string update) {
  return Submit(rank, round,
                std::make_shared<const std::string>(std::move(update)),
                /*validated=*/false);
}

absl::Status RoundEngine::Submit(int rank, int64_t round,
                                 std::shared_ptr<const std::string> update,
                                 bool validated) {
  if (rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat("negative rank ", rank));
  }
  if (round != round_) {
    return absl::FailedPreconditionError(
        absl::StrCat("update for round ", round,
                     " but the server is collecting round ", round_));
  }
  if (pending_.count(rank)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", rank, " already sent its update for round ", round_));
  }
  if (closing_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", round_, " is closing; rank ", rank, "'s update is too late"));
  }
  if (!validated) {
    if (absl::Status s = worker_codec_->Validate(*update, pool_.get());
        !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("update from rank ", rank, ": ", s.message()));
    }
  }
  pending_.emplace(rank, std::move(update));
  return absl::OkStatus();
}

absl::StatusOr<std::string> RoundEngine::CloseRound() {
  std::string delta;
  if (absl::Status s = CloseRoundInto(&delta); !s.ok()) return s;
  return delta;
}

absl::Status RoundEngine::CloseRoundInto(std::string* delta) {
  if (absl::Status s = BeginClose(delta); !s.ok()) return s;
  absl::Status s =
      ForEachSegment(worker_codec_->segments().size(), pool_.get(),
                     [&](size_t i) { return CloseSegment(i, delta); });
  if (!s.ok()) {
    AbortClose();
    return s;
  }
  bool dropped = false;
  return FinishClose(delta, &dropped);
}

absl::Status RoundEngine::CloseSegments(size_t begin, size_t end,
                                        std::string* delta) {
  if (begin + 1 == end) return CloseSegment(begin, delta);
  return ForEachSegment(end - begin, pool_.get(), [&](size_t j) {
    return CloseSegment(begin + j, delta);
  });
}

bool RoundEngine::Withdraw(int rank) {
  if (closing_) return false;
  return pending_.erase(rank) > 0;
}

std::vector<int> RoundEngine::submitted_ranks() const {
  std::vector<int> ranks;
  ranks.reserve(pending_.size());
  for (const auto& entry : pending_) ranks.push_back(entry.first);
  return ranks;
}

absl::Status RoundEngine::BeginClose(std::string* delta) {
  if (pending_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_, " has no updates to close"));
  }
  if (closing_) {
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_, " is already closing"));
  }
  closing_ = true;
  segment_close_.assign(worker_codec_->segments().size(), SegmentClose());
  staged_x_.resize(x_.size());
  if (options_.error_feedback) staged_error_.resize(error_.size());
  delta->resize(server_codec_->encoded_size());
  return absl::OkStatus();
}

void RoundEngine::AbortClose() {
  closing_ = false;
  segment_close_.clear();
}

absl::Status RoundEngine::CloseSegment(size_t i, std::string* delta) {
  if (!closing_ || i >= segment_close_.size() || segment_close_[i].closed ||
      delta->size() != server_codec_->encoded_size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", round_, ": segment ", i, " cannot be closed now"));
  }
  const Segment& seg = worker_codec_->segments()[i];
  SegmentClose& result = segment_close_[i];
  float* sum = sum_.data() + seg.begin;
  std::fill(sum, sum + seg.size, 0.0f);
  for (const auto& [rank, update] : pending_) {
    // Validated (Submit, or by the caller segment by segment), so this
    // cannot fail half-way.
    absl::Status st = worker_codec_->DecodeAccumulateSegment(
        i, *update, 1.0f, absl::MakeSpan(sum_));
    if (!st.ok()) return st;
  }
  const float count = static_cast<float>(pending_.size());
  const float* e = error_.data() + seg.begin;
  const float* x = x_.data() + seg.begin;
  // Locals, not result's fields, so the loop vectorizes.
  bool finite = true;
  float max_p = 0, max_x = 0;
  for (size_t j = 0; j < seg.size; ++j) {
    sum[j] /= count;
    const float p = std::fabs(sum[j] + e[j]);
    finite &= p <= FLT_MAX;
    max_p = std::max(max_p, p);
    max_x = std::max(max_x, std::fabs(x[j]));
  }
  result.closed = true;
  result.p_finite = finite;
  // Finite updates can still overflow once averaged with E: such a round is
  // dropped before the encoder sees it.
  if (!finite) return absl::OkStatus();
  // Every codec's |q_j| is at most max|p| plus a rounding, and |p - q| at
  // most max|p|, so within this margin neither x - q nor E = p - q can
  // overflow and the staged values need no check.
  result.safe = max_p <= FLT_MAX / 4 && max_x <= FLT_MAX / 2;
  std::copy(x, x + seg.size, staged_x_.begin() + seg.begin);
  absl::Span<float> error;
  if (options_.error_feedback) {
    std::copy(e, e + seg.size, staged_error_.begin() + seg.begin);
    error = absl::MakeSpan(staged_error_);
  }
  const uint64_t seed =
      options_.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(round_));
  uint8_t* out = reinterpret_cast<uint8_t*>(delta->data());
  result.encoded = server_codec_->EncodeSegment(i, sum_, error, seed, out);
  if (!result.encoded.ok()) return absl::OkStatus();
  // x -= q, decoded from the bytes the workers get, with the same operation
  // they use, so every replica stays bit-identical.
  result.encoded = server_codec_->DecodeAccumulateSegment(
      i, *delta, -1.0f, absl::MakeSpan(staged_x_));
  if (!result.encoded.ok()) return absl::OkStatus();
  if (options_.error_feedback) {
    // While this segment of E is still in cache (error_memory_norm).
    result.error_sum_squares =
        SumSquares(staged_error_.data() + seg.begin, seg.size);
  }
  if (result.safe) return absl::OkStatus();
  const auto finite_value = [](float v) { return std::fabs(v) <= FLT_MAX; };
  const auto x_begin = staged_x_.begin() + seg.begin;
  result.result_finite = std::all_of(x_begin, x_begin + seg.size, finite_value);
  if (options_.error_feedback) {
    const auto e_begin = staged_error_.begin() + seg.begin;
    result.result_finite &=
        std::all_of(e_begin, e_begin + seg.size, finite_value);
  }
  return absl::OkStatus();
}

absl::Status RoundEngine::FinishClose(std::string* delta, bool* dropped) {
  if (!closing_ ||
      !std::all_of(segment_close_.begin(), segment_close_.end(),
                   [](const SegmentClose& c) { return c.closed; })) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", round_, " cannot finish: not every segment is closed"));
  }
  bool p_finite = true, safe = true, result_finite = true;
  absl::Status encoded;
  for (const SegmentClose& c : segment_close_) {
    p_finite &= c.p_finite;
    safe &= c.safe;
    result_finite &= c.result_finite;
    if (encoded.ok()) encoded = c.encoded;
  }
  // A codec that refuses its input within the margin is a broken
  // invariant; near the top of float it is a round that cannot be applied,
  // dropped so that no valid update can stop the server.
  if (p_finite && !encoded.ok() && safe) {
    AbortClose();
    return encoded;
  }
  *dropped = !p_finite || !encoded.ok() || !result_finite;
  absl::Status s = absl::OkStatus();
  if (*dropped) {
    s = ZeroDelta(delta);
  } else {
    x_.swap(staged_x_);
    if (options_.error_feedback) {
      error_.swap(staged_error_);
      double sum_squares = 0;  // in segment order: the same bits every run
      for (const SegmentClose& c : segment_close_) {
        sum_squares += c.error_sum_squares;
      }
      error_norm_ = std::sqrt(sum_squares);
    }
  }
  AbortClose();
  if (!s.ok()) return s;
  pending_.clear();
  ++round_;
  return absl::OkStatus();
}

absl::Status RoundEngine::ZeroDelta(std::string* delta) {
  ++dropped_rounds_;
  std::fill(sum_.begin(), sum_.end(), 0.0f);
  return server_codec_->EncodeWithFeedback(sum_, {}, 0, delta, pool_.get());
}

}  // namespace effadam

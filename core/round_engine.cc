#include "core/round_engine.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace effadam {

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

namespace {

// What the first pass learns of a segment's p = avg + E and of x.
struct SegmentMeasure {
  bool finite = true;
  float max_p = 0;
  float max_x = 0;
};

}  // namespace

absl::Status RoundEngine::CloseRoundInto(std::string* delta) {
  if (pending_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("round ", round_, " has no updates to close"));
  }
  const float count = static_cast<float>(pending_.size());
  const std::vector<Segment>& segments = worker_codec_->segments();
  std::vector<SegmentMeasure> measures(segments.size());
  // Finite updates can still overflow once averaged with E: such a round is
  // dropped before the encoder touches E. The same pass measures how close
  // the round comes to the top of float (ApplyWithin).
  absl::Status s = ForEachSegment(segments.size(), pool_.get(), [&](size_t i) {
    const Segment& seg = segments[i];
    float* sum = sum_.data() + seg.begin;
    std::fill(sum, sum + seg.size, 0.0f);
    for (const auto& [rank, update] : pending_) {
      // Validated in Submit, so this cannot fail half-way.
      absl::Status st = worker_codec_->DecodeAccumulateSegment(
          i, *update, 1.0f, absl::MakeSpan(sum_));
      if (!st.ok()) return st;
    }
    const float* e = error_.data() + seg.begin;
    const float* x = x_.data() + seg.begin;
    // Locals, not measures[i]'s fields, so the loop vectorizes.
    bool finite = true;
    float max_p = 0, max_x = 0;
    for (size_t j = 0; j < seg.size; ++j) {
      sum[j] /= count;
      const float p = std::fabs(sum[j] + e[j]);
      finite &= p <= FLT_MAX;
      max_p = std::max(max_p, p);
      max_x = std::max(max_x, std::fabs(x[j]));
    }
    measures[i] = SegmentMeasure{finite, max_p, max_x};
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  bool finite = true;
  float max_p = 0, max_x = 0;
  for (const SegmentMeasure& m : measures) {
    finite &= m.finite;
    max_p = std::max(max_p, m.max_p);
    max_x = std::max(max_x, m.max_x);
  }
  s = finite ? ApplyWithin(max_p, max_x, delta) : ZeroDelta(delta);
  if (!s.ok()) return s;
  pending_.clear();
  ++round_;
  return absl::OkStatus();
}

absl::Status RoundEngine::ApplyWithin(float max_p, float max_x,
                                      std::string* delta) {
  // Every codec's |q_j| is at most max|p| plus a rounding, and |p - q| at
  // most max|p|, so with this margin neither x - q nor E = p - q can
  // overflow and the round is applied in place with no extra pass.
  const bool safe = max_p <= FLT_MAX / 4 && max_x <= FLT_MAX / 2;
  if (!safe) {
    // Rare: values near the top of float. Keep x and E, try the round, and
    // drop it if anything it produced is not finite (or a codec refused
    // its input), so no valid update can put Inf into x or stop the server.
    backup_x_ = x_;
    backup_error_ = error_;
  }
  absl::Status s = ApplyRound(delta);
  if (safe) return s;
  const bool result_finite =
      s.ok() &&
      std::all_of(x_.begin(), x_.end(),
                  [](float v) { return std::fabs(v) <= FLT_MAX; }) &&
      std::all_of(error_.begin(), error_.end(),
                  [](float v) { return std::fabs(v) <= FLT_MAX; });
  if (!result_finite) {
    x_.swap(backup_x_);
    error_.swap(backup_error_);
  }
  backup_x_ = {};
  backup_error_ = {};
  return result_finite ? s : ZeroDelta(delta);
}

absl::Status RoundEngine::ApplyRound(std::string* delta) {
  absl::Span<float> error =
      options_.error_feedback ? absl::MakeSpan(error_) : absl::Span<float>();
  const uint64_t seed =
      options_.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(round_));
  delta->resize(server_codec_->encoded_size());
  uint8_t* out = reinterpret_cast<uint8_t*>(delta->data());
  return ForEachSegment(
      server_codec_->segments().size(), pool_.get(), [&](size_t i) {
        absl::Status s =
            server_codec_->EncodeSegment(i, sum_, error, seed, out);
        if (!s.ok()) return s;
        // x -= q, decoded from the bytes the workers get, with the same
        // operation they use, so every replica stays bit-identical.
        return server_codec_->DecodeAccumulateSegment(i, *delta, -1.0f,
                                                      absl::MakeSpan(x_));
      });
}

absl::Status RoundEngine::ZeroDelta(std::string* delta) {
  ++dropped_rounds_;
  std::fill(sum_.begin(), sum_.end(), 0.0f);
  return server_codec_->EncodeWithFeedback(sum_, {}, 0, delta, pool_.get());
}

}  // namespace effadam

#include "core/round_engine.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/square_sum.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace effadam {
namespace {

double SumSquares(const float* v, size_t n) {
  SquareSum sum;
  sum.Add(v, n);
  return sum.Total();
}

// Elements per tile of CloseSegment: the tile's sum, x, E, staged x and
// staged E (5 x 32 KiB) stay in a core's L2 cache across the tile's steps.
constexpr size_t kTileElements = 8192;

// Tile length for a segment coded with blocks of block_a and block_b
// elements: whole blocks of both, near kTileElements.
size_t TileElements(size_t block_a, size_t block_b) {
  return TileOfWholeBlocks(std::lcm(block_a, block_b), kTileElements);
}

// What the average-and-check pass over a tile learned.
struct TileScan {
  bool finite = true;  // every p = avg + E is finite
  float max_p = 0;     // max |p|
  float max_x = 0;     // max |x|
};

// The memory of the next tile that its close reads (E, x) and writes (their
// staging): AverageAndScan asks for its cache lines while it runs, so that
// they arrive during this tile's decoding and encoding instead of stalling
// the next scan (its first reads of E and x from memory were most of its
// time: close_round/sign 10M, 1 thread, 36 -> 28 ms, docs/benchmarks.md).
struct NextTile {
  const float* e = nullptr;  // null: no next tile in this segment
  const float* x = nullptr;
  float* staged_x = nullptr;
  float* staged_e = nullptr;  // null without error feedback
  size_t size = 0;
};

// sum[j] /= count, then the finiteness and size of p = sum + e and of x,
// in one pass while the tile is in cache. kByReciprocal: count is a power
// of two, whose reciprocal is exact, so sum * (1 / count) is the same
// correctly rounded value as sum / count (the same real number rounded
// once), and a multiply costs a fraction of a divide.
template <bool kByReciprocal>
void AverageAndScanTile(float* sum, const float* e, const float* x, size_t m,
                        float count, const NextTile& next, TileScan* scan) {
  constexpr size_t kLine = 64 / sizeof(float);
  const float reciprocal = 1.0f / count;
  size_t j = 0;
  bool finite = true;
  float max_p = 0, max_x = 0;
#if defined(__SSE2__)
  {
    const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    const __m128 vcount = _mm_set1_ps(count), vmax = _mm_set1_ps(FLT_MAX);
    const __m128 vreciprocal = _mm_set1_ps(reciprocal);
    __m128 bad = _mm_setzero_ps(), mp = _mm_setzero_ps(), mx = _mm_setzero_ps();
    for (; j + 4 <= m; j += 4) {
      if (j % kLine == 0 && j < next.size) {
        __builtin_prefetch(next.e + j, 0);
        __builtin_prefetch(next.x + j, 0);
        __builtin_prefetch(next.staged_x + j, 1);
        if (next.staged_e != nullptr) __builtin_prefetch(next.staged_e + j, 1);
      }
      const __m128 avg = kByReciprocal
                             ? _mm_mul_ps(_mm_loadu_ps(sum + j), vreciprocal)
                             : _mm_div_ps(_mm_loadu_ps(sum + j), vcount);
      _mm_storeu_ps(sum + j, avg);
      const __m128 p =
          _mm_and_ps(_mm_add_ps(avg, _mm_loadu_ps(e + j)), abs_mask);
      // Not <= FLT_MAX: Inf, or NaN (unordered).
      bad = _mm_or_ps(bad, _mm_cmpnle_ps(p, vmax));
      mp = _mm_max_ps(mp, p);
      mx = _mm_max_ps(mx, _mm_and_ps(_mm_loadu_ps(x + j), abs_mask));
    }
    finite = _mm_movemask_ps(bad) == 0;
    float lanes[4];
    _mm_storeu_ps(lanes, mp);
    for (float l : lanes) max_p = std::max(max_p, l);
    _mm_storeu_ps(lanes, mx);
    for (float l : lanes) max_x = std::max(max_x, l);
  }
#endif
  for (; j < m; ++j) {
    sum[j] = kByReciprocal ? sum[j] * reciprocal : sum[j] / count;
    const float p = std::fabs(sum[j] + e[j]);
    finite &= p <= FLT_MAX;
    max_p = std::max(max_p, p);
    max_x = std::max(max_x, std::fabs(x[j]));
  }
  scan->finite &= finite;
  scan->max_p = std::max(scan->max_p, max_p);
  scan->max_x = std::max(scan->max_x, max_x);
}

void AverageAndScan(float* sum, const float* e, const float* x, size_t m,
                    size_t count, const NextTile& next, TileScan* scan) {
  const float c = static_cast<float>(count);
  if ((count & (count - 1)) == 0) {
    AverageAndScanTile<true>(sum, e, x, m, c, next, scan);
  } else {
    AverageAndScanTile<false>(sum, e, x, m, c, next, scan);
  }
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
  const Segment& server_seg = server_codec_->segments()[i];
  SegmentClose& result = segment_close_[i];
  const size_t tile =
      TileElements(seg.codec->block_size(), server_seg.codec->block_size());
  // The sum of one tile; per thread, since segments close concurrently.
  thread_local std::vector<float> tile_sum;
  if (tile_sum.size() < tile) tile_sum.resize(tile);
  const size_t count = pending_.size();
  const uint64_t seed =
      options_.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(round_));
  uint8_t* out = reinterpret_cast<uint8_t*>(delta->data());
  TileScan scan;
  SquareSum error_squares;
  // Tile by tile, every step of the segment while the tile is in cache:
  // sum the updates in rank order, average, check p = avg + E, encode p
  // with feedback into the delta and E's staging (out of place: E itself
  // is read, never written), and x - q into x's staging. x and E stay as
  // they were until FinishClose commits the staging.
  for (size_t t = 0; t < seg.size; t += tile) {
    const size_t m = std::min(tile, seg.size - t);
    const absl::Span<float> sum(tile_sum.data(), m);
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (const auto& [rank, update] : pending_) {
      // Validated (Submit, or by the caller segment by segment), so this
      // cannot fail half-way.
      absl::Status st =
          worker_codec_->DecodeSegmentRange(i, t, *update, 1.0f, sum, sum);
      if (!st.ok()) return st;
    }
    const size_t first = seg.begin + t;
    const float* e = error_.data() + first;
    const float* x = x_.data() + first;
    NextTile next;
    if (t + m < seg.size) {
      const size_t after = first + m;
      next = {error_.data() + after, x_.data() + after,
              staged_x_.data() + after,
              options_.error_feedback ? staged_error_.data() + after : nullptr,
              std::min(tile, seg.size - t - m)};
    }
    AverageAndScan(sum.data(), e, x, m, count, next, &scan);
    // Finite updates can still overflow once averaged with E: such a round
    // is dropped before the encoder sees it.
    if (!scan.finite) {
      result.closed = true;
      result.p_finite = false;
      return absl::OkStatus();
    }
    absl::Span<const float> error_in;
    absl::Span<float> error_out;
    if (options_.error_feedback) {
      error_in = absl::MakeConstSpan(e, m);
      error_out = absl::MakeSpan(staged_error_.data() + first, m);
    }
    result.encoded = server_codec_->EncodeSegmentRange(i, t, sum, error_in,
                                                       error_out, seed, out);
    if (!result.encoded.ok()) break;
    // x - q, decoded from the bytes the workers get, with the same operation
    // they use, so every replica stays bit-identical.
    result.encoded = server_codec_->DecodeSegmentRange(
        i, t, *delta, -1.0f, absl::MakeConstSpan(x, m),
        absl::MakeSpan(staged_x_.data() + first, m));
    if (!result.encoded.ok()) break;
    // While this tile of E is in cache (error_memory_norm).
    if (options_.error_feedback) error_squares.Add(error_out.data(), m);
  }
  // Every codec's |q_j| is at most max|p| plus a rounding, and |p - q| at
  // most max|p|, so within this margin neither x - q nor E = p - q can
  // overflow and the staged values need no check. (A codec that refuses a
  // tile, which no finite p makes happen, leaves the margin of the tiles
  // before it.)
  result.closed = true;
  result.safe = scan.max_p <= FLT_MAX / 4 && scan.max_x <= FLT_MAX / 2;
  if (!result.encoded.ok()) return absl::OkStatus();
  result.error_sum_squares = error_squares.Total();
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
  // The bytes EncodeWithFeedback writes for zeros, without a model-sized
  // vector of them.
  return server_codec_->EncodeZeros(delta);
}

}  // namespace effadam

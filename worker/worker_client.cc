#include "worker/worker_client.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/host_port.h"
#include "core/checksum.h"

namespace effadam {
namespace {

// The stream of a shard ended so that joining again may help: the server
// went away (restart, shutdown) or said this worker lags behind.
bool Recoverable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsAborted(s) || absl::IsCancelled(s);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ShardAddresses(
    const std::string& server, int num_shards) {
  std::vector<std::string> out;
  if (absl::StrContains(server, "{shard}")) {
    if (num_shards < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server address pattern ", server, " needs the number of shards"));
    }
    for (int k = 0; k < num_shards; ++k) {
      out.push_back(
          absl::StrReplaceAll(server, {{"{shard}", absl::StrCat(k)}}));
    }
  } else {
    for (absl::string_view a : absl::StrSplit(server, ',')) {
      if (a.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("empty address in server list \"", server, "\""));
      }
      out.emplace_back(a);
    }
    if (num_shards != 0 && static_cast<size_t>(num_shards) != out.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(out.size(), " server addresses for ", num_shards,
                       " shards: \"", server, "\""));
    }
  }
  for (const std::string& a : out) {
    absl::StatusOr<HostPort> parsed =
        ParseHostPort(a, "a server address", /*min_port=*/1);
    if (!parsed.ok()) return parsed.status();
  }
  return out;
}

WorkerClient::WorkerClient(WorkerClientOptions options)
    : options_(std::move(options)) {}

// Each ShardLink cancels a stream still open (an error path skipped
// Finish): the servers see this worker leave at once.
WorkerClient::~WorkerClient() {
  if (step_open()) AbandonStep(absl::CancelledError("destroyed")).IgnoreError();
}

absl::StatusOr<std::unique_ptr<WorkerClient>> WorkerClient::Connect(
    const WorkerClientOptions& options, const TensorLayout& layout,
    absl::Span<const float> initial_params) {
  auto client = std::make_unique<WorkerClient>(options);
  if (absl::Status s = client->Join(layout); !s.ok()) return s;
  if (absl::Status s = client->Start(initial_params); !s.ok()) return s;
  return client;
}

void WorkerClient::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  for (Shard& s : shards_) s.link->Cancel();
}

bool WorkerClient::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

absl::Status WorkerClient::Join(const TensorLayout& layout) {
  if (phase_ != Phase::kNew) {
    return absl::FailedPreconditionError("Join: already joined");
  }
  if (options_.rank < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be -1 (assigned by the server) or >= 0, got ",
                     options_.rank));
  }
  if (layout.num_elements() == 0) {
    return absl::InvalidArgumentError("Join: the layout has no tensors");
  }
  if (absl::Status s = ValidateAdamOptions(options_.adam); !s.ok()) return s;
  absl::StatusOr<std::vector<std::string>> addresses =
      ShardAddresses(options_.server, options_.num_shards);
  if (!addresses.ok()) return addresses.status();
  const CompressionConfig& cc = options_.compression;
  auto wc = UpdateCodec::Create(layout, cc.worker_codec, cc.options);
  if (!wc.ok()) return wc.status();
  auto sc = UpdateCodec::Create(layout, cc.server_codec, cc.options);
  if (!sc.ok()) return sc.status();
  const int num_shards = static_cast<int>(addresses->size());
  absl::StatusOr<std::vector<ShardRange>> update_plan =
      PlanShards(**wc, num_shards);
  if (!update_plan.ok()) return update_plan.status();
  absl::StatusOr<std::vector<ShardRange>> delta_plan =
      PlanShards(**sc, num_shards);
  if (!delta_plan.ok()) return delta_plan.status();

  layout_ = layout;
  worker_codec_ = *std::move(wc);
  server_codec_ = *std::move(sc);
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return absl::CancelledError("cancelled");
    for (int k = 0; k < num_shards; ++k) {
      ShardLinkOptions lo;
      lo.address = (*addresses)[k];
      lo.security = options_.security;
      lo.keepalive = options_.keepalive;
      if (options_.logger != nullptr) lo.log = options_.logger;
      lo.clock = &clock();
      Shard s;
      s.link = std::make_unique<ShardLink>(std::move(lo));
      s.update_range = (*update_plan)[k];
      s.delta_range = (*delta_plan)[k];
      shards_.push_back(std::move(s));
    }
  }
  // Shard 0 assigns the rank; the others are asked for the same one.
  const absl::Time now = clock().Now();
  const absl::Time deadline = now + options_.connect_timeout;
  // Only a rank asked for by number can be taken.
  const absl::Time rank_taken_deadline = options_.rank >= 0
                                             ? now + options_.reconnect_timeout
                                             : absl::InfinitePast();
  for (size_t k = 0; k < shards_.size(); ++k) {
    if (absl::Status s = JoinShard(k, k == 0 ? options_.rank : rank_, deadline,
                                   rank_taken_deadline);
        !s.ok()) {
      return s;
    }
  }
  phase_ = Phase::kJoined;
  return absl::OkStatus();
}

absl::Status WorkerClient::JoinShard(size_t k, int rank, absl::Time deadline,
                                     absl::Time rank_taken_deadline) {
  Shard& shard = shards_[k];
  JoinClaim claim;
  claim.rank = rank;
  // x is at the start of shard.round: every delta before it is applied.
  if (optimizer_ != nullptr && shard.round > 0) {
    const ShardRange& r = shard.update_range;
    claim.replica_round = shard.round;
    claim.replica_checksum = ParamsChecksum(params().subspan(r.begin, r.size));
  }
  absl::StatusOr<JoinReply> reply = shard.link->Join(
      layout_, options_.compression, claim, deadline, rank_taken_deadline);
  if (!reply.ok()) return reply.status();

  const std::string& who = shard.link->address();
  if (reply->expected_workers <= 0 || reply->rank < 0 ||
      reply->rank >= reply->expected_workers ||
      (rank >= 0 && reply->rank != rank)) {
    return absl::InternalError(absl::StrCat(
        "Join: ", who, " assigned rank ", reply->rank, " of ",
        reply->expected_workers, " workers (asked for ", rank, ")"));
  }
  if (num_workers_ != 0 && reply->expected_workers != num_workers_) {
    // The data shard was chosen for the first N.
    return absl::FailedPreconditionError(
        absl::StrCat("Join: ", who, " expects ", reply->expected_workers,
                     " workers; this worker has ", num_workers_));
  }
  if (reply->num_elements != static_cast<int64_t>(layout_.num_elements())) {
    return absl::InternalError(
        absl::StrCat("Join: ", who, " reports ", reply->num_elements,
                     " elements for a layout of ", layout_.num_elements()));
  }
  // A server without sharding leaves the fields at 0.
  const int server_shards = std::max(reply->num_shards, 1);
  const int64_t size =
      reply->num_shards == 0 ? reply->num_elements : reply->shard_size;
  if (server_shards != num_shards() || reply->shard != static_cast<int>(k) ||
      reply->shard_begin != static_cast<int64_t>(shard.update_range.begin) ||
      size != static_cast<int64_t>(shard.update_range.size)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Join: ", who, " is shard ", reply->shard, " of ", server_shards,
        " holding elements [", reply->shard_begin, ", +", size,
        "); this worker has ", num_shards(),
        " server addresses and expects shard ", k, " to hold [",
        shard.update_range.begin, ", +", shard.update_range.size, ")"));
  }
  rank_ = reply->rank;
  num_workers_ = reply->expected_workers;
  shard.upload = reply->upload_initial_params;
  shard.upload_round = shard.upload ? claim.replica_round : 0;
  shard.max_chunk_bytes = reply->max_chunk_bytes;
  shard.round = reply->round;
  return absl::OkStatus();
}

absl::Status WorkerClient::UploadShard(size_t k, absl::Span<const float> x,
                                       absl::Time deadline) {
  Shard& shard = shards_[k];
  const ShardRange& r = shard.update_range;
  if (absl::Status s = shard.link->Upload(
          rank_, shard.upload_round, x.subspan(r.begin, r.size),
          static_cast<size_t>(shard.max_chunk_bytes), deadline);
      !s.ok()) {
    return s;
  }
  shard.payload[TrafficDirection::kJoin].payload +=
      static_cast<int64_t>(r.size * sizeof(float));
  return absl::OkStatus();
}

absl::Status WorkerClient::FetchShard(size_t k, absl::Time deadline,
                                      std::vector<float>* x) {
  Shard& shard = shards_[k];
  const ShardRange& r = shard.update_range;
  if (absl::Status s = shard.link->Fetch(
          rank_, absl::MakeSpan(*x).subspan(r.begin, r.size),
          static_cast<size_t>(shard.max_chunk_bytes), deadline, &shard.round);
      !s.ok()) {
    return s;
  }
  shard.payload[TrafficDirection::kJoin].payload +=
      static_cast<int64_t>(r.size * sizeof(float));
  return absl::OkStatus();
}

absl::Status WorkerClient::Start(absl::Span<const float> initial_params) {
  if (phase_ != Phase::kJoined) {
    return absl::FailedPreconditionError(
        phase_ == Phase::kNew ? "Start: Join first" : "Start: already started");
  }
  const size_t n = layout_.num_elements();
  const absl::Time deadline = clock().Now() + options_.connect_timeout;
  std::vector<float> x0(n);
  for (size_t k = 0; k < shards_.size(); ++k) {
    Shard& shard = shards_[k];
    if (shard.upload) {
      if (initial_params.size() != n) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Start: ", initial_params.size(),
            " initial parameters for a layout of ", n, " elements"));
      }
      if (absl::Status s = UploadShard(k, initial_params, deadline); !s.ok()) {
        return s;
      }
    }
    // ABORTED: the uploader went away before x arrived, and the server
    // asks this worker to join again; the first to do so uploads.
    absl::Status fetched = FetchShard(k, deadline, &x0);
    while (absl::IsAborted(fetched) && !cancelled()) {
      // Its rank is this worker's own, held by nobody else.
      if (absl::Status s = JoinShard(k, rank_, deadline, absl::InfinitePast());
          !s.ok()) {
        return s;
      }
      if (shard.upload) {
        if (initial_params.size() != n) {
          return absl::FailedPreconditionError(absl::StrCat(
              "Start: the server asks this worker to upload the initial "
              "parameters (its uploader went away), but it has ",
              initial_params.size(), " of ", n));
        }
        if (absl::Status s = UploadShard(k, initial_params, deadline);
            !s.ok()) {
          return s;
        }
      }
      fetched = FetchShard(k, deadline, &x0);
    }
    if (!fetched.ok()) return fetched;
    ChunkRules rules;
    rules.total_bytes = shard.delta_range.byte_size;
    rules.max_chunk_bytes = static_cast<size_t>(shard.max_chunk_bytes);
    absl::StatusOr<ChunkAssembler> assembler = ChunkAssembler::Create(rules);
    if (!assembler.ok()) return assembler.status();
    shard.delta = std::make_unique<ChunkAssembler>(*std::move(assembler));
  }

  WorkerOptimizer::Options wo;
  wo.adam = options_.adam;
  wo.error_feedback = options_.compression.worker_error_feedback;
  wo.seed = options_.seed;
  wo.rank = rank_;
  wo.threads = options_.threads;
  auto optimizer =
      WorkerOptimizer::Create(worker_codec_, server_codec_, std::move(x0), wo);
  if (!optimizer.ok()) return optimizer.status();
  optimizer_ = *std::move(optimizer);
  for (Shard& shard : shards_) {
    if (absl::Status s = shard.link->OpenStream(); !s.ok()) return s;
  }
  link_threads_ = std::make_unique<LinkThreads>(num_shards());
  phase_ = Phase::kTraining;
  return absl::OkStatus();
}

absl::Status WorkerClient::Recover(size_t k, const absl::Status& ended) {
  if (cancelled() || options_.reconnect_timeout <= absl::ZeroDuration() ||
      !Recoverable(ended)) {
    return ended;
  }
  const absl::Time deadline = clock().Now() + options_.reconnect_timeout;
  const absl::Status s = shards_[k].link->Retry(
      deadline, "", [&] { return Resync(k, deadline); },
      // ALREADY_EXISTS: the server has not yet seen this rank's old stream
      // end. UNAVAILABLE, CANCELLED: it is not back yet, or going away
      // again.
      [](const absl::Status& s) {
        return Recoverable(s) || absl::IsAlreadyExists(s);
      });
  if (s.ok() || (absl::IsCancelled(s) && cancelled())) return s;
  return absl::Status(s.code(),
                      absl::StrCat("reconnecting after \"", ended.message(),
                                   "\": ", s.message()));
}

absl::Status WorkerClient::Resync(size_t k, absl::Time deadline) {
  Shard& shard = shards_[k];
  // Recover's own loop retries a rank still taken. OUT_OF_RANGE: the run
  // ended while this worker was away; it takes the final x and ends with
  // the server.
  const absl::Status joined =
      JoinShard(k, rank_, deadline, absl::InfinitePast());
  if (!joined.ok() && !absl::IsOutOfRange(joined)) return joined;
  // A server that restarted without a checkpoint (or with an older one)
  // asks for this replica.
  if (joined.ok() && shard.upload) {
    if (absl::Status s = UploadShard(k, params(), deadline); !s.ok()) return s;
  }
  std::vector<float> x(params().begin(), params().end());
  if (absl::Status s = FetchShard(k, deadline, &x); !s.ok()) return s;
  if (absl::Status s = optimizer_->ResetParams(x); !s.ok()) return s;
  if (!joined.ok()) {
    shard.link->MarkServerFinished();
    return absl::OkStatus();
  }
  return shard.link->OpenStream();
}

absl::Span<const float> WorkerClient::params() const {
  if (optimizer_ == nullptr) return {};
  return optimizer_->params();
}

absl::Span<const float> WorkerClient::error_memory() const {
  if (optimizer_ == nullptr) return {};
  return optimizer_->error_memory();
}

double WorkerClient::error_memory_norm() const {
  if (optimizer_ == nullptr) return 0;
  return optimizer_->error_memory_norm();
}

int64_t WorkerClient::round() const {
  if (shards_.empty()) return 0;
  int64_t r = shards_[0].round;
  for (const Shard& s : shards_) r = std::min(r, s.round);
  return r;
}

int WorkerClient::contributors() const {
  if (shards_.empty()) return 0;
  int c = shards_[0].contributors;
  for (const Shard& s : shards_) c = std::min(c, s.contributors);
  return c;
}

TrafficCounts WorkerClient::traffic() const {
  TrafficCounts sum;
  for (const Shard& s : shards_) {
    sum += s.payload;
    sum += s.link->wire();
  }
  return sum;
}

absl::Status WorkerClient::PrepareStep(absl::string_view call) {
  if (phase_ != Phase::kTraining) {
    if (phase_ == Phase::kDone && !final_status_.ok()) return final_status_;
    return absl::FailedPreconditionError(
        absl::StrCat(call, ": call Start first"));
  }
  if (step_open()) {
    return absl::FailedPreconditionError(
        absl::StrCat(call, ": a bucketed step is open (EndStep first)"));
  }
  // The run's round drives the learning-rate schedule: a worker that
  // joined or restarted mid-run would otherwise start it over.
  return optimizer_->SetScheduleStep(round());
}

absl::Status WorkerClient::Step(absl::Span<const float> grad, float loss) {
  if (absl::Status s = PrepareStep("Step"); !s.ok()) return s;
  if (absl::Status s = optimizer_->ComputeUpdate(grad, &update_); !s.ok()) {
    return s;
  }
  RunExchanges(loss, /*bucketed=*/false);
  return ApplyRound();
}

void WorkerClient::RunExchanges(float loss, bool bucketed) {
  round_results_.assign(shards_.size(), absl::OkStatus());
  // A shard whose round was dropped (its result was not finite) sends no
  // delta: its part is zero, as its server's x stays as it was.
  round_dropped_.assign(shards_.size(), 0);
  // Each shard gets its part of the update on its own stream, in parallel
  // (shard k on link thread k, shard 0 on this thread).
  auto exchange = [&](int k) {
    Shard& s = shards_[k];
    if (!s.link->stream_open()) return;  // its server finished training
    bool dropped = false;
    ShardLink::AwaitUpdateBytes await;
    if (bucketed) {
      await = [this, k](size_t n, float* l) { return AwaitBytes(k, n, l); };
    }
    round_results_[k] = s.link->Exchange(
        rank_, s.round,
        absl::string_view(update_).substr(s.update_range.byte_begin,
                                          s.update_range.byte_size),
        loss, static_cast<size_t>(s.max_chunk_bytes), s.delta.get(),
        &s.contributors, &dropped, &s.earlier, await);
    round_dropped_[k] = dropped;
  };
  link_threads_->Run(exchange);
}

absl::Status WorkerClient::ApplyRound() {
  // A shard whose server has finished, or whose stream broke, contributes
  // a zero part to the delta.
  delta_.resize(server_codec_->encoded_size());
  const std::vector<absl::Status>& results = round_results_;
  // A shard that took this worker's late update into its current round
  // sent the deltas of the rounds it missed first: applied before this
  // round's, in the server's order (the other shards' parts are zero).
  if (absl::Status s = ApplyEarlierDeltas(results); !s.ok()) return s;

  bool progressed = false;  // some shard's round went through
  std::vector<size_t> broken;
  for (size_t k = 0; k < shards_.size(); ++k) {
    Shard& s = shards_[k];
    const absl::Status& r = results[k];
    if (s.link->server_finished() || (r.ok() && !s.link->stream_open())) {
      if (absl::Status z = PutZeroPart(s); !z.ok()) return Abandon(z);
      continue;
    }
    if (r.ok()) {
      DirectionBytes& up = s.payload[TrafficDirection::kWorkerToServer];
      up.payload += static_cast<int64_t>(s.update_range.byte_size);
      up.fp32 += static_cast<int64_t>(sizeof(float) * s.update_range.size);
      if (round_dropped_[k]) {
        if (absl::Status z = PutZeroPart(s); !z.ok()) return Abandon(z);
      } else {
        // Shared, not taken: the assembler keeps its memory for the next
        // round.
        const std::string& part = *s.delta->SharedBuffer();
        PutDeltaPart(s, part);
        CountDelta(s, part.size());
      }
      ++s.round;
      progressed = true;
    } else if (absl::IsInternal(r) || !Recoverable(r) || cancelled() ||
               options_.reconnect_timeout <= absl::ZeroDuration()) {
      return Abandon(r);
    } else {
      if (absl::Status z = PutZeroPart(s); !z.ok()) return Abandon(z);
      broken.push_back(k);
    }
  }
  if (progressed) {
    if (absl::Status s = optimizer_->ApplyDelta(delta_); !s.ok()) {
      return Abandon(absl::InternalError(
          absl::StrCat("Train, round ", round(), ": ", s.message())));
    }
  }
  for (size_t k : broken) {
    if (absl::Status s = Recover(k, results[k]); !s.ok()) return Abandon(s);
  }
  if (!broken.empty()) ++resyncs_;
  const bool all_finished =
      std::all_of(shards_.begin(), shards_.end(),
                  [](const Shard& s) { return s.link->server_finished(); });
  if (all_finished) {
    server_finished_ = true;
    phase_ = Phase::kDone;
    final_status_ = absl::OutOfRangeError(
        absl::StrCat("the server ended training before round ", round()));
    return final_status_;
  }
  return absl::OkStatus();
}

void WorkerClient::PutDeltaPart(const Shard& s, absl::string_view part) {
  std::memcpy(delta_.data() + s.delta_range.byte_begin, part.data(),
              part.size());
}

absl::Status WorkerClient::PutZeroPart(const Shard& s) {
  absl::Status z = server_codec_->EncodeZeros(
      s.delta_range.first_segment, s.delta_range.end_segment,
      absl::MakeSpan(reinterpret_cast<uint8_t*>(delta_.data()), delta_.size()));
  if (!z.ok()) {
    return absl::InternalError(
        absl::StrCat("Train, round ", round(), ": ", z.message()));
  }
  return absl::OkStatus();
}

void WorkerClient::CountDelta(Shard& s, size_t bytes) {
  DirectionBytes& down = s.payload[TrafficDirection::kServerToWorker];
  down.payload += static_cast<int64_t>(bytes);
  down.fp32 += static_cast<int64_t>(sizeof(float) * s.update_range.size);
}

absl::Status WorkerClient::ApplyEarlierDeltas(
    const std::vector<absl::Status>& results) {
  // The i-th delta a shard missed goes with the others' i-th (zero where a
  // shard missed fewer): shards hold disjoint parts of x.
  size_t most = 0;
  for (size_t k = 0; k < shards_.size(); ++k) {
    if (results[k].ok() && shards_[k].link->stream_open()) {
      most = std::max(most, shards_[k].earlier.count);
    }
  }
  for (size_t i = 0; i < most; ++i) {
    for (size_t k = 0; k < shards_.size(); ++k) {
      Shard& s = shards_[k];
      const ShardLink::EarlierDeltas& e = s.earlier;
      const bool missed = results[k].ok() && s.link->stream_open() &&
                          i < e.count;  // shard k missed an i-th round
      if (missed && !e.dropped[i]) {
        PutDeltaPart(s, e.bytes[i]);
        CountDelta(s, e.bytes[i].size());
      } else if (absl::Status z = PutZeroPart(s); !z.ok()) {
        return Abandon(z);
      }
      if (missed) ++s.round;
    }
    if (absl::Status s = optimizer_->ApplyDelta(delta_); !s.ok()) {
      return Abandon(absl::InternalError(
          absl::StrCat("Train, round ", round(), ": ", s.message())));
    }
  }
  return absl::OkStatus();
}

absl::Status WorkerClient::BeginStep() {
  if (absl::Status s = PrepareStep("BeginStep"); !s.ok()) return s;
  if (absl::Status s = optimizer_->BeginUpdate(&update_); !s.ok()) return s;
  const size_t n = layout_.num_elements();
  grad_.resize(n);
  received_.clear();
  missing_ = n;
  const size_t parts = optimizer_->num_update_parts();
  part_missing_.resize(parts);
  for (size_t k = 0; k < parts; ++k) {
    const WorkerOptimizer::UpdatePart p = optimizer_->update_part(k);
    part_missing_[k] = p.end - p.begin;
  }
  // Shard k's first part: the first whose bytes reach into its range.
  next_part_.assign(shards_.size(), 0);
  for (size_t k = 0; k < shards_.size(); ++k) {
    while (optimizer_->update_part(next_part_[k]).byte_end <=
           shards_[k].update_range.byte_begin) {
      ++next_part_[k];
    }
  }
  {
    absl::MutexLock lock(&mu_);
    ready_bytes_.assign(shards_.size(), 0);
    loss_known_ = false;
    step_abandoned_ = false;
  }
  step_thread_ = std::thread([this] { RunExchanges(0.0f, /*bucketed=*/true); });
  return absl::OkStatus();
}

bool WorkerClient::AwaitBytes(size_t k, size_t n, float* loss) {
  const bool last = n == shards_[k].update_range.byte_size;
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cancelled_ || step_abandoned_ ||
           (ready_bytes_[k] >= n && (!last || loss_known_));
  };
  mu_.Await(absl::Condition(&ready));
  if (cancelled_ || step_abandoned_) return false;
  if (last) *loss = loss_;
  return true;
}

absl::Status WorkerClient::AddGradient(size_t begin,
                                       absl::Span<const float> values) {
  if (!step_open()) {
    return absl::FailedPreconditionError("AddGradient: call BeginStep first");
  }
  const size_t n = grad_.size();
  if (values.empty() || begin > n || values.size() > n - begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddGradient: elements [", begin, ", +", values.size(),
                     ") are not a range of the layout's ", n));
  }
  const size_t end = begin + values.size();
  auto after = received_.upper_bound(begin);
  const bool overlaps_before =
      after != received_.begin() && std::prev(after)->second > begin;
  if (overlaps_before || (after != received_.end() && after->first < end)) {
    return absl::InvalidArgumentError(
        absl::StrCat("AddGradient: elements [", begin, ", ", end,
                     ") overlap a range given before in this step"));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("AddGradient: the gradient of element ", begin + i,
                       " is ", values[i]));
    }
  }
  std::copy(values.begin(), values.end(), grad_.begin() + begin);
  received_.emplace(begin, end);
  missing_ -= values.size();
  // The parts this range completes (parts are in element order).
  std::vector<size_t> ready;
  size_t lo = 0, hi = part_missing_.size();
  while (lo < hi) {  // the first part that ends after `begin`
    const size_t mid = (lo + hi) / 2;
    if (optimizer_->update_part(mid).end <= begin) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  for (size_t k = lo; k < part_missing_.size(); ++k) {
    const WorkerOptimizer::UpdatePart p = optimizer_->update_part(k);
    if (p.begin >= end) break;
    part_missing_[k] -= std::min(p.end, end) - std::max(p.begin, begin);
    if (part_missing_[k] == 0) ready.push_back(k);
  }
  if (ready.empty()) return absl::OkStatus();
  if (absl::Status s = optimizer_->ComputeUpdateParts(ready, grad_); !s.ok()) {
    return AbandonStep(absl::InternalError(
        absl::StrCat("AddGradient, encoding the update: ", s.message())));
  }
  if (missing_ == 0) {
    if (absl::Status s = optimizer_->FinishUpdate(); !s.ok()) {
      return AbandonStep(absl::InternalError(s.message()));
    }
  }
  // Each shard's bytes are final up to its first part not yet computed.
  std::vector<size_t> ready_bytes(shards_.size());
  for (size_t k = 0; k < shards_.size(); ++k) {
    const ShardRange& r = shards_[k].update_range;
    size_t& next = next_part_[k];
    while (next < part_missing_.size() && part_missing_[next] == 0 &&
           optimizer_->update_part(next).byte_begin <
               r.byte_begin + r.byte_size) {
      ++next;
    }
    const size_t final_end =
        next < part_missing_.size()
            ? std::min(optimizer_->update_part(next).byte_begin,
                       r.byte_begin + r.byte_size)
            : r.byte_begin + r.byte_size;
    ready_bytes[k] = std::max(final_end, r.byte_begin) - r.byte_begin;
  }
  absl::MutexLock lock(&mu_);
  ready_bytes_ = std::move(ready_bytes);
  return absl::OkStatus();
}

absl::Status WorkerClient::EndStep(float loss) {
  if (!step_open()) {
    if (phase_ == Phase::kDone && !final_status_.ok()) return final_status_;
    return absl::FailedPreconditionError("EndStep: call BeginStep first");
  }
  if (missing_ > 0) {
    size_t first = 0;  // the first element no range covers
    for (const auto& [b, e] : received_) {
      if (b != first) break;
      first = e;
    }
    return AbandonStep(absl::InvalidArgumentError(absl::StrCat(
        "EndStep: ", missing_,
        " gradient elements never arrived (the first: ", first,
        "); the update could not be completed and this worker left "
        "training")));
  }
  {
    absl::MutexLock lock(&mu_);
    loss_ = loss;
    loss_known_ = true;
  }
  step_thread_.join();
  return ApplyRound();
}

absl::Status WorkerClient::AbandonStep(absl::Status why) {
  {
    absl::MutexLock lock(&mu_);
    step_abandoned_ = true;
  }
  step_thread_.join();
  return Abandon(std::move(why));
}

absl::Status WorkerClient::Abandon(absl::Status why) {
  for (Shard& s : shards_) s.link->Abandon();
  server_finished_ = false;
  phase_ = Phase::kDone;
  final_status_ = std::move(why);
  return final_status_;
}

absl::Status WorkerClient::Run(
    int64_t last_round,
    const std::function<absl::StatusOr<float>(absl::Span<const float>,
                                              absl::Span<float>)>& gradient) {
  if (phase_ != Phase::kTraining) {
    return absl::FailedPreconditionError("Run: call Start first");
  }
  std::vector<float> grad(optimizer_->params().size());
  while (round() <= last_round) {
    absl::StatusOr<float> loss = gradient(params(), absl::MakeSpan(grad));
    if (!loss.ok()) return loss.status();
    absl::Status s = Step(grad, *loss);
    if (server_finished_) break;
    if (!s.ok()) return s;
  }
  return Finish();
}

absl::Status WorkerClient::Finish() {
  if (step_open()) {
    return AbandonStep(absl::FailedPreconditionError(
        "Finish: a bucketed step was open; it was abandoned"));
  }
  if (phase_ == Phase::kDone) {
    return server_finished_ ? absl::OkStatus() : final_status_;
  }
  if (phase_ != Phase::kTraining) {
    phase_ = Phase::kDone;
    return absl::OkStatus();
  }
  absl::Status first;
  for (Shard& s : shards_) {
    absl::Status st = s.link->Finish(options_.finish_timeout);
    if (first.ok()) first = st;
  }
  phase_ = Phase::kDone;
  final_status_ = first;
  return final_status_;
}

}  // namespace effadam

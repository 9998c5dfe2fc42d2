// effadam-bench-codec: codec throughput next to memcpy of the same fp32
// buffer, measured in one run so the ratio is meaningful on a noisy machine.
// Items are elements; compare items/s of a codec with memcpy's.
//
// Also the fused passes at the size of a real round, per thread count:
// close_round (RoundEngine::CloseRound over 4 updates: decode, average,
// check, encode with feedback, x -= q) and worker_step
// (WorkerOptimizer::ComputeUpdate: Adam, worker feedback, encode), next to
// memcpy_mvexg, one memcpy of the five float arrays a worker step must
// touch (m, v, e, x, g), and gradient_check, the finiteness pass over the
// gradient that ComputeUpdate makes before its step (part of worker_step).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/codec.h"
#include "core/round_engine.h"
#include "core/update_codec.h"
#include "core/worker_optimizer.h"

namespace effadam {
namespace {

std::vector<float> RandomVector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1e-3f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

std::unique_ptr<Codec> Make(const std::string& name) {
  return *MakeCodec(*ParseCodecSpec(name), 1024);
}

void BM_Memcpy(benchmark::State& state) {
  const size_t n = state.range(0);
  std::vector<float> src = RandomVector(n, 1), dst(n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.SetBytesProcessed(state.iterations() * n * 2 * sizeof(float));
}

void BM_EncodeWithFeedback(benchmark::State& state, std::string name) {
  const size_t n = state.range(0);
  auto codec = Make(name);
  std::vector<float> update = RandomVector(n, 1), error = RandomVector(n, 2);
  std::vector<uint8_t> out(codec->EncodedSize(n));
  for (auto _ : state) {
    auto s =
        codec->EncodeWithFeedback(update, absl::MakeSpan(error), 7, out.data());
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
  state.counters["wire_bytes_per_elem"] =
      static_cast<double>(out.size()) / static_cast<double>(n);
}

void BM_Decode(benchmark::State& state, std::string name, bool accumulate) {
  const size_t n = state.range(0);
  auto codec = Make(name);
  std::vector<float> update = RandomVector(n, 1), acc(n, 0.0f);
  std::vector<uint8_t> bytes(codec->EncodedSize(n));
  (void)codec->EncodeWithFeedback(update, {}, 7, bytes.data());
  for (auto _ : state) {
    auto s = accumulate
                 ? codec->DecodeAccumulate(bytes, 1.0f, absl::MakeSpan(acc))
                 : codec->Decode(bytes, absl::MakeSpan(acc));
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(acc.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void BM_Validate(benchmark::State& state, std::string name) {
  const size_t n = state.range(0);
  auto codec = Make(name);
  std::vector<float> update = RandomVector(n, 1);
  std::vector<uint8_t> bytes(codec->EncodedSize(n));
  (void)codec->EncodeWithFeedback(update, {}, 7, bytes.data());
  for (auto _ : state) {
    benchmark::DoNotOptimize(codec->Validate(bytes, n));
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// One tensor of n elements with the default compression options.
std::shared_ptr<const UpdateCodec> ModelCodec(const std::string& name,
                                              size_t n) {
  auto layout = TensorLayout::Create({{"w", {static_cast<int64_t>(n)}}});
  return *UpdateCodec::Create(*layout, *ParseCodecSpec(name),
                              CompressionOptions{});
}

// Copies m, v, e, x and g (five arrays of n floats) once.
void BM_MemcpyMvexg(benchmark::State& state) {
  const size_t n = state.range(0);
  std::vector<float> src = RandomVector(5 * n, 1), dst(5 * n);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), 5 * n * sizeof(float));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// The check ComputeUpdate makes of the gradient before it moves anything.
void BM_GradientCheck(benchmark::State& state) {
  const size_t n = state.range(0);
  const std::vector<float> grad = RandomVector(n, 11);
  for (auto _ : state) benchmark::DoNotOptimize(AllFinite(grad));
  state.SetItemsProcessed(state.iterations() * n);
}

constexpr int kCloseRoundWorkers = 4;

void BM_CloseRound(benchmark::State& state, std::string name) {
  const size_t n = state.range(0);
  auto codec = ModelCodec(name, n);
  RoundEngineOptions o;
  o.threads = static_cast<int>(state.range(1));
  auto engine = *RoundEngine::Create(codec, codec, RandomVector(n, 9), o);
  std::vector<std::shared_ptr<const std::string>> updates;
  for (int r = 0; r < kCloseRoundWorkers; ++r) {
    std::string u;
    (void)codec->EncodeWithFeedback(RandomVector(n, 10 + r), {}, 0, &u);
    updates.push_back(std::make_shared<const std::string>(std::move(u)));
  }
  std::string delta;
  for (auto _ : state) {
    state.PauseTiming();
    for (int r = 0; r < kCloseRoundWorkers; ++r) {
      (void)engine->Submit(r, engine->round(), updates[r], /*validated=*/true);
    }
    state.ResumeTiming();
    if (absl::Status s = engine->CloseRoundInto(&delta); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
    }
    benchmark::DoNotOptimize(delta.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void BM_WorkerStep(benchmark::State& state, std::string name) {
  const size_t n = state.range(0);
  auto codec = ModelCodec(name, n);
  WorkerOptimizer::Options o;
  o.threads = static_cast<int>(state.range(1));
  auto worker = *WorkerOptimizer::Create(codec, codec, RandomVector(n, 9), o);
  const std::vector<float> grad = RandomVector(n, 11);
  std::string update;
  for (auto _ : state) {
    if (absl::Status s = worker->ComputeUpdate(grad, &update); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
    }
    benchmark::DoNotOptimize(update.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

void RegisterRounds() {
  const int max_threads = std::max(2, AvailableCores());
  auto add = [&](benchmark::internal::Benchmark* b,
                 std::vector<int64_t> sizes) {
    for (int64_t n : sizes)
      for (int t = 1; t <= max_threads; t *= 2) b->Args({n, t});
    b->ArgNames({"n", "threads"});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  const int64_t k10M = 10000000, k50M = 50000000;
  auto memcpy5 = benchmark::RegisterBenchmark("memcpy_mvexg", BM_MemcpyMvexg);
  memcpy5->Arg(k10M)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("gradient_check", BM_GradientCheck)
      ->Arg(k10M)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const char* name : {"fp32", "sign"}) {
    std::string nm = name;
    add(benchmark::RegisterBenchmark(("worker_step/" + nm).c_str(),
                                     BM_WorkerStep, nm),
        {k10M});
    add(benchmark::RegisterBenchmark(("close_round/" + nm).c_str(),
                                     BM_CloseRound, nm),
        nm == "sign" ? std::vector<int64_t>{k10M, k50M}
                     : std::vector<int64_t>{k10M});
  }
}

void RegisterAll() {
  const std::vector<int64_t> sizes = {1 << 20, 1 << 24};
  auto add = [&](benchmark::internal::Benchmark* b) {
    for (int64_t n : sizes) b->Arg(n);
    b->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  add(benchmark::RegisterBenchmark("memcpy", BM_Memcpy));
  for (const char* name :
       {"fp32", "bf16", "sign", "q4", "q8", "q4s", "topk:0.01"}) {
    std::string n = name;
    add(benchmark::RegisterBenchmark(("encode_ef/" + n).c_str(),
                                     BM_EncodeWithFeedback, n));
    add(benchmark::RegisterBenchmark(("decode/" + n).c_str(), BM_Decode, n,
                                     false));
    add(benchmark::RegisterBenchmark(("decode_accumulate/" + n).c_str(),
                                     BM_Decode, n, true));
    add(benchmark::RegisterBenchmark(("validate/" + n).c_str(), BM_Validate,
                                     n));
  }
}

}  // namespace
}  // namespace effadam

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  effadam::RegisterAll();
  effadam::RegisterRounds();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// effadam-bench-codec: codec throughput next to memcpy of the same fp32
// buffer, measured in one run so the ratio is meaningful on a noisy machine.
// Items are elements; compare items/s of a codec with memcpy's.

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/codec.h"

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
    auto s = codec->EncodeWithFeedback(update, absl::MakeSpan(error), 7,
                                       out.data());
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

void RegisterAll() {
  const std::vector<int64_t> sizes = {1 << 20, 1 << 24};
  auto add = [&](benchmark::internal::Benchmark* b) {
    for (int64_t n : sizes) b->Arg(n);
    b->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  add(benchmark::RegisterBenchmark("memcpy", BM_Memcpy));
  for (const char* name : {"fp32", "bf16", "sign", "q4", "q8", "q4s",
                           "topk:0.01"}) {
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
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

#include "sim/simulation.h"

#include "core/checksum.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

SimulationConfig ToyConfig(const std::string& wc, const std::string& sc,
                           const std::string& feedback = "both") {
  SimulationConfig c;
  c.workers = 3;
  c.training.model.name = "toy";
  c.training.model.batch_size = 8;
  c.training.seed = 5;
  c.training.model.seed = 5;
  c.training.adam.lr = 0.01f;
  c.compression.worker_codec = *ParseCodecSpec(wc);
  c.compression.server_codec = *ParseCodecSpec(sc);
  c.compression.options.block_size = 64;
  c.compression.options.min_compress_elements = 64;
  EXPECT_TRUE(ParseErrorFeedback(feedback, &c.compression).ok());
  return c;
}

struct Outcome {
  std::string checksum;
  double distance;
  TrafficCounts traffic;
};

Outcome RunSim(const SimulationConfig& config, int rounds) {
  auto sim = Simulation::Create(config);
  EXPECT_TRUE(sim.ok()) << sim.status();
  for (int r = 0; r < rounds; ++r) {
    auto loss = (*sim)->RunRound();
    EXPECT_TRUE(loss.ok()) << loss.status();
  }
  auto eval = (*sim)->Evaluate();  // also checks every replica equals x
  EXPECT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->metric_name, "distance_to_optimum");
  return {ParamsChecksum((*sim)->params()), eval->metric, (*sim)->traffic()};
}

TEST(Simulation, SameSeedSameBits) {
  for (const char* codec : {"fp32", "sign", "q4s", "topk:0.1"}) {
    SimulationConfig c = ToyConfig(codec, codec);
    EXPECT_EQ(RunSim(c, 30).checksum, RunSim(c, 30).checksum) << codec;
  }
}

TEST(Simulation, SeedChangesTheRun) {
  SimulationConfig a = ToyConfig("sign", "sign"), b = a;
  b.training.seed = b.training.model.seed = 6;
  EXPECT_NE(RunSim(a, 10).checksum, RunSim(b, 10).checksum);
}

TEST(Simulation, CountsBytesOfEveryUpdateAndDelta) {
  SimulationConfig c = ToyConfig("sign", "q4");
  auto sim = *Simulation::Create(c);
  ASSERT_TRUE(sim->RunRound().ok());
  ASSERT_TRUE(sim->RunRound().ok());
  const size_t d = sim->params().size();
  const TrafficCounts& t = sim->traffic();
  EXPECT_EQ(
      t.up().payload,
      2 * 3 *
          static_cast<int64_t>(sim->engine().worker_codec().encoded_size()));
  EXPECT_EQ(
      t.down().payload,
      2 * 3 *
          static_cast<int64_t>(sim->engine().server_codec().encoded_size()));
  EXPECT_EQ(t.up().fp32, 2 * 3 * 4 * static_cast<int64_t>(d));
  EXPECT_EQ(t.fp32_equivalent(), 2 * t.up().fp32);
  EXPECT_EQ(t.join().payload, 0);
  EXPECT_EQ(t.up().wire, 0);
}

TEST(Simulation, ToyConvergesAndErrorFeedbackHelps) {
  const double start = RunSim(ToyConfig("fp32", "fp32"), 0).distance;
  const double fp32 = RunSim(ToyConfig("fp32", "fp32"), 600).distance;
  const double ef = RunSim(ToyConfig("sign", "sign", "both"), 600).distance;
  const double no_ef = RunSim(ToyConfig("sign", "sign", "none"), 600).distance;
  // Heterogeneous workers each normalise their own Adam step, so the run
  // settles at a noise-and-heterogeneity floor rather than at c* itself.
  EXPECT_LT(fp32, 0.5 * start);
  // Two-way error feedback makes 1-bit sign as good as fp32 here; without
  // it the compression bias stays in the model.
  EXPECT_LT(ef, 1.05 * fp32);
  EXPECT_GT(no_ef, 1.2 * ef);
  RecordProperty("toy_distance_fp32", std::to_string(fp32));
  RecordProperty("toy_distance_sign_ef", std::to_string(ef));
  RecordProperty("toy_distance_sign_no_ef", std::to_string(no_ef));
}

TEST(Simulation, BadConfigIsAClearError) {
  SimulationConfig c = ToyConfig("sign", "sign");
  c.workers = 0;
  EXPECT_THAT(std::string(Simulation::Create(c).status().message()),
              ::testing::HasSubstr("--workers"));
  c = ToyConfig("sign", "sign");
  c.training.model.name = "resnet";
  EXPECT_FALSE(Simulation::Create(c).ok());
}

// The round engine and the workers split their passes over segments on a
// thread pool; x is the same bits for any thread count, and the same bits
// as before there was a pool: the checksums below are those of the code
// before it (commit 60a6eff), for the same configuration. (That code's
// checksums were FNV-1a 64: 8044735d0c60a696, 3a9faa6bc09268d0,
// c97b97d5a5d6edbe, 5c35031ccffb206e, a95ba86bdaff55e7 in the order below;
// the XXH3-64 values are of the x that gave exactly those, both hashes
// computed over the same x when the checksum changed.) Segments of 128
// elements give the toy model 105 of them, so every pool gets work; the
// tensor w3 of 1001 elements leaves later segments off a 4-element
// boundary, which is what WorkerOptimizer's tasks must respect to keep
// Eigen's packet and scalar paths where they were.
TEST(Simulation, SameBitsForEveryThreadCount) {
  struct Case {
    const char* worker_codec;
    const char* server_codec;
    const char* feedback;
    const char* checksum;
  };
  const Case cases[] = {
      {"fp32", "fp32", "both", "67d724f163d5b794"},
      {"sign", "sign", "both", "fdfb85a7e3302cfd"},
      {"q4s", "q8", "both", "8e5e611b4a57e394"},
      {"topk:0.1", "bf16", "worker", "7cf86e730407f678"},
      {"fp16", "sign", "server", "e793667855b1515a"},
  };
  for (const Case& c : cases) {
    for (int threads : {1, 2, 3, 7}) {
      SimulationConfig config =
          ToyConfig(c.worker_codec, c.server_codec, c.feedback);
      config.compression.options.max_segment_elements = 128;
      config.threads = threads;
      EXPECT_EQ(RunSim(config, 12).checksum, c.checksum)
          << c.worker_codec << "/" << c.server_codec << ", " << threads
          << " threads";
    }
  }
}

}  // namespace
}  // namespace effadam

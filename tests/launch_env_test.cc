#include "worker/launch_env.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(ResolvePlacement, DefaultsWithoutEnvironment) {
  auto p = ResolvePlacement({}, Env({}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->server, "127.0.0.1:50051");
  EXPECT_EQ(p->server_source, "default");
  EXPECT_EQ(p->rank, -1);
  EXPECT_EQ(p->num_shards, 0);
  EXPECT_EQ(p->world_size, 0);
}

TEST(ResolvePlacement, TorchrunVariables) {
  auto p = ResolvePlacement({}, Env({{"RANK", "2"},
                                     {"WORLD_SIZE", "4"},
                                     {"MASTER_ADDR", "ps-0"},
                                     {"MASTER_PORT", "29500"},
                                     {"LOCAL_RANK", "0"}}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->server, "ps-0:50051");  // MASTER_PORT is torch's, not ours
  EXPECT_EQ(p->server_source, "MASTER_ADDR");
  EXPECT_EQ(p->rank, 2);
  EXPECT_EQ(p->rank_source, "RANK");
  EXPECT_EQ(p->world_size, 4);
  p = ResolvePlacement({},
                       Env({{"MASTER_ADDR", "::1"}, {"EFFADAM_PORT", "7"}}));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->server, "[::1]:7");
}

TEST(ResolvePlacement, EffadamServerAndIndexedJob) {
  auto p = ResolvePlacement({}, Env({{"EFFADAM_SERVER", "s-{shard}.svc:50051"},
                                     {"EFFADAM_NUM_SHARDS", "3"},
                                     {"MASTER_ADDR", "ignored"},
                                     {"JOB_COMPLETION_INDEX", "1"}}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->server, "s-{shard}.svc:50051");
  EXPECT_EQ(p->num_shards, 3);
  EXPECT_EQ(p->rank, 1);
  EXPECT_EQ(p->rank_source, "JOB_COMPLETION_INDEX");
  // RANK wins over the completion index.
  p = ResolvePlacement({}, Env({{"RANK", "0"}, {"JOB_COMPLETION_INDEX", "1"}}));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->rank, 0);
}

TEST(ResolvePlacement, GivenValuesWin) {
  GivenPlacement g;
  g.server = "10.0.0.1:1";
  g.rank = 3;
  g.num_shards = 0;
  auto p = ResolvePlacement(g, Env({{"EFFADAM_SERVER", "x:2"},
                                    {"RANK", "1"},
                                    {"EFFADAM_NUM_SHARDS", "2"}}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->server, "10.0.0.1:1");
  EXPECT_EQ(p->rank, 3);
  EXPECT_EQ(p->num_shards, 0);
  EXPECT_EQ(p->rank_source, "given");
}

TEST(ResolvePlacement, BadValuesNameTheVariable) {
  for (const auto& [name, value] :
       std::map<std::string, std::string>{{"RANK", "-2"},
                                          {"RANK", "one"},
                                          {"WORLD_SIZE", "0"},
                                          {"JOB_COMPLETION_INDEX", "x"},
                                          {"EFFADAM_NUM_SHARDS", "0"}}) {
    auto p = ResolvePlacement({}, Env({{name, value}}));
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(name));
  }
  auto p = ResolvePlacement(
      {}, Env({{"MASTER_ADDR", "h"}, {"EFFADAM_PORT", "70000"}}));
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("EFFADAM_PORT"));
  p = ResolvePlacement({}, Env({{"RANK", "4"}, {"WORLD_SIZE", "4"}}));
  EXPECT_THAT(std::string(p.status().message()),
              HasSubstr("rank 4 (from RANK) is outside WORLD_SIZE=4 "
                        "(ranks 0..3)"));
  // An empty variable is unset.
  p = ResolvePlacement({}, Env({{"RANK", ""}, {"EFFADAM_SERVER", ""}}));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->rank, -1);
  EXPECT_EQ(p->server_source, "default");
}

TEST(CheckWorldSize, NamesBoth) {
  WorkerPlacement p;
  EXPECT_TRUE(CheckWorldSize(p, 4, "s:1").ok());  // not given
  p.world_size = 4;
  EXPECT_TRUE(CheckWorldSize(p, 4, "s:1").ok());
  const absl::Status s = CheckWorldSize(p, 2, "s:1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("WORLD_SIZE=4 but the effadam-server at s:1 trains "
                        "with --workers=2"));
}

}  // namespace
}  // namespace effadam

#include "worker/launch_env.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

std::optional<std::string> NonEmpty(const EnvLookup& env,
                                    const std::string& name) {
  std::optional<std::string> v = env(name);
  if (v.has_value() && v->empty()) return std::nullopt;
  return v;
}

// The integer in variable `name`, which must lie in [lo, hi].
absl::StatusOr<std::optional<int>> IntVar(const EnvLookup& env,
                                          const std::string& name, int lo,
                                          int hi) {
  std::optional<std::string> v = NonEmpty(env, name);
  if (!v.has_value()) return std::optional<int>();
  int n = 0;
  if (!absl::SimpleAtoi(*v, &n) || n < lo || n > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "='", *v,
                     "' must be an integer in [", lo, ", ", hi, "]"));
  }
  return std::optional<int>(n);
}

}  // namespace

EnvLookup ProcessEnvironment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

absl::StatusOr<WorkerPlacement> ResolvePlacement(const GivenPlacement& given,
                                                 const EnvLookup& env) {
  constexpr int kMaxInt = 1 << 30;
  WorkerPlacement p;
  absl::StatusOr<std::optional<int>> world =
      IntVar(env, "WORLD_SIZE", 1, kMaxInt);
  if (!world.ok()) return world.status();
  p.world_size = world->value_or(0);

  if (given.server.has_value()) {
    p.server = *given.server;
    p.server_source = "given";
  } else if (std::optional<std::string> s = NonEmpty(env, "EFFADAM_SERVER")) {
    p.server = *s;
    p.server_source = "EFFADAM_SERVER";
  } else if (std::optional<std::string> host = NonEmpty(env, "MASTER_ADDR")) {
    absl::StatusOr<std::optional<int>> port =
        IntVar(env, "EFFADAM_PORT", 1, 65535);
    if (!port.ok()) return port.status();
    // An IPv6 literal needs brackets before the port.
    const bool v6 =
        absl::StrContains(*host, ':') && !absl::StartsWith(*host, "[");
    p.server = absl::StrCat(v6 ? "[" : "", *host, v6 ? "]" : "", ":",
                            port->value_or(kDefaultServerPort));
    p.server_source = "MASTER_ADDR";
  } else {
    p.server = absl::StrCat("127.0.0.1:", kDefaultServerPort);
    p.server_source = "default";
  }

  if (given.num_shards.has_value()) {
    p.num_shards = *given.num_shards;
  } else {
    absl::StatusOr<std::optional<int>> shards =
        IntVar(env, "EFFADAM_NUM_SHARDS", 1, kMaxInt);
    if (!shards.ok()) return shards.status();
    p.num_shards = shards->value_or(0);
  }

  if (given.rank.has_value()) {
    p.rank = *given.rank;
    p.rank_source = "given";
  } else {
    for (const char* name : {"RANK", "JOB_COMPLETION_INDEX"}) {
      absl::StatusOr<std::optional<int>> r = IntVar(env, name, 0, kMaxInt);
      if (!r.ok()) return r.status();
      if (r->has_value()) {
        p.rank = **r;
        p.rank_source = name;
        break;
      }
    }
    if (p.rank_source.empty()) p.rank_source = "default";
  }
  if (p.world_size > 0 && p.rank >= p.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", p.rank, " (", p.rank_source == "given" ? "given" : "from ",
        p.rank_source == "given" ? "" : p.rank_source,
        ") is outside WORLD_SIZE=", p.world_size, " (ranks 0..",
        p.world_size - 1, ")"));
  }
  return p;
}

absl::Status CheckWorldSize(const WorkerPlacement& placement,
                            int server_workers, absl::string_view server) {
  if (placement.world_size <= 0 || placement.world_size == server_workers) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "WORLD_SIZE=", placement.world_size, " but the effadam-server at ",
      server, " trains with --workers=", server_workers,
      ": launch as many workers as the server expects"));
}

}  // namespace effadam

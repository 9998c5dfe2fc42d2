#include "server/token_gate.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "server/server_observer.h"
#include "server/token_authenticator.h"
#include "transport/grpc_security.h"

namespace effadam {
namespace {

absl::string_view View(const grpc::string_ref& s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace

grpc::Status TokenGate::Process(const InputMetadata& auth_metadata,
                                grpc::AuthContext* /*context*/,
                                OutputMetadata* /*consumed_auth_metadata*/,
                                OutputMetadata* /*response_metadata*/) {
  // Only effadam.v1 needs the token; a call whose path gRPC did not pass
  // on is left to the service's own check.
  const auto path = auth_metadata.find(":path");
  if (path == auth_metadata.end() ||
      !absl::StartsWith(View(path->second), "/effadam.v1.")) {
    return grpc::Status::OK;
  }
  std::vector<absl::string_view> values;
  const auto range = auth_metadata.equal_range(
      grpc::string_ref(kAuthorizationKey.data(), kAuthorizationKey.size()));
  for (auto it = range.first; it != range.second; ++it) {
    values.push_back(View(it->second));
  }
  const absl::Status s = authenticator_->Check(values);
  if (s.ok()) return grpc::Status::OK;
  if (observer_ != nullptr) observer_->OnRejected(Rejection::kUnauthenticated);
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      std::string(s.message()));
}

}  // namespace effadam

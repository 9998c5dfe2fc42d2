#include "server/token_authenticator.h"

#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "transport/grpc_security.h"

namespace effadam {
namespace {

absl::Status Unauthenticated(absl::string_view what) {
  return absl::UnauthenticatedError(
      absl::StrCat(what, "; this server requires the metadata `",
                   kAuthorizationKey, ": ", kBearerPrefix,
                   "<token>` with the token of its --auth_token_file "
                   "(clients: --auth_token_file)"));
}

}  // namespace

TokenAuthenticator::Digest TokenAuthenticator::Sha256(absl::string_view bytes) {
  Digest digest{};
  unsigned int size = 0;
  // Cannot fail for SHA-256 on memory; a zero digest would then match
  // nothing a client can present either way.
  EVP_Digest(bytes.data(), bytes.size(), digest.data(), &size, EVP_sha256(),
             nullptr);
  return digest;
}

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::Create(
    absl::string_view token) {
  if (token.empty()) {
    return absl::InvalidArgumentError("the authentication token is empty");
  }
  return TokenAuthenticator(Sha256(token));
}

absl::Status TokenAuthenticator::Check(
    const std::vector<absl::string_view>& authorization) const {
  if (authorization.empty()) return Unauthenticated("no token was sent");
  if (authorization.size() > 1) {
    return Unauthenticated(absl::StrCat(authorization.size(),
                                        " authorization entries were sent, "
                                        "one is expected"));
  }
  const absl::string_view value = authorization[0];
  // The scheme's name is case-insensitive (RFC 7235).
  if (!absl::StartsWithIgnoreCase(value, kBearerPrefix)) {
    return Unauthenticated("the authorization metadata is not a bearer token");
  }
  const Digest presented = Sha256(value.substr(kBearerPrefix.size()));
  if (CRYPTO_memcmp(presented.data(), digest_.data(), digest_.size()) != 0) {
    return Unauthenticated("the token is wrong");
  }
  return absl::OkStatus();
}

absl::Status TokenAuthenticator::Check(
    const grpc::ServerContext& context) const {
  std::vector<absl::string_view> values;
  const auto range = context.client_metadata().equal_range(
      grpc::string_ref(kAuthorizationKey.data(), kAuthorizationKey.size()));
  for (auto it = range.first; it != range.second; ++it) {
    values.emplace_back(it->second.data(), it->second.size());
  }
  return Check(values);
}

}  // namespace effadam

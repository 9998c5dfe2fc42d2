#ifndef EFFADAM_SERVER_TOKEN_AUTHENTICATOR_H_
#define EFFADAM_SERVER_TOKEN_AUTHENTICATOR_H_

#include <array>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ServerContext;
}  // namespace grpc

namespace effadam {

// Checks the shared bearer token of a call: the client metadata must hold
// exactly one `authorization: Bearer <token>` with the server's token
// (--auth_token_file; docs/security.md). The comparison takes the same time
// whatever the presented token is (both sides are hashed with SHA-256 and
// the digests compared in constant time), so timing does not reveal how
// much of a guess was right, nor the token's length.
//
// Thread-safe: immutable after Create.
class TokenAuthenticator {
 public:
  // InvalidArgument for an empty token.
  static absl::StatusOr<TokenAuthenticator> Create(absl::string_view token);

  // OK, or Unauthenticated with a message that says what was wrong
  // (missing, not a bearer token, several, or not the server's token)
  // and never echoes what the client sent.
  absl::Status Check(const std::vector<absl::string_view>& authorization) const;
  // Check() on the call's `authorization` metadata.
  absl::Status Check(const grpc::ServerContext& context) const;

 private:
  using Digest = std::array<unsigned char, 32>;
  explicit TokenAuthenticator(const Digest& digest) : digest_(digest) {}
  static Digest Sha256(absl::string_view bytes);

  Digest digest_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_TOKEN_AUTHENTICATOR_H_

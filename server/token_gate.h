#ifndef EFFADAM_SERVER_TOKEN_GATE_H_
#define EFFADAM_SERVER_TOKEN_GATE_H_

// The token check of every effadam.v1 call, in gRPC's auth filter: before
// the call is queued for a handler, so a call without the server's token
// takes no thread of the synchronous server (docs/security.md, "Limits").
// gRPC 1.51 runs an AuthMetadataProcessor only on TLS ports
// (InsecureServerCredentials aborts when one is set), so ConfigureServer
// installs the gate with TLS only; the service checks the token again in
// its handlers either way (TokenAuthenticator), which is what a plaintext
// port relies on.
//
// A refusal ends the call with UNAUTHENTICATED and TokenAuthenticator's
// message, and is counted as Rejection::kUnauthenticated. grpc.health.v1 and
// reflection pass without a token, as in the service.
//
// Thread-safe: immutable after construction; gRPC calls Process from its
// transport threads (IsBlocking() is false: the check is a SHA-256).

#include <grpcpp/security/auth_metadata_processor.h>

namespace effadam {

class ServerObserver;
class TokenAuthenticator;

class TokenGate final : public grpc::AuthMetadataProcessor {
 public:
  // Neither is owned; both must outlive the server. `observer` may be null.
  TokenGate(const TokenAuthenticator* authenticator, ServerObserver* observer)
      : authenticator_(authenticator), observer_(observer) {}

  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const TokenAuthenticator* const authenticator_;
  ServerObserver* const observer_;
};

}  // namespace effadam

#endif  // EFFADAM_SERVER_TOKEN_GATE_H_

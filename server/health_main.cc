// effadam-health: asks a gRPC server for its grpc.health.v1 status. Exit 0
// when it answers SERVING, 1 otherwise, with one line saying why. Meant for
// container health checks (Docker HEALTHCHECK), where no other gRPC client
// is at hand. Speaks TLS (and mutual TLS) with the clients' TLS flags; the
// health service needs no token (docs/security.md).

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/host_port.h"
#include "daemon/client_security_flags.h"
#include "daemon/command_line.h"
#include "daemon/duration_flag.h"
#include "grpc/health/v1/health.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "host:port of the server");
ABSL_FLAG(std::string, service, "",
          "Service to ask about; empty means the server as a whole");
ABSL_FLAG(effadam::DurationFlag, timeout, absl::Seconds(3),
          "How long to wait for the answer");

int main(int argc, char** argv) {
  effadam::ParseCommandLineOrExit(
      argc, argv,
      "Checks a gRPC server's health (grpc.health.v1).\n"
      "Example: effadam-health --addr=127.0.0.1:50051\n"
      "Over TLS: --tls_ca_file (and --tls_cert_file/--tls_key_file for "
      "mutual TLS); --auth_token_file is not needed and not sent.");
  const std::string addr = absl::GetFlag(FLAGS_addr);
  if (absl::StatusOr<effadam::HostPort> parsed =
          effadam::ParseHostPort(addr, "--addr", /*min_port=*/1);
      !parsed.ok()) {
    std::fprintf(stderr, "effadam-health: %s\n",
                 parsed.status().ToString().c_str());
    return 1;
  }
  const absl::StatusOr<effadam::ClientSecurity> security =
      effadam::ClientSecurityFromFlags();
  if (!security.ok()) {
    std::fprintf(stderr, "effadam-health: %s\n",
                 security.status().ToString().c_str());
    return 1;
  }
  auto stub = grpc::health::v1::Health::NewStub(
      effadam::NewClientChannel(addr, *security, grpc::ChannelArguments()));
  // No token: grpc.health.v1 needs none, and a secret is not sent where it
  // is not needed.
  grpc::ClientContext context;
  context.set_deadline(
      absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout).value));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&context, request, &response);
  if (!s.ok()) {
    const std::string hint =
        s.error_code() == grpc::StatusCode::UNAVAILABLE
            ? " (" + effadam::ConnectionHint(*security) + ")"
            : "";
    std::fprintf(stderr, "effadam-health: %s: %s%s\n", addr.c_str(),
                 s.error_message().c_str(), hint.c_str());
    return 1;
  }
  const std::string status =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
          response.status());
  std::printf("%s: %s\n", addr.c_str(), status.c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING
             ? 0
             : 1;
}

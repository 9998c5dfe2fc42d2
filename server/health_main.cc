// effadam-health: asks a gRPC server for its grpc.health.v1 status. Exit 0
// when it answers SERVING, 1 otherwise, with one line saying why. Meant for
// container health checks (Docker HEALTHCHECK), where no other gRPC client
// is at hand.

#include <cstdio>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "grpc/health/v1/health.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "host:port of the server");
ABSL_FLAG(std::string, service, "",
          "Service to ask about; empty means the server as a whole");
ABSL_FLAG(double, timeout, 3.0, "Seconds to wait for the answer");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Checks a gRPC server's health (grpc.health.v1).\n"
      "Example: effadam-health --addr=127.0.0.1:50051");
  absl::ParseCommandLine(argc, argv);
  const std::string addr = absl::GetFlag(FLAGS_addr);
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(
                           absl::GetFlag(FLAGS_timeout) * 1000)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&context, request, &response);
  if (!s.ok()) {
    std::fprintf(stderr, "effadam-health: %s: %s\n", addr.c_str(),
                 s.error_message().c_str());
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

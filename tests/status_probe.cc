// status_probe: calls effadam.v1.ParameterServer/Status with the clients'
// TLS and token flags and prints the answer as one JSON object; on an
// error, one line "status_probe: CODE: message" on stderr and exit 1.
// A test helper (tests/security_test.py): the server's state seen from
// outside, through the same credentials code as the workers.

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/json_writer.h"
#include "daemon/client_security_flags.h"
#include "effadam/v1/parameter_server.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "host:port of the server");
ABSL_FLAG(int32_t, timeout_ms, 5000, "Deadline of the call");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto security = effadam::ClientSecurityFromFlags();
  if (!security.ok()) {
    std::fprintf(stderr, "status_probe: %s\n",
                 security.status().ToString().c_str());
    return 1;
  }
  auto stub = effadam::v1::ParameterServer::NewStub(effadam::NewClientChannel(
      absl::GetFlag(FLAGS_server), *security, grpc::ChannelArguments()));
  grpc::ClientContext context;
  effadam::AddCallCredentials(*security, &context);
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms)));
  effadam::v1::StatusResponse r;
  const grpc::Status s =
      stub->Status(&context, effadam::v1::StatusRequest(), &r);
  if (!s.ok()) {
    std::fprintf(
        stderr, "status_probe: %s: %s\n",
        absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code()))
            .c_str(),
        s.error_message().c_str());
    return 1;
  }
  effadam::JsonObject json;
  json.Add("round", r.round())
      .Add("awaiting_replicas", r.awaiting_replicas())
      .Add("live_workers", r.live_workers())
      .Add("expected_workers", r.expected_workers())
      .Add("num_elements", r.num_elements())
      .Add("bytes_worker_to_server", r.bytes_worker_to_server())
      .Add("bytes_server_to_worker", r.bytes_server_to_worker())
      .Add("bytes_join", r.bytes_join())
      .Add("params_checksum", r.params_checksum());
  std::printf("%s", json.ToString().c_str());
  return 0;
}

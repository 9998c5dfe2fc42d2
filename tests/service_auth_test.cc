// ParameterServerService behind the server's real transport settings
// (ConfigureServer) with a token: every effadam.v1 RPC refuses a call
// without the token, or with a wrong one, with UNAUTHENTICATED before it
// changes or counts anything; grpc.health.v1 needs no token; a message
// over the size limit is refused by gRPC itself with RESOURCE_EXHAUSTED;
// bytes that do not parse as the request (CallGuard) are INVALID_ARGUMENT
// with a message, counted as `unparseable`.
// 127.0.0.1 only.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/call_guard.h"
#include "server/parameter_server_service.h"
#include "server/token_authenticator.h"
#include "tests/service_test_util.h"
#include "transport/compression_proto.h"
#include "transport/grpc_security.h"
#include "transport/protocol_version.h"
#include "worker/worker_client.h"

namespace effadam {
namespace {

using ::testing::HasSubstr;

constexpr char kToken[] = "0123456789abcdef0123456789abcdef";
constexpr size_t kMaxChunkBytes = 1000;

// Counts rejections by reason, and every wire byte.
class CountingObserver : public service_test::RejectionCounter {
 public:
  void OnWireBytes(TrafficDirection, int64_t bytes) override {
    wire_bytes += bytes;
  }
  std::atomic<int64_t> wire_bytes{0};
};

enum class Credential { kNone, kWrong, kRight };

std::unique_ptr<grpc::ClientContext> Ctx(Credential c) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(10));
  ClientSecurity security;
  if (c == Credential::kRight) security.token = kToken;
  if (c == Credential::kWrong)
    security.token = "0123456789abcdef-not-the-token";
  AddCallCredentials(security, ctx.get());
  return ctx;
}

class ServiceAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto auth = TokenAuthenticator::Create(kToken);
    ASSERT_TRUE(auth.ok());
    authenticator_ = std::make_unique<TokenAuthenticator>(*auth);
    ServerOptions o;
    o.workers = 1;
    o.compression.worker_codec = *ParseCodecSpec("fp32");
    o.compression.server_codec = *ParseCodecSpec("fp32");
    o.max_chunk_bytes = kMaxChunkBytes;
    o.observer = &observer_;
    o.authenticator = authenticator_.get();
    options_ = o;
    auto service = ParameterServerService::Create(o);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    ServerTransport transport;
    transport.max_chunk_bytes = kMaxChunkBytes;
    ConfigureServer("127.0.0.1:0", ServerSecurity{}, transport, &builder,
                    &port_);
    guard_ = std::make_unique<CallGuard>(&observer_, CallLimits());
    guard_->Install(&builder);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::ParameterServer::NewStub(channel_);
  }
  void TearDown() override {
    service_->server().Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }

  v1::JoinRequest JoinRequest(const TensorLayout& layout) const {
    v1::JoinRequest req;
    *req.mutable_layout() = LayoutToProto(layout);
    *req.mutable_compression() = CompressionToProto(options_.compression);
    req.set_rank(-1);
    req.set_protocol(kProtocolVersion);
    return req;
  }
  grpc::Status Join(Credential c, const TensorLayout& layout) {
    v1::JoinResponse resp;
    return stub_->Join(Ctx(c).get(), JoinRequest(layout), &resp);
  }
  grpc::Status Upload(Credential c, const std::vector<float>& x) {
    auto ctx = Ctx(c);
    v1::UploadParamsResponse resp;
    auto writer = stub_->UploadParams(ctx.get(), &resp);
    v1::ParamsChunk chunk;
    chunk.set_rank(0);
    chunk.set_values(reinterpret_cast<const char*>(x.data()),
                     x.size() * sizeof(float));
    writer->Write(chunk);
    writer->WritesDone();
    return writer->Finish();
  }
  grpc::Status Fetch(Credential c) {
    auto ctx = Ctx(c);
    v1::FetchParamsRequest req;
    auto reader = stub_->FetchParams(ctx.get(), req);
    v1::ParamsChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  }
  // One WorkerMessage of rank 0, round 1, with `payload_bytes` of payload.
  grpc::Status Train(Credential c, size_t payload_bytes) {
    auto ctx = Ctx(c);
    auto stream = stub_->Train(ctx.get());
    v1::WorkerMessage m;
    m.set_rank(0);
    m.set_round(1);
    m.set_payload(std::string(payload_bytes, '\0'));
    stream->Write(m);
    stream->WritesDone();
    v1::ServerMessage reply;
    while (stream->Read(&reply)) {
    }
    return stream->Finish();
  }
  grpc::Status Status(Credential c, v1::StatusResponse* resp) {
    return stub_->Status(Ctx(c).get(), v1::StatusRequest(), resp);
  }

  static TensorLayout Layout() { return *TensorLayout::Create({{"w", {10}}}); }

  int port_ = 0;
  ServerOptions options_;
  CountingObserver observer_;
  std::unique_ptr<CallGuard> guard_;
  std::unique_ptr<TokenAuthenticator> authenticator_;
  std::unique_ptr<ParameterServerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterServer::Stub> stub_;
};

TEST_F(ServiceAuthTest, EveryRpcRefusesAMissingOrWrongTokenAndChangesNothing) {
  // The right token first: rank 0 joined, x uploaded; this is the state
  // the refused calls must leave alone.
  ASSERT_TRUE(Join(Credential::kRight, Layout()).ok());
  ASSERT_TRUE(Upload(Credential::kRight, std::vector<float>(10, 0.5f)).ok());
  v1::StatusResponse before;
  ASSERT_TRUE(Status(Credential::kRight, &before).ok());
  const ServerSummary summary_before = service_->server().Summary();
  const int64_t wire_before = observer_.wire_bytes;
  ASSERT_EQ(observer_.total(), 0);

  for (Credential c : {Credential::kNone, Credential::kWrong}) {
    const char* why =
        c == Credential::kNone ? "no token was sent" : "the token is wrong";
    v1::StatusResponse resp;
    const std::vector<std::pair<const char*, grpc::Status>> calls = {
        {"Join", Join(c, Layout())},
        {"UploadParams", Upload(c, std::vector<float>(10, 1.0f))},
        {"FetchParams", Fetch(c)},
        {"Train", Train(c, 40)},
        {"Status", Status(c, &resp)},
    };
    for (const auto& [name, s] : calls) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << name << ": " << s.error_message();
      EXPECT_THAT(s.error_message(), HasSubstr(why)) << name;
      EXPECT_THAT(s.error_message(), HasSubstr("--auth_token_file")) << name;
    }
  }
  EXPECT_EQ(observer_.count(Rejection::kUnauthenticated), 10);
  EXPECT_EQ(observer_.total(), 10);
  EXPECT_EQ(observer_.wire_bytes, wire_before);

  v1::StatusResponse after;
  ASSERT_TRUE(Status(Credential::kRight, &after).ok());
  EXPECT_EQ(after.SerializeAsString(), before.SerializeAsString());
  const ServerSummary s = service_->server().Summary();
  EXPECT_EQ(s.live_workers, 1);
  EXPECT_EQ(s.round, summary_before.round);
  EXPECT_EQ(s.params_checksum, summary_before.params_checksum);
  EXPECT_EQ(s.traffic.join().wire, summary_before.traffic.join().wire);
  EXPECT_EQ(s.traffic.up().wire, summary_before.traffic.up().wire);
  EXPECT_EQ(s.traffic.join().payload, summary_before.traffic.join().payload);
}

// WorkerClient sends the token on every call it makes (Join, UploadParams,
// FetchParams, Train), and without it gets the server's refusal as is.
TEST_F(ServiceAuthTest, WorkerClientSendsTheTokenOnEveryCall) {
  WorkerClientOptions o;
  o.server = absl::StrCat("127.0.0.1:", port_);
  o.compression = options_.compression;
  o.connect_timeout = absl::Seconds(10);
  const std::vector<float> x0(10, 0.25f);

  auto refused = WorkerClient::Connect(o, Layout(), x0);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("no token was sent"));
  EXPECT_EQ(observer_.count(Rejection::kUnauthenticated), 1);

  o.security.token = kToken;
  auto client = WorkerClient::Connect(o, Layout(), x0);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::vector<float> grad(10, 1.0f);
  for (int round = 1; round <= 3; ++round) {
    const absl::Status s = (*client)->Step(grad, 0.5f);
    ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_TRUE((*client)->Finish().ok());
  EXPECT_EQ(service_->server().Summary().rounds_closed, 3);
  EXPECT_EQ(observer_.total(), 1);
}

TEST_F(ServiceAuthTest, HealthNeedsNoToken) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status s = health->Check(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(observer_.total(), 0);
}

TEST_F(ServiceAuthTest, MessagesOverTheLimitAreRefusedByGrpc) {
  ASSERT_TRUE(Join(Credential::kRight, Layout()).ok());
  ASSERT_TRUE(Upload(Credential::kRight, std::vector<float>(10, 0.5f)).ok());
  const ServerSummary before = service_->server().Summary();
  const int limit = MaxMessageBytes(kMaxChunkBytes);

  // Below gRPC's limit the service itself refuses a chunk over
  // max_chunk_bytes ...
  grpc::Status s = Train(Credential::kRight, kMaxChunkBytes + 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_message();
  EXPECT_EQ(observer_.count(Rejection::kBadChunkSize), 1);

  // ... above it gRPC does, before the service sees the message: the call
  // fails with RESOURCE_EXHAUSTED and nothing is counted.
  const int64_t wire = observer_.wire_bytes;
  s = Train(Credential::kRight, static_cast<size_t>(limit) + 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  // A Join whose layout (10000 tensor names) is too large, even without a
  // token: the size limit comes first.
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 10000; ++i) {
    specs.push_back({absl::StrCat("a_long_tensor_name_", i), {1}});
  }
  const TensorLayout big = *TensorLayout::Create(specs);
  ASSERT_GT(JoinRequest(big).ByteSizeLong(), static_cast<size_t>(limit));
  for (Credential c : {Credential::kRight, Credential::kNone}) {
    s = Join(c, big);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << s.error_message();
  }
  EXPECT_EQ(observer_.wire_bytes, wire);
  EXPECT_EQ(observer_.total(), 1);  // the bad_chunk_size above

  // The refused calls changed nothing but the one stream that ended:
  // rank 0 is still joined (it never had a stream of its own).
  const ServerSummary after = service_->server().Summary();
  EXPECT_EQ(after.round, before.round);
  EXPECT_EQ(after.params_checksum, before.params_checksum);
}

// Garbage bytes where Join, Status and FetchParams expect their request:
// gRPC alone answers INTERNAL with no message and the service never sees
// the call; behind CallGuard the client is told what was wrong, the
// rejection is counted, and nothing else changes.
TEST_F(ServiceAuthTest, RequestsThatDoNotParseAreInvalidArgument) {
  grpc::GenericStub generic(channel_);
  // A field 1 of wire type 7 (no such type): no protobuf message parses it.
  const std::string garbage = "\x0f\xff\xff\xff\xff garbage";
  const grpc::Slice slice(garbage);
  for (const char* method : {"/effadam.v1.ParameterServer/Join",
                             "/effadam.v1.ParameterServer/Status",
                             "/effadam.v1.ParameterServer/FetchParams"}) {
    SCOPED_TRACE(method);
    auto ctx = Ctx(Credential::kRight);
    grpc::CompletionQueue cq;
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
        generic.PrepareCall(ctx.get(), method, &cq);
    void* tag = nullptr;
    bool ok = false;
    call->StartCall(reinterpret_cast<void*>(1));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    grpc::ByteBuffer request(&slice, 1);
    call->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    grpc::Status status;
    call->Finish(&status, reinterpret_cast<void*>(3));
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("does not parse"));
    EXPECT_THAT(status.error_message(), HasSubstr(method));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
  EXPECT_EQ(observer_.count(Rejection::kUnparseable), 3);
  EXPECT_EQ(observer_.total(), 3);
  // The server is as before: no layout, no rank taken.
  EXPECT_EQ(service_->server().Summary().num_elements, 0);
  EXPECT_EQ(service_->server().Summary().live_workers, 0);
}

}  // namespace
}  // namespace effadam

#include "server/call_guard.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/server_observer.h"

namespace effadam {

using grpc::experimental::InterceptionHookPoints;

// One per call. gRPC deserializes a unary or server-streaming request before
// the handler runs and, when it does not parse, sends INTERNAL without a
// message and never calls the handler; the interceptor sees the failed
// parse (POST_RECV_MESSAGE without a message) and rewrites that status.
class CallGuard::Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(CallGuard* guard, std::string method, bool holds_thread)
      : guard_(guard), method_(std::move(method)),
        holds_thread_(holds_thread) {
    if (holds_thread_) guard_->calls_in_flight_.fetch_add(1);
  }
  ~Interceptor() override {
    if (holds_thread_) guard_->calls_in_flight_.fetch_sub(1);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparseable_ = true;
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS) &&
        unparseable_ &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("the request of ", method_,
                       " does not parse as its protobuf message (was it "
                       "built from proto/effadam/v1?)")));
      if (guard_->observer_ != nullptr) {
        guard_->observer_->OnRejected(Rejection::kUnparseable);
      }
    }
    methods->Proceed();
  }

 private:
  CallGuard* const guard_;
  const std::string method_;
  const bool holds_thread_;
  bool unparseable_ = false;
};

class CallGuard::Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(CallGuard* guard) : guard_(guard) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    const char* method = info->method() != nullptr ? info->method() : "";
    // gRPC serves the health service on a thread of its own.
    const bool holds_thread =
        !absl::StartsWith(method, "/grpc.health.v1.Health/");
    return new Interceptor(guard_, method, holds_thread);
  }

 private:
  CallGuard* const guard_;
};

void CallGuard::Install(grpc::ServerBuilder* builder) {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      creators;
  creators.push_back(std::make_unique<Factory>(this));
  builder->experimental().SetInterceptorCreators(std::move(creators));
}

}  // namespace effadam

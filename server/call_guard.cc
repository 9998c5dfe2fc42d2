#include "server/call_guard.h"

#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <algorithm>
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

namespace {

constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";
constexpr absl::string_view kFetchParams =
    "/effadam.v1.ParameterServer/FetchParams";

// Ends `call` now with `code` and `message` (what the client sees); the
// handler's own later status is dropped. Thread-safe (gRPC core).
void CancelCall(grpc_call* call, grpc_status_code code,
                const std::string& message) {
  if (call != nullptr) {
    grpc_call_cancel_with_status(call, code, message.c_str(), nullptr);
  }
}

}  // namespace

// One per call, created by gRPC before the handler runs and destroyed after
// the call ended, before gRPC releases the call itself.
//
// gRPC deserializes a unary or server-streaming request before the handler
// runs and, when it does not parse, sends INTERNAL without a message and
// never calls the handler; the interceptor sees the failed parse
// (POST_RECV_MESSAGE without a message) and rewrites that status.
class CallGuard::Interceptor final : public grpc::experimental::Interceptor {
 public:
  Interceptor(CallGuard* guard, grpc::experimental::ServerRpcInfo* info,
              std::string method)
      : guard_(guard),
        info_(info),
        method_(std::move(method)),
        holds_thread_(!absl::StartsWith(method_, kHealthPrefix)) {
    if (holds_thread_) guard_->calls_in_flight_.fetch_add(1);
  }
  ~Interceptor() override {
    if (holds_thread_) guard_->calls_in_flight_.fetch_sub(1);
    absl::MutexLock lock(&guard_->mu_);
    if (counted_fetch_) --guard_->fetches_;
    guard_->sending_.erase(this);
  }

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE)) {
      if (methods->GetRecvMessage() == nullptr) {
        unparseable_ = true;
      } else if (method_ == kFetchParams && !counted_fetch_) {
        AdmitFetch();
      }
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      absl::MutexLock lock(&guard_->mu_);
      sending_since_ = guard_->clock_.Now();
      guard_->sending_.insert(this);
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_SEND_MESSAGE)) {
      absl::MutexLock lock(&guard_->mu_);
      sending_since_ = absl::InfiniteFuture();
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

  // The guard's mutex, by a name the thread-safety analysis can follow
  // from a pointer to this call.
  absl::Mutex& guard_mu() const ABSL_LOCK_RETURNED(guard_->mu_) {
    return guard_->mu_;
  }

  // Cancels the call if its message has waited for the client since before
  // `stalled_before`; once. Called by the watcher under the guard's mutex.
  void CancelIfStalled(absl::Time stalled_before)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu_) {
    if (stall_cancelled_ || sending_since_ >= stalled_before) return;
    stall_cancelled_ = true;
    CancelCall(
        info_->server_context()->c_call(), GRPC_STATUS_DEADLINE_EXCEEDED,
        absl::StrCat(method_, ": the client read nothing for ",
                     absl::FormatDuration(guard_->limits_.send_stall_timeout),
                     " (the server's --send_stall_timeout)"));
  }

 private:
  // Waits for one of the max_concurrent_fetches slots; a call that waited
  // send_stall_timeout is ended with RESOURCE_EXHAUSTED but still waits
  // for a slot: the handler copies x before its first write, whether the
  // call was ended or not, so only the slots bound those copies.
  void AdmitFetch() {
    absl::MutexLock lock(&guard_->mu_);
    const int max = guard_->limits_.max_concurrent_fetches;
    const absl::Time refuse_at =
        guard_->clock_.Now() + guard_->limits_.send_stall_timeout;
    bool refused = false;
    auto slot_free = [this, max]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard_->mu_) {
      return guard_->fetches_ < max;
    };
    while (!slot_free()) {
      if (!refused && guard_->clock_.Now() >= refuse_at) {
        refused = true;
        CancelCall(info_->server_context()->c_call(),
                   GRPC_STATUS_RESOURCE_EXHAUSTED,
                   absl::StrCat(
                       "the server is serving ", max,
                       " FetchParams calls, the most it serves at "
                       "once (one per worker), and none ended "
                       "within ",
                       absl::FormatDuration(guard_->limits_.send_stall_timeout),
                       "; retry later"));
      }
      guard_->mu_.AwaitWithTimeout(absl::Condition(&slot_free),
                                   absl::Milliseconds(100));
    }
    ++guard_->fetches_;
    counted_fetch_ = true;
  }

  CallGuard* const guard_;
  grpc::experimental::ServerRpcInfo* const info_;
  const std::string method_;
  const bool holds_thread_;
  bool unparseable_ = false;
  bool counted_fetch_ = false;
  absl::Time sending_since_ ABSL_GUARDED_BY(guard_->mu_) =
      absl::InfiniteFuture();
  bool stall_cancelled_ ABSL_GUARDED_BY(guard_->mu_) = false;
};

class CallGuard::Factory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(CallGuard* guard) : guard_(guard) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Interceptor(guard_, info,
                           info->method() != nullptr ? info->method() : "");
  }

 private:
  CallGuard* const guard_;
};

CallGuard::CallGuard(ServerObserver* observer, const CallLimits& limits,
                     const Clock& clock)
    : observer_(observer), limits_(limits), clock_(clock) {
  watcher_ = std::thread([this] { Watch(); });
}

CallGuard::~CallGuard() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  watcher_.join();
}

void CallGuard::Watch() {
  // A stalled call is noticed within a tenth of the timeout (at most 1 s).
  const absl::Duration poll =
      std::clamp(limits_.send_stall_timeout / 10, absl::Milliseconds(10),
                 absl::Seconds(1));
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    mu_.AwaitWithTimeout(absl::Condition(&stop_), poll);
    const absl::Time stalled_before = clock_.Now() - limits_.send_stall_timeout;
    for (Interceptor* call : sending_) {
      call->guard_mu().AssertHeld();  // it is this guard's mu_
      call->CancelIfStalled(stalled_before);
    }
  }
}

void CallGuard::Install(grpc::ServerBuilder* builder) {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      creators;
  creators.push_back(std::make_unique<Factory>(this));
  builder->experimental().SetInterceptorCreators(std::move(creators));
}

}  // namespace effadam

#ifndef EFFADAM_COMMON_HOST_PORT_H_
#define EFFADAM_COMMON_HOST_PORT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace effadam {

// A network address as the flags write it: "host:port", the host a name,
// an IPv4 address or a bracketed IPv6 address ("[::1]:50051"). Pure and
// thread-safe, except ProbeListen, which opens and closes a socket.
struct HostPort {
  std::string host;  // as written, brackets included
  int port = 0;
  std::string ToString() const;
};

// Parses `address`; `what` names it in the error (e.g. "--listen").
// InvalidArgument, naming the value, for anything but host:port with a
// port in [min_port, 65535]: a bare port ("50051"), a port out of range
// ("99999"), a host with colons outside brackets. Servers pass min_port 0
// (0 picks a free port), clients 1.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address,
                                       absl::string_view what, int min_port);

// Whether a server could listen on `address` now: resolves the host and
// binds a TCP socket with SO_REUSEADDR (as gRPC and civetweb do), then
// closes it. Unavailable naming the address and the reason ("Address
// already in use", "Cannot assign requested address", a host that does
// not resolve). A bind that succeeds here can still lose a race; the
// caller's own bind failing then reports the address too.
absl::Status ProbeListen(const HostPort& address);

}  // namespace effadam

#endif  // EFFADAM_COMMON_HOST_PORT_H_

#include "common/host_port.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace effadam {

std::string HostPort::ToString() const { return absl::StrCat(host, ":", port); }

absl::StatusOr<HostPort> ParseHostPort(absl::string_view address,
                                       absl::string_view what, int min_port) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be host:port with a port in [", min_port,
        ", 65535], e.g. 127.0.0.1:50051; got \"", address, "\" (", why, ")"));
  };
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return bad(
        absl::StrCat("no port; for every interface write 0.0.0.0:", address));
  }
  const absl::string_view host = address.substr(0, colon);
  const absl::string_view port_text = address.substr(colon + 1);
  const bool bracketed =
      host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (host.empty()) {
    return bad(
        absl::StrCat("no host; for every interface write 0.0.0.0", address));
  }
  if (!bracketed && host.find(':') != absl::string_view::npos) {
    return bad("an IPv6 host goes in brackets, e.g. [::1]:50051");
  }
  uint32_t port = 0;
  if (port_text.empty() ||
      !std::all_of(port_text.begin(), port_text.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535 ||
      static_cast<int>(port) < min_port) {
    return bad(absl::StrCat("port \"", port_text, "\" is not in [", min_port,
                            ", 65535]"));
  }
  HostPort out;
  out.host = std::string(host);
  out.port = static_cast<int>(port);
  return out;
}

absl::Status ProbeListen(const HostPort& address) {
  std::string host = address.host;
  if (host.size() >= 2 && host.front() == '[')
    host = host.substr(1, host.size() - 2);
  const std::string port = std::to_string(address.port);
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int err = getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
      err != 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address.ToString(), ": cannot resolve host \"",
        host, "\": ", gai_strerror(err)));
  }
  std::string reason = "no address to bind";
  bool bound = false;
  for (addrinfo* a = found; a != nullptr && !bound; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) {
      reason = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0) {
      bound = true;
    } else {
      reason = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (bound) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address.ToString(), ": ", reason));
}

}  // namespace effadam

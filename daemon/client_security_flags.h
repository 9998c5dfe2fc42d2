#ifndef EFFADAM_DAEMON_CLIENT_SECURITY_FLAGS_H_
#define EFFADAM_DAEMON_CLIENT_SECURITY_FLAGS_H_

#include "absl/status/statusor.h"
#include "transport/grpc_security.h"

namespace effadam {

// From --tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name
// and --auth_token_file, defined here once for every client binary
// (effadam-worker, effadam-health, the examples); the files are read and
// checked now (LoadClientSecurity).
absl::StatusOr<ClientSecurity> ClientSecurityFromFlags();

// From --keepalive_time and --keepalive_timeout (the worker binaries'),
// checked (CheckClientKeepalive).
absl::StatusOr<ClientKeepalive> ClientKeepaliveFromFlags();

}  // namespace effadam

#endif  // EFFADAM_DAEMON_CLIENT_SECURITY_FLAGS_H_

#include "daemon/client_security_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "daemon/duration_flag.h"

ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM file of the CA certificate(s) that signed the server's "
          "certificate; turns TLS on (docs/security.md). Empty: plaintext");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM file of this client's certificate chain, for a server that "
          "requires client certificates (mutual TLS); needs --tls_key_file "
          "and --tls_ca_file");
ABSL_FLAG(std::string, tls_key_file, "",
          "PEM file of the private key of --tls_cert_file (unencrypted)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to check the server's certificate against; empty: the host "
          "of the server address");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the server's shared token (surrounding whitespace "
          "ignored); sent as `authorization: Bearer <token>` on every call. "
          "Empty: no token");

ABSL_FLAG(effadam::DurationFlag, keepalive_time, absl::Seconds(20),
          "How often to ping the server while a call is open: a server "
          "whose host hung or vanished ends the call after --keepalive_time "
          "+ --keepalive_timeout (then the worker resyncs until "
          "--reconnect_timeout). Must be at least the server's "
          "--min_ping_interval");
ABSL_FLAG(effadam::DurationFlag, keepalive_timeout, absl::Seconds(10),
          "How long to wait for the answer to a ping before giving up on "
          "the connection");

namespace effadam {

absl::StatusOr<ClientSecurity> ClientSecurityFromFlags() {
  ClientSecurityFiles files;
  files.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  files.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  files.key_file = absl::GetFlag(FLAGS_tls_key_file);
  files.server_name = absl::GetFlag(FLAGS_tls_server_name);
  files.token_file = absl::GetFlag(FLAGS_auth_token_file);
  return LoadClientSecurity(files);
}

absl::StatusOr<ClientKeepalive> ClientKeepaliveFromFlags() {
  ClientKeepalive k;
  k.time = absl::GetFlag(FLAGS_keepalive_time).value;
  k.timeout = absl::GetFlag(FLAGS_keepalive_timeout).value;
  if (absl::Status s = CheckClientKeepalive(k); !s.ok()) return s;
  return k;
}

}  // namespace effadam

#ifndef EFFADAM_TRANSPORT_GRPC_SECURITY_H_
#define EFFADAM_TRANSPORT_GRPC_SECURITY_H_

// How effadam's gRPC connections are secured and bounded, in one place:
// TLS (and mutual TLS) from PEM files, the shared bearer token, and the
// transport limits of both ends (message sizes, keepalive, concurrent
// streams). docs/security.md describes the flags and the threat model.
//
// Loading is separate from use: the loaders read and check every file at
// start-up (a file that cannot be read, is empty, holds no PEM block, or a
// key that does not belong to its certificate is InvalidArgument naming the
// file and its flag), and what they return holds the files' contents, so
// building credentials later cannot fail.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace grpc {
class AuthMetadataProcessor;
class Channel;
class ChannelArguments;
class ChannelCredentials;
class ClientContext;
class ServerBuilder;
class ServerCredentials;
}  // namespace grpc

namespace effadam {

// The metadata key and scheme of the shared token: every effadam.v1 call
// carries `authorization: Bearer <token>`.
inline constexpr absl::string_view kAuthorizationKey = "authorization";
inline constexpr absl::string_view kBearerPrefix = "Bearer ";
// Shorter tokens are accepted, with a warning: they can be guessed.
inline constexpr size_t kRecommendedTokenLength = 32;

// ------------------------------------------------------------- the server

// Paths as given by the server's flags; empty means not given.
struct ServerSecurityFiles {
  std::string cert_file;       // --tls_cert_file: the server's chain
  std::string key_file;        // --tls_key_file: its private key
  std::string client_ca_file;  // --tls_client_ca_file: mutual TLS
  std::string token_file;      // --auth_token_file
};

// What the server enforces, with the files' contents.
struct ServerSecurity {
  bool tls = false;
  std::string cert_pem;
  std::string key_pem;
  // Non-empty: clients must present a certificate this CA signed.
  std::string client_ca_pem;
  // Non-empty: every effadam.v1 call must carry it (TokenAuthenticator).
  std::string token;
};

// Cert and key come together (both enable TLS); a client CA needs them.
absl::StatusOr<ServerSecurity> LoadServerSecurity(
    const ServerSecurityFiles& files);

// Insecure credentials without TLS.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const ServerSecurity& security);

// One line for the start-up log: what a client needs to get in.
std::string DescribeServerSecurity(const ServerSecurity& security);

// ------------------------------------------------------------- the clients

// Paths and names as given by the clients' flags
// (daemon/client_security_flags.h); empty means not given.
struct ClientSecurityFiles {
  std::string ca_file;      // --tls_ca_file: enables TLS
  std::string cert_file;    // --tls_cert_file: client certificate (mTLS)
  std::string key_file;     // --tls_key_file
  std::string server_name;  // --tls_server_name
  std::string token_file;   // --auth_token_file
};

// What a client presents, with the files' contents. The default is a
// plaintext channel without a token.
struct ClientSecurity {
  bool tls = false;
  std::string ca_pem;    // roots that verify the server's certificate
  std::string cert_pem;  // client certificate chain, with key_pem, or empty
  std::string key_pem;
  // The name checked against the server's certificate; empty: the host of
  // the target address.
  std::string server_name;
  // Sent as `authorization: Bearer <token>` on every call; empty: none.
  std::string token;
};

// TLS needs the CA; a client certificate needs its key and TLS; a server
// name needs TLS.
absl::StatusOr<ClientSecurity> LoadClientSecurity(
    const ClientSecurityFiles& files);

// What to check when a server cannot be reached (UNAVAILABLE) with
// `security`: gRPC's own message says only that the connection closed, the
// same for a server that is down and a TLS handshake that failed.
std::string ConnectionHint(const ClientSecurity& security);

// Adds the token's metadata to a call's context (nothing without a token).
// Call before the call starts.
void AddCallCredentials(const ClientSecurity& security,
                        grpc::ClientContext* context);

// ------------------------------------------------------------ file loaders

// The contents of a PEM file of certificates (at least one, all parseable)
// or of one unencrypted private key; `flag` names the flag in errors.
absl::StatusOr<std::string> LoadCertificatesPem(const std::string& path,
                                                absl::string_view flag);
absl::StatusOr<std::string> LoadPrivateKeyPem(const std::string& path,
                                              absl::string_view flag);

// The token in `path` without surrounding whitespace. Empty, or holding
// characters a gRPC header value cannot carry (outside printable ASCII),
// is an error.
absl::StatusOr<std::string> LoadTokenFile(const std::string& path,
                                          absl::string_view flag);

// ------------------------------------------------------ transport limits

// The largest gRPC message either end accepts: one chunk of
// --max_chunk_bytes plus room for the fields around it and for the other
// messages (a Join's layout, reflection's descriptors). Larger messages
// fail with RESOURCE_EXHAUSTED before they reach the service.
inline constexpr int kMessageEnvelopeBytes = 64 << 10;
int MaxMessageBytes(size_t max_chunk_bytes);

// Keepalive. Clients ping every ClientKeepalive::time while a call is open
// (a Train stream that waits for a slow round included) and give up on the
// connection after ClientKeepalive::timeout without an answer, so a server
// or network that died silently ends the call instead of hanging it. The
// server pings its clients every ServerTransport::keepalive_time and drops
// a connection whose answer takes longer than its keepalive_timeout; it
// accepts client pings down to ServerTransport::min_client_ping_interval
// apart and closes a connection that pings more often than that
// (GRPC_ARG_HTTP2_MAX_PING_STRIKES).
inline constexpr int kServerMaxPingStrikes = 2;
// The server's transport settings that its flags choose, and the limits on
// what clients can make it hold (docs/security.md, "Limits"). The server is
// synchronous: every call in progress holds a thread, so threads are the
// resource that floods exhaust first.
struct ServerTransport {
  // Messages may be this plus the envelope; the server's default
  // (ServerOptions::max_chunk_bytes).
  size_t max_chunk_bytes = size_t{1} << 20;
  // How often the server pings each connection, and how long it waits for
  // the answer before it drops the connection (and so a hung or vanished
  // worker's stream: the worker leaves the round at once instead of after
  // --round_timeout).
  absl::Duration keepalive_time = absl::Seconds(30);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  // The shortest interval between a client's pings the server accepts:
  // at most the workers' ClientKeepalive::time, half of it to be safe.
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  // Threads gRPC may start for calls (a grpc::ResourceQuota), pollers
  // included. A call that arrives when all are busy fails at once with
  // RESOURCE_EXHAUSTED ("Server Threadpool Exhausted") instead of starting a
  // thread; this caps what a flood (HTTP/2 rapid reset, streams that never
  // send) can take. A worker holds one (its Train stream) plus one for a
  // fetch or an upload at times.
  int max_threads = 256;
  // Memory gRPC's transport may hold (buffers of connections and calls);
  // above it gRPC reclaims: it shrinks buffers and, under pressure, closes
  // the connections that hold the most. Not the service's own memory.
  // gRPC 1.51 receives a message whole before it compares its size with
  // the limit, so this is also what bounds over-limit messages sent at
  // once on many connections.
  size_t max_transport_memory_bytes = size_t{128} << 20;
  // Concurrent calls on one connection; a worker needs two at most (Train
  // and a fetch), in-process clients may share a connection.
  int max_streams_per_connection = 100;
  // A connection without any call for this long is closed (GOAWAY); a
  // worker's channel reconnects by itself when it next calls.
  absl::Duration max_connection_idle = absl::Minutes(5);
};

// InvalidArgument naming the flag unless every duration is in [1 ms, 24 h],
// max_threads is in [kMinServerThreads, 65536] and leaves every one of
// `workers` a Train stream and a fetch (CallThreads >= 2 x workers + 2),
// max_transport_memory_bytes is at least kMinTransportMemoryBytes and
// 4 largest messages (MaxMessageBytes), and
// max_streams_per_connection is in [2, 65536].
inline constexpr int kMinServerThreads = 8;
inline constexpr size_t kMinTransportMemoryBytes = size_t{16} << 20;
absl::Status CheckServerTransport(const ServerTransport& transport,
                                  int workers = 1);

// The number of threads `transport` leaves for calls: max_threads less the
// pollers that wait for new calls (kServerPollers).
inline constexpr int kServerPollers = 2;
int CallThreads(const ServerTransport& transport);

// A client's keepalive (see above): the defaults suit the server's
// default min_client_ping_interval.
struct ClientKeepalive {
  absl::Duration time = absl::Seconds(20);
  absl::Duration timeout = absl::Seconds(10);
};

// InvalidArgument naming the flag unless both are in [1 ms, 24 h].
absl::Status CheckClientKeepalive(const ClientKeepalive& keepalive);

// How every client channel reconnects (NewClientChannel sets it; measured
// in docs/faults.md, "Reconnecting after a link cut"). gRPC 1.51 starts a
// connection attempt `first_backoff` after a failure, growing 1.6x (±20%
// jitter) to `max_backoff`, instead of its default 1 s .. 120 s, so that a
// server that is back is found as soon as a retrying caller looks. Each
// attempt (TCP connect and HTTP/2 handshake) may last max(its backoff,
// `min_connect_timeout`), then is abandoned ("tcp handshaker shutdown"):
// gRPC reads that from GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, and a value as
// short as the first backoff abandoned attempts before the kernel's first
// SYN retransmission (1 s): an attempt whose SYN fell into a link cut, or
// waited on ARP just after it, never connected, nor did a handshake with a
// server slowed by a loaded machine. Longer than that retransmission and
// shorter than the next (3 s), an attempt survives one lost SYN, and one
// whose SYN and retransmission were both lost is given up early (gRPC's
// default, 20 s, waited out the retransmissions at 3 s and 7 s).
struct ClientReconnect {
  absl::Duration first_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  absl::Duration min_connect_timeout = absl::Milliseconds(1500);
};

// A channel to `target` with `security`'s credentials, `keepalive`, the
// reconnect settings above, and `args` (for the caller's own settings,
// e.g. message size limits).
std::shared_ptr<grpc::Channel> NewClientChannel(
    const std::string& target, const ClientSecurity& security,
    grpc::ChannelArguments args,
    const ClientKeepalive& keepalive = ClientKeepalive());

// Adds the listening port with `security`'s credentials and every server
// transport setting above to `builder`; *port receives the bound port. With
// TLS, `tls_gate` (if not null) checks every call's metadata before the
// call is given a thread (server/token_gate.h); gRPC 1.51 cannot run it on
// a plaintext port, where it is not installed.
void ConfigureServer(
    const std::string& address, const ServerSecurity& security,
    const ServerTransport& transport, grpc::ServerBuilder* builder, int* port,
    std::shared_ptr<grpc::AuthMetadataProcessor> tls_gate = nullptr);

}  // namespace effadam

#endif  // EFFADAM_TRANSPORT_GRPC_SECURITY_H_

#include "transport/grpc_security.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace effadam {
namespace {

// No PEM file of certificates or keys comes near this; a larger file is a
// wrong path (a log, a device), not something to read into memory.
constexpr size_t kMaxPemBytes = 1 << 20;
constexpr size_t kMaxTokenBytes = 4096;

// A channel argument in milliseconds; the durations are checked to be at
// most 24 h, well inside int.
int Milliseconds(absl::Duration d) {
  return static_cast<int>(absl::ToInt64Milliseconds(d));
}

absl::Status FileError(absl::string_view flag, const std::string& path,
                       absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": ", what));
}

// The whole file, refusing unreadable, empty and oversized ones.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          absl::string_view flag,
                                          size_t max_bytes) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return FileError(flag, path,
                     absl::StrCat("cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return FileError(flag, path, "not a regular file");
  }
  // Reads at most one byte past the limit, so a huge file is not read.
  std::string contents(max_bytes + 1, '\0');
  size_t n = 0;
  while (n < contents.size()) {
    const ssize_t got = read(fd, contents.data() + n, contents.size() - n);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int error = errno;
      close(fd);
      return FileError(flag, path,
                       absl::StrCat("cannot read: ", std::strerror(error)));
    }
    if (got == 0) break;
    n += static_cast<size_t>(got);
  }
  close(fd);
  if (n == 0) return FileError(flag, path, "the file is empty");
  if (n > max_bytes) {
    return FileError(flag, path,
                     absl::StrCat("larger than ", max_bytes,
                                  " bytes; is this the right file?"));
  }
  contents.resize(n);
  return contents;
}

// OpenSSL reports through a thread-local error queue; what a failed parse
// leaves there must not be mistaken by gRPC's own TLS code for an error of
// its own later.
struct ErrorQueueGuard {
  ~ErrorQueueGuard() { ERR_clear_error(); }
};

std::string OpenSslError() {
  const unsigned long e = ERR_peek_last_error();
  if (e == 0) return "";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return absl::StrCat(" (", buf, ")");
}

using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;
using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

BioPtr MemoryBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())),
                &BIO_free);
}

// Refuses to prompt for a passphrase (OpenSSL would ask on the terminal):
// an encrypted key fails to load and the error says so.
int NoPassphrase(char*, int, int, void*) { return -1; }

// Every certificate in `pem`, in order; at least one.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(
    const std::string& pem, absl::string_view flag, const std::string& path) {
  ErrorQueueGuard guard;
  BioPtr bio = MemoryBio(pem);
  std::vector<X509Ptr> certs;
  while (true) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr);
    if (cert == nullptr) break;
    certs.emplace_back(cert, &X509_free);
  }
  // The loop ends at the end of the data (no start line found) or at a
  // block that does not parse.
  const unsigned long last = ERR_peek_last_error();
  const bool at_end = ERR_GET_LIB(last) == ERR_LIB_PEM &&
                      ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  if (last != 0 && !at_end) {
    return FileError(
        flag, path,
        absl::StrCat("a certificate in it does not parse", OpenSslError()));
  }
  if (certs.empty()) {
    return FileError(flag, path,
                     "no PEM certificate in it (a block starting with "
                     "-----BEGIN CERTIFICATE-----)");
  }
  return certs;
}

absl::StatusOr<KeyPtr> ParsePrivateKey(const std::string& pem,
                                       absl::string_view flag,
                                       const std::string& path) {
  ErrorQueueGuard guard;
  BioPtr bio = MemoryBio(pem);
  EVP_PKEY* key =
      PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr);
  if (key == nullptr) {
    return FileError(
        flag, path,
        absl::StrCat("no usable PEM private key in it (a block starting with "
                     "-----BEGIN PRIVATE KEY-----; an encrypted key must be "
                     "decrypted first)",
                     OpenSslError()));
  }
  return KeyPtr(key, &EVP_PKEY_free);
}

// A leaf certificate that has expired or is not valid yet would fail every
// handshake with a message far from its cause; say it at start-up.
absl::Status CheckValidNow(X509* cert, absl::string_view flag,
                           const std::string& path) {
  ErrorQueueGuard guard;
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    return FileError(flag, path, "the certificate has expired");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    return FileError(flag, path,
                     "the certificate is not valid yet (check the clock)");
  }
  return absl::OkStatus();
}

// --tls_cert_file and --tls_key_file (the same flags on the server and the
// clients): both or neither. Given, both parse, the first certificate is
// valid now and belongs to the key; fills *cert_pem and *key_pem.
absl::Status LoadCertAndKey(const std::string& cert_path,
                            const std::string& key_path, std::string* cert_pem,
                            std::string* key_pem) {
  constexpr absl::string_view kCertFlag = "--tls_cert_file";
  constexpr absl::string_view kKeyFlag = "--tls_key_file";
  if (cert_path.empty() != key_path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_path.empty() ? kKeyFlag : kCertFlag, " needs ",
                     cert_path.empty() ? kCertFlag : kKeyFlag,
                     " (a certificate and its private key go together)"));
  }
  if (cert_path.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> cert =
      ReadSmallFile(cert_path, kCertFlag, kMaxPemBytes);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::vector<X509Ptr>> certs =
      ParseCertificates(*cert, kCertFlag, cert_path);
  if (!certs.ok()) return certs.status();
  absl::StatusOr<std::string> key =
      ReadSmallFile(key_path, kKeyFlag, kMaxPemBytes);
  if (!key.ok()) return key.status();
  absl::StatusOr<KeyPtr> pkey = ParsePrivateKey(*key, kKeyFlag, key_path);
  if (!pkey.ok()) return pkey.status();
  X509* leaf = (*certs)[0].get();
  {
    ErrorQueueGuard guard;
    if (X509_check_private_key(leaf, pkey->get()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(kKeyFlag, "=", key_path,
                       " is not the private key of the first "
                       "certificate in ",
                       kCertFlag, "=", cert_path));
    }
  }
  if (absl::Status s = CheckValidNow(leaf, kCertFlag, cert_path); !s.ok()) {
    return s;
  }
  *cert_pem = *std::move(cert);
  *key_pem = *std::move(key);
  return absl::OkStatus();
}

// --auth_token_file, when given, into *token.
absl::Status LoadOptionalToken(const std::string& path, std::string* token) {
  if (path.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> t = LoadTokenFile(path, "--auth_token_file");
  if (!t.ok()) return t.status();
  *token = *std::move(t);
  return absl::OkStatus();
}

}  // namespace

// ------------------------------------------------------------ file loaders

absl::StatusOr<std::string> LoadCertificatesPem(const std::string& path,
                                                absl::string_view flag) {
  absl::StatusOr<std::string> pem = ReadSmallFile(path, flag, kMaxPemBytes);
  if (!pem.ok()) return pem.status();
  absl::StatusOr<std::vector<X509Ptr>> certs =
      ParseCertificates(*pem, flag, path);
  if (!certs.ok()) return certs.status();
  return pem;
}

absl::StatusOr<std::string> LoadPrivateKeyPem(const std::string& path,
                                              absl::string_view flag) {
  absl::StatusOr<std::string> pem = ReadSmallFile(path, flag, kMaxPemBytes);
  if (!pem.ok()) return pem.status();
  absl::StatusOr<KeyPtr> key = ParsePrivateKey(*pem, flag, path);
  if (!key.ok()) return key.status();
  return pem;
}

absl::StatusOr<std::string> LoadTokenFile(const std::string& path,
                                          absl::string_view flag) {
  absl::StatusOr<std::string> raw = ReadSmallFile(path, flag, kMaxTokenBytes);
  if (!raw.ok()) return raw.status();
  const std::string token(absl::StripAsciiWhitespace(*raw));
  if (token.empty()) {
    return FileError(flag, path, "the file holds only whitespace, no token");
  }
  // A header value: printable ASCII (gRPC refuses anything else).
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c > 0x7e) {
      return FileError(
          flag, path,
          absl::StrCat("the token has a byte outside printable ASCII at "
                       "position ",
                       i, " (use e.g. `openssl rand -hex 32`)"));
    }
  }
  return token;
}

// ------------------------------------------------------------- the server

absl::StatusOr<ServerSecurity> LoadServerSecurity(
    const ServerSecurityFiles& files) {
  ServerSecurity s;
  if (absl::Status st = LoadCertAndKey(files.cert_file, files.key_file,
                                       &s.cert_pem, &s.key_pem);
      !st.ok()) {
    return st;
  }
  s.tls = !s.cert_pem.empty();
  if (!files.client_ca_file.empty()) {
    if (!s.tls) {
      return absl::InvalidArgumentError(
          "--tls_client_ca_file needs --tls_cert_file and --tls_key_file "
          "(client certificates are checked in the TLS handshake)");
    }
    absl::StatusOr<std::string> ca =
        LoadCertificatesPem(files.client_ca_file, "--tls_client_ca_file");
    if (!ca.ok()) return ca.status();
    s.client_ca_pem = *std::move(ca);
  }
  if (absl::Status st = LoadOptionalToken(files.token_file, &s.token);
      !st.ok()) {
    return st;
  }
  return s;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(
    const ServerSecurity& security) {
  if (!security.tls) return grpc::InsecureServerCredentials();
  const bool mutual = !security.client_ca_pem.empty();
  grpc::SslServerCredentialsOptions options(
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = security.client_ca_pem;
  options.pem_key_cert_pairs.push_back(
      grpc::SslServerCredentialsOptions::PemKeyCertPair{security.key_pem,
                                                        security.cert_pem});
  return grpc::SslServerCredentials(options);
}

std::string DescribeServerSecurity(const ServerSecurity& security) {
  std::string out = security.tls
                        ? (security.client_ca_pem.empty()
                               ? "TLS"
                               : "mutual TLS (client certificates required)")
                        : "plaintext (no TLS)";
  absl::StrAppend(&out, security.token.empty()
                            ? ", no token: any client that reaches the port "
                              "can join"
                            : ", bearer token required");
  if (!security.token.empty() && !security.tls) {
    absl::StrAppend(&out,
                    " (warning: without TLS the token crosses the "
                    "network in the clear)");
  }
  if (!security.token.empty() &&
      security.token.size() < kRecommendedTokenLength) {
    absl::StrAppend(&out, " (warning: the token has ", security.token.size(),
                    " characters; use at least ", kRecommendedTokenLength,
                    " random ones)");
  }
  return out;
}

// ------------------------------------------------------------- the clients

absl::StatusOr<ClientSecurity> LoadClientSecurity(
    const ClientSecurityFiles& files) {
  ClientSecurity s;
  if (files.ca_file.empty()) {
    const char* needs_tls = !files.cert_file.empty()     ? "--tls_cert_file"
                            : !files.key_file.empty()    ? "--tls_key_file"
                            : !files.server_name.empty() ? "--tls_server_name"
                                                         : nullptr;
    if (needs_tls != nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(needs_tls,
                       " needs --tls_ca_file (the CA that signed the server's "
                       "certificate; it turns TLS on)"));
    }
  } else {
    absl::StatusOr<std::string> ca =
        LoadCertificatesPem(files.ca_file, "--tls_ca_file");
    if (!ca.ok()) return ca.status();
    s.ca_pem = *std::move(ca);
    s.tls = true;
    s.server_name = files.server_name;
  }
  if (absl::Status st = LoadCertAndKey(files.cert_file, files.key_file,
                                       &s.cert_pem, &s.key_pem);
      !st.ok()) {
    return st;
  }
  if (absl::Status st = LoadOptionalToken(files.token_file, &s.token);
      !st.ok()) {
    return st;
  }
  return s;
}

std::shared_ptr<grpc::Channel> NewClientChannel(
    const std::string& target, const ClientSecurity& security,
    grpc::ChannelArguments args, const ClientKeepalive& keepalive) {
  // Pings only while a call is open: a worker between calls (loading its
  // data) has nothing to lose, and the server would count idle pings as
  // strikes anyway. No cap on pings without data: a Train stream waits for
  // a slow round without any.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, Milliseconds(keepalive.time));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Milliseconds(keepalive.timeout));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  const ClientReconnect reconnect;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              Milliseconds(reconnect.first_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              Milliseconds(reconnect.max_backoff));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
              Milliseconds(reconnect.min_connect_timeout));
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (security.tls) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = security.ca_pem;
    options.pem_cert_chain = security.cert_pem;
    options.pem_private_key = security.key_pem;
    credentials = grpc::SslCredentials(options);
    if (!security.server_name.empty()) {
      args.SetSslTargetNameOverride(security.server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(target, credentials, args);
}

std::string ConnectionHint(const ClientSecurity& security) {
  if (!security.tls) {
    return "is the server up at that address? If it uses TLS, give "
           "--tls_ca_file";
  }
  return absl::StrCat(
      "is the server up at that address, and does it use TLS? Check that "
      "--tls_ca_file signed its certificate, that the certificate names ",
      security.server_name.empty() ? "the host of the address"
                                   : "--tls_server_name",
      security.cert_pem.empty()
          ? ", and give --tls_cert_file/--tls_key_file if it requires client "
            "certificates"
          : ", and that its --tls_client_ca_file signed --tls_cert_file");
}

void AddCallCredentials(const ClientSecurity& security,
                        grpc::ClientContext* context) {
  if (security.token.empty()) return;
  context->AddMetadata(std::string(kAuthorizationKey),
                       absl::StrCat(kBearerPrefix, security.token));
}

// ------------------------------------------------------ transport limits

int MaxMessageBytes(size_t max_chunk_bytes) {
  // --max_chunk_bytes is at most 2^30 (server_main), so this fits an int.
  const size_t bytes = max_chunk_bytes + kMessageEnvelopeBytes;
  return static_cast<int>(
      std::min<size_t>(bytes, static_cast<size_t>(INT32_MAX)));
}

namespace {

// A keepalive duration of a flag: InvalidArgument unless in [1 ms, 24 h].
absl::Status CheckKeepaliveFlag(const char* flag, absl::Duration d) {
  if (d < absl::Milliseconds(1) || d > absl::Hours(24)) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " must be in [1ms, 24h], got ", absl::FormatDuration(d)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckServerTransport(const ServerTransport& transport,
                                  int workers) {
  for (const auto& [flag, d] :
       {std::pair<const char*, absl::Duration>{"--keepalive_time",
                                               transport.keepalive_time},
        {"--keepalive_timeout", transport.keepalive_timeout},
        {"--min_ping_interval", transport.min_client_ping_interval}}) {
    if (absl::Status s = CheckKeepaliveFlag(flag, d); !s.ok()) return s;
  }
  if (absl::Status s = CheckKeepaliveFlag("--max_connection_idle",
                                          transport.max_connection_idle);
      !s.ok()) {
    return s;
  }
  if (transport.max_threads < kMinServerThreads ||
      transport.max_threads > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_threads must be in [", kMinServerThreads,
                     ", 65536], got ", transport.max_threads));
  }
  if (CallThreads(transport) < 2 * workers + 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_threads=", transport.max_threads, " is too few for ", workers,
        " workers: each holds a Train stream and at times a fetch; use at "
        "least ",
        2 * workers + 2 + kServerPollers));
  }
  const size_t min_memory = std::max(
      kMinTransportMemoryBytes,
      4 * static_cast<size_t>(MaxMessageBytes(transport.max_chunk_bytes)));
  if (transport.max_transport_memory_bytes < min_memory) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_transport_memory_mb must be at least ",
        (min_memory + (1 << 20) - 1) >> 20,
        " (16, and 4 messages of --max_chunk_bytes and their envelope), "
        "got ",
        transport.max_transport_memory_bytes >> 20));
  }
  if (transport.max_streams_per_connection < 2 ||
      transport.max_streams_per_connection > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_streams_per_connection must be in [2, 65536], "
                     "got ",
                     transport.max_streams_per_connection));
  }
  return absl::OkStatus();
}

int CallThreads(const ServerTransport& transport) {
  return transport.max_threads - kServerPollers;
}

absl::Status CheckClientKeepalive(const ClientKeepalive& keepalive) {
  if (absl::Status s = CheckKeepaliveFlag("--keepalive_time", keepalive.time);
      !s.ok()) {
    return s;
  }
  return CheckKeepaliveFlag("--keepalive_timeout", keepalive.timeout);
}

void ConfigureServer(const std::string& address, const ServerSecurity& security,
                     const ServerTransport& transport,
                     grpc::ServerBuilder* builder, int* port,
                     std::shared_ptr<grpc::AuthMetadataProcessor> tls_gate) {
  std::shared_ptr<grpc::ServerCredentials> credentials =
      MakeServerCredentials(security);
  if (security.tls && tls_gate != nullptr) {
    credentials->SetAuthMetadataProcessor(std::move(tls_gate));
  }
  builder->AddListeningPort(address, credentials, port);
  const int max_message = MaxMessageBytes(transport.max_chunk_bytes);
  builder->SetMaxReceiveMessageSize(max_message);
  builder->SetMaxSendMessageSize(max_message);
  // Train streams can sit idle for a whole round: ping so that a worker
  // whose host vanished is noticed (its stream ends, it leaves the live
  // set), and accept the workers' own pings at their rate, idle ones
  // included, but not faster.
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                              Milliseconds(transport.keepalive_time));
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                              Milliseconds(transport.keepalive_timeout));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      Milliseconds(transport.min_client_ping_interval));
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES,
                              kServerMaxPingStrikes);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                              transport.max_streams_per_connection);
  builder->AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                              Milliseconds(transport.max_connection_idle));
  // The synchronous server's threads: one completion queue, at most
  // kServerPollers threads waiting for new calls, and every thread (pollers
  // and calls) taken from the quota; without the quota gRPC starts a
  // thread for every call it is given, without bound.
  builder->SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS,
                               1);
  builder->SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
  builder->SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, kServerPollers);
  grpc::ResourceQuota quota("effadam-server");
  quota.SetMaxThreads(transport.max_threads);
  quota.Resize(transport.max_transport_memory_bytes);
  builder->SetResourceQuota(quota);
}

}  // namespace effadam

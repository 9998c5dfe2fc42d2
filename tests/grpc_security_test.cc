// The start-up checks of transport/grpc_security.h (PEM files, token files,
// which flags go together) and server/token_authenticator.h. Certificates
// are made here with OpenSSL, so no key is checked in and none expires.

#include "transport/grpc_security.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/token_authenticator.h"

namespace effadam {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr long kDay = 24 * 3600;

struct KeyPair {
  std::string cert_pem;
  std::string key_pem;
};

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

// A self-signed P-256 certificate valid from now + from_s to now + to_s.
KeyPair MakeKeyPair(long from_s = -kDay, long to_s = kDay) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("test"), -1,
                             -1, 0);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  KeyPair kp;
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, x);
  kp.cert_pem = BioContents(bio);
  bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  kp.key_pem = BioContents(bio);
  X509_free(x);
  EVP_PKEY_free(key);
  return kp;
}

std::string EncryptedKeyPem() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  BIO* bio = BIO_new(BIO_s_mem());
  static const char kPass[] = "passphrase";
  PEM_write_bio_PrivateKey(bio, key, EVP_aes_128_cbc(),
                           reinterpret_cast<const unsigned char*>(kPass),
                           sizeof(kPass) - 1, nullptr, nullptr);
  EVP_PKEY_free(key);
  return BioContents(bio);
}

// Files in a fresh directory, removed with the fixture.
class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "grpc_security_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : files_) std::remove(f.c_str());
    rmdir(dir_.c_str());
  }
  std::string Write(const std::string& name, const std::string& contents) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    files_.push_back(path);
    return path;
  }
  std::string Missing() const { return dir_ + "/no-such-file.pem"; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::string> files_;
};

std::string Message(const absl::Status& s) { return std::string(s.message()); }

// ---------------------------------------------------------------- loaders

TEST_F(FilesTest, CertificatesLoadAndBadFilesNameTheFlagAndThePath) {
  const KeyPair a = MakeKeyPair(), b = MakeKeyPair();
  const std::string two = Write("two.pem", a.cert_pem + b.cert_pem);
  absl::StatusOr<std::string> ok = LoadCertificatesPem(two, "--tls_ca_file");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, a.cert_pem + b.cert_pem);

  struct Case {
    std::string path;
    const char* why;
  } cases[] = {
      {Missing(), "cannot open: No such file or directory"},
      {Write("empty.pem", ""), "the file is empty"},
      {dir(), "not a regular file"},
      {Write("text.pem", "hello\n"), "no PEM certificate"},
      {Write("key.pem", a.key_pem), "no PEM certificate"},
      {Write("broken.pem",
             "-----BEGIN CERTIFICATE-----\nnot base64!\n"
             "-----END CERTIFICATE-----\n"),
       "does not parse"},
      {Write("huge.pem", std::string((1 << 20) + 1, 'x')), "larger than"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::string> r =
        LoadCertificatesPem(c.path, "--tls_ca_file");
    ASSERT_FALSE(r.ok()) << c.path;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(r.status()),
                AllOf(HasSubstr("--tls_ca_file=" + c.path), HasSubstr(c.why)));
  }
}

TEST_F(FilesTest, PrivateKeysLoadUnencryptedOnly) {
  const KeyPair a = MakeKeyPair();
  absl::StatusOr<std::string> ok =
      LoadPrivateKeyPem(Write("key.pem", a.key_pem), "--tls_key_file");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, a.key_pem);

  for (const std::string& path :
       {Write("cert.pem", a.cert_pem), Write("enc.pem", EncryptedKeyPem())}) {
    absl::StatusOr<std::string> r = LoadPrivateKeyPem(path, "--tls_key_file");
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_THAT(
        Message(r.status()),
        AllOf(HasSubstr("--tls_key_file=" + path),
              HasSubstr("no usable PEM private key"), HasSubstr("encrypted")));
  }
  absl::StatusOr<std::string> empty =
      LoadPrivateKeyPem(Write("empty.pem", ""), "--tls_key_file");
  EXPECT_THAT(Message(empty.status()), HasSubstr("the file is empty"));
}

TEST_F(FilesTest, TokenFilesAreTrimmedAndMustHoldAPrintableToken) {
  absl::StatusOr<std::string> t = LoadTokenFile(
      Write("t", "  \t0123456789abcdef\r\n\n"), "--auth_token_file");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "0123456789abcdef");

  struct Case {
    std::string path;
    const char* why;
  } cases[] = {
      {Missing(), "cannot open"},
      {Write("empty", ""), "the file is empty"},
      {Write("blank", " \n\t\n"), "only whitespace"},
      {Write("ctrl",
             "abc\x01"
             "def"),
       "outside printable ASCII at position 3"},
      {Write("inner", "abc\ndef"), "outside printable ASCII at position 3"},
      {Write("utf8", "caf\xc3\xa9"), "outside printable ASCII"},
      {Write("huge", std::string(5000, 'a')), "larger than"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::string> r = LoadTokenFile(c.path, "--auth_token_file");
    ASSERT_FALSE(r.ok()) << c.path;
    EXPECT_THAT(
        Message(r.status()),
        AllOf(HasSubstr("--auth_token_file=" + c.path), HasSubstr(c.why)));
  }
}

// ------------------------------------------------------------ the server

TEST_F(FilesTest, ServerSecurityNeedsCertAndKeyTogether) {
  const KeyPair a = MakeKeyPair();
  const std::string cert = Write("cert.pem", a.cert_pem);
  const std::string key = Write("key.pem", a.key_pem);

  absl::StatusOr<ServerSecurity> none = LoadServerSecurity({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->tls);
  EXPECT_TRUE(none->token.empty());

  ServerSecurityFiles f;
  f.cert_file = cert;
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              HasSubstr("--tls_cert_file needs --tls_key_file"));
  f = {};
  f.key_file = key;
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              HasSubstr("--tls_key_file needs --tls_cert_file"));
  f = {};
  f.client_ca_file = cert;
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              HasSubstr("--tls_client_ca_file needs --tls_cert_file"));

  f = {};
  f.cert_file = cert;
  f.key_file = key;
  absl::StatusOr<ServerSecurity> tls = LoadServerSecurity(f);
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_TRUE(tls->tls);
  EXPECT_EQ(tls->cert_pem, a.cert_pem);
  EXPECT_EQ(tls->key_pem, a.key_pem);
  EXPECT_TRUE(tls->client_ca_pem.empty());
  EXPECT_THAT(
      DescribeServerSecurity(*tls),
      AllOf(HasSubstr("TLS"), Not(HasSubstr("mutual")), HasSubstr("no token")));

  f.client_ca_file = cert;
  f.token_file = Write("token", std::string(32, 'k') + "\n");
  absl::StatusOr<ServerSecurity> mtls = LoadServerSecurity(f);
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  EXPECT_EQ(mtls->client_ca_pem, a.cert_pem);
  EXPECT_EQ(mtls->token, std::string(32, 'k'));
  EXPECT_THAT(DescribeServerSecurity(*mtls),
              AllOf(HasSubstr("mutual TLS"), HasSubstr("token required"),
                    Not(HasSubstr("warning"))));
}

TEST_F(FilesTest, ServerSecurityRefusesAKeyOfAnotherCertificate) {
  const KeyPair a = MakeKeyPair(), b = MakeKeyPair();
  ServerSecurityFiles f;
  f.cert_file = Write("a.pem", a.cert_pem);
  f.key_file = Write("b.key", b.key_pem);
  absl::StatusOr<ServerSecurity> s = LoadServerSecurity(f);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(Message(s.status()),
              AllOf(HasSubstr("--tls_key_file=" + f.key_file),
                    HasSubstr("is not the private key"),
                    HasSubstr("--tls_cert_file=" + f.cert_file)));
}

TEST_F(FilesTest, ServerSecurityRefusesCertificatesOutsideTheirValidity) {
  const KeyPair expired = MakeKeyPair(-10 * kDay, -kDay);
  const KeyPair future = MakeKeyPair(kDay, 10 * kDay);
  ServerSecurityFiles f;
  f.cert_file = Write("expired.pem", expired.cert_pem);
  f.key_file = Write("expired.key", expired.key_pem);
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              AllOf(HasSubstr(f.cert_file), HasSubstr("has expired")));
  f.cert_file = Write("future.pem", future.cert_pem);
  f.key_file = Write("future.key", future.key_pem);
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              HasSubstr("not valid yet"));
}

TEST_F(FilesTest, ServerSecurityWarnsOfAShortTokenAndOfPlaintext) {
  ServerSecurityFiles f;
  f.token_file = Write("token", "short");
  absl::StatusOr<ServerSecurity> s = LoadServerSecurity(f);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(DescribeServerSecurity(*s),
              AllOf(HasSubstr("plaintext"), HasSubstr("in the clear"),
                    HasSubstr("5 characters")));
  f.token_file = Write("empty", "\n");
  EXPECT_THAT(Message(LoadServerSecurity(f).status()),
              HasSubstr("--auth_token_file=" + f.token_file));
}

// ------------------------------------------------------------ the clients

TEST_F(FilesTest, ClientSecurityNeedsACaForTls) {
  const KeyPair a = MakeKeyPair();
  const std::string cert = Write("cert.pem", a.cert_pem);
  const std::string key = Write("key.pem", a.key_pem);

  absl::StatusOr<ClientSecurity> none = LoadClientSecurity({});
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->tls);

  ClientSecurityFiles f;
  f.cert_file = cert;
  f.key_file = key;
  EXPECT_THAT(Message(LoadClientSecurity(f).status()),
              HasSubstr("--tls_cert_file needs --tls_ca_file"));
  f = {};
  f.server_name = "localhost";
  EXPECT_THAT(Message(LoadClientSecurity(f).status()),
              HasSubstr("--tls_server_name needs --tls_ca_file"));
  f = {};
  f.ca_file = cert;
  f.cert_file = cert;
  EXPECT_THAT(Message(LoadClientSecurity(f).status()),
              HasSubstr("--tls_cert_file needs --tls_key_file"));
  f.cert_file.clear();
  f.ca_file = Missing();
  EXPECT_THAT(Message(LoadClientSecurity(f).status()),
              HasSubstr("--tls_ca_file=" + Missing()));

  f = {};
  f.ca_file = cert;
  f.server_name = "localhost";
  absl::StatusOr<ClientSecurity> tls = LoadClientSecurity(f);
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_TRUE(tls->tls);
  EXPECT_EQ(tls->ca_pem, a.cert_pem);
  EXPECT_EQ(tls->server_name, "localhost");
  EXPECT_TRUE(tls->cert_pem.empty());

  f.cert_file = cert;
  f.key_file = key;
  f.token_file = Write("token", " abc \n");
  absl::StatusOr<ClientSecurity> mtls = LoadClientSecurity(f);
  ASSERT_TRUE(mtls.ok()) << mtls.status();
  EXPECT_EQ(mtls->cert_pem, a.cert_pem);
  EXPECT_EQ(mtls->key_pem, a.key_pem);
  EXPECT_EQ(mtls->token, "abc");
}

TEST(ServerTransportTest, KeepaliveDurationsMustBeSensible) {
  ServerTransport t;
  EXPECT_TRUE(CheckServerTransport(t).ok());
  t.keepalive_time = absl::Milliseconds(1);
  t.keepalive_timeout = absl::Hours(24);
  EXPECT_TRUE(CheckServerTransport(t).ok());
  t.keepalive_time = absl::ZeroDuration();
  absl::Status s = CheckServerTransport(t);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_TRUE(absl::StrContains(s.message(), "--keepalive_time")) << s;
  t.keepalive_time = absl::Seconds(1);
  t.keepalive_timeout = absl::Hours(25);
  s = CheckServerTransport(t);
  EXPECT_TRUE(absl::StrContains(s.message(), "--keepalive_timeout")) << s;
  t.keepalive_timeout = -absl::Seconds(1);
  EXPECT_TRUE(absl::IsInvalidArgument(CheckServerTransport(t)));
  t.keepalive_timeout = absl::Seconds(1);
  t.min_client_ping_interval = absl::ZeroDuration();
  s = CheckServerTransport(t);
  EXPECT_TRUE(absl::StrContains(s.message(), "--min_ping_interval")) << s;
}

TEST(ServerTransportTest, LimitsMustBeSensible) {
  ServerTransport t;
  EXPECT_TRUE(CheckServerTransport(t, 4).ok());
  // Every worker needs a Train stream and a fetch, besides the pollers.
  t.max_threads = 2 * 100 + 2 + kServerPollers;
  EXPECT_TRUE(CheckServerTransport(t, 100).ok());
  absl::Status s = CheckServerTransport(t, 101);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_TRUE(absl::StrContains(s.message(), "--max_threads")) << s;
  t.max_threads = kMinServerThreads - 1;
  EXPECT_TRUE(absl::IsInvalidArgument(CheckServerTransport(t)));
  t = ServerTransport();
  t.max_transport_memory_bytes = kMinTransportMemoryBytes - 1;
  s = CheckServerTransport(t);
  EXPECT_TRUE(absl::StrContains(s.message(), "--max_transport_memory_mb")) << s;
  // Room for 4 of the largest messages.
  t.max_chunk_bytes = size_t{64} << 20;
  t.max_transport_memory_bytes =
      4 * static_cast<size_t>(MaxMessageBytes(t.max_chunk_bytes));
  EXPECT_TRUE(CheckServerTransport(t).ok());
  t.max_transport_memory_bytes -= 1;
  EXPECT_TRUE(absl::IsInvalidArgument(CheckServerTransport(t)));
  t = ServerTransport();
  t.max_streams_per_connection = 1;
  s = CheckServerTransport(t);
  EXPECT_TRUE(absl::StrContains(s.message(), "--max_streams_per_connection"))
      << s;
  t = ServerTransport();
  t.max_connection_idle = absl::ZeroDuration();
  s = CheckServerTransport(t);
  EXPECT_TRUE(absl::StrContains(s.message(), "--max_connection_idle")) << s;
}

TEST(ClientKeepaliveTest, DurationsMustBeSensible) {
  ClientKeepalive k;
  EXPECT_TRUE(CheckClientKeepalive(k).ok());
  // The defaults ping no faster than a default server accepts.
  EXPECT_GE(k.time, ServerTransport().min_client_ping_interval);
  k.time = absl::InfiniteDuration();
  absl::Status s = CheckClientKeepalive(k);
  EXPECT_TRUE(absl::StrContains(s.message(), "--keepalive_time")) << s;
  k.time = absl::Seconds(1);
  k.timeout = absl::ZeroDuration();
  s = CheckClientKeepalive(k);
  EXPECT_TRUE(absl::StrContains(s.message(), "--keepalive_timeout")) << s;
}

TEST(MaxMessageBytesTest, IsAChunkPlusTheEnvelope) {
  EXPECT_EQ(MaxMessageBytes(1000), 1000 + kMessageEnvelopeBytes);
  EXPECT_EQ(MaxMessageBytes(size_t{1} << 30),
            (1 << 30) + kMessageEnvelopeBytes);
}

// ---------------------------------------------------- TokenAuthenticator

TEST(TokenAuthenticatorTest, AcceptsOnlyTheBearerToken) {
  EXPECT_FALSE(TokenAuthenticator::Create("").ok());
  absl::StatusOr<TokenAuthenticator> auth =
      TokenAuthenticator::Create("s3cret-token");
  ASSERT_TRUE(auth.ok());
  EXPECT_TRUE(auth->Check({"Bearer s3cret-token"}).ok());
  EXPECT_TRUE(auth->Check({"bearer s3cret-token"}).ok());  // RFC 7235

  struct Case {
    std::vector<absl::string_view> values;
    const char* why;
  } cases[] = {
      {{}, "no token was sent"},
      {{"s3cret-token"}, "not a bearer token"},
      {{"Basic s3cret-token"}, "not a bearer token"},
      {{"Bearer guess-one"}, "the token is wrong"},
      {{"Bearer s3cret-toke"}, "the token is wrong"},
      {{"Bearer s3cret-token "}, "the token is wrong"},
      {{"Bearer "}, "the token is wrong"},
      {{"Bearer s3cret-token", "Bearer s3cret-token"}, "2 authorization"},
  };
  for (const Case& c : cases) {
    const absl::Status s = auth->Check(c.values);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << c.why;
    EXPECT_THAT(Message(s),
                AllOf(HasSubstr(c.why), HasSubstr("--auth_token_file"),
                      Not(HasSubstr("guess-one")), Not(HasSubstr("s3cret"))));
  }
}

}  // namespace
}  // namespace effadam

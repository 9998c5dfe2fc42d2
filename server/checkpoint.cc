#include "server/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/checksum.h"
#include "effadam/v1/checkpoint.pb.h"
#include "transport/compression_proto.h"

namespace effadam {
namespace {

constexpr char kMagic[8] = {'E', 'F', 'A', 'D', 'C', 'K', 'P', 'T'};
// 2: params_checksum is XXH3-64 (ParamsChecksum). Files of format 1, whose
// params_checksum is FNV-1a 64, are still read (a server upgraded over its
// checkpoint directory resumes from it); only format 2 is written.
constexpr uint32_t kFormatVersion = 2;
constexpr uint32_t kOldestFormatVersion = 1;
// A header is a layout and a few numbers; anything bigger is not ours.
constexpr uint32_t kMaxHeaderBytes = 64 << 20;
constexpr absl::string_view kPrefix = "checkpoint-";
constexpr absl::string_view kSuffix = ".effadam";
constexpr absl::string_view kTempMarker = ".tmp-";
constexpr char kDeltaMagic[8] = {'E', 'F', 'A', 'D', 'D', 'L', 'T', '1'};
constexpr absl::string_view kDeltaPrefix = "delta-";

void PutU32(uint32_t v, char out[4]) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  }
  return v;
}

// zlib's crc32 continued over `bytes`; its length argument is a uInt, so
// large inputs go in parts.
uLong Crc32(uLong crc, absl::string_view bytes) {
  for (size_t off = 0; off < bytes.size(); off += size_t{1} << 30) {
    const size_t n = std::min(bytes.size() - off, size_t{1} << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + off),
                static_cast<uInt>(n));
  }
  return crc;
}

absl::string_view FloatBytes(const std::vector<float>& v) {
  // Little-endian float32, the byte order of every host effadam runs on
  // (as on the wire, docs/wire_format.md).
  return absl::string_view(reinterpret_cast<const char*>(v.data()),
                           v.size() * sizeof(float));
}

// The params_checksum of format 1: FNV-1a 64 of x's bytes, as 16 hex
// digits. Kept only to check the files of that format.
std::string Format1Checksum(absl::Span<const float> x) {
  uint64_t h = 0xcbf29ce484222325ULL;
  const auto* p = reinterpret_cast<const unsigned char*>(x.data());
  for (size_t i = 0; i < x.size() * sizeof(float); ++i) {
    h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  return absl::StrFormat("%016x", h);
}

// One description of the file's bytes for both the in-memory form and the
// streamed write: calls `sink` with consecutive pieces, the last being the
// CRC-32 of all the others. Returns the params checksum the header holds.
std::string EmitCheckpoint(const Checkpoint& c,
                           const std::function<void(absl::string_view)>& sink) {
  v1::CheckpointHeader header;
  header.set_format_version(kFormatVersion);
  *header.mutable_layout() = LayoutToProto(c.layout);
  *header.mutable_compression() = c.compression;
  header.set_round(c.state.round);
  header.set_rounds_closed(c.rounds_closed);
  header.set_num_elements(static_cast<int64_t>(c.state.params.size()));
  std::string params_checksum = ParamsChecksum(c.state.params);
  header.set_params_checksum(params_checksum);
  header.set_written_unix_ms(absl::ToUnixMillis(absl::Now()));
  header.set_shard(c.shard);
  header.set_num_shards(c.num_shards);
  const std::string header_bytes = header.SerializeAsString();
  char size[4];
  PutU32(static_cast<uint32_t>(header_bytes.size()), size);

  uLong crc = crc32(0L, Z_NULL, 0);
  auto emit = [&](absl::string_view piece) {
    crc = Crc32(crc, piece);
    sink(piece);
  };
  emit(absl::string_view(kMagic, sizeof(kMagic)));
  emit(absl::string_view(size, 4));
  emit(header_bytes);
  emit(FloatBytes(c.state.params));
  emit(FloatBytes(c.state.error_memory));
  char tail[4];
  PutU32(static_cast<uint32_t>(crc), tail);
  sink(absl::string_view(tail, 4));
  return params_checksum;
}

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status WriteAll(int fd, absl::string_view bytes,
                      const std::string& path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status FsyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync", path);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    out.reserve(static_cast<size_t>(st.st_size));
  }
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status s = ErrnoError("cannot read", path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// Closes `fd` (written as `temp`) and, if `written` and the close are OK,
// renames `temp` to `path`; on any failure `temp` is removed and the first
// error returned.
absl::Status CloseAndRename(int fd, const std::string& temp,
                            const std::string& path, absl::Status written) {
  if (::close(fd) != 0 && written.ok()) {
    written = ErrnoError("cannot close", temp);
  }
  if (written.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    written = ErrnoError("cannot rename into place", temp);
  }
  if (!written.ok()) ::unlink(temp.c_str());
  return written;
}

std::string FileName(int64_t round) {
  return absl::StrFormat("%s%012d%s", kPrefix, round, kSuffix);
}

}  // namespace

bool CompletesRun(const Checkpoint& checkpoint, int64_t rounds) {
  return CompletesRun(checkpoint.state.round, rounds);
}

bool CompletesRun(int64_t round, int64_t rounds) {
  return rounds > 0 && round > rounds;
}

std::string SerializeCheckpoint(const Checkpoint& checkpoint) {
  std::string out;
  EmitCheckpoint(checkpoint,
                 [&](absl::string_view p) { out.append(p.data(), p.size()); });
  return out;
}

absl::StatusOr<Checkpoint> ParseCheckpoint(absl::string_view bytes) {
  const size_t fixed = sizeof(kMagic) + 4 + 4;  // magic, header size, CRC
  if (bytes.size() < fixed) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint is ", bytes.size(), " bytes, shorter than any checkpoint"));
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not an effadam checkpoint (bad magic)");
  }
  const size_t body = bytes.size() - 4;
  const uLong crc = Crc32(crc32(0L, Z_NULL, 0), bytes.substr(0, body));
  if (static_cast<uint32_t>(crc) != GetU32(bytes.data() + body)) {
    return absl::DataLossError(
        "checkpoint CRC-32 mismatch (torn or corrupted file)");
  }
  const uint32_t header_size = GetU32(bytes.data() + sizeof(kMagic));
  if (header_size > kMaxHeaderBytes || header_size > bytes.size() - fixed) {
    return absl::DataLossError(
        absl::StrCat("checkpoint header size ", header_size,
                     " does not fit a file of ", bytes.size(), " bytes"));
  }
  v1::CheckpointHeader header;
  if (!header.ParseFromArray(bytes.data() + sizeof(kMagic) + 4,
                             static_cast<int>(header_size))) {
    return absl::DataLossError("checkpoint header does not parse");
  }
  if (header.format_version() < kOldestFormatVersion ||
      header.format_version() > kFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint format version ", header.format_version(),
                     "; this server reads versions ", kOldestFormatVersion,
                     " to ", kFormatVersion));
  }
  absl::StatusOr<TensorLayout> layout =
      LayoutFromProto(header.layout(), std::numeric_limits<size_t>::max());
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint layout: ", layout.status().message()));
  }
  const int num_shards = std::max(header.num_shards(), 1);
  if (header.shard() < 0 || header.shard() >= num_shards) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint of shard ", header.shard(), " of ", num_shards));
  }
  // A shard holds part of the layout's elements; which part follows from
  // the compression settings (the server checks it when it restores).
  const uint64_t count = static_cast<uint64_t>(header.num_elements());
  if (header.num_elements() <= 0 || count > layout->num_elements() ||
      (num_shards == 1 && count != layout->num_elements())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint says ", header.num_elements(), " elements for a layout of ",
        layout->num_elements(), " split in ", num_shards));
  }
  const size_t n = static_cast<size_t>(count);
  const size_t data = bytes.size() - fixed - header_size;
  if (n > data / (2 * sizeof(float)) || data != 2 * sizeof(float) * n) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint holds ", data, " bytes of x and E; ", n, " elements need ",
        2 * sizeof(float) * static_cast<double>(n)));
  }
  if (header.round() < 1 || header.rounds_closed() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint round ", header.round(), ", rounds closed ",
                     header.rounds_closed()));
  }
  Checkpoint c;
  c.layout = *std::move(layout);
  c.compression = header.compression();
  c.rounds_closed = header.rounds_closed();
  c.shard = header.shard();
  c.num_shards = num_shards;
  c.state.round = header.round();
  const char* p = bytes.data() + sizeof(kMagic) + 4 + header_size;
  c.state.params.resize(n);
  c.state.error_memory.resize(n);
  std::memcpy(c.state.params.data(), p, n * sizeof(float));
  std::memcpy(c.state.error_memory.data(), p + n * sizeof(float),
              n * sizeof(float));
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(c.state.params[i]) ||
        !std::isfinite(c.state.error_memory[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint element ", i, " of x or E is not finite"));
    }
  }
  const std::string checksum = header.format_version() == 1
                                   ? Format1Checksum(c.state.params)
                                   : ParamsChecksum(c.state.params);
  if (checksum != header.params_checksum()) {
    return absl::DataLossError(
        "checkpoint x does not match the params_checksum in its header");
  }
  return c;
}

absl::StatusOr<CheckpointStore> CheckpointStore::Open(std::string dir,
                                                      int keep) {
  if (dir.empty()) {
    return absl::InvalidArgumentError("checkpoint directory is empty");
  }
  if (keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("must keep at least 1 checkpoint, got ", keep));
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create checkpoint directory", dir);
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint path ", dir, " is not a directory"));
  }
  return CheckpointStore(std::move(dir), keep);
}

absl::StatusOr<std::vector<std::pair<int64_t, std::string>>>
CheckpointStore::List() const {
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) return ErrnoError("cannot list", dir_);
  std::vector<std::pair<int64_t, std::string>> files;
  while (const dirent* e = ::readdir(d)) {
    absl::string_view name = e->d_name;
    int64_t round = 0;
    if (absl::ConsumePrefix(&name, kPrefix) &&
        absl::ConsumeSuffix(&name, kSuffix) && absl::SimpleAtoi(name, &round)) {
      files.emplace_back(round, absl::StrCat(dir_, "/", e->d_name));
    }
  }
  ::closedir(d);
  std::sort(files.rbegin(), files.rend());
  return files;
}

absl::StatusOr<CheckpointStore::Written> CheckpointStore::Write(
    const Checkpoint& checkpoint) {
  const std::string path =
      absl::StrCat(dir_, "/", FileName(checkpoint.state.round));
  const std::string temp = absl::StrCat(
      dir_, "/.", FileName(checkpoint.state.round), kTempMarker, ::getpid());
  const int fd =
      ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot create", temp);
  absl::Status status;
  int64_t bytes = 0;
  std::string params_checksum =
      EmitCheckpoint(checkpoint, [&](absl::string_view piece) {
        if (!status.ok()) return;
        status = WriteAll(fd, piece, temp);
        bytes += static_cast<int64_t>(piece.size());
      });
  if (status.ok() && ::fsync(fd) != 0)
    status = ErrnoError("cannot fsync", temp);
  if (absl::Status s = CloseAndRename(fd, temp, path, status); !s.ok()) {
    return s;
  }
  // The rename is durable only once the directory is.
  if (absl::Status s = FsyncPath(dir_, O_RDONLY | O_DIRECTORY); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = List();
  if (files.ok()) {
    for (size_t i = static_cast<size_t>(keep_); i < files->size(); ++i) {
      ::unlink((*files)[i].second.c_str());
    }
  }
  return Written{path, bytes, std::move(params_checksum)};
}

absl::StatusOr<std::optional<CheckpointStore::Loaded>>
CheckpointStore::LoadNewest() {
  // Leftovers of a write that a crash interrupted: never valid, never read.
  if (DIR* d = ::opendir(dir_.c_str())) {
    std::vector<std::string> temps;
    while (const dirent* e = ::readdir(d)) {
      absl::string_view name = e->d_name;
      if (absl::ConsumePrefix(&name, ".") && absl::StartsWith(name, kPrefix) &&
          name.find(kTempMarker) != absl::string_view::npos) {
        temps.push_back(absl::StrCat(dir_, "/", e->d_name));
      }
    }
    ::closedir(d);
    for (const std::string& t : temps) ::unlink(t.c_str());
  }
  absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> files = List();
  if (!files.ok()) return files.status();
  std::vector<std::string> skipped;
  for (const auto& [round, path] : *files) {
    absl::StatusOr<std::string> bytes = ReadFile(path);
    absl::StatusOr<Checkpoint> c =
        bytes.ok() ? ParseCheckpoint(*bytes) : bytes.status();
    if (c.ok() && c->state.round != round) {
      c = absl::DataLossError(
          absl::StrCat("the file holds round ", c->state.round));
    }
    if (!c.ok()) {
      skipped.push_back(absl::StrCat(path, ": ", c.status().message()));
      continue;
    }
    return std::optional<Loaded>(Loaded{*std::move(c), path, skipped});
  }
  if (skipped.empty()) return std::optional<Loaded>();
  // Every file failed: say so rather than start from scratch silently.
  return absl::DataLossError(absl::StrCat(
      "no checkpoint in ", dir_, " verifies: ", absl::StrJoin(skipped, "; ")));
}

// ------------------------------------------------------------ DeltaLog

absl::StatusOr<DeltaLog> DeltaLog::Open(std::string dir, int keep) {
  if (keep < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a delta log keeps at least 1 round, got ", keep));
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create the delta log directory", dir);
  }
  return DeltaLog(std::move(dir), keep);
}

DeltaLog& DeltaLog::None() {
  static DeltaLog* none = new DeltaLog();
  return *none;
}

std::string DeltaLog::Path(int64_t round) const {
  return absl::StrCat(dir_, "/", kDeltaPrefix, absl::StrFormat("%012d", round),
                      kSuffix);
}

absl::Status DeltaLog::Append(int64_t round, absl::string_view delta) {
  if (!enabled()) return absl::OkStatus();
  if (!retained_) {
    Retain(round);
    retained_ = true;
  }
  char head[sizeof(kDeltaMagic) + 8];
  std::memcpy(head, kDeltaMagic, sizeof(kDeltaMagic));
  PutU32(static_cast<uint32_t>(static_cast<uint64_t>(round)),
         head + sizeof(kDeltaMagic));
  PutU32(static_cast<uint32_t>(static_cast<uint64_t>(round) >> 32),
         head + sizeof(kDeltaMagic) + 4);
  const absl::string_view head_bytes(head, sizeof(head));
  char tail[4];
  PutU32(static_cast<uint32_t>(
             Crc32(Crc32(crc32(0L, Z_NULL, 0), head_bytes), delta)),
         tail);
  const std::string path = Path(round);
  const std::string temp = absl::StrCat(path, kTempMarker, ::getpid());
  const int fd =
      ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError("cannot create", temp);
  absl::Status status = WriteAll(fd, head_bytes, temp);
  if (status.ok()) status = WriteAll(fd, delta, temp);
  if (status.ok()) status = WriteAll(fd, absl::string_view(tail, 4), temp);
  if (absl::Status s = CloseAndRename(fd, temp, path, status); !s.ok()) {
    return s;
  }
  ::unlink(Path(round - keep_).c_str());
  return absl::OkStatus();
}

absl::StatusOr<std::string> DeltaLog::Read(int64_t round) const {
  if (!enabled()) return absl::NotFoundError("no delta log");
  const std::string path = Path(round);
  if (::access(path.c_str(), F_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("no record ", path));
  }
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  const size_t fixed = sizeof(kDeltaMagic) + 8 + 4;
  if (bytes->size() < fixed ||
      std::memcmp(bytes->data(), kDeltaMagic, sizeof(kDeltaMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(path, " is not a delta record"));
  }
  const char* p = bytes->data() + sizeof(kDeltaMagic);
  const int64_t stored = static_cast<int64_t>(
      GetU32(p) | (static_cast<uint64_t>(GetU32(p + 4)) << 32));
  const absl::string_view body(bytes->data(), bytes->size() - 4);
  if (stored != round ||
      static_cast<uint32_t>(Crc32(crc32(0L, Z_NULL, 0), body)) !=
          GetU32(bytes->data() + bytes->size() - 4)) {
    return absl::DataLossError(absl::StrCat(path, " does not verify"));
  }
  return bytes->substr(sizeof(kDeltaMagic) + 8, bytes->size() - fixed);
}

void DeltaLog::Retain(int64_t round) {
  if (!enabled()) return;
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    absl::string_view name = e->d_name;
    int64_t r = 0;
    if (!absl::ConsumePrefix(&name, kDeltaPrefix)) continue;
    // Leftovers of a write a crash interrupted are never read.
    const bool temp = name.find(kTempMarker) != absl::string_view::npos;
    if (temp ||
        (absl::ConsumeSuffix(&name, kSuffix) && absl::SimpleAtoi(name, &r) &&
         (r >= round || r < round - keep_))) {
      stale.push_back(absl::StrCat(dir_, "/", e->d_name));
    }
  }
  ::closedir(d);
  for (const std::string& path : stale) ::unlink(path.c_str());
}

int64_t ReplayDeltas(const DeltaLog& log, const UpdateCodec& server_codec,
                     RoundEngineState* state) {
  int64_t applied = 0;
  while (true) {
    absl::StatusOr<std::string> delta = log.Read(state->round);
    if (!delta.ok() || !server_codec.Validate(*delta).ok()) break;
    std::vector<float> x = state->params;
    if (!server_codec.DecodeAccumulate(*delta, -1.0f, absl::MakeSpan(x)).ok() ||
        !std::all_of(x.begin(), x.end(),
                     [](float v) { return std::isfinite(v); })) {
      break;
    }
    state->params = std::move(x);
    state->error_memory.clear();
    ++state->round;
    ++applied;
  }
  return applied;
}

}  // namespace effadam

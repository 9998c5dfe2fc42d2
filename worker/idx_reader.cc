#include "worker/idx_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace effadam {
namespace {

// IDX magic: two zero bytes, the element type (0x08 = unsigned byte) and the
// number of dimensions.
constexpr uint32_t kImagesMagic = 0x00000803;
constexpr uint32_t kLabelsMagic = 0x00000801;
constexpr int kNumClasses = 10;

// Bounds on header fields: far above any real image data set, low enough that
// products of them fit in int64 and error messages stay meaningful.
constexpr int64_t kMaxExamples = int64_t{1} << 31;
constexpr int64_t kMaxPixelsPerImage = int64_t{1} << 24;

// Read buffers never reserve more than this ahead of the data actually read.
constexpr int64_t kMaxReserveBytes = int64_t{64} << 20;
constexpr unsigned kChunkBytes = 1u << 20;

// Owns a zlib file handle; gzread passes uncompressed files through as is.
class GzFile {
 public:
  explicit GzFile(gzFile f) : f_(f) {}
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() {
    if (f_ != nullptr) gzclose(f_);
  }
  gzFile get() const { return f_; }

 private:
  gzFile f_;
};

absl::StatusOr<std::unique_ptr<GzFile>> Open(const std::string& path) {
  errno = 0;
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    // gzopen leaves errno at 0 only when it could not allocate its state.
    const int err = errno != 0 ? errno : ENOMEM;
    return absl::Status(
        absl::ErrnoToStatusCode(err),
        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  auto file = std::make_unique<GzFile>(f);
  gzbuffer(f, 256 * 1024);
  return file;
}

// Reads up to `n` bytes, appending them to `out`; returns how many were
// read (fewer only at the end of the data). A zlib error is DataLoss.
absl::StatusOr<int64_t> ReadUpTo(GzFile& file, const std::string& path,
                                 int64_t n, std::vector<uint8_t>* out) {
  int64_t got = 0;
  while (got < n) {
    const unsigned want =
        static_cast<unsigned>(std::min<int64_t>(n - got, kChunkBytes));
    const size_t old_size = out->size();
    out->resize(old_size + want);
    const int r = gzread(file.get(), out->data() + old_size, want);
    if (r < 0) {
      int errnum = 0;
      const char* msg = gzerror(file.get(), &errnum);
      out->resize(old_size);
      return absl::DataLossError(
          absl::StrCat(path, ": truncated or corrupt compressed data after ",
                       out->size(), " bytes: ", msg));
    }
    out->resize(old_size + static_cast<size_t>(r));
    got += r;
    if (r == 0) break;
  }
  return got;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// One IDX file of unsigned bytes: its dimensions and its data.
struct IdxContents {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

absl::StatusOr<IdxContents> ReadIdx(const std::string& path,
                                    uint32_t expected_magic, const char* what) {
  auto file_or = Open(path);
  if (!file_or.ok()) return file_or.status();
  GzFile& file = **file_or;

  const int ndim = static_cast<int>(expected_magic & 0xff);
  const int64_t header_bytes = 4 + 4 * int64_t{ndim};
  std::vector<uint8_t> header;
  auto got = ReadUpTo(file, path, 4, &header);
  if (!got.ok()) return got.status();
  if (*got < 4) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: the file has ", *got,
                     " bytes, too short for the 4-byte IDX magic number"));
  }
  const uint32_t magic = BigEndian32(header.data());
  if (magic != expected_magic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: bad magic number 0x%08x, expected 0x%08x (IDX %s file: unsigned "
        "bytes, %d dimension%s)",
        path, magic, expected_magic, what, ndim, ndim == 1 ? "" : "s"));
  }
  got = ReadUpTo(file, path, header_bytes - 4, &header);
  if (!got.ok()) return got.status();
  if (*got < header_bytes - 4) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated header: expected ", header_bytes,
                     " bytes, got ", 4 + *got));
  }

  IdxContents contents;
  int64_t total = 1;
  for (int i = 0; i < ndim; ++i) {
    const int64_t d = BigEndian32(header.data() + 4 + 4 * i);
    const int64_t max = i == 0 ? kMaxExamples : kMaxPixelsPerImage;
    if (d <= 0 || d > max) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": dimension ", i, " of the header is ", d,
                       ", outside [1, ", max, "]"));
    }
    contents.dims.push_back(d);
    if (i >= 1 && total * d > kMaxPixelsPerImage) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": header claims ", total * d,
          " bytes per example, more than the limit of ", kMaxPixelsPerImage));
    }
    if (i >= 1) total *= d;
  }
  total *= contents.dims[0];

  // Reserve no more than a bounded amount up front; a header that claims
  // more than the file holds fails below before memory follows the claim.
  contents.data.reserve(
      static_cast<size_t>(std::min<int64_t>(total, kMaxReserveBytes)));
  got = ReadUpTo(file, path, total, &contents.data);
  if (!got.ok()) return got.status();
  if (*got < total) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated: the header promises ", total,
                     " bytes of ", what, " data, the file holds ", *got));
  }
  std::vector<uint8_t> extra;
  got = ReadUpTo(file, path, 1, &extra);
  if (!got.ok()) return got.status();
  if (*got != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": trailing data after the ", total, " bytes of ",
                     what, " data the header promises"));
  }
  return contents;
}

}  // namespace

absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path) {
  // Labels first: they are small, so a mismatch is found before the images
  // are read in full.
  auto labels = ReadIdx(labels_path, kLabelsMagic, "label");
  if (!labels.ok()) return labels.status();
  auto images = ReadIdx(images_path, kImagesMagic, "image");
  if (!images.ok()) return images.status();

  const int64_t n = images->dims[0];
  if (labels->dims[0] != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "mismatched counts: ", images_path, " holds ", n, " images but ",
        labels_path, " holds ", labels->dims[0], " labels"));
  }
  for (int64_t i = 0; i < n; ++i) {
    if (labels->data[i] >= kNumClasses) {
      return absl::InvalidArgumentError(
          absl::StrCat(labels_path, ": label ", labels->data[i], " of example ",
                       i, " is out of range [0, ", kNumClasses, ")"));
    }
  }

  Dataset ds;
  ds.num_examples = n;
  ds.dim = images->dims[1] * images->dims[2];
  ds.num_classes = kNumClasses;
  ds.labels = std::move(labels->data);
  float scale[256];
  for (int b = 0; b < 256; ++b) scale[b] = static_cast<float>(b) / 255.0f;
  ds.images.resize(images->data.size());
  const uint8_t* src = images->data.data();
  float* dst = ds.images.data();
  for (size_t i = 0; i < images->data.size(); ++i) dst[i] = scale[src[i]];
  return ds;
}

}  // namespace effadam

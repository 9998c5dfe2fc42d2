#include "worker/idx_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace effadam {
namespace {

// Passes when `message` contains every one of `parts`.
::testing::AssertionResult Mentions(absl::string_view message,
                                    std::initializer_list<std::string> parts) {
  for (const std::string& part : parts) {
    if (!absl::StrContains(message, part)) {
      return ::testing::AssertionFailure()
             << "message \"" << message << "\" lacks \"" << part << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

const char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

void PutBigEndian(uint32_t v, std::string* out) {
  out->push_back(static_cast<char>(v >> 24));
  out->push_back(static_cast<char>(v >> 16));
  out->push_back(static_cast<char>(v >> 8));
  out->push_back(static_cast<char>(v));
}

std::string ImagesFile(uint32_t count, uint32_t rows, uint32_t cols,
                       const std::vector<uint8_t>& pixels,
                       uint32_t magic = 0x00000803) {
  std::string s;
  PutBigEndian(magic, &s);
  PutBigEndian(count, &s);
  PutBigEndian(rows, &s);
  PutBigEndian(cols, &s);
  s.append(pixels.begin(), pixels.end());
  return s;
}

std::string LabelsFile(uint32_t count, const std::vector<uint8_t>& labels,
                       uint32_t magic = 0x00000801) {
  std::string s;
  PutBigEndian(magic, &s);
  PutBigEndian(count, &s);
  s.append(labels.begin(), labels.end());
  return s;
}

class IdxReaderTest : public ::testing::Test {
 protected:
  std::string Path(const std::string& name) {
    const ::testing::TestInfo* info =
        ::testing::UnitTest::GetInstance()->current_test_info();
    return absl::StrCat(::testing::TempDir(), "/idx_", info->name(), "_", name);
  }

  std::string WriteGz(const std::string& name, const std::string& bytes) {
    const std::string path = Path(name);
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr) << path;
    if (f == nullptr) return path;
    if (!bytes.empty()) {
      EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
                static_cast<int>(bytes.size()));
    }
    EXPECT_EQ(gzclose(f), Z_OK);
    return path;
  }

  std::string WritePlain(const std::string& name, const std::string& bytes) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  std::string ReadPlain(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // Four 2x3 images and their labels.
  std::vector<uint8_t> pixels_ = {0, 255, 51, 102, 1,  2,   3,  4,  5,  6, 7,
                                  8, 9,   10, 11,  12, 128, 64, 32, 16, 8, 4};
  std::vector<uint8_t> labels_ = {3, 0, 9, 7};
};

TEST_F(IdxReaderTest, ReadsGzipFiles) {
  pixels_.resize(4 * 6, 200);
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_examples, 4);
  EXPECT_EQ(ds->dim, 6);
  EXPECT_EQ(ds->num_classes, 10);
  EXPECT_EQ(ds->labels, labels_);
  ASSERT_EQ(ds->images.size(), 24u);
  for (size_t i = 0; i < pixels_.size(); ++i) {
    EXPECT_EQ(ds->images[i], static_cast<float>(pixels_[i]) / 255.0f) << i;
  }
  EXPECT_EQ(ds->images[0], 0.0f);
  EXPECT_EQ(ds->images[1], 1.0f);
}

TEST_F(IdxReaderTest, ReadsUncompressedFiles) {
  pixels_.resize(4 * 6, 7);
  const std::string images = WritePlain("images", ImagesFile(4, 3, 2, pixels_));
  const std::string labels = WritePlain("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_examples, 4);
  EXPECT_EQ(ds->dim, 6);
  EXPECT_EQ(ds->labels, labels_);
  EXPECT_EQ(ds->images[5], 2.0f / 255.0f);
}

TEST_F(IdxReaderTest, BadMagicNamesFileAndMagic) {
  pixels_.resize(24);
  const std::string images =
      WriteGz("images", ImagesFile(4, 2, 3, pixels_, 0x00000804));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Mentions(ds.status().message(),
               {images, "bad magic number 0x00000804", "expected 0x00000803"}));
}

TEST_F(IdxReaderTest, SwappedFilesFailOnMagic) {
  pixels_.resize(24);
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(labels, images);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Mentions(ds.status().message(),
               {images, "bad magic number 0x00000803", "expected 0x00000801"}));
}

TEST_F(IdxReaderTest, TruncatedPixelData) {
  pixels_.resize(3 * 6 + 5);  // header says 4 images
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(ds.status().message(),
                       {images, "truncated", "promises 24 bytes", "holds 23"}));
}

TEST_F(IdxReaderTest, TruncatedHeader) {
  const std::string labels =
      WriteGz("labels", LabelsFile(4, labels_).substr(0, 6));
  pixels_.resize(24);
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(ds.status().message(), {labels, "truncated header"}));

  const std::string tiny = WriteGz("tiny", std::string("\0\0", 2));
  ds = LoadIdxDataset(images, tiny);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(ds.status().message(), {tiny, "truncated"}));
}

TEST_F(IdxReaderTest, TruncatedCompressedStream) {
  // Incompressible-ish pixels so the gzip stream is long enough to cut.
  std::vector<uint8_t> pixels(200 * 28 * 28);
  uint32_t x = 12345;
  for (uint8_t& p : pixels) {
    x = x * 1103515245u + 12345u;
    p = static_cast<uint8_t>(x >> 24);
  }
  const std::string full = WriteGz("full", ImagesFile(200, 28, 28, pixels));
  const std::string bytes = ReadPlain(full);
  ASSERT_GT(bytes.size(), 1000u);
  const std::string images =
      WritePlain("cut", bytes.substr(0, bytes.size() / 2));
  const std::string labels =
      WriteGz("labels", LabelsFile(200, std::vector<uint8_t>(200, 1)));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(Mentions(ds.status().message(), {images, "truncated"}));
}

TEST_F(IdxReaderTest, MismatchedCounts) {
  pixels_.resize(24);
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels =
      WriteGz("labels", LabelsFile(3, {labels_.begin(), labels_.end() - 1}));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      Mentions(ds.status().message(),
               {"mismatched counts", images, "4 images", labels, "3 labels"}));
}

TEST_F(IdxReaderTest, LabelOutOfRange) {
  pixels_.resize(24);
  labels_[2] = 10;
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(ds.status().message(),
                       {labels, "label 10 of example 2", "out of range"}));
}

TEST_F(IdxReaderTest, MissingFile) {
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  const std::string images = Path("does_not_exist");
  std::remove(images.c_str());
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(
      Mentions(ds.status().message(), {images, "cannot open", "No such file"}));
}

TEST_F(IdxReaderTest, LyingHeaderDoesNotAllocateItsClaim) {
  // Claims 2^31-1 images of 4097x4096 pixels; holds 24 bytes. The per-image
  // bound rejects it outright.
  pixels_.resize(24);
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  std::string images =
      WriteGz("huge", ImagesFile(0x7fffffff, 4097, 4096, pixels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(ds.status().message(), {images, "bytes per example"}));

  // Within every bound (2^31-1 images of 28x28, 1.7 TB): must fail as
  // truncated, after reading only what the file holds.
  images = WriteGz("big", ImagesFile(0x7fffffff, 28, 28, pixels_));
  ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(
      Mentions(ds.status().message(), {images, "truncated", "holds 24"}));
}

TEST_F(IdxReaderTest, ZeroDimension) {
  const std::string images = WriteGz("images", ImagesFile(4, 0, 3, {}));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(ds.status().message(), {images, "dimension 1", "is 0"}));
}

TEST_F(IdxReaderTest, TrailingData) {
  pixels_.resize(25);
  const std::string images = WriteGz("images", ImagesFile(4, 2, 3, pixels_));
  const std::string labels = WriteGz("labels", LabelsFile(4, labels_));
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(ds.status().message(), {images, "trailing data"}));
}

TEST(IdxReaderFashionMnistTest, ReadsTheRealTestSet) {
  const std::string images =
      absl::StrCat(kFashionDir, "/t10k-images-idx3-ubyte.gz");
  const std::string labels =
      absl::StrCat(kFashionDir, "/t10k-labels-idx1-ubyte.gz");
  if (!std::ifstream(images).good() || !std::ifstream(labels).good()) {
    GTEST_SKIP() << "Fashion-MNIST not found in " << kFashionDir
                 << " (Debian package dataset-fashion-mnist)";
  }
  auto ds = LoadIdxDataset(images, labels);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_examples, 10000);
  EXPECT_EQ(ds->dim, 784);
  std::vector<int> per_class(10);
  for (uint8_t l : ds->labels) ++per_class[l];
  for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[c], 1000) << c;
  float max = 0, sum = 0;
  for (float p : ds->images) {
    ASSERT_GE(p, 0.0f);
    ASSERT_LE(p, 1.0f);
    max = std::max(max, p);
    sum += p;
  }
  EXPECT_EQ(max, 1.0f);
  EXPECT_GT(sum / ds->images.size(), 0.1f);  // not all background
}

}  // namespace
}  // namespace effadam

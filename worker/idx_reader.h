#ifndef EFFADAM_WORKER_IDX_READER_H_
#define EFFADAM_WORKER_IDX_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace effadam {

// A labelled image data set held in memory.
struct Dataset {
  int64_t num_examples = 0;
  int64_t dim = 0;              // pixels per example (rows * cols, 784)
  std::vector<float> images;    // num_examples x dim, row-major, in [0, 1]
  std::vector<uint8_t> labels;  // num_examples, each < num_classes
  int num_classes = 10;
};

// Reads an IDX image file (magic 0x00000803, unsigned bytes, 3 dimensions)
// and its IDX label file (magic 0x00000801, 1 dimension), gzip-compressed or
// plain. Fails with NotFound when a file cannot be opened, DataLoss when one
// ends early or is corrupt, InvalidArgument when a header, the counts or a
// label (>= 10) is wrong; every message names the file and the problem.
// Memory grows only with the bytes actually read, so a lying header cannot
// make it allocate more than the file holds.
absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path);

}  // namespace effadam

#endif  // EFFADAM_WORKER_IDX_READER_H_

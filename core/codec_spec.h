#ifndef EFFADAM_CORE_CODEC_SPEC_H_
#define EFFADAM_CORE_CODEC_SPEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace effadam {

enum class CodecKind { kFp32, kBf16, kFp16, kSign, kQuant, kTopK };

// What a codec name on the command line means. Names:
//   fp32, bf16, fp16, sign, q2 .. q8, q2s .. q8s (stochastic rounding),
//   topk:R with 0 < R <= 1 (the fraction of each block that is kept).
struct CodecSpec {
  CodecKind kind = CodecKind::kFp32;
  int bits = 32;            // qN: N
  bool stochastic = false;  // qN: seeded stochastic instead of nearest rounding
  double ratio = 1.0;       // topk: fraction kept

  // The canonical name; ParseCodecSpec(ToString()) gives back this spec.
  std::string ToString() const;
  bool operator==(const CodecSpec& o) const;
};

// Parses a codec name; an unknown or malformed name is InvalidArgument with a
// message that lists the accepted names.
absl::StatusOr<CodecSpec> ParseCodecSpec(absl::string_view name);

}  // namespace effadam

#endif  // EFFADAM_CORE_CODEC_SPEC_H_

#include "core/codec_spec.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace effadam {
namespace {

constexpr char kAccepted[] =
    "accepted codecs: fp32, bf16, fp16, sign, q2..q8 (nearest rounding), "
    "q2s..q8s (stochastic rounding), topk:R with 0 < R <= 1";

absl::Status Malformed(absl::string_view name, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("bad codec name '", name, "': ", why, "; ", kAccepted));
}

}  // namespace

std::string CodecSpec::ToString() const {
  switch (kind) {
    case CodecKind::kFp32:
      return "fp32";
    case CodecKind::kBf16:
      return "bf16";
    case CodecKind::kFp16:
      return "fp16";
    case CodecKind::kSign:
      return "sign";
    case CodecKind::kQuant:
      return absl::StrCat("q", bits, stochastic ? "s" : "");
    case CodecKind::kTopK:
      // %.17g round-trips a double exactly through ParseCodecSpec.
      return absl::StrFormat("topk:%.17g", ratio);
  }
  return "unknown";
}

bool CodecSpec::operator==(const CodecSpec& o) const {
  if (kind != o.kind) return false;
  switch (kind) {
    case CodecKind::kQuant:
      return bits == o.bits && stochastic == o.stochastic;
    case CodecKind::kTopK:
      return ratio == o.ratio;
    default:
      return true;
  }
}

absl::StatusOr<CodecSpec> ParseCodecSpec(absl::string_view name) {
  CodecSpec spec;
  if (name == "fp32") {
    spec.kind = CodecKind::kFp32;
    spec.bits = 32;
    return spec;
  }
  if (name == "bf16" || name == "fp16") {
    spec.kind = name == "bf16" ? CodecKind::kBf16 : CodecKind::kFp16;
    spec.bits = 16;
    return spec;
  }
  if (name == "sign") {
    spec.kind = CodecKind::kSign;
    spec.bits = 1;
    return spec;
  }
  absl::string_view rest = name;
  if (absl::ConsumePrefix(&rest, "topk:")) {
    double ratio;
    if (!absl::SimpleAtod(rest, &ratio) || !std::isfinite(ratio)) {
      return Malformed(name, "the ratio after 'topk:' is not a number");
    }
    if (!(ratio > 0.0 && ratio <= 1.0)) {
      return Malformed(name, "the topk ratio must be in (0, 1]");
    }
    spec.kind = CodecKind::kTopK;
    spec.ratio = ratio;
    spec.bits = 32;
    return spec;
  }
  if (absl::ConsumePrefix(&rest, "q")) {
    bool stochastic = absl::ConsumeSuffix(&rest, "s");
    int bits;
    if (rest.size() != 1 || !absl::SimpleAtoi(rest, &bits)) {
      return Malformed(name, "expected q followed by a bit width 2..8");
    }
    if (bits < 2 || bits > 8) {
      return Malformed(name, "the bit width must be 2..8");
    }
    spec.kind = CodecKind::kQuant;
    spec.bits = bits;
    spec.stochastic = stochastic;
    return spec;
  }
  return Malformed(name, "unknown codec");
}

}  // namespace effadam

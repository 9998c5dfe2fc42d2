#include "common/json_writer.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace effadam {
namespace {

std::string Quote(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace

void JsonObject::Key(absl::string_view key) {
  absl::StrAppend(&body_, body_.empty() ? "\n  " : ",\n  ", Quote(key), ": ");
}

JsonObject& JsonObject::Add(absl::string_view key, double value) {
  Key(key);
  absl::StrAppend(&body_, std::isfinite(value) ? absl::StrFormat("%.10g", value)
                                               : std::string("null"));
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, int64_t value) {
  Key(key);
  absl::StrAppend(&body_, value);
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, absl::string_view value) {
  Key(key);
  absl::StrAppend(&body_, Quote(value));
  return *this;
}

JsonObject& JsonObject::Add(absl::string_view key, bool value) {
  Key(key);
  absl::StrAppend(&body_, value ? "true" : "false");
  return *this;
}

std::string JsonObject::ToString() const {
  return absl::StrCat("{", body_, body_.empty() ? "" : "\n", "}\n");
}

absl::Status JsonObject::WriteFile(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  const std::string text = ToString();
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok &= std::fclose(f) == 0;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace effadam

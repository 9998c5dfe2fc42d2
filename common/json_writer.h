#ifndef EFFADAM_COMMON_JSON_WRITER_H_
#define EFFADAM_COMMON_JSON_WRITER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace effadam {

// Builds one flat JSON object, keys in insertion order. Enough for run
// summaries; not a general JSON library.
class JsonObject {
 public:
  JsonObject& Add(absl::string_view key, double value);  // NaN/Inf -> null
  JsonObject& Add(absl::string_view key, int64_t value);
  JsonObject& Add(absl::string_view key, int value) {
    return Add(key, static_cast<int64_t>(value));
  }
  JsonObject& Add(absl::string_view key, absl::string_view value);
  JsonObject& Add(absl::string_view key, const char* value) {
    return Add(key, absl::string_view(value));
  }
  JsonObject& Add(absl::string_view key, bool value);

  // The object with a trailing newline.
  std::string ToString() const;

  // Writes ToString() to `path` through a temporary file and rename, so a
  // reader never sees half a file.
  absl::Status WriteFile(const std::string& path) const;

 private:
  void Key(absl::string_view key);
  std::string body_;
};

}  // namespace effadam

#endif  // EFFADAM_COMMON_JSON_WRITER_H_

#ifndef EFFADAM_TESTS_FUZZ_FUZZ_CHECK_H_
#define EFFADAM_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

// An invariant of a fuzz target: when it does not hold, print what and
// where and abort, which libFuzzer reports as a crash with the input saved.
#define FUZZ_CHECK(cond, ...)                                         \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, \
                   __LINE__, #cond);                                  \
      std::fprintf(stderr, __VA_ARGS__);                              \
      std::fprintf(stderr, "\n");                                     \
      std::abort();                                                   \
    }                                                                 \
  } while (0)

namespace effadam {
namespace fuzz {

// Reads the fuzz input front to back; past the end every read is zero, so
// a target never has to check lengths.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    const uint16_t lo = Byte();
    return static_cast<uint16_t>(lo | (Byte() << 8));
  }
  uint32_t U32() {
    const uint32_t lo = U16();
    return lo | (static_cast<uint32_t>(U16()) << 16);
  }
  // Up to `n` bytes (fewer at the end of the input).
  std::string Bytes(size_t n) {
    n = n < size_ - pos_ ? n : size_ - pos_;
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  // Bytes up to the next NUL (consumed) or the end.
  std::string CString(size_t max) {
    std::string s;
    while (pos_ < size_ && s.size() < max) {
      const char c = static_cast<char>(data_[pos_++]);
      if (c == '\0') break;
      s.push_back(c);
    }
    return s;
  }
  std::string Rest() { return Bytes(size_ - pos_); }
  size_t remaining() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace fuzz
}  // namespace effadam

#endif  // EFFADAM_TESTS_FUZZ_FUZZ_CHECK_H_

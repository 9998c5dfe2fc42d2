#ifndef EFFADAM_CORE_SQUARE_SUM_H_
#define EFFADAM_CORE_SQUARE_SUM_H_

#include <cstddef>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace effadam {

// Sum of squares of floats in double (a large model's sum keeps its small
// entries) with eight independent lanes, lane l taking the elements whose
// index is l mod 8, combined in a fixed order: the same bits on every run
// and on every host, and not one long chain of dependent adds. Adding a
// vector in pieces whose sizes are multiples of 8 (all but the last) gives
// the bits of adding it at once. For the error-memory norms, summed while a
// tile of the memory is in cache. Not thread-safe; one per thread.
class SquareSum {
 public:
  void Add(const float* v, size_t n) {
    size_t j = 0;
#if defined(__SSE2__)
    // The same eight lanes, two doubles per register: IEEE products and
    // sums, so the bits of the scalar loop below.
    {
      __m128d l01 = _mm_loadu_pd(lane_), l23 = _mm_loadu_pd(lane_ + 2);
      __m128d l45 = _mm_loadu_pd(lane_ + 4), l67 = _mm_loadu_pd(lane_ + 6);
      for (; j + 8 <= n; j += 8) {
        const __m128 a = _mm_loadu_ps(v + j), b = _mm_loadu_ps(v + j + 4);
        const __m128d a01 = _mm_cvtps_pd(a);
        const __m128d a23 = _mm_cvtps_pd(_mm_movehl_ps(a, a));
        const __m128d b01 = _mm_cvtps_pd(b);
        const __m128d b23 = _mm_cvtps_pd(_mm_movehl_ps(b, b));
        l01 = _mm_add_pd(l01, _mm_mul_pd(a01, a01));
        l23 = _mm_add_pd(l23, _mm_mul_pd(a23, a23));
        l45 = _mm_add_pd(l45, _mm_mul_pd(b01, b01));
        l67 = _mm_add_pd(l67, _mm_mul_pd(b23, b23));
      }
      _mm_storeu_pd(lane_, l01);
      _mm_storeu_pd(lane_ + 2, l23);
      _mm_storeu_pd(lane_ + 4, l45);
      _mm_storeu_pd(lane_ + 6, l67);
    }
#endif
    for (; j + 8 <= n; j += 8) {
      for (int l = 0; l < 8; ++l) {
        lane_[l] +=
            static_cast<double>(v[j + l]) * static_cast<double>(v[j + l]);
      }
    }
    for (; j < n; ++j) lane_[j % 8] += static_cast<double>(v[j]) * v[j];
  }
  double Total() const {
    return ((lane_[0] + lane_[1]) + (lane_[2] + lane_[3])) +
           ((lane_[4] + lane_[5]) + (lane_[6] + lane_[7]));
  }

 private:
  double lane_[8] = {0, 0, 0, 0, 0, 0, 0, 0};
};

}  // namespace effadam

#endif  // EFFADAM_CORE_SQUARE_SUM_H_

// The generic CPU driver: one OpenMP parallel region over a multi-tensor work list, and a plain
// loop per chunk that the compiler vectorizes. An algorithm object supplies kBuffers, storage_t
// and operator()(opmath_t* r): the update of one element, whose buffers are loaded into r,
// updated in registers and stored back (all but buffer 1, the read-only gradient).
#pragma once

#include <utility>

#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN

// The element loop over one chunk. The buffers arrive as separate restrict pointers, paired
// with their compile-time indices, so the loads and stores are straight-line code the vectorizer
// sees through (an array of pointers indexed in a loop defeats it).
template <class Algo, size_t... I, class... P>
inline void run_loop(const Algo& algo, int64_t len, std::index_sequence<I...>,
                     P* __restrict... b) {
  using S = typename Algo::storage_t;
  using O = opmath_t<S>;
  // The buffers of one tensor never overlap (the bindings refuse that): hence __restrict and
  // ivdep, so the loop vectorizes without run-time alias checks. Not `omp simd`: GCC turns the
  // addressable r[] into a per-lane "simd array" and then gives up on the loop. The local copy of
  // the algorithm keeps its scalars in registers rather than behind a pointer.
  const Algo a = algo;
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    O r[] = {static_cast<O>(b[i])...};
    a(r);
    ((I != 1 ? void(b[i] = static_cast<S>(r[I])) : void()), ...);
  }
}

template <class Algo, size_t... I>
inline void run_chunk(const Algo& algo, const TensorRef& t, int64_t begin, int64_t len,
                      std::index_sequence<I...> idx) {
  using S = typename Algo::storage_t;
  run_loop(algo, len, idx, (static_cast<S*>(t.ptr[I]) + begin)...);
}

// First chunk whose start is >= element, by bisection over the increasing chunk starts.
inline int64_t first_chunk_at(const WorkView& w, int64_t element) {
  int64_t lo = 0, hi = w.nchunks;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (w.chunks[mid].start < element) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

template <class Algo>
void apply(const WorkView& w, const Algo& algo) {
  if (w.total == 0) return;
  int team = 1;
#if defined(_OPENMP)
  team = w.max_threads > 0 ? w.max_threads : omp_get_max_threads();
#endif
  if (w.total < kParallelMin) team = 1;
#pragma omp parallel num_threads(team) if (team > 1)
  {
    int nthreads = 1, thread = 0;
#if defined(_OPENMP)
    nthreads = omp_get_num_threads();
    thread = omp_get_thread_num();
#endif
    // Each thread takes the chunks that start in its equal share of the elements; chunk
    // boundaries are fixed, so only which thread runs a chunk depends on the thread count.
    const int64_t per = w.total / nthreads, rem = w.total % nthreads;
    const int64_t lo_el = per * thread + rem * thread / nthreads;
    const int64_t hi_el = per * (thread + 1) + rem * (thread + 1) / nthreads;
    const int64_t lo = first_chunk_at(w, lo_el);
    const int64_t hi = thread + 1 == nthreads ? w.nchunks : first_chunk_at(w, hi_el);
    for (int64_t c = lo; c < hi; ++c) {
      const Chunk& ch = w.chunks[c];
      run_chunk(algo, w.tensors[ch.tensor], ch.begin, ch.len,
                std::make_index_sequence<Algo::kBuffers>{});
    }
  }
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

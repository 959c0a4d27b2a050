// The generic CPU driver: one OpenMP parallel region over a multi-tensor work list, and a plain
// loop per chunk that the compiler vectorizes. An algorithm object (algorithms/algorithm.h)
// supplies its storage, its slots and the update (or the terms of a reduction) of one element,
// whose buffers are loaded into r, updated in registers and stored back.
#pragma once

#include <utility>
#include <vector>

#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN

template <class Algo, size_t I>
using slot_t = typename Algo::storage::template slot_t<static_cast<int>(I)>;

// Slot I of an element, loaded if the algorithm reads it (else 0: nothing is loaded).
template <class Algo, size_t I, class P>
FUSEDOPT_INLINE typename Algo::O load_slot(const P& x) {
  if constexpr (Algo::read(static_cast<int>(I))) {
    return load<typename Algo::O>(x);
  } else {
    return typename Algo::O(0);
  }
}

// The element loop over one chunk. The buffers arrive as separate restrict pointers, paired
// with their compile-time slots, so the loads and stores are straight-line code the vectorizer
// sees through (an array of pointers indexed in a loop defeats it).
template <class Algo, size_t... I, class... P>
inline void update_loop(const Algo& algo, int64_t len, std::index_sequence<I...>,
                        P* __restrict... b) {
  using O = typename Algo::O;
  // The buffers of one tensor never overlap (the bindings refuse that): hence __restrict and
  // ivdep, so the loop vectorizes without run-time alias checks. Not `omp simd`: GCC turns the
  // addressable r[] into a per-lane "simd array" and then gives up on the loop. The local copy of
  // the algorithm keeps its scalars in registers rather than behind a pointer.
  const Algo a = algo;
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    O r[] = {load_slot<Algo, I>(b[i])...};
    a(r);
    ((Algo::written(I) ? void(b[i] = store<P>(r[I])) : void()), ...);
  }
}

// Note [Deterministic reductions]
// A reduction pass (an algorithm object with kAccumulators > 0) sums, per tensor, terms that the
// algorithm forms from each element, in double. To give the same bits for any thread count, on
// every SIMD path and on the GPU, the order of the additions is fixed by the data alone:
//   1. a chunk (kChunk elements, at boundaries fixed by the data) is read as rows of kLanes
//      elements; lane j adds the terms of elements j, j + kLanes, j + 2 kLanes, ... in that order
//      (a vector of any width advances several lanes at once without changing any lane's order;
//      a CUDA thread is a lane);
//   2. the lanes of a chunk are combined by a fixed pairwise tree: lane j += lane j + s for
//      s = kLanes/2, ..., 1 (as a CUDA block does in shared memory);
//   3. the chunk sums of a tensor are added in chunk order, and the sums of a tensor's work lists
//      in the order of the lists, starting from zero.
// Terms are formed and added in double whatever the storage, so a float32 tensor of 2^24
// elements loses nothing to its length; the bound on the error is that of a pairwise-and-linear
// sum of doubles.
template <class Algo, size_t... I, class... P>
inline void reduce_loop(const Algo& algo, int64_t len, double* sums, std::index_sequence<I...>,
                        P* __restrict... b) {
  using O = typename Algo::O;
  constexpr int K = Algo::kAccumulators;
  const Algo a = algo;
  alignas(64) double acc[K][kLanes] = {};
  for (int64_t base = 0; base < len; base += kLanes) {
    const int n = static_cast<int>(len - base < kLanes ? len - base : kLanes);
#pragma GCC ivdep
    for (int j = 0; j < n; ++j) {
      O r[] = {load_slot<Algo, I>(b[base + j])...};
      double c[K];
      a(r, c);
      for (int k = 0; k < K; ++k) acc[k][j] += c[k];
      ((Algo::written(I) ? void(b[base + j] = store<P>(r[I])) : void()), ...);
    }
  }
  for (int s = kLanes / 2; s > 0; s /= 2) {
    for (int k = 0; k < K; ++k) {
      for (int j = 0; j < s; ++j) acc[k][j] += acc[k][j + s];
    }
  }
  for (int k = 0; k < K; ++k) sums[k] = acc[k][0];
}

template <class Algo, size_t... I>
inline void run_chunk(const Algo& algo, const TensorRef& t, const Chunk& ch, double* sums,
                      std::index_sequence<I...> idx) {
  if constexpr (Algo::kAccumulators > 0) {
    reduce_loop(algo, ch.len, sums, idx, (static_cast<slot_t<Algo, I>*>(t.ptr[I]) + ch.begin)...);
  } else {
    (void)sums;
    update_loop(algo, ch.len, idx, (static_cast<slot_t<Algo, I>*>(t.ptr[I]) + ch.begin)...);
  }
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

// Runs algo over every chunk of w; a reduction leaves chunk c's sums at partial[c * K].
template <class Algo>
void for_each_chunk(const WorkView& w, const Algo& algo, double* partial) {
  constexpr int K = Algo::kAccumulators;
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
      run_chunk(at_tensor(algo, w.origin[ch.tensor]), w.tensors[ch.tensor], ch,
                K > 0 ? partial + c * K : nullptr, std::make_index_sequence<Algo::kBuffers>{});
    }
  }
}

// Applies an update to every element of w; or, for a reduction, adds each tensor's sums to
// out[origin * K] in the order of Note [Deterministic reductions].
template <class Algo>
void apply(const WorkView& w, const Algo& algo, double* out) {
  if (w.total == 0) return;
  constexpr int K = Algo::kAccumulators;
  if constexpr (K == 0) {
    (void)out;
    for_each_chunk(w, algo, nullptr);
  } else {
    std::vector<double> partial(static_cast<size_t>(w.nchunks) * K);
    for_each_chunk(w, algo, partial.data());
    for (int64_t c = 0; c < w.nchunks; ++c) {
      double* o = out + w.origin[w.chunks[c].tensor] * K;
      for (int k = 0; k < K; ++k) o[k] += partial[c * K + k];
    }
  }
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

// The generic CPU driver: one OpenMP parallel region over a multi-tensor work list, and a plain
// loop per chunk that the compiler vectorizes. An algorithm object (algorithms/algorithm.h)
// supplies its storage, its slots and the update (or the terms of a reduction) of one element,
// whose buffers are loaded into r, updated in registers and stored back.
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

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

// What the element loop does besides storing the written slots: nothing; also write each new
// param's bfloat16 copy (Note [Compiled param copies] in storage.h); or store the param with
// its Kahan compensation (Note [Compiled Kahan summation] in storage.h), in place of its store.
enum class ParamStore { Plain, Copy, Kahan };

template <class P0, class... P>
FUSEDOPT_INLINE P0* first_of(P0* p, P*...) {
  return p;
}

// The element loop over one chunk. The buffers arrive as separate restrict pointers, paired
// with their compile-time slots, so the loads and stores are straight-line code the vectorizer
// sees through (an array of pointers indexed in a loop defeats it).
// Not inlined: the staged combinations (Note [The staging tile]) call the same loop as their
// float32 kernel, so that no algorithm's loop is compiled twice.
// `side` is the params' bfloat16 copies (ParamStore::Copy) or their compensations
// (ParamStore::Kahan, of the params' bfloat16 dtype); unused otherwise.
template <ParamStore Store = ParamStore::Plain, class Algo, size_t... I, class... P>
__attribute__((noinline)) void update_loop(const Algo& algo, int64_t len, std::index_sequence<I...>,
                                           bf16* __restrict side, P* __restrict... b) {
  using O = typename Algo::O;
  constexpr bool kahan = Store == ParamStore::Kahan;
  // The buffers of one tensor never overlap (the bindings refuse that): hence __restrict and
  // ivdep, so the loop vectorizes without run-time alias checks. Not `omp simd`: GCC turns the
  // addressable r[] into a per-lane "simd array" and then gives up on the loop. The local copy of
  // the algorithm keeps its scalars in registers rather than behind a pointer.
  const Algo a = algo;
  [[maybe_unused]] auto* param = first_of(b...);  // (based on slot 0's restrict pointer)
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    O r[] = {load_slot<Algo, I>(b[i])...};
    a(r);
    ((Algo::written(I) && !(kahan && I == 0) ? void(b[i] = store<P>(r[I])) : void()), ...);
    if constexpr (Store == ParamStore::Copy) side[i] = store<bf16>(r[0]);
    if constexpr (kahan) kahan_store<bf16>(r[0], &param[i].bits, &side[i].bits);
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
// The rows of `len` elements (a multiple of kLanes but at the end of a chunk) added into the
// lane accumulators acc, in the order of step 1.
template <class Algo, size_t... I, class... P>
__attribute__((noinline)) void reduce_rows(const Algo& algo, int64_t len, double (*acc)[kLanes],
                        std::index_sequence<I...>, P* __restrict... b) {
  using O = typename Algo::O;
  constexpr int K = Algo::kAccumulators;
  const Algo a = algo;
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
}

// Steps 2 (the tree) of a chunk's lanes, into sums[K].
template <int K>
inline void reduce_lanes(double (*acc)[kLanes], double* sums) {
  for (int s = kLanes / 2; s > 0; s /= 2) {
    for (int k = 0; k < K; ++k) {
      for (int j = 0; j < s; ++j) acc[k][j] += acc[k][j + s];
    }
  }
  for (int k = 0; k < K; ++k) sums[k] = acc[k][0];
}

template <class Algo, size_t... I, class... P>
inline void reduce_loop(const Algo& algo, int64_t len, double* sums, std::index_sequence<I...> idx,
                        P* __restrict... b) {
  alignas(64) double acc[Algo::kAccumulators][kLanes] = {};
  reduce_rows(algo, len, acc, idx, b...);
  reduce_lanes<Algo::kAccumulators>(acc, sums);
}

// Note [The staging tile]
// A staged combination (Note [Staged storage] in storage.h) runs chunk by chunk as the others
// do, each chunk in tiles of kStageTile elements: each 16-bit buffer of the tile that the
// algorithm reads is converted into a float32 stage (float32 buffers are used where they lie),
// the float32 loop runs over the tile, and each written 16-bit buffer is rounded back from its
// stage. The stages of all slots, 4 KiB each, stay in L1, so memory is still read and written
// once per step. A tile is a whole number of a reduction's rows and the lane accumulators run on
// across the tiles of a chunk: the sums are added in the order of a compiled kernel's.
constexpr int64_t kStageTile = 1024;
static_assert(kStageTile % kLanes == 0, "a staging tile is a whole number of reduction rows");

// Note [F16C]
// GCC does not vectorize conversions of _Float16, and float16's rounding in integer operations
// (Note [Rounding to 16 bits]) costs a dozen instructions per value: where the instruction set
// has F16C (the AVX2 and AVX-512 builds) the staging converts 8 values per instruction. The bits
// are the same: F16C rounds to nearest even and quiets a NaN as the integer code does (checked
// over every float32 and every float16 when this was written; tests/test_low_precision.py checks
// every float16 and sums that round at ties, on every SIMD path).

// n elements of dtype d at src, as float32 at dst (exact). Not inlined: one copy of each loop
// serves every algorithm.
__attribute__((noinline)) inline void stage_in(DType d, const void* src, float* __restrict dst, int64_t n) {
  if (d == DType::BFloat16) {
    const auto* s = static_cast<const bf16*>(src);
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) dst[i] = load<float>(s[i]);
  } else {
    const auto* s = static_cast<const f16*>(src);
    int64_t i = 0;
#if defined(__F16C__)  // Note [F16C]
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
#pragma GCC ivdep
    for (; i < n; ++i) dst[i] = load<float>(s[i]);
  }
}

// The key of Note [Stochastic rounding] for a tile: the element index's low 32 bits at its
// start, and the bits of (seed and step, tensor, buffer, the index's high bits).
struct SrKey {
  uint32_t first, lo, hi;
};

// The key of the tile starting at element `at` of the call's tensor `tensor`, buffer `slot`
// (kMaxBuffers: the param copy), for the run's `run_key` (its seed and step, WorkView::sr_key).
// A tile never crosses a multiple of 2^32 elements (it starts at a multiple of kStageTile).
inline SrKey sr_key(uint64_t run_key, int64_t tensor, int slot, int64_t at) {
  const uint64_t where = static_cast<uint64_t>(tensor) ^ (static_cast<uint64_t>(slot) << 40) ^
                         (static_cast<uint64_t>(at >> 32) << 44);
  const uint64_t k = mix64(run_key ^ mix64(where));
  return {static_cast<uint32_t>(at), static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

// n float32 at src stored as 16-bit S at dst with stochastic rounding under the key `sr`.
template <class S>
FUSEDOPT_INLINE void stage_out_sr(const float* __restrict src, uint16_t* __restrict o, int64_t n,
                                  const SrKey& sr) {
  const uint32_t first = sr.first, lo = sr.lo, hi = sr.hi;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    o[i] = float_to_sr<S>(src[i], sr_bits(first + static_cast<uint32_t>(i), lo, hi));
  }
}

// n float32 at src, rounded once to dtype d at dst: to nearest (Note [Rounding to 16 bits]), or
// stochastically under the key `sr` (Note [Stochastic rounding]) when it is not null.
__attribute__((noinline)) inline void stage_out(DType d, const float* __restrict src, void* dst,
                                                int64_t n, const SrKey* sr = nullptr) {
  if (sr != nullptr) {
    auto* o = static_cast<uint16_t*>(dst);
    if (d == DType::BFloat16) {
      stage_out_sr<bf16>(src, o, n, *sr);
    } else {
      stage_out_sr<f16>(src, o, n, *sr);
    }
    return;
  }
  if (d == DType::BFloat16) {
    auto* o = static_cast<bf16*>(dst);
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) o[i] = store<bf16>(src[i]);
  } else {
    auto* o = static_cast<f16*>(dst);
    int64_t i = 0;
#if defined(__F16C__)  // Note [F16C]
    for (; i + 8 <= n; i += 8) {
      const __m128i h =
          _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), h);
    }
#endif
#pragma GCC ivdep
    for (; i < n; ++i) o[i] = store<f16>(src[i]);
  }
}

// Note [Param copies]
// A call may also write, for each float32 param, a 16-bit copy of its new value (the optimizer
// step of mixed-precision training: float32 master weights updated from 16-bit grads, and the
// 16-bit params the model computes with written in the same pass; or the bfloat16 params sent
// back to the GPU after a CPU step). The copy is the stored param rounded once, written from the
// staging tile (Note [The staging tile]) while the param is in L1: 2 more bytes per element and
// no pass of its own (or from the compiled loop: Note [Compiled param copies] in storage.h). Only
// a pass that writes the params writes their copies.

// The new values q of n 16-bit params of dtype d at `param` (still holding their old values), with
// their compensations at `comp`, stored by Note [Kahan summation] (storage.h).
__attribute__((noinline)) inline void kahan_out(DType d, const float* __restrict q, void* param,
                                                void* comp, int64_t n) {
  auto* p = static_cast<uint16_t*>(param);
  auto* c = static_cast<uint16_t*>(comp);
  if (d == DType::BFloat16) {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) kahan_store<bf16>(q[i], p + i, c + i);
  } else {
#pragma GCC ivdep
    for (int64_t i = 0; i < n; ++i) kahan_store<f16>(q[i], p + i, c + i);
  }
}

// One chunk of a staged combination `combo` (or of any float32 call with param copies of DType
// `copy`, or of Kahan-compensated float16 params), for a float32 algorithm object.
template <class Algo, size_t... I>
inline void run_chunk_staged(const Algo& algo, const TensorRef& t, const Chunk& ch, double* sums,
                             const WorkView& w, int64_t tensor, std::index_sequence<I...> idx) {
  constexpr int K = Algo::kAccumulators;
  constexpr int B = Algo::kBuffers;
  alignas(64) float stage[B][kStageTile];
  alignas(64) double acc[K > 0 ? K : 1][kLanes];
  if constexpr (K > 0) std::fill(&acc[0][0], &acc[0][0] + K * kLanes, 0.0);  // (an update: none)
  DType type[B];
  for (int k = 0; k < B; ++k) type[k] = slot_dtype(w.combo, k);
  const bool kahan = w.kahan && t.copy != nullptr;           // Note [Kahan summation]
  const bool copy = !w.kahan && w.copy >= 0 && t.copy != nullptr;  // Note [Param copies]
  // n float32 at src stored as dtype d at dst, the tile at `at` of buffer `slot`
  auto out = [&](DType d, const float* src, void* dst, int slot, int64_t at, int64_t n) {
    const SrKey key = w.stochastic ? sr_key(w.sr_key, tensor, slot, at) : SrKey{};
    stage_out(d, src, static_cast<char*>(dst) + at * 2, n, w.stochastic ? &key : nullptr);
  };
  for (int64_t s = 0; s < ch.len; s += kStageTile) {
    const int64_t n = ch.len - s < kStageTile ? ch.len - s : kStageTile;
    const int64_t at = ch.begin + s;
    float* ptr[B];
    for (int k = 0; k < B; ++k) {
      char* mem = static_cast<char*>(t.ptr[k]);
      if (type[k] == DType::Float32) {
        ptr[k] = reinterpret_cast<float*>(mem) + at;
      } else {
        ptr[k] = stage[k];
        if (Algo::read(k)) stage_in(type[k], mem + at * 2, stage[k], n);
      }
    }
    if constexpr (K > 0) {
      reduce_rows(algo, n, acc, idx, ptr[I]...);
    } else {
      update_loop(algo, n, idx, nullptr, ptr[I]...);
    }
    for (int k = 0; k < B; ++k) {
      if (type[k] == DType::Float32 || !Algo::written(k)) continue;
      if (k == 0 && kahan) {
        kahan_out(type[0], stage[0], static_cast<char*>(t.ptr[0]) + at * 2,
                  static_cast<char*>(t.copy) + at * 2, n);
      } else {
        out(type[k], stage[k], t.ptr[k], k, at, n);
      }
    }
    if (Algo::written(0) && copy) {
      out(static_cast<DType>(w.copy), ptr[0], t.copy, kMaxBuffers, at, n);
    }
  }
  if constexpr (K > 0) {
    reduce_lanes<K>(acc, sums);
  } else {
    (void)sums;
  }
}

// One chunk: through staging where the buffers are not all float32 (a staged combination, or a
// compiled one run staged for stochastic rounding, Kahan compensation or param copies: the
// float32 algorithm object stands for every combination then), or for param copies of all-float32
// params. The one compiled combination that writes copies itself (Note [Compiled param copies]
// in storage.h) finds them in t.copy, and so do the compiled ones that compensate their bfloat16
// params themselves (Note [Compiled Kahan summation]) their compensations.
template <class Algo, size_t... I>
inline void run_chunk(const Algo& algo, const TensorRef& t, const Chunk& ch, double* sums,
                      const WorkView& w, int64_t tensor, std::index_sequence<I...> idx) {
  using St = typename Algo::storage;
  if constexpr (std::is_same_v<St, Storage<float, float, float>>) {
    static_assert(kCombos.at[0].param == DType::Float32 && kCombos.at[0].grad == DType::Float32 &&
                  kCombos.at[0].state == DType::Float32, "combination 0 is all float32");
    if (w.combo != 0 || t.copy != nullptr) {
      run_chunk_staged(algo, t, ch, sums, w, tensor, idx);
      return;
    }
  } else {
    (void)w;
    (void)tensor;
  }
  if constexpr (Algo::kAccumulators > 0) {
    static_assert(!(std::is_same_v<St, CompiledCopyStorage> && Algo::written(0)),
                  "a compiled reduction pass that wrote params would write their copies");
    static_assert(!(kKahanCompiled<St> && Algo::written(0)),
                  "a compiled reduction pass that wrote params would not compensate them");
    reduce_loop(algo, ch.len, sums, idx, (static_cast<slot_t<Algo, I>*>(t.ptr[I]) + ch.begin)...);
  } else {
    (void)sums;
    // the params' compensations (where w.kahan), or their copies, stored by the loop itself
    constexpr ParamStore store = kKahanCompiled<St> ? ParamStore::Kahan
                                 : std::is_same_v<St, CompiledCopyStorage> ? ParamStore::Copy
                                 : ParamStore::Plain;
    if constexpr (Algo::written(0) && store != ParamStore::Plain) {
      if (t.copy != nullptr && (store == ParamStore::Copy || w.kahan)) {
        update_loop<store>(algo, ch.len, idx, static_cast<bf16*>(t.copy) + ch.begin,
                           (static_cast<slot_t<Algo, I>*>(t.ptr[I]) + ch.begin)...);
        return;
      }
    }
    update_loop(algo, ch.len, idx, nullptr,
                (static_cast<slot_t<Algo, I>*>(t.ptr[I]) + ch.begin)...);
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
                K > 0 ? partial + c * K : nullptr, w, w.origin[ch.tensor],
                std::make_index_sequence<Algo::kBuffers>{});
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

// The generic CUDA driver's device-independent half: how a call's tensors are cut into launches
// (the tensor list passed by value, Note [Kernel-argument limit]) and what each thread of a block
// does, written as plain functions of (block, thread) so that the host compiler can build and run
// them too (the emulation the tests use without a GPU). launch.cuh wraps them in kernels.
//
// An update: each block updates one chunk of one tensor, each thread 4 elements per iteration,
// through a 16-byte vector path when the chunk's buffers allow it and a scalar path otherwise.
// Both call the algorithm object's operator()(O* r), i.e. the same math the CPU driver runs.
// A reduction: each block is one chunk, each thread a lane (Note [Deterministic reductions] in
// cpu/driver.h); the lanes are combined by the same tree as on the CPU, and the chunk sums of a
// tensor added in chunk order by a second, one-thread kernel, so the sums are the CPU's bits.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../algorithms/registry.h"

namespace fusedopt::cuda {

// Elements one thread block updates: a tensor is cut into chunks of this many elements and each
// chunk is one block of a launch (the last chunk of a tensor is shorter). 64Ki elements give a
// block of 512 threads 32 iterations of 4 elements: enough work to hide the block's start, and
// still thousands of blocks for a 256Mi-element tensor. A multiple of 4, so that every chunk of
// an aligned tensor starts aligned for the vector path; the CPU driver's chunk, so that a
// reduction's chunks are the same on both.
constexpr int64_t kChunk = 1 << 16;

// Threads per block, as PyTorch's and apex's multi-tensor apply use: 16 warps, four blocks fill
// an SM of 2048 threads, and __launch_bounds__ then leaves up to 128 registers per thread, far
// more than the largest update (AMSGrad, 5 buffers x 4 elements) needs. Also the lanes of a
// reduction (cpu::kLanes).
constexpr int kBlock = 512;

// Elements per thread per iteration: one 16-byte load per buffer for float32, two for float64,
// all issued before the first update so that D x 16..32 bytes per thread are in flight.
constexpr int kILP = 4;

// The vector path loads 4 elements of a buffer as one 16-byte-aligned pack (LDG.128/STG.128).
constexpr int kVecAlign = 16;

// Note [Kernel-argument limit]
// The tensor list of a launch travels by value as kernel parameters: no host-to-device copy, no
// device allocation, and the launch is ordered on its stream like any other kernel. Kernel
// parameters are limited to 4,096 bytes: the classic limit, valid on every architecture and driver
// (CUDA 12.1+ allows 32,764 bytes from Volta on, which this code does not rely on). One launch's
// parameters are a TensorListArgs<D> followed by the algorithm object:
//   per tensor: D buffer pointers + an int64 element count   (8*D + 8) bytes
//               (a reduction: + the tensor's int64 index in the call, its output row: 8 bytes)
//   per block:  an int32 chunk index + a uint8 tensor index   5 * kMaxBlocks = 1,600 bytes
//               (a reduction: + the int64 call index of the launch's first chunk: 8 bytes)
//   the algorithm object                                       <= kAlgoBytes = 128 bytes
//                                        (the largest today holds 10 doubles: 80)
//   alignment padding                                          <= kPadBytes = 16 bytes
// so an update takes kMaxTensors(D) = (4096 - 128 - 1600 - 16) / (8*D + 8) = 2352 / (8*D + 8),
//   D = 2: 98,  D = 3: 73,  D = 4: 58,  D = 5: 49 tensors per launch,
// a reduction (4096 - 128 - 1600 - 16 - 8) / (8*D + 16): D = 1: 97, D = 2: 73, D = 3: 58,
// and static_asserts in the launcher check the real sizes. A longer list, or one of more than
// kMaxBlocks chunks, takes several launches of the same kernel; a tensor whose chunks do not all
// fit continues in the next launch.
constexpr int kParamBytes = 4096;
constexpr int kAlgoBytes = 128;
constexpr int kPadBytes = 16;
// Blocks (chunks) per launch: 320 chunks are 20Mi elements, a few hundred microseconds of work on
// a current GPU against a few microseconds to launch.
constexpr int kMaxBlocks = 320;

constexpr int max_tensors(int nbuf, bool reduce) {
  return (kParamBytes - kAlgoBytes - kMaxBlocks * (4 + 1) - kPadBytes - (reduce ? 8 : 0)) /
         (8 * nbuf + 8 + (reduce ? 8 : 0));
}

template <int D, bool Reduce = false>
struct TensorListArgs {
  static constexpr int kMaxTensors = max_tensors(D, Reduce);
  static constexpr bool kReduce = Reduce;
  void* ptr[D][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];   // which chunk of its tensor the block updates
  uint8_t block_tensor[kMaxBlocks];  // which tensor of this launch (< kMaxTensors <= 255)
};

// A reduction's launch: also where each tensor's sums go and which chunk of the call each block is.
template <int D>
struct ReduceListArgs : TensorListArgs<D, true> {
  int64_t first_chunk;                                  // the call's index of block 0's chunk
  int64_t origin[TensorListArgs<D, true>::kMaxTensors];  // each tensor's index in the call
};

// One call's tensors on one device, of one storage combination; buffers in slot order (Note
// [Kernel slots]). Tensors with numel == 0 are skipped.
struct DeviceList {
  const TensorRef* tensors;
  const int64_t* origin;  // each tensor's index in the call (a reduction's output row)
  int64_t ntensors;
  int combo;              // index in StorageCombos
  int device;             // CUDA device ordinal the pointers belong to; made current for the launch
  uintptr_t stream;       // a cudaStream_t; 0 is the legacy default stream
};

// The chunks of a tensor of `numel` elements; refuses what one call cannot address.
inline int64_t chunks_of(int64_t numel) {
  const int64_t nchunks = (numel + kChunk - 1) / kChunk;
  if (nchunks > INT32_MAX) {
    throw std::runtime_error("fusedopt: a tensor of " + std::to_string(numel) +
                             " elements is beyond the 2^47 elements one call can address");
  }
  return nchunks;
}

// The chunks of a whole list.
inline int64_t chunks_of(const DeviceList& l) {
  int64_t n = 0;
  for (int64_t t = 0; t < l.ntensors; ++t) {
    if (l.tensors[t].numel > 0) n += chunks_of(l.tensors[t].numel);
  }
  return n;
}

// Cuts the tensors of `l` into launches, in as few as Note [Kernel-argument limit] allows, and
// calls emit(args, nblocks) for each: block b of that launch is chunk args.block_chunk[b] of
// tensor args.block_tensor[b] (and, for a reduction, the call's chunk args.first_chunk + b).
template <class Args, class Emit>
void for_each_launch(const DeviceList& l, Emit&& emit) {
  constexpr int D = sizeof(Args::ptr) / sizeof(Args::ptr[0]);
  static_assert(D >= 1 && D <= kMaxBuffers, "an algorithm touches 1..kMaxBuffers buffers");
  static_assert(Args::kMaxTensors <= 255, "block_tensor is a uint8");
  Args args{};
  int nt = 0;              // tensors in args
  int nb = 0;              // blocks in args
  int64_t next_chunk = 0;  // the call's chunks so far
  auto flush = [&] {
    emit(static_cast<const Args&>(args), nb);
    if constexpr (Args::kReduce) args.first_chunk = next_chunk;
    nb = 0;
  };

  for (int64_t ti = 0; ti < l.ntensors; ++ti) {
    const TensorRef& tr = l.tensors[ti];
    if (tr.numel <= 0) continue;
    const int64_t nchunks = chunks_of(tr.numel);
    for (int k = 0; k < D; ++k) args.ptr[k][nt] = tr.ptr[k];
    args.numel[nt] = tr.numel;
    if constexpr (Args::kReduce) args.origin[nt] = l.origin[ti];
    ++nt;
    for (int64_t c = 0; c < nchunks; ++c) {
      args.block_tensor[nb] = static_cast<uint8_t>(nt - 1);
      args.block_chunk[nb] = static_cast<int32_t>(c);
      ++nb;
      ++next_chunk;
      const bool last_chunk = c + 1 == nchunks;
      if (nb == kMaxBlocks || (last_chunk && nt == Args::kMaxTensors)) {
        flush();
        if (last_chunk) {
          nt = 0;
        } else {
          // The tensor goes on in the next launch, as its first tensor.
          for (int k = 0; k < D; ++k) args.ptr[k][0] = args.ptr[k][nt - 1];
          args.numel[0] = args.numel[nt - 1];
          if constexpr (Args::kReduce) args.origin[0] = args.origin[nt - 1];
          nt = 1;
        }
      }
    }
  }
  if (nb > 0) flush();
}

// The argument list of an algorithm object's launches.
// (An update that reads a value per tensor takes a reduction's list, for its tensors' origin.)
template <class Algo>
using ArgsOf = std::conditional_t<(Algo::kAccumulators > 0 || Algo::kPerTensor),
                                  ReduceListArgs<Algo::kBuffers>, TensorListArgs<Algo::kBuffers>>;

// ArgsOf<Algo>, checked to fit a launch's arguments with the algorithm (Note [Kernel-argument
// limit]); what a launch (or its emulation) names its arguments by.
template <class Algo>
struct FittingArgs {
  static_assert(sizeof(Algo) <= kAlgoBytes, "Note [Kernel-argument limit]: algorithm too large");
  static_assert(sizeof(ArgsOf<Algo>) + kPadBytes + kAlgoBytes <= kParamBytes,
                "Note [Kernel-argument limit]: tensor list too large");
  using type = ArgsOf<Algo>;
};
template <class Algo>
using LaunchArgsOf = typename FittingArgs<Algo>::type;

FUSEDOPT_ISA_BEGIN

template <class Algo, int K>
using slot_type = typename Algo::storage::template slot_t<K>;

// What block `block` of a launch covers: tensor t of the launch, from element `begin` (int64: a
// tensor may have more than 2^31 elements), `len` elements (a chunk, or the rest of the tensor).
struct BlockSpan {
  int t;
  int64_t begin;
  int len;
};
template <class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE BlockSpan block_span(const Args& args, int block) {
  const int t = args.block_tensor[block];
  const int64_t begin = static_cast<int64_t>(args.block_chunk[block]) * kChunk;
  const int64_t left = args.numel[t] - begin;
  return {t, begin, static_cast<int>(left < kChunk ? left : kChunk)};
}

// Four elements of one buffer, loaded and stored as one aligned unit (float4, or two double2).
template <class S>
struct alignas(kVecAlign) Pack {
  S v[kILP];
};

// The pointer to slot K of tensor t, `begin` elements in.
template <class Algo, int K, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE slot_type<Algo, K>* slot_ptr(const Args& args, int t,
                                                                  int64_t begin) {
  return static_cast<slot_type<Algo, K>*>(args.ptr[K][t]) + begin;
}

// Loads element i of every slot into r, or stores r's written slots back.
template <class Algo, int D, int K = 0, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void load_all(const Args& args, int t, int64_t begin, int i,
                                                   typename Algo::O* r) {
  if constexpr (K < D) {
    if constexpr (Algo::read(K)) {
      r[K] = load<typename Algo::O>(slot_ptr<Algo, K>(args, t, begin)[i]);
    } else {
      r[K] = typename Algo::O(0);
    }
    load_all<Algo, D, K + 1>(args, t, begin, i, r);
  }
}
template <class Algo, int D, int K = 0, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void store_all(const Args& args, int t, int64_t begin, int i,
                                                    const typename Algo::O* r) {
  if constexpr (K < D) {
    if constexpr (Algo::written(K)) {
      slot_ptr<Algo, K>(args, t, begin)[i] = store<slot_type<Algo, K>>(r[K]);
    }
    store_all<Algo, D, K + 1>(args, t, begin, i, r);
  }
}

// Whether every slot of tensor t is 16-byte aligned `begin` elements in.
template <class Algo, int D, int K = 0, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE bool all_aligned(const Args& args, int t, int64_t begin) {
  if constexpr (K < D) {
    return reinterpret_cast<uintptr_t>(slot_ptr<Algo, K>(args, t, begin)) % kVecAlign == 0 &&
           all_aligned<Algo, D, K + 1>(args, t, begin);
  } else {
    return true;
  }
}

template <class Algo, int D, int K = 0, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void load_packs(const Args& args, int t, int64_t begin, int v,
                                                     typename Algo::O (&r)[kILP][D]) {
  if constexpr (K < D) {
    using S = slot_type<Algo, K>;
    if constexpr (Algo::read(K)) {
      const Pack<S> pk = reinterpret_cast<const Pack<S>*>(slot_ptr<Algo, K>(args, t, begin))[v];
#pragma unroll
      for (int e = 0; e < kILP; ++e) r[e][K] = load<typename Algo::O>(pk.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < kILP; ++e) r[e][K] = typename Algo::O(0);
    }
    load_packs<Algo, D, K + 1>(args, t, begin, v, r);
  }
}
template <class Algo, int D, int K = 0, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void store_packs(const Args& args, int t, int64_t begin,
                                                      int v, const typename Algo::O (&r)[kILP][D]) {
  if constexpr (K < D) {
    if constexpr (Algo::written(K)) {
      using S = slot_type<Algo, K>;
      Pack<S> pk;
#pragma unroll
      for (int e = 0; e < kILP; ++e) pk.v[e] = store<S>(r[e][K]);
      reinterpret_cast<Pack<S>*>(slot_ptr<Algo, K>(args, t, begin))[v] = pk;
    }
    store_packs<Algo, D, K + 1>(args, t, begin, v, r);
  }
}

// The copy of `algo` for tensor t of a launch: its own (for_tensor) if it reads a value per
// tensor, else itself.
template <class Algo, class Args>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE Algo tensor_copy(const Algo& algo, const Args& args, int t) {
  if constexpr (Algo::kPerTensor) {
    return algo.for_tensor(args.origin[t]);
  } else {
    (void)args;
    (void)t;
    return algo;
  }
}

// The elements [begin, begin + len) of tensor t of an update launch: thread `thread`'s share.
template <class Algo>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void update_span(const ArgsOf<Algo>& args, const Algo& algo,
                                                      int t, int64_t begin, int len, int thread) {
  using O = typename Algo::O;
  constexpr int D = Algo::kBuffers;
  if (all_aligned<Algo, D>(args, t, begin)) {
    // Vector path: packs of 4, then the last len % 4 elements one by one.
    const int npack = len / kILP;
    for (int v = thread; v < npack; v += kBlock) {
      O r[kILP][D];
      load_packs<Algo, D>(args, t, begin, v, r);
#pragma unroll
      for (int e = 0; e < kILP; ++e) algo(r[e]);
      store_packs<Algo, D>(args, t, begin, v, r);
    }
    for (int i = npack * kILP + thread; i < len; i += kBlock) {
      O r[D];
      load_all<Algo, D>(args, t, begin, i, r);
      algo(r);
      store_all<Algo, D>(args, t, begin, i, r);
    }
  } else {
    // Scalar path (some buffer not 16-byte aligned): still 4 independent elements per thread,
    // strided by the block so that each load instruction is coalesced across the warp.
    for (int base = 0; base < len; base += kBlock * kILP) {
      O r[kILP][D];
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int i = base + e * kBlock + thread;
        if (i < len) {
          load_all<Algo, D>(args, t, begin, i, r[e]);
        } else {
          // Lanes past the end update zeros and store nothing: cheaper than a branch per element.
#pragma unroll
          for (int k = 0; k < D; ++k) r[e][k] = O(0);
        }
      }
#pragma unroll
      for (int e = 0; e < kILP; ++e) algo(r[e]);
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int i = base + e * kBlock + thread;
        if (i < len) store_all<Algo, D>(args, t, begin, i, r[e]);
      }
    }
  }
}

// What thread `thread` of block `block` of an update launch does: its share of one chunk, with
// the algorithm's copy for its tensor if it reads a value per tensor.
template <class Algo>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void update_chunk(const ArgsOf<Algo>& args, const Algo& algo,
                                                       int block, int thread) {
  const auto [t, begin, len] = block_span(args, block);
  if constexpr (Algo::kPerTensor) {
    update_span(args, algo.for_tensor(args.origin[t]), t, begin, len, thread);
  } else {
    update_span(args, algo, t, begin, len, thread);
  }
}

// A reduction, phase 1: lane `thread` of block `block` adds the terms of its elements of the
// chunk (thread, thread + kBlock, ...) in order, into acc[k * kBlock + thread].
template <class Algo>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void reduce_lane(const ArgsOf<Algo>& args, const Algo& algo,
                                                      int block, int thread, double* acc) {
  using O = typename Algo::O;
  constexpr int D = Algo::kBuffers;
  constexpr int K = Algo::kAccumulators;
  const auto [t, begin, len] = block_span(args, block);
  const Algo a = tensor_copy(algo, args, t);
  double sum[K];
#pragma unroll
  for (int k = 0; k < K; ++k) sum[k] = 0.0;
  for (int i = thread; i < len; i += kBlock) {
    O r[D];
    load_all<Algo, D>(args, t, begin, i, r);
    double c[K];
    a(r, c);
#pragma unroll
    for (int k = 0; k < K; ++k) sum[k] += c[k];
    if constexpr (Algo::kWrites) store_all<Algo, D>(args, t, begin, i, r);
  }
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k * kBlock + thread] = sum[k];
}

// Phase 2, one level s of the tree (s = kBlock/2, ..., 1): lane thread < s adds lane thread + s.
template <int K>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void reduce_tree(double* acc, int s, int thread) {
  if (thread < s) {
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k * kBlock + thread] += acc[k * kBlock + thread + s];
  }
}

// Phase 3: the chunk's sums (lane 0) and its output row, at the call's chunk number.
template <int K, int D>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void reduce_out(const ReduceListArgs<D>& args,
                                                     const double* acc, int block, double* partial,
                                                     int64_t* row) {
  const int64_t c = args.first_chunk + block;
#pragma unroll
  for (int k = 0; k < K; ++k) partial[c * K + k] = acc[k * kBlock];
  row[c] = args.origin[args.block_tensor[block]];
}

// The finishing pass: the chunk sums of each tensor, in chunk order, added to out[row * K].
// One thread: a few additions per chunk, in an order that must not depend on the device.
template <int K>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void reduce_finish(const double* partial, const int64_t* row,
                                                        int64_t nchunks, double* out) {
  for (int64_t c = 0; c < nchunks; ++c) {
#pragma unroll
    for (int k = 0; k < K; ++k) out[row[c] * K + k] += partial[c * K + k];
  }
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cuda

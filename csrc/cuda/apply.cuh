// The generic CUDA driver: one multi-tensor-apply kernel per algorithm object. A launch carries
// its whole tensor list by value (Note [Kernel-argument limit]); each block updates one chunk of
// one tensor, each thread 4 elements per iteration, through a 16-byte vector path when the chunk's
// buffers allow it and a scalar path otherwise. Both paths call the same Algo::operator()(O* r),
// i.e. the same *_update function of csrc/algorithms/ that the CPU driver calls: buffers are
// loaded into r, updated in registers and stored back (all but buffer 1, the read-only gradient).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "check.h"
#include "kernels.h"

namespace fusedopt::cuda {
FUSEDOPT_ISA_BEGIN

// Threads per block, as PyTorch's and apex's multi-tensor apply use: 16 warps, four blocks fill
// an SM of 2048 threads, and __launch_bounds__ then leaves up to 128 registers per thread, far
// more than the largest update (AMSGrad, 5 buffers x 4 elements) needs.
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
//   per block:  an int32 chunk index + a uint8 tensor index   5 * kMaxBlocks = 1,600 bytes
//   the algorithm object                                       <= kAlgoBytes = 128 bytes
//                                        (the largest, NadamAlgo<double>, holds 10 doubles: 80)
//   alignment padding                                          <= kPadBytes = 16 bytes
// so kMaxTensors(D) = (4096 - 128 - 1600 - 16) / (8*D + 8) = 2352 / (8*D + 8), i.e.
//   D = 2: 98,  D = 3: 73,  D = 4: 58,  D = 5: 49 tensors per launch,
// and static_asserts in launch() check the real sizes. A longer list, or one of more than
// kMaxBlocks chunks, takes several launches of the same kernel; a tensor whose chunks do not all
// fit continues in the next launch.
constexpr int kParamBytes = 4096;
constexpr int kAlgoBytes = 128;
constexpr int kPadBytes = 16;
// Blocks (chunks) per launch: 320 chunks are 20Mi elements, a few hundred microseconds of work on
// a current GPU against a few microseconds to launch.
constexpr int kMaxBlocks = 320;

constexpr int max_tensors(int nbuf) {
  return (kParamBytes - kAlgoBytes - kMaxBlocks * (4 + 1) - kPadBytes) / (8 * nbuf + 8);
}

template <int D>
struct TensorListArgs {
  static constexpr int kMaxTensors = max_tensors(D);
  void* ptr[D][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];   // which chunk of its tensor the block updates
  uint8_t block_tensor[kMaxBlocks];  // which tensor of this launch (< kMaxTensors <= 255)
};

// Four elements of one buffer, loaded and stored as one aligned unit (float4, or two double2).
template <class S>
struct alignas(kVecAlign) Pack {
  S v[kILP];
};

// One element at index i of the chunk, through the scalar path.
template <class Algo, class S, int D>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void update_one(const Algo& algo, S* const (&b)[D], int i) {
  using O = opmath_t<S>;
  O r[D];
#pragma unroll
  for (int k = 0; k < D; ++k) r[k] = static_cast<O>(b[k][i]);
  algo(r);
#pragma unroll
  for (int k = 0; k < D; ++k) {
    if (k != 1) b[k][i] = static_cast<S>(r[k]);
  }
}

// What thread `thread` of block `block` of a launch does: its share of one chunk. A plain
// function of (block, thread), so the host can run it too (to check the launcher without a GPU).
template <class Algo>
FUSEDOPT_HOST_DEVICE FUSEDOPT_INLINE void update_chunk(const TensorListArgs<Algo::kBuffers>& args,
                                                       const Algo& algo, int block, int thread) {
  using S = typename Algo::storage_t;
  using O = opmath_t<S>;
  constexpr int D = Algo::kBuffers;
  static_assert(sizeof(Pack<S>) == kILP * sizeof(S), "a pack must be exactly kILP elements");

  const int t = args.block_tensor[block];
  // int64: a tensor may have more than 2^31 elements; only offsets within a chunk fit in int.
  const int64_t begin = static_cast<int64_t>(args.block_chunk[block]) * kChunk;
  const int64_t left = args.numel[t] - begin;
  const int len = static_cast<int>(left < kChunk ? left : kChunk);

  S* b[D];
  bool aligned = true;
#pragma unroll
  for (int k = 0; k < D; ++k) {
    b[k] = static_cast<S*>(args.ptr[k][t]) + begin;
    aligned = aligned && reinterpret_cast<uintptr_t>(b[k]) % kVecAlign == 0;
  }

  if (aligned) {
    // Vector path: packs of 4, then the last len % 4 elements one by one.
    const int npack = len / kILP;
    for (int v = thread; v < npack; v += kBlock) {
      Pack<S> pk[D];
#pragma unroll
      for (int k = 0; k < D; ++k) pk[k] = reinterpret_cast<const Pack<S>*>(b[k])[v];
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        O r[D];
#pragma unroll
        for (int k = 0; k < D; ++k) r[k] = static_cast<O>(pk[k].v[e]);
        algo(r);
#pragma unroll
        for (int k = 0; k < D; ++k) pk[k].v[e] = static_cast<S>(r[k]);
      }
#pragma unroll
      for (int k = 0; k < D; ++k) {
        if (k != 1) reinterpret_cast<Pack<S>*>(b[k])[v] = pk[k];
      }
    }
    for (int i = npack * kILP + thread; i < len; i += kBlock) {
      update_one(algo, b, i);
    }
  } else {
    // Scalar path (some buffer not 16-byte aligned): still 4 independent elements per thread,
    // strided by the block so that each load instruction is coalesced across the warp.
    for (int base = 0; base < len; base += kBlock * kILP) {
      O r[kILP][D];
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int i = base + e * kBlock + thread;
#pragma unroll
        for (int k = 0; k < D; ++k) r[e][k] = i < len ? static_cast<O>(b[k][i]) : O(0);
      }
      // Lanes past the end update zeros and store nothing: cheaper than a branch per element.
#pragma unroll
      for (int e = 0; e < kILP; ++e) algo(r[e]);
#pragma unroll
      for (int e = 0; e < kILP; ++e) {
        const int i = base + e * kBlock + thread;
        if (i < len) {
#pragma unroll
          for (int k = 0; k < D; ++k) {
            if (k != 1) b[k][i] = static_cast<S>(r[e][k]);
          }
        }
      }
    }
  }
}

// __grid_constant__: update_chunk takes the parameters by reference without copying them to
// local memory (sm_70 and later).
template <class Algo>
__global__ void __launch_bounds__(kBlock)
    multi_tensor_kernel(const __grid_constant__ TensorListArgs<Algo::kBuffers> args,
                        const Algo algo) {
  update_chunk(args, algo, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x));
}

// Cuts the tensors of `l` into launches, in as few as Note [Kernel-argument limit] allows, and
// calls emit(args, nblocks) for each: block b of that launch is update_chunk(args, algo, b, .).
template <int D, class Emit>
void for_each_launch(const DeviceList& l, Emit&& emit) {
  using Args = TensorListArgs<D>;
  static_assert(D >= 2 && D <= kMaxBuffers, "an algorithm touches 2..kMaxBuffers buffers");
  static_assert(Args::kMaxTensors <= 255, "block_tensor is a uint8");
  Args args{};
  int nt = 0;  // tensors in args
  int nb = 0;  // blocks in args
  auto flush = [&] {
    emit(static_cast<const Args&>(args), nb);
    nb = 0;
  };

  for (int64_t ti = 0; ti < l.ntensors; ++ti) {
    const TensorRef& tr = l.tensors[ti];
    if (tr.numel <= 0) continue;
    const int64_t nchunks = (tr.numel + kChunk - 1) / kChunk;
    if (nchunks > INT32_MAX) {
      throw std::runtime_error("fusedopt: a tensor of " + std::to_string(tr.numel) +
                               " elements is beyond the 2^47 elements one call can address");
    }
    for (int k = 0; k < D; ++k) args.ptr[k][nt] = tr.ptr[k];
    args.numel[nt] = tr.numel;
    ++nt;
    for (int64_t c = 0; c < nchunks; ++c) {
      args.block_tensor[nb] = static_cast<uint8_t>(nt - 1);
      args.block_chunk[nb] = static_cast<int32_t>(c);
      ++nb;
      const bool last_chunk = c + 1 == nchunks;
      if (nb == kMaxBlocks || (last_chunk && nt == Args::kMaxTensors)) {
        flush();
        if (last_chunk) {
          nt = 0;
        } else {
          // The tensor goes on in the next launch, as its first tensor.
          for (int k = 0; k < D; ++k) args.ptr[k][0] = args.ptr[k][nt - 1];
          args.numel[0] = args.numel[nt - 1];
          nt = 1;
        }
      }
    }
  }
  if (nb > 0) flush();
}

// Queues the update of every tensor of `l` by `algo` on l.stream. The caller has made l.device
// current.
template <class Algo>
void launch(const DeviceList& l, const Algo& algo) {
  constexpr int D = Algo::kBuffers;
  static_assert(sizeof(Algo) <= kAlgoBytes, "Note [Kernel-argument limit]: algorithm too large");
  static_assert(sizeof(TensorListArgs<D>) + kPadBytes + kAlgoBytes <= kParamBytes,
                "Note [Kernel-argument limit]: tensor list too large");
  const auto stream = reinterpret_cast<cudaStream_t>(l.stream);
  Algo a = algo;
  for_each_launch<D>(l, [&](const TensorListArgs<D>& args, int nblocks) {
    void* params[] = {const_cast<TensorListArgs<D>*>(&args), &a};
    FUSEDOPT_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(&multi_tensor_kernel<Algo>),
                                         dim3(static_cast<unsigned>(nblocks)), dim3(kBlock),
                                         params, 0, stream));
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cuda

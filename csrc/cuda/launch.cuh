// The generic CUDA driver's kernels: driver.h's per-block bodies wrapped in __global__ functions,
// and the launcher that plans a call's launches and queues them on its stream.
#pragma once

#include <cuda_runtime.h>

#include "check.h"
#include "driver.h"
#include "kernels.h"

namespace fusedopt::cuda {
FUSEDOPT_ISA_BEGIN

// __grid_constant__: the bodies take the parameters by reference without copying them to local
// memory (sm_70 and later).
template <class Algo>
__global__ void __launch_bounds__(kBlock)
    update_kernel(const __grid_constant__ ArgsOf<Algo> args, const Algo algo) {
  update_chunk(args, algo, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x));
}

template <class Algo>
__global__ void __launch_bounds__(kBlock)
    reduce_kernel(const __grid_constant__ ArgsOf<Algo> args, const Algo algo, double* partial,
                  int64_t* row) {
  constexpr int K = Algo::kAccumulators;
  __shared__ double acc[K * kBlock];
  const int thread = static_cast<int>(threadIdx.x);
  reduce_lane(args, algo, static_cast<int>(blockIdx.x), thread, acc);
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    reduce_tree<K>(acc, s, thread);
    __syncthreads();
  }
  if (thread == 0) reduce_out<K>(args, acc, static_cast<int>(blockIdx.x), partial, row);
}

template <int K>
__global__ void reduce_finish_kernel(const double* partial, const int64_t* row, int64_t nchunks,
                                     double* out) {
  reduce_finish<K>(partial, row, nchunks, out);
}

// Frees a stream-ordered allocation when the launches that use it are queued (or have failed).
class AsyncScratch {
 public:
  AsyncScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    FUSEDOPT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~AsyncScratch() { cudaFreeAsync(ptr_, stream_); }  // nothing to report from a destructor
  AsyncScratch(const AsyncScratch&) = delete;
  AsyncScratch& operator=(const AsyncScratch&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Queues `algo` over every tensor of `l` on l.stream: an update, or a reduction whose sums are
// added to out[row * K] (device memory, zeroed by the caller). The caller has made l.device
// current.
template <class Algo>
void launch(const DeviceList& l, const Algo& algo, double* out) {
  using Args = LaunchArgsOf<Algo>;
  const auto stream = reinterpret_cast<cudaStream_t>(l.stream);
  Algo a = algo;
  if constexpr (Algo::kAccumulators == 0) {
    (void)out;
    for_each_launch<Args>(l, [&](const Args& args, int nblocks) {
      void* params[] = {const_cast<Args*>(&args), &a};
      FUSEDOPT_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(&update_kernel<Algo>),
                                           dim3(static_cast<unsigned>(nblocks)), dim3(kBlock),
                                           params, 0, stream));
    });
  } else {
    constexpr int K = Algo::kAccumulators;
    int64_t nchunks = chunks_of(l);
    if (nchunks == 0) return;
    const AsyncScratch scratch(static_cast<size_t>(nchunks) * (K + 1) * 8, stream);
    double* partial = static_cast<double*>(scratch.get());
    int64_t* row = reinterpret_cast<int64_t*>(partial + nchunks * K);
    for_each_launch<Args>(l, [&](const Args& args, int nblocks) {
      void* params[] = {const_cast<Args*>(&args), &a, &partial, &row};
      FUSEDOPT_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(&reduce_kernel<Algo>),
                                           dim3(static_cast<unsigned>(nblocks)), dim3(kBlock),
                                           params, 0, stream));
    });
    void* finish[] = {&partial, &row, &nchunks, &out};
    FUSEDOPT_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(&reduce_finish_kernel<K>),
                                         dim3(1), dim3(1), finish, 0, stream));
  }
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cuda

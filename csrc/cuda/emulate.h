// Note [The emulated CUDA driver]
// The CUDA driver run on the host (the tests' emulation, no GPU needed): the real launcher's plan
// (for_each_launch: the tensor list split under the kernel-argument limit and the per-launch block
// limit, a tensor continuing into the next launch) and the real per-block bodies of driver.h,
// compiled by the host compiler, with every block and every thread of each launch run in turn on
// host memory. Only the launch itself differs from launch.cuh: a loop over (block, thread) in place
// of cudaLaunchKernel, and for a reduction the barriers between its phases as the ends of loops.
// Threads of a block touch disjoint elements, so running them one after the other gives what the
// device gives; the results must equal the CPU driver's, bit for bit.
#pragma once

#include <vector>

#include "driver.h"
#include "kernels.h"

namespace fusedopt::cuda {
FUSEDOPT_ISA_BEGIN

template <class Algo>
void emulate(const DeviceList& l, const Algo& algo, double* out) {
  using Args = LaunchArgsOf<Algo>;
  if constexpr (Algo::kAccumulators == 0) {
    (void)out;
    for_each_launch<Args>(l, [&](const Args& args, int nblocks) {
      for (int b = 0; b < nblocks; ++b) {
        for (int t = 0; t < kBlock; ++t) update_chunk(args, algo, b, t);
      }
    });
  } else {
    constexpr int K = Algo::kAccumulators;
    const int64_t nchunks = chunks_of(l);
    if (nchunks == 0) return;
    std::vector<double> partial(static_cast<size_t>(nchunks) * K);
    std::vector<int64_t> row(static_cast<size_t>(nchunks));
    std::vector<double> acc(static_cast<size_t>(K) * kBlock);  // the block's shared memory
    for_each_launch<Args>(l, [&](const Args& args, int nblocks) {
      for (int b = 0; b < nblocks; ++b) {
        for (int t = 0; t < kBlock; ++t) reduce_lane(args, algo, b, t, acc.data());
        for (int s = kBlock / 2; s > 0; s /= 2) {
          for (int t = 0; t < kBlock; ++t) reduce_tree<K>(acc.data(), s, t);
        }
        reduce_out<K>(args, acc.data(), b, partial.data(), row.data());
      }
    });
    reduce_finish<K>(partial.data(), row.data(), nchunks, out);
  }
}

FUSEDOPT_ISA_END

// The emulated kernels, one per spec as kernels() has them (host memory in, host memory out).
const KernelFn* emulated_kernels();

}  // namespace fusedopt::cuda

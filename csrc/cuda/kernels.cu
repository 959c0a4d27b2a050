// Every CUDA kernel, compiled once by nvcc (FUSEDOPT_ISA_NS=isa_cuda; see Note [One namespace per
// instruction set]). The table is generated from the registry: each entry makes the list's device
// current, turns the spec's run-time flags into an algorithm object (its dispatch, the CPU's) and
// hands it to the launcher of launch.cuh; the math is the algorithm headers' and nothing else.
#include <array>

#include "launch.cuh"

namespace fusedopt::cuda {

// (Outside the anonymous namespace: the module's kernels are global symbols of its cubins.)
template <class Spec>
__global__ void between_kernel(const typename Spec::Hyper h, int64_t step, int pass, int64_t n,
                               const double* sums, double* call, double* tensor) {
  Spec::between(h, step, pass, n, sums, call, tensor);
}

__global__ void set_kernel(double* p, double value) { *p = value; }

namespace {

template <class Spec>
struct Entry {
  static void run(const DeviceList& l, const Launch& ln) {
    DeviceGuard guard(l.device);
    with_algorithm<Spec>(ln.hyper, ln.step, l.combo, [&](const auto& algo) { launch(l, algo, ln.out); });
  }
};

template <class Spec>
struct Between {
  static void run(const void* hyper, int64_t step, int pass, int64_t n, const double* sums,
                  double* call, double* tensor, int device, uintptr_t stream) {
    if constexpr (Spec::kPasses > 1) {
      DeviceGuard guard(device);
      const auto& h = *static_cast<const typename Spec::Hyper*>(hyper);
      between_kernel<Spec><<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
          h, step, pass, n, sums, call, tensor);
      FUSEDOPT_CUDA_CHECK(cudaGetLastError());
    }
  }
};

}  // namespace

const KernelFn* kernels() {
  static constexpr auto table = table_of<Entry>(Specs{});
  return table.data();
}

const BetweenFn* between_kernels() {
  static constexpr auto table = table_of<Between>(Specs{});
  return table.data();
}

void set_async(int device, uintptr_t stream, double* p, double value) {
  DeviceGuard guard(device);
  set_kernel<<<1, 1, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p, value);
  FUSEDOPT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace fusedopt::cuda

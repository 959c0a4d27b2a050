// Every CUDA kernel, compiled once by nvcc (FUSEDOPT_ISA_NS=isa_cuda; see Note [One namespace per
// instruction set]). The table is generated from the registry: each entry makes the list's device
// current, turns the spec's run-time flags into an algorithm object (its dispatch, the CPU's) and
// hands it to the launcher of launch.cuh; the math is the algorithm headers' and nothing else.
#include <array>

#include "launch.cuh"

namespace fusedopt::cuda {
namespace {

template <class Spec>
struct Entry {
  static void run(const DeviceList& l, const Launch& ln) {
    DeviceGuard guard(l.device);
    with_algorithm<Spec>(ln.hyper, ln.step, l.combo, [&](const auto& algo) { launch(l, algo, ln.out); });
  }
};

}  // namespace

const KernelFn* kernels() {
  static constexpr auto table = table_of<Entry>(Specs{});
  return table.data();
}

}  // namespace fusedopt::cuda

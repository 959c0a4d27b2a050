// Every CUDA kernel, compiled once by nvcc (FUSEDOPT_ISA_NS=isa_cuda; see Note [One namespace per
// instruction set]). The table is generated from the registry: each entry makes the list's device
// current, turns the spec's run-time flags into an algorithm object (its dispatch, the CPU's) and
// hands it to the launcher of launch.cuh; the math is the algorithm headers' and nothing else.
#include <array>

#include "launch.cuh"

namespace fusedopt::cuda {
namespace {

template <class Spec>
void run_spec(const DeviceList& l, const Launch& ln) {
  DeviceGuard guard(l.device);
  const auto& h = *static_cast<const typename Spec::Hyper*>(ln.hyper);
  combo_switch(l.combo, [&](auto st) {
    Spec::template dispatch<decltype(st)>(h, ln.step,
                                          [&](const auto& algo) { launch(l, algo, ln.out); });
  });
}

template <class... S>
std::array<KernelFn, sizeof...(S)> make_table(TypeList<S...>) {
  return {&run_spec<typename S::Kernel>...};
}

}  // namespace

const KernelFn* kernels() {
  static const auto table = make_table(Specs{});
  return table.data();
}

}  // namespace fusedopt::cuda

// The table of emulated kernels (emulate.h), generated from the registry as kernels.cu's is, and
// compiled by the host compiler in its own namespace (FUSEDOPT_ISA_NS=isa_cuda_emulation; Note
// [One namespace per instruction set]) with the flags of the CPU kernels, contraction off.
#include <array>

#include "emulate.h"

namespace fusedopt::cuda {
namespace {

template <class Spec>
void run_spec(const DeviceList& l, const Launch& ln) {
  const auto& h = *static_cast<const typename Spec::Hyper*>(ln.hyper);
  combo_switch(l.combo, [&](auto st) {
    Spec::template dispatch<decltype(st)>(h, ln.step,
                                          [&](const auto& algo) { emulate(l, algo, ln.out); });
  });
}

template <class... S>
std::array<KernelFn, sizeof...(S)> make_table(TypeList<S...>) {
  return {&run_spec<typename S::Kernel>...};
}

}  // namespace

const KernelFn* emulated_kernels() {
  static const auto table = make_table(Specs{});
  return table.data();
}

}  // namespace fusedopt::cuda

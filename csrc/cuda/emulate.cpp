// The table of emulated kernels (emulate.h), generated from the registry as kernels.cu's is, and
// compiled by the host compiler in its own namespace (FUSEDOPT_ISA_NS=isa_cuda_emulation; Note
// [One namespace per instruction set]) with the flags of the CPU kernels, contraction off.
#include <array>

#include "emulate.h"

namespace fusedopt::cuda {
namespace {

template <class Spec>
struct Entry {
  static void run(const DeviceList& l, const Launch& ln) {
    with_algorithm<Spec>(ln.hyper, ln.step, l.combo, [&](const auto& algo) { emulate(l, algo, ln.out); });
  }
};

}  // namespace

const KernelFn* emulated_kernels() {
  static constexpr auto table = table_of<Entry>(Specs{});
  return table.data();
}

}  // namespace fusedopt::cuda

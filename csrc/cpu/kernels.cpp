// One build of every CPU kernel for one instruction set (FUSEDOPT_ISA_NS, FUSEDOPT_ISA_NAME set by
// CMake; see Note [One namespace per instruction set]). The table is generated from the registry:
// each entry turns the spec's run-time flags into an algorithm object (its dispatch) for the
// work list's storage combination and hands it to the driver.
#include <type_traits>

#include "driver.h"

#ifndef FUSEDOPT_ISA_NAME
#define FUSEDOPT_ISA_NAME "generic"
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN
namespace {

template <class Spec>
struct Entry {
  static void run(const WorkView& w, const Launch& l) {
    with_algorithm<Spec>(l.hyper, l.step, w.combo, [&](const auto& algo) {
      using A = std::decay_t<decltype(algo)>;
      if constexpr (A::kBuffers > 1 && A::read(1)) {  // Note [The fused unscale]
        if (l.step.grad_factor != 1.0) {
          apply(w, GradScaled<A>{algo, static_cast<typename A::O>(l.step.grad_factor)}, l.out);
          return;
        }
      }
      apply(w, algo, l.out);
    });
  }
};

// The benchmark ceiling: the same loads and stores as an update of K slots, trivial math.
template <class St, int K>
struct RmwAlgo : Update<St, K> {
  using O = typename St::compute_t;
  void operator()(O* r) const {
    for (int k = 0; k < K; ++k) {
      if (k != 1) r[k] = r[k] + r[1];
    }
  }
};

void rmw_k(const WorkView& w, int nbuf) {
  combo_switch(w.combo, [&](auto st) {
    using St = decltype(st);
    switch (nbuf) {
      case 2: apply(w, RmwAlgo<St, 2>{}, nullptr); break;
      case 3: apply(w, RmwAlgo<St, 3>{}, nullptr); break;
      case 4: apply(w, RmwAlgo<St, 4>{}, nullptr); break;
      case 5: apply(w, RmwAlgo<St, 5>{}, nullptr); break;
      default: break;
    }
  });
}

}  // namespace

extern const KernelTable kTable;
constexpr auto kEntries = table_of<Entry>(Specs{});
const KernelTable kTable = [] {
  KernelTable t{FUSEDOPT_ISA_NAME, {}, &rmw_k};
  for (int i = 0; i < kNumSpecs; ++i) t.kernels[i] = kEntries[i];
  return t;
}();

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

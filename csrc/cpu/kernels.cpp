// One build of every CPU kernel for one instruction set (FUSEDOPT_ISA_NS, FUSEDOPT_ISA_NAME set by
// CMake; see Note [One namespace per instruction set]). The table is generated from the registry:
// each entry turns the spec's run-time flags into an algorithm object (its dispatch) for the
// work list's storage combination and hands it to the driver.
#include "driver.h"

#ifndef FUSEDOPT_ISA_NAME
#define FUSEDOPT_ISA_NAME "generic"
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN
namespace {

template <class Spec>
void run_spec(const WorkView& w, const Launch& l) {
  const auto& h = *static_cast<const typename Spec::Hyper*>(l.hyper);
  combo_switch(w.combo, [&](auto st) {
    Spec::template dispatch<decltype(st)>(h, l.step, [&](const auto& algo) { apply(w, algo, l.out); });
  });
}

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

template <class... S>
constexpr KernelTable make_table(TypeList<S...>) {
  return {FUSEDOPT_ISA_NAME, {&run_spec<typename S::Kernel>...}, &rmw_k};
}

}  // namespace

extern const KernelTable kTable;
const KernelTable kTable = make_table(Specs{});

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

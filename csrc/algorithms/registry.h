// Every algorithm, listed once: the kernels (cpu/kernels.cpp, cuda/kernels.cu), the bindings and
// through them the Python front ends are generated from this list. Adding an algorithm is its
// header (math and spec) and these two lines.
#pragma once

#include <array>

#include "adadelta.h"
#include "adagrad.h"
#include "adam.h"
#include "adamax.h"
#include "adopt.h"
#include "ewa.h"
#include "lamb.h"
#include "lion.h"
#include "nadam.h"
#include "radam.h"
#include "rmsprop.h"
#include "scale.h"
#include "schedulefree.h"
#include "sgd.h"
#include "sumsq.h"

namespace fusedopt {

using Specs = TypeList<Sgd, Adagrad, Adadelta, Rmsprop, Adam, AdamW, Nadam, Adamax, Radam, Lion,
                       Adopt, AdamWScheduleFree, Lamb, Ewa, EwaReadout, Sumsq, Scale, Lerp>;

// The position of a spec in Specs: the index of its kernel in every backend's table.
template <class S, class... T>
constexpr int index_of(TypeList<T...>) {
  int i = 0, found = -1;
  ((std::is_same_v<S, T> ? (found = i, ++i) : ++i), ...);
  return found;
}
template <class S>
constexpr int kSpecIndex = index_of<S>(Specs{});
constexpr int kNumSpecs = Specs::size;

// Calls run(algo) with the algorithm object that Spec's dispatch makes of the hyper-parameters at
// `hyper` (a Spec::Hyper), for the step `step` and storage combination `combo`: what every
// backend's table entry does before it hands the object to its driver. `Compiled`: the
// combinations the backend is compiled for; `staged`: the CPU driver stages this call.
template <class Spec, class Compiled = StorageCombos, class Run>
void with_algorithm(const void* hyper, const StepArgs& step, int combo, Run&& run,
                    bool staged = false) {
  const auto& h = *static_cast<const typename Spec::Hyper*>(hyper);
  combo_switch<Compiled>(combo, staged,
                         [&](auto st) { Spec::template dispatch<decltype(st)>(h, step, run); });
}

// A backend's table: Entry<Kernel>::run for every spec of the registry, in its order (a variant
// shares its kernel's entry).
template <template <class> class Entry, class... S>
constexpr auto table_of(TypeList<S...>) {
  return std::array{&Entry<typename S::Kernel>::run...};
}

}  // namespace fusedopt

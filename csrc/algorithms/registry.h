// Every algorithm, listed once: the kernels (cpu/kernels.cpp, cuda/kernels.cu), the bindings and
// through them the Python front ends are generated from this list. Adding an algorithm is its
// header (math and spec) and these two lines.
#pragma once

#include "adadelta.h"
#include "adagrad.h"
#include "adam.h"
#include "adamax.h"
#include "ewa.h"
#include "nadam.h"
#include "rmsprop.h"
#include "sgd.h"
#include "sumsq.h"

namespace fusedopt {

using Specs = TypeList<Sgd, Adagrad, Adadelta, Rmsprop, Adam, AdamW, Nadam, Adamax, Ewa, EwaReadout,
                       Sumsq>;

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

}  // namespace fusedopt

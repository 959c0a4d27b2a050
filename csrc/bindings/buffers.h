// Turns the Python lists of NumPy arrays of one call into per-dtype work lists, or refuses them.
// Everything is checked before anything is written: list types and lengths, array types, dtypes,
// byte order, shapes, memory order, writeability, alignment and overlap. Nothing is ever copied
// or converted (STYLE 5: refuse, never coerce).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "../cpu/kernels.h"
#include "checks.h"

namespace fusedopt::bindings {

namespace py = pybind11;

#pragma GCC visibility push(hidden)  // as pybind11 builds the module

// The tensors of one dtype, cut into chunks; built by Batch.
struct WorkList {
  DType dtype;
  std::vector<TensorRef> tensors;
  std::vector<cpu::Chunk> chunks;
  int64_t total = 0;
  cpu::WorkView view(int max_threads) const;
};

// A validated multi-tensor call: one work list per dtype present.
class Batch {
 public:
  Batch(const char* fn, std::initializer_list<ListArg> args)
      : Batch(fn, args.begin(), static_cast<int>(args.size())) {}
  Batch(const char* fn, const ListArg* args, int nargs);
  const std::vector<WorkList>& lists() const { return lists_; }

 private:
  std::vector<WorkList> lists_;
};

// Threads the CPU kernels use; 0 means OpenMP's default (OMP_NUM_THREADS or the core count).
int thread_setting();
void set_thread_setting(int n);

void check_step(const char* fn, int64_t step);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

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
  friend class Plan;
  Batch() = default;
  std::vector<WorkList> lists_;
};

// Note [The plan of a run]
// The optimizer classes make the same call at every step of a steady run (optim/optimizer.py,
// Note [The steady-state step]): the same params and state arrays, new grads. A Plan remembers
// the last call it let through: its written arrays (held, so that their identity means
// something), what the checks looked at in each (data pointer, dtype, byte order, flags, shape),
// its work lists and the memory its written arrays cover, sorted. The next call through the Plan
// is accepted without the full check when every written array is the same object, unchanged in
// all of those, and every grad passes, against its param, the same tests the full check makes and
// overlaps no written array. Anything else -- another array, an array changed in place
// (setflags, a new shape or dtype), a grad the full check might refuse -- takes the full check
// (Batch), which raises the usual error or is remembered in turn. So a Plan only ever accepts a
// call the full check accepts, and every message comes from the full check.
class Plan {
 public:
  Batch batch(const char* fn, std::initializer_list<ListArg> args) {
    return batch(fn, args.begin(), static_cast<int>(args.size()));
  }
  Batch batch(const char* fn, const ListArg* args, int nargs);
  int64_t full_checks() const { return full_checks_; }

 private:
  struct Seen {
    char* data;
    int flags, type_num;
    char byteorder;
    int nd;
  };
  bool accepts(const char* fn, const ListArg* args, int nargs) const;
  void remember(const char* fn, const ListArg* args, int nargs, const Batch& b);

  std::string fn_;  // empty: nothing remembered
  int nargs_ = 0;
  size_t n_ = 0;
  std::vector<py::object> held_;           // [k][i] for the written lists k != 1, flattened
  std::vector<Seen> seen_;                 // the same order
  std::vector<int64_t> dims_;              // the params' shapes, flattened
  std::vector<size_t> dims_at_;            // where param i's dims start in dims_
  std::vector<std::pair<int, int64_t>> at_;  // param i -> (work list, tensor), or (-1, -1)
  std::vector<std::pair<uintptr_t, uintptr_t>> written_;  // sorted, disjoint
  Batch batch_;
  int64_t full_checks_ = 0;
};

// Threads the CPU kernels use; 0 means OpenMP's default (OMP_NUM_THREADS or the core count).
int thread_setting();
void set_thread_setting(int n);

void check_step(const char* fn, int64_t step);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

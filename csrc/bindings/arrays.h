// The full check of a call's NumPy arrays, and the work lists it builds: every list, array,
// dtype, byte order, shape, memory order, writeability, alignment and overlap, before anything is
// written. Nothing is ever copied or converted: a bad array is refused with a TypeError or
// ValueError naming it.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

#include "../cpu/kernels.h"
#include "checks.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

// One list argument of a call, in its kernel slot (Note [Kernel slots]). A list that is not
// present (the grads of a call bound before its grads are known) is skipped.
struct ListArg {
  const char* name;
  py::handle list;
  Role role;
  bool present = true;
  // A grads list not present: the NumPy type number its grads will have (0: their params'), or
  // one per tensor (later_types, when not null).
  int later_type = 0;
  const int* later_types = nullptr;
  // The param copies (Note [Param copies]): written, 16-bit, of float32 params; an entry may be
  // None (no copy of that param).
  bool copy = false;
  // With `copy`: the list is of Kahan compensations (Note [Kahan summation] in storage.h), each
  // of its 16-bit param's dtype, read and written; an entry may be None (a param without one).
  bool kahan = false;
  bool written() const { return role == Role::Param || role == Role::State; }
};

// The tensors of one storage combination, cut into chunks.
struct WorkList {
  int combo;
  int copy = -1;  // the DType of the call's param copies, or -1 (Note [Param copies])
  bool kahan = false;  // the copies are Kahan compensations (cpu::WorkView::kahan)
  std::vector<TensorRef> tensors;
  std::vector<int64_t> origin;  // each tensor's index in the call
  std::vector<cpu::Chunk> chunks;
  int64_t total = 0;
  cpu::WorkView view(int max_threads) const {
    return {tensors.data(), origin.data(), chunks.data(), static_cast<int64_t>(chunks.size()),
            total, combo, max_threads, copy, false, 0, kahan};
  }
};

// What the check looked at in an array it let through, to tell later whether it changed.
struct Seen {
  char* data;
  int flags;
  int type_num;
  char byteorder;
  int nd;
  size_t dims_at;  // where its shape starts in CheckedCall::dims
};

// A call that passed the full check.
struct CheckedCall {
  size_t n = 0;                                   // tensors
  std::vector<WorkList> lists;                    // one per storage combination present
  std::vector<std::pair<int, int64_t>> at;        // tensor i -> (work list, position) or (-1, -1)
  std::vector<Span> written;                      // the written buffers, sorted by address
  std::vector<Span> read;                         // the read-only ones
  std::vector<Seen> seen;                         // [present slot][i], flattened
  std::vector<int64_t> dims;
};

// The full check of a call whose lists are `args` in slot order, `sites` (one per slot) how its
// spans name them; `rank` orders its spans among those of other calls. Raises at the first problem, in this order: list types, list lengths,
// then index by index and slot by slot every array, then overlap. With `keep` false, a call that
// runs at once, it leaves out what only a kept call needs (what it saw, its spans).
CheckedCall check_call(const Names& names, const ListArg* args, int nslots, const Site* sites,
                       int rank = 0, bool keep = true);

// The first state buffer of a tensor: every other state buffer must have its dtype.
struct FirstState {
  int type_num = 0;  // 0: none yet
  const char* list = nullptr;
};

// The checks check_call makes of the array `o` given as `arg`'s i-th for slot `slot` (type,
// masked, dtype by role, byte order), against `ref` (the checked array of slot 0 at i, in list
// `ref_list`; nullptr when o is that array). Returns o's array proxy.
const py::detail::PyArray_Proxy* check_array(const Names& names, const ListArg& arg, int slot,
                                             size_t i, PyObject* o, PyObject* ref,
                                             const char* ref_list, FirstState* first);

// check_array, and then what check_call asks of every array but the reference against it (shape,
// memory order) and of every array (writeable if written, contiguous, aligned).
// A param copy or Kahan compensation (arrays.cpp) of param `ref`; *copy_type: the first copy's
// NumPy type number (0 before it).
const py::detail::PyArray_Proxy* check_copy(const Names& names, const ListArg& a, size_t i,
                                            PyObject* o, PyObject* ref, const char* ref_list,
                                            int* copy_type);
const py::detail::PyArray_Proxy* check_slot(const Names& names, const ListArg& arg, int slot,
                                            size_t i, PyObject* o, PyObject* ref,
                                            const char* ref_list, FirstState* first);

// check_slot of a grad (slot 1, `arg`'s i-th) against its param `ref`, taking the common array on
// the quick test (Note [The common array] in arrays.cpp).
const py::detail::PyArray_Proxy* check_grad(const Names& names, const ListArg& arg, size_t i,
                                            PyObject* o, PyObject* ref, const char* ref_list);

// The storage combination of a tensor whose slot 0 has type_num p, slot 1 g (0: not known yet) and
// state s (0: none), or -1.
int combo_of(int p, int g, int s);

// The memory [lo, hi) of numel elements of the array at data.
std::pair<uintptr_t, uintptr_t> extent(const char* data, int64_t numel, int type_num);

// The storage type of a NumPy type number (float32, float64, float16, ml_dtypes.bfloat16), or -1.
int dtype_of(int type_num);
// "float32", "bfloat16", ...: the name of a type number dtype_of knows.
const char* type_name_of(int type_num);
// The NumPy type number of a dtype-like (np.float16, "bfloat16", ...): 0 for None.
int type_num_of(const Names& names, const char* what, py::handle dtype);

int64_t numel_of(const py::detail::PyArray_Proxy* a);
std::string shape_str(const int64_t* dims, int nd);
std::string dtype_str(py::handle a);
// The sr_seed argument of an update (Note [Stochastic rounding]): false for None, else true with
// *seed set; an int in [0, 2**64) or a TypeError / ValueError naming it.
bool sr_seed_of(const Names& names, py::handle sr_seed, uint64_t* seed);
// The exclusions of kahan_comps (Note [Kahan summation]), when a call has them: not with
// param_copies, not with an sr_seed.
void check_kahan_alone(const Names& names, bool copies, bool stochastic);
int thread_setting();
void set_thread_setting(int n);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

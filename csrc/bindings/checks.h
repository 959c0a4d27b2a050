// What the CPU and CUDA bindings share to check a call's lists: the errors they raise (named after
// the function), item names ("grads[3]"), and the overlap check over the memory a call touches.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusedopt::bindings {

namespace py = pybind11;

#pragma GCC visibility push(hidden)  // as pybind11 builds the module

// One list argument of a call. By convention the first is written (params), the second is only
// read (grads), the rest are written state.
struct ListArg {
  const char* name;
  py::handle list;
};

// Raises TypeError / ValueError as "<fn>: <msg>".
struct Fail {
  const char* fn;
  [[noreturn]] void type(const std::string& msg) const;
  [[noreturn]] void value(const std::string& msg) const;
};

std::string type_name(PyObject* o);
inline std::string type_name(py::handle h) { return type_name(h.ptr()); }
std::string item(const char* arg, size_t i);

// An interval of memory a call touches: [lo, hi), of args[arg] at index.
struct Span {
  uintptr_t lo, hi;
  bool written;
  int arg;
  size_t index;
};

// The (name, list) pairs of a check-only call (`check(fn, args)`), as ListArgs whose names point
// into `names`; refuses anything but 2 to kMaxBuffers such pairs.
std::vector<ListArg> named_lists(py::list args, std::vector<std::string>& names);

// Refuses (ValueError "<a> overlaps <b>") a call in which a written buffer shares memory with any
// other buffer; read-only buffers may share memory with each other. Leaves `spans` sorted by
// address (ties in argument order), which the CUDA bindings' driver check relies on.
void check_no_overlap(const Fail& fail, const ListArg* args, std::vector<Span>& spans);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

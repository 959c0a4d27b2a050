// What every binding shares to check a call and word its refusals: how a call names its arrays
// (the public name of the function and the caller's indices), the TypeError / ValueError it
// raises, and the overlap check over the memory the calls of a step touch.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fusedopt::bindings {

namespace py = pybind11;

#pragma GCC visibility push(hidden)  // as pybind11 builds the module

std::string type_name(PyObject* o);
inline std::string type_name(py::handle h) { return type_name(h.ptr()); }
std::string repr_of(py::handle h);

// How a call names itself and its arrays in messages: "<fn>: <list>[<index>] ...". `fn` is the
// public name ("adamw", "Adam.step"); the index is the caller's: i itself, i + an offset, or the
// i-th entry of a list of indices (the flat indices of an optimizer's params, when a call covers
// part of them). Every message is made here, where the check fails: nothing rewrites it later.
class Names {
 public:
  Names() = default;
  // index: None (i), an int (i + offset) or a sequence of ints (index[i]).
  Names(std::string fn, py::handle index);
  const std::string& fn() const { return fn_; }
  int64_t index(size_t i) const;
  std::string item(const char* list, size_t i) const;
  [[noreturn]] void type(const std::string& msg) const;
  [[noreturn]] void value(const std::string& msg) const;

 private:
  std::string fn_;
  int64_t offset_ = 0;
  std::vector<int64_t> map_;  // empty: i + offset_
};

// A list of a call, as its messages name it: the call's Names and the list's name.
struct Site {
  const Names* names;
  const char* list;
};

// An interval of memory a call touches: [lo, hi) of a list (`site`) at index i. `rank` orders
// spans that start at the same address (a call's slots in order; the calls of a step one after
// the other), so that the message is the same on every platform. 32 bytes: a call sorts one per
// array.
struct Span {
  uintptr_t lo, hi;
  const Site* site;
  uint32_t i;
  uint16_t rank;
  bool written;
  std::string item() const { return site->names->item(site->list, i); }
  const Names& names() const { return *site->names; }
};

// The order spans are swept in: by address, ties by rank, then index.
inline bool span_before(const Span& x, const Span& y) {
  return x.lo != y.lo ? x.lo < y.lo : (x.rank != y.rank ? x.rank < y.rank : x.i < y.i);
}

// Refuses (ValueError "<a> overlaps <b>", in the words of the later span's call) spans in which a
// written buffer shares memory with any other; read-only buffers may share memory with each
// other. `sorted` in span_before order.
void check_no_overlap_sorted(const std::vector<Span>& sorted);

// The same for spans in any order, which it leaves sorted.
void check_no_overlap(std::vector<Span>& spans);

// The first written span of `sorted` (sorted by address, disjoint) that [lo, hi) reaches into,
// or nullptr.
const Span* overlapping(const std::vector<Span>& sorted, uintptr_t lo, uintptr_t hi);

// Python's `"{}".format(value)` spliced into a message template: "{}" is the value, "{i}" the
// index given.
std::string format_message(const char* tmpl, const std::string& value, int index = -1);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

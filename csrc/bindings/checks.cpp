#include "checks.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

namespace fusedopt::bindings {

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

std::string repr_of(py::handle h) { return py::repr(h).cast<std::string>(); }

Names::Names(std::string fn, py::handle index) : fn_(std::move(fn)) {
  if (index.is_none()) return;
  if (PyLong_Check(index.ptr()) && !PyBool_Check(index.ptr())) {
    offset_ = index.cast<int64_t>();
    return;
  }
  if (!PyList_Check(index.ptr()) && !PyTuple_Check(index.ptr()) &&
      !PyObject_HasAttrString(index.ptr(), "__len__")) {
    throw py::type_error(fn_ + ": index must be None, an int or a sequence of ints, got " +
                         type_name(index));
  }
  for (py::handle x : index) map_.push_back(x.cast<int64_t>());
}

int64_t Names::index(size_t i) const {
  if (map_.empty()) return static_cast<int64_t>(i) + offset_;
  return i < map_.size() ? map_[i] : static_cast<int64_t>(i);
}

std::string Names::item(const char* list, size_t i) const {
  return std::string(list) + "[" + std::to_string(index(i)) + "]";
}

void Names::type(const std::string& msg) const { throw py::type_error(fn_ + ": " + msg); }
void Names::value(const std::string& msg) const { throw py::value_error(fn_ + ": " + msg); }

namespace {
// span_before as a function object, so that the sort inlines it.
struct SpanBefore {
  bool operator()(const Span& x, const Span& y) const { return span_before(x, y); }
};

// Note [Sorting spans]
// A call sorts one span per array (800 for Adam over 200 tensors) by address, and a comparison
// sort of them cost more than the rest of the call's checks together. They are sorted by a radix
// sort of their addresses instead: one pass for each byte in which the addresses differ (two or
// three for arrays on one heap), each stable, so spans at one address keep the order they came
// in; a last pass puts those ties into span_before order (a few at most: arrays at one address
// are an overlap, or read-only arrays given twice). check_call writes its spans list by list
// rather than index by index, which measured faster (bench/results/
// amd-epyc-zen3-2c-redesign-ab.md). Small lists are sorted outright. span_before
// is a total order on a step's spans, so the order, and with it every message, does not depend on
// how they were sorted.
void sort_spans(std::vector<Span>& spans) {
  const size_t m = spans.size();
  if (m <= 64) {
    std::sort(spans.begin(), spans.end(), SpanBefore{});
    return;
  }
  constexpr int kBytes = sizeof(uintptr_t);
  uintptr_t differ = 0;
  for (const Span& s : spans) differ |= s.lo ^ spans[0].lo;
  int shift[kBytes];
  int passes = 0;
  for (int d = 0; d < kBytes; ++d) {
    if ((differ >> (8 * d)) & 0xff) shift[passes++] = 8 * d;
  }
  if (passes > 0) {
    uint32_t start[kBytes][256];  // per pass: how many spans have each byte, then where they go
    std::memset(start, 0, sizeof(start[0]) * passes);
    for (const Span& s : spans) {
      for (int q = 0; q < passes; ++q) ++start[q][(s.lo >> shift[q]) & 0xff];
    }
    std::unique_ptr<Span[]> scratch(new Span[m]);
    Span* from = spans.data();
    Span* to = scratch.get();
    for (int q = 0; q < passes; ++q) {
      uint32_t sum = 0;
      for (uint32_t& c : start[q]) sum += std::exchange(c, sum);
      for (size_t j = 0; j < m; ++j) to[start[q][(from[j].lo >> shift[q]) & 0xff]++] = from[j];
      std::swap(from, to);
    }
    if (from != spans.data()) std::copy(from, from + m, spans.data());
  }
  for (size_t j = 1; j < m; ++j) {  // ties: spans at one address, into span_before order
    if (spans[j].lo != spans[j - 1].lo || !span_before(spans[j], spans[j - 1])) continue;
    const Span x = spans[j];
    size_t h = j;
    for (; h > 0 && spans[h - 1].lo == x.lo && span_before(x, spans[h - 1]); --h) {
      spans[h] = spans[h - 1];
    }
    spans[h] = x;
  }
}
}  // namespace

void check_no_overlap(std::vector<Span>& spans) {
  sort_spans(spans);
  check_no_overlap_sorted(spans);
}

void check_no_overlap_sorted(const std::vector<Span>& spans) {
  const Span* reach_any = nullptr;      // the span reaching furthest so far
  const Span* reach_written = nullptr;  // the written span reaching furthest so far
  for (const Span& s : spans) {
    const Span* other = nullptr;
    if (s.written && reach_any && s.lo < reach_any->hi) other = reach_any;
    if (!other && reach_written && s.lo < reach_written->hi) other = reach_written;
    if (other) {
      s.names().value(s.item() + " overlaps " + other->item());
    }
    if (!reach_any || s.hi > reach_any->hi) reach_any = &s;
    if (s.written && (!reach_written || s.hi > reach_written->hi)) reach_written = &s;
  }
}

const Span* overlapping(const std::vector<Span>& sorted, uintptr_t lo, uintptr_t hi) {
  // The spans are disjoint and sorted, so their ends are sorted too: the first one ending after
  // lo is the only one that can reach into [lo, hi).
  auto w = std::upper_bound(sorted.begin(), sorted.end(), lo,
                            [](uintptr_t x, const Span& s) { return x < s.hi; });
  return w != sorted.end() && w->lo < hi ? &*w : nullptr;
}

std::string format_message(const char* tmpl, const std::string& value, int index) {
  std::string out;
  for (const char* p = tmpl; *p; ++p) {
    if (p[0] == '{' && p[1] == '}') {
      out += value;
      ++p;
    } else if (p[0] == '{' && p[1] == 'i' && p[2] == '}') {
      out += std::to_string(index);
      p += 2;
    } else {
      out += *p;
    }
  }
  return out;
}

}  // namespace fusedopt::bindings

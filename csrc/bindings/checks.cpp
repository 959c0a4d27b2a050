#include "checks.h"

#include "../common.h"

#include <algorithm>

namespace fusedopt::bindings {

void Fail::type(const std::string& msg) const { throw py::type_error(std::string(fn) + ": " + msg); }
void Fail::value(const std::string& msg) const {
  throw py::value_error(std::string(fn) + ": " + msg);
}

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

std::string item(const char* arg, size_t i) {
  return std::string(arg) + "[" + std::to_string(i) + "]";
}

std::vector<ListArg> named_lists(py::list args, std::vector<std::string>& names) {
  const size_t nargs = args.size();
  if (nargs < 2 || nargs > static_cast<size_t>(kMaxBuffers)) {
    throw py::value_error("check: args must hold 2 to " + std::to_string(kMaxBuffers) +
                          " (name, list) pairs, got " + std::to_string(nargs));
  }
  names.assign(nargs, std::string());
  std::vector<ListArg> lists(nargs);
  for (size_t k = 0; k < nargs; ++k) {
    PyObject* pair = PyList_GET_ITEM(args.ptr(), k);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
      throw py::type_error("check: args[" + std::to_string(k) + "] must be a (name, list) tuple");
    }
    names[k] = py::reinterpret_borrow<py::str>(PyTuple_GET_ITEM(pair, 0)).cast<std::string>();
    lists[k] = {nullptr, PyTuple_GET_ITEM(pair, 1)};
  }
  for (size_t k = 0; k < nargs; ++k) lists[k].name = names[k].c_str();
  return lists;
}

void check_no_overlap(const Fail& fail, const ListArg* args, std::vector<Span>& spans) {
  // Ties in list order, so that the message is the same on every platform.
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) {
    return x.lo != y.lo ? x.lo < y.lo : (x.arg != y.arg ? x.arg < y.arg : x.index < y.index);
  });
  const Span* reach_any = nullptr;      // the span reaching furthest so far
  const Span* reach_written = nullptr;  // the written span reaching furthest so far
  for (const Span& s : spans) {
    const Span* other = nullptr;
    if (s.written && reach_any && s.lo < reach_any->hi) other = reach_any;
    if (!other && reach_written && s.lo < reach_written->hi) other = reach_written;
    if (other) {
      fail.value(item(args[s.arg].name, s.index) + " overlaps " +
                 item(args[other->arg].name, other->index));
    }
    if (!reach_any || s.hi > reach_any->hi) reach_any = &s;
    if (s.written && (!reach_written || s.hi > reach_written->hi)) reach_written = &s;
  }
}

}  // namespace fusedopt::bindings

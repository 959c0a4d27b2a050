#include "checks.h"

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

#include "buffers.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

namespace fusedopt::bindings {

namespace {

using npy = py::detail::npy_api;

constexpr int kFlagC = npy::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kFlagF = npy::NPY_ARRAY_F_CONTIGUOUS_;
constexpr int kFlagAligned = npy::NPY_ARRAY_ALIGNED_;
constexpr int kFlagWriteable = npy::NPY_ARRAY_WRITEABLE_;

std::atomic<int> g_threads{0};

std::string dtype_str(py::handle a) { return py::str(a.attr("dtype")).cast<std::string>(); }

std::string shape_str(const py::detail::PyArray_Proxy* a) {
  std::string s = "(";
  for (int d = 0; d < a->nd; ++d) {
    if (d) s += ", ";
    s += std::to_string(a->dimensions[d]);
  }
  if (a->nd == 1) s += ",";
  return s + ")";
}

const char* order_str(int flags) { return (flags & kFlagC) ? "C" : "F"; }

// The memory [lo, hi) of numel elements of a float32 / float64 array at data.
std::pair<uintptr_t, uintptr_t> extent(const char* data, int64_t numel, int type_num) {
  const auto lo = reinterpret_cast<uintptr_t>(data);
  return {lo, lo + static_cast<uintptr_t>(numel) * (type_num == npy::NPY_FLOAT_ ? 4 : 8)};
}

}  // namespace

int thread_setting() { return g_threads.load(std::memory_order_relaxed); }
void set_thread_setting(int n) { g_threads.store(n, std::memory_order_relaxed); }

void check_step(const char* fn, int64_t step) {
  if (step < 1) Fail{fn}.value("step must be >= 1, got " + std::to_string(step));
}

cpu::WorkView WorkList::view(int max_threads) const {
  return {tensors.data(), chunks.data(), static_cast<int64_t>(chunks.size()), total, max_threads};
}

Batch::Batch(const char* fn, const ListArg* a, int nargs) {
  const Fail fail{fn};

  // 1. Every argument is a list or tuple, all of one length.
  std::vector<py::sequence> seqs;
  seqs.reserve(nargs);
  for (int k = 0; k < nargs; ++k) {
    py::handle l = a[k].list;
    if (!PyList_Check(l.ptr()) && !PyTuple_Check(l.ptr())) {
      fail.type(std::string(a[k].name) + " must be a list or tuple of numpy arrays, got " +
                type_name(l));
    }
    seqs.push_back(py::reinterpret_borrow<py::sequence>(l));
  }
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(seqs[0].ptr()));
  for (int k = 1; k < nargs; ++k) {
    const size_t nk = static_cast<size_t>(PySequence_Fast_GET_SIZE(seqs[k].ptr()));
    if (nk != n) {
      fail.value(std::string(a[k].name) + " has " + std::to_string(nk) + " arrays, expected " +
                 std::to_string(n) + " (one per param)");
    }
  }

  // 2. Every array, index by index, against the param at that index.
  auto& api = npy::get();
  std::vector<Span> spans;
  spans.reserve(n * nargs);
  WorkList per_dtype[2];
  per_dtype[0].dtype = DType::Float32;
  per_dtype[1].dtype = DType::Float64;
  for (size_t i = 0; i < n; ++i) {
    TensorRef t{};
    int type_num = 0;
    const py::detail::PyArray_Proxy* p = nullptr;
    int64_t numel = 1;
    for (int k = 0; k < nargs; ++k) {
      PyObject* o = PySequence_Fast_ITEMS(seqs[k].ptr())[i];
      if (!api.PyArray_Check_(o)) {
        fail.type(item(a[k].name, i) + " is a " + type_name(o) + ", expected a numpy.ndarray");
      }
      const auto* arr = py::detail::array_proxy(o);
      const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
      const bool written = k != 1;
      if (k == 0) {
        if (descr->type_num != npy::NPY_FLOAT_ && descr->type_num != npy::NPY_DOUBLE_) {
          fail.type(item(a[k].name, i) + " has dtype " + dtype_str(o) +
                    ", expected float32 or float64");
        }
        type_num = descr->type_num;
        p = arr;
        for (int d = 0; d < arr->nd; ++d) numel *= arr->dimensions[d];
      } else if (descr->type_num != type_num) {
        fail.type(item(a[k].name, i) + " has dtype " + dtype_str(o) + ", expected " +
                  dtype_str(PySequence_Fast_ITEMS(seqs[0].ptr())[i]) + " (the dtype of " +
                  item(a[0].name, i) + ")");
      }
      if (descr->byteorder == '>') {
        fail.type(item(a[k].name, i) + " has a non-native byte order (dtype " + dtype_str(o) +
                  "); use arr.astype(arr.dtype.newbyteorder('='))");
      }
      if (k > 0) {
        bool same = arr->nd == p->nd;
        for (int d = 0; same && d < arr->nd; ++d) same = arr->dimensions[d] == p->dimensions[d];
        if (!same) {
          fail.value(item(a[k].name, i) + " has shape " + shape_str(arr) + ", expected " +
                     shape_str(p) + " (the shape of " + item(a[0].name, i) + ")");
        }
      }
      if (written && !(arr->flags & kFlagWriteable)) {
        fail.value(item(a[k].name, i) + " is read-only");
      }
      if (!(arr->flags & (kFlagC | kFlagF))) {
        fail.value(item(a[k].name, i) +
                   " is not contiguous (fusedopt never copies a buffer; pass a contiguous array)");
      }
      if (k > 0) {
        const int order = p->flags & (kFlagC | kFlagF);
        if ((arr->flags & order) == 0) {
          fail.value(item(a[k].name, i) + " has a different memory order (" +
                     order_str(arr->flags) + ") than " + item(a[0].name, i) + " (" +
                     order_str(p->flags) + ")");
        }
      }
      if (!(arr->flags & kFlagAligned)) fail.value(item(a[k].name, i) + " is not aligned");
      t.ptr[k] = arr->data;
      if (numel > 0) {
        const auto [lo, hi] = extent(arr->data, numel, type_num);
        spans.push_back({lo, hi, written, k, i});
      }
    }
    if (numel == 0) continue;
    t.numel = numel;
    WorkList& wl = per_dtype[type_num == npy::NPY_FLOAT_ ? 0 : 1];
    const int64_t ti = static_cast<int64_t>(wl.tensors.size());
    wl.tensors.push_back(t);
    for (int64_t b = 0; b < numel; b += cpu::kChunk) {
      const int64_t len = std::min(cpu::kChunk, numel - b);
      wl.chunks.push_back({ti, b, len, wl.total});
      wl.total += len;
    }
  }

  // 3. No written buffer may share memory with any other buffer of the call (grads may share
  //    memory with each other: they are only read).
  check_no_overlap(fail, a, spans);

  for (auto& wl : per_dtype) {
    if (wl.total > 0) lists_.push_back(std::move(wl));
  }
}

}  // namespace fusedopt::bindings

namespace fusedopt::bindings {

// Note [The plan of a run] (buffers.h).
bool Plan::accepts(const char* fn, const ListArg* a, int nargs) const {
  if (fn_.empty() || nargs != nargs_ || fn_ != fn) return false;
  const size_t n = n_;
  for (int k = 0; k < nargs; ++k) {
    PyObject* l = a[k].list.ptr();
    if ((!PyList_Check(l) && !PyTuple_Check(l)) ||
        static_cast<size_t>(PySequence_Fast_GET_SIZE(l)) != n) {
      return false;
    }
  }
  // The written arrays: the same objects, unchanged in everything the full check looked at.
  size_t h = 0;
  for (int k = 0; k < nargs; ++k) {
    if (k == 1) continue;
    PyObject** items = PySequence_Fast_ITEMS(a[k].list.ptr());
    for (size_t i = 0; i < n; ++i, ++h) {
      if (items[i] != held_[h].ptr()) return false;
      const auto* arr = py::detail::array_proxy(items[i]);
      const Seen& s = seen_[h];
      if (arr->data != s.data || arr->flags != s.flags || arr->nd != s.nd) return false;
      const auto* d = py::detail::array_descriptor_proxy(arr->descr);
      if (d->type_num != s.type_num || d->byteorder != s.byteorder) return false;
      const int64_t* dims = dims_.data() + dims_at_[i];
      for (int q = 0; q < arr->nd; ++q) {
        if (arr->dimensions[q] != dims[q]) return false;
      }
    }
  }
  // The grads: what the full check asks of a read-only array, against its (unchanged) param.
  auto& api = npy::get();
  PyObject** grads = PySequence_Fast_ITEMS(a[1].list.ptr());
  for (size_t i = 0; i < n; ++i) {
    PyObject* o = grads[i];
    if (!api.PyArray_Check_(o)) return false;
    const auto* arr = py::detail::array_proxy(o);
    const Seen& p = seen_[i];  // param i
    const auto* d = py::detail::array_descriptor_proxy(arr->descr);
    if (d->type_num != p.type_num || d->byteorder == '>' || arr->nd != p.nd) return false;
    const int64_t* dims = dims_.data() + dims_at_[i];
    int64_t numel = 1;
    for (int q = 0; q < arr->nd; ++q) {
      if (arr->dimensions[q] != dims[q]) return false;
      numel *= dims[q];
    }
    const int order = p.flags & (kFlagC | kFlagF);
    if ((arr->flags & order) == 0 || !(arr->flags & kFlagAligned)) return false;
    if (numel == 0) continue;
    const auto [lo, hi] = extent(arr->data, numel, p.type_num);
    // The written spans are disjoint and sorted, so their ends are sorted too: the first one
    // ending after lo is the only one that can reach into [lo, hi).
    auto w = std::upper_bound(written_.begin(), written_.end(), lo,
                              [](uintptr_t x, const std::pair<uintptr_t, uintptr_t>& s) {
                                return x < s.second;
                              });
    if (w != written_.end() && w->first < hi) return false;
  }
  return true;
}

void Plan::remember(const char* fn, const ListArg* a, int nargs, const Batch& b) {
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(a[0].list.ptr()));
  fn_.clear();  // nothing remembered until complete
  held_.clear();
  seen_.clear();
  dims_.clear();
  dims_at_.clear();
  at_.assign(n, {-1, -1});
  written_.clear();
  int list_of[2] = {-1, -1};  // dtype (0: float32, 1: float64) -> index in b.lists()
  for (size_t w = 0; w < b.lists().size(); ++w) {
    list_of[b.lists()[w].dtype == DType::Float32 ? 0 : 1] = static_cast<int>(w);
  }
  int64_t next[2] = {0, 0};
  for (int k = 0; k < nargs; ++k) {
    if (k == 1) continue;
    PyObject** items = PySequence_Fast_ITEMS(a[k].list.ptr());
    for (size_t i = 0; i < n; ++i) {
      const auto* arr = py::detail::array_proxy(items[i]);
      const auto* d = py::detail::array_descriptor_proxy(arr->descr);
      held_.push_back(py::reinterpret_borrow<py::object>(items[i]));
      seen_.push_back({arr->data, arr->flags, d->type_num, d->byteorder, arr->nd});
      int64_t numel = 1;
      for (int q = 0; q < arr->nd; ++q) numel *= arr->dimensions[q];
      if (k == 0) {
        dims_at_.push_back(dims_.size());
        dims_.insert(dims_.end(), arr->dimensions, arr->dimensions + arr->nd);
        if (numel > 0) {
          const int dt = d->type_num == npy::NPY_FLOAT_ ? 0 : 1;
          at_[i] = {list_of[dt], next[dt]++};
        }
      }
      if (numel > 0) written_.push_back(extent(arr->data, numel, d->type_num));
    }
  }
  std::sort(written_.begin(), written_.end());
  batch_ = b;
  n_ = n;
  nargs_ = nargs;
  fn_ = fn;
}

Batch Plan::batch(const char* fn, const ListArg* a, int nargs) {
  if (accepts(fn, a, nargs)) {
    Batch out = batch_;
    PyObject** grads = PySequence_Fast_ITEMS(a[1].list.ptr());
    for (size_t i = 0; i < n_; ++i) {
      const auto [w, t] = at_[i];
      if (w >= 0) out.lists_[w].tensors[t].ptr[1] = py::detail::array_proxy(grads[i])->data;
    }
    return out;
  }
  Batch b(fn, a, nargs);  // refuses the call, or:
  ++full_checks_;
  remember(fn, a, nargs, b);
  return b;
}

}  // namespace fusedopt::bindings

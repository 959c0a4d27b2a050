#include "buffers.h"

#include <algorithm>
#include <atomic>
#include <cstring>

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
        const auto lo = reinterpret_cast<uintptr_t>(arr->data);
        const uintptr_t bytes = static_cast<uintptr_t>(numel) * (type_num == npy::NPY_FLOAT_ ? 4 : 8);
        spans.push_back({lo, lo + bytes, written, k, i});
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

// fusedopt._core.cpu.adafactor: Adafactor over NumPy arrays (algorithms/adafactor.h). Its states
// are not of its params' shapes (row_var [..., R, 1], col_var [..., 1, C] for a param of 2 or more
// dims; variance for the others), so it has its own check, made as check_call makes the generic
// one (arrays.h): everything before anything is written, nothing copied, each refusal naming its
// array.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "arrays.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

namespace {

using npy = py::detail::npy_api;
constexpr int kFlagC = 0x0001;

std::vector<int64_t> dims_of(const py::detail::PyArray_Proxy* a) {
  return std::vector<int64_t>(a->dimensions, a->dimensions + a->nd);
}

// A factor of a param of shape `p` (row: [..., R, 1]; col: [..., 1, C]) or its variance: of
// the param's dtype, float32 for a 16-bit param (Note [Adafactor in 16 bits]).
void check_state(const Names& names, const ListArg& arg, size_t i, PyObject* o, PyObject* param,
                 const char* plist, const std::vector<int64_t>& want, FirstState* first,
                 std::vector<Span>& spans, const Site* site, uint16_t rank) {
  const auto* a = check_slot(names, arg, 2, i, o, nullptr, plist, first);
  const auto* p = py::detail::array_proxy(param);
  const int pt = py::detail::array_descriptor_proxy(p->descr)->type_num;
  const int st = py::detail::array_descriptor_proxy(a->descr)->type_num;
  const bool low = pt != npy::NPY_FLOAT_ && pt != npy::NPY_DOUBLE_;
  if (st != (low ? static_cast<int>(npy::NPY_FLOAT_) : pt)) {
    names.type(names.item(arg.name, i) + " has dtype " + dtype_str(o) + ", expected " +
               (low ? std::string("float32 (the state of ") + type_name_of(pt) + " " +
                          names.item(plist, i) + ")"
                    : dtype_str(param) + " (the dtype of " + names.item(plist, i) + ")"));
  }
  if (dims_of(a) != want) {
    names.value(names.item(arg.name, i) + " has shape " + shape_str(a->dimensions, a->nd) +
                ", expected " + shape_str(want.data(), static_cast<int>(want.size())) + " (for " +
                names.item(plist, i) + " of shape " + shape_str(p->dimensions, p->nd) + ")");
  }
  if (!(a->flags & kFlagC)) {
    names.value(names.item(arg.name, i) + " is not C-contiguous");
  }
  const auto [lo, hi] = extent(a->data, numel_of(a), st);
  spans.push_back({lo, hi, site, static_cast<uint32_t>(i), rank, true});
}

py::tuple as_list(const Names& names, py::handle l, const char* what, size_t n, bool first) {
  if (!PyList_Check(l.ptr()) && !PyTuple_Check(l.ptr())) {
    names.type(std::string(what) + " must be a list or tuple, got " + type_name(l));
  }
  PyObject* t = PySequence_Tuple(l.ptr());
  if (t == nullptr) throw py::error_already_set();
  py::tuple out = py::reinterpret_steal<py::tuple>(t);
  if (!first && out.size() != n) {
    names.value(std::string(what) + " has " + std::to_string(out.size()) + " items, expected " +
                std::to_string(n) + " (one per param)");
  }
  return out;
}

void adafactor(py::handle params, py::handle grads, py::handle row_vars, py::handle col_vars,
               py::handle variances, py::handle steps, double lr, double beta2_decay, double eps1,
               double eps2, double d, double weight_decay, bool maximize, const std::string& name,
               py::handle index, bool check_only, py::handle sr_seed, py::handle copies,
               py::handle comps) {
  const Names names(name, index);
  AdafactorHyper h{lr, beta2_decay, eps1, eps2, d, weight_decay, maximize};
  h.stochastic = sr_seed_of(names, sr_seed, &h.sr_seed);  // Note [Adafactor in 16 bits]
  const py::tuple ps = as_list(names, params, "params", 0, true);
  const size_t n = ps.size();
  const py::tuple gs = as_list(names, grads, "grads", n, false);
  const py::tuple rs = as_list(names, row_vars, "row_vars", n, false);
  const py::tuple cs = as_list(names, col_vars, "col_vars", n, false);
  const py::tuple vs = as_list(names, variances, "variances", n, false);
  const py::tuple ss = as_list(names, steps, "steps", n, false);
  // param copies and Kahan compensations (Note [Adafactor in 16 bits]): None, or one per param
  if (!comps.is_none()) check_kahan_alone(names, !copies.is_none(), h.stochastic);
  const py::tuple nones = py::tuple(0);
  const py::tuple cps = copies.is_none() ? nones : as_list(names, copies, "param_copies", n, false);
  const py::tuple kcs = comps.is_none() ? nones : as_list(names, comps, "kahan_comps", n, false);
  const ListArg pa{"params", ps, Role::Param}, ga{"grads", gs, Role::Grad},
      ra{"row_vars", rs, Role::State}, ca{"col_vars", cs, Role::State},
      va{"variances", vs, Role::State};
  ListArg cpa{"param_copies", cps, Role::State}, kca{"kahan_comps", kcs, Role::State};
  cpa.copy = kca.copy = kca.kahan = true;
  const Site sites[] = {{&names, "params"},   {&names, "grads"},        {&names, "row_vars"},
                        {&names, "col_vars"}, {&names, "variances"},    {&names, "param_copies"},
                        {&names, "kahan_comps"}};
  std::vector<Span> spans;
  std::vector<AdafactorTensor> ts;
  ts.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* p = ps[i].ptr();
    const auto* pa_ = check_slot(names, pa, 0, i, p, nullptr, nullptr, nullptr);
    const int pt = py::detail::array_descriptor_proxy(pa_->descr)->type_num;
    if (dtype_of(pt) < 0) {
      names.type(names.item("params", i) + " has dtype " + dtype_str(p) +
                 ", expected float32, float64, bfloat16 or float16");
    }
    const auto* ga_ = check_slot(names, ga, 1, i, gs[i].ptr(), p, "params", nullptr);
    const int gt = py::detail::array_descriptor_proxy(ga_->descr)->type_num;
    const int gd = dtype_of(gt);
    const bool low_grad = pt == npy::NPY_FLOAT_ && (gd == static_cast<int>(DType::BFloat16) ||
                                                    gd == static_cast<int>(DType::Float16));
    if (gt != pt && !low_grad) {
      names.type(names.item("grads", i) + " has dtype " + dtype_str(gs[i]) + ", expected " +
                 dtype_str(p) + " (the dtype of " + names.item("params", i) +
                 (pt == npy::NPY_FLOAT_ ? "; or bfloat16 or float16)" : ")"));
    }
    const int64_t numel = numel_of(pa_);
    const bool factored = pa_->nd >= 2;
    if (factored && !(pa_->flags & kFlagC)) {
      names.value(names.item("params", i) + " is not C-contiguous (Adafactor factors the last "
                  "two dims of a param of 2 or more dims)");
    }
    if (factored && !(ga_->flags & kFlagC)) {
      names.value(names.item("grads", i) + " is not C-contiguous");
    }
    py::handle st = ss[i];
    if (!PyLong_Check(st.ptr()) || PyBool_Check(st.ptr())) {
      names.type(names.item("steps", i) + " is a " + type_name(st) + ", expected an int");
    }
    int overflow = 0;
    const long long step = PyLong_AsLongLongAndOverflow(st.ptr(), &overflow);
    if (overflow != 0 || (step == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      names.value(names.item("steps", i) + " is out of range: " + repr_of(st));
    }
    if (step < 1) {
      names.value(names.item("steps", i) + " must be >= 1 (the 1-based step of this update), got " +
                  std::to_string(step));
    }
    const auto [plo, phi] = extent(pa_->data, numel, pt);
    spans.push_back({plo, phi, &sites[0], static_cast<uint32_t>(i), 0, true});
    const auto [glo, ghi] = extent(ga_->data, numel, gt);
    spans.push_back({glo, ghi, &sites[1], static_cast<uint32_t>(i), 1, false});
    AdafactorTensor t{};
    t.param = pa_->data;
    t.grad = ga_->data;
    t.step = step;
    t.index = static_cast<int64_t>(i);
    t.factored = factored;
    t.dtype = static_cast<DType>(dtype_of(pt));
    t.grad_dtype = static_cast<DType>(gd);
    // (a copy is of its grad's dtype: the copies of one call may be of both 16-bit dtypes, and
    // the kernel is called per (param, grad) dtype pair)
    int copy_type = 0, comp_type = 0;
    if (!copies.is_none() && !cps[i].is_none()) {
      const auto* c = check_copy(names, cpa, i, cps[i].ptr(), p, "params", &copy_type);
      const int ct = py::detail::array_descriptor_proxy(c->descr)->type_num;
      if (ct != gt) {
        names.type(names.item("param_copies", i) + " has dtype " + dtype_str(cps[i]) +
                   ", expected " + dtype_str(gs[i]) + " (the dtype of " +
                   names.item("grads", i) + ": a copy is of a float32 master with 16-bit grads)");
      }
      t.copy = c->data;
      const auto [lo, hi] = extent(c->data, numel, ct);
      spans.push_back({lo, hi, &sites[5], static_cast<uint32_t>(i), 5, true});
    }
    if (!comps.is_none() && !kcs[i].is_none()) {
      const auto* c = check_copy(names, kca, i, kcs[i].ptr(), p, "params", &comp_type);
      t.comp = c->data;
      const auto [lo, hi] = extent(c->data, numel, pt);
      spans.push_back({lo, hi, &sites[6], static_cast<uint32_t>(i), 6, true});
    }
    FirstState first;
    const std::vector<int64_t> shape = dims_of(pa_);
    if (factored) {
      if (!vs[i].is_none()) {
        names.value(names.item("variances", i) + " must be None (" + names.item("params", i) +
                    " has 2 or more dims: its state is row_var and col_var)");
      }
      std::vector<int64_t> row = shape, col = shape;
      row.back() = 1;
      col[col.size() - 2] = 1;
      if (rs[i].is_none() || cs[i].is_none()) {
        names.value(names.item(rs[i].is_none() ? "row_vars" : "col_vars", i) + " is None, but " +
                    names.item("params", i) + " has 2 or more dims");
      }
      check_state(names, ra, i, rs[i].ptr(), p, "params", row, &first, spans, &sites[2], 2);
      check_state(names, ca, i, cs[i].ptr(), p, "params", col, &first, spans, &sites[3], 3);
      t.row_var = py::detail::array_proxy(rs[i].ptr())->data;
      t.col_var = py::detail::array_proxy(cs[i].ptr())->data;
      t.rows = shape[shape.size() - 2];
      t.cols = shape.back();
      t.batch = 1;
      for (size_t k = 0; k + 2 < shape.size(); ++k) t.batch *= shape[k];
    } else {
      if (!rs[i].is_none() || !cs[i].is_none()) {
        names.value(names.item(rs[i].is_none() ? "col_vars" : "row_vars", i) + " must be None (" +
                    names.item("params", i) + " has fewer than 2 dims: its state is variance)");
      }
      if (vs[i].is_none()) {
        names.value(names.item("variances", i) + " is None, but " + names.item("params", i) +
                    " has fewer than 2 dims");
      }
      check_state(names, va, i, vs[i].ptr(), p, "params", shape, &first, spans, &sites[4], 4);
      t.variance = py::detail::array_proxy(vs[i].ptr())->data;
      t.batch = t.rows = 1;
      t.cols = numel;
    }
    ts.push_back(t);
  }
  check_no_overlap(spans);
  if (check_only) return;
  // one kernel call per (param dtype, grad dtype)
  std::vector<AdafactorTensor> by_dtype[kNumDTypes * kNumDTypes];
  for (const AdafactorTensor& t : ts) {
    by_dtype[static_cast<int>(t.dtype) * kNumDTypes + static_cast<int>(t.grad_dtype)].push_back(t);
  }
  const int threads = thread_setting();
  py::gil_scoped_release nogil;
  const auto& k = cpu::active();
  for (const auto& list : by_dtype) {
    k.adafactor(list.data(), static_cast<int64_t>(list.size()), h, threads);
  }
}

}  // namespace

void def_adafactor(py::module_& cpu) {
  cpu.def("adafactor", &adafactor, py::arg("params"), py::arg("grads"), py::arg("row_vars"),
          py::arg("col_vars"), py::arg("variances"), py::arg("steps"), py::kw_only(),
          py::arg("lr"), py::arg("beta2_decay"), py::arg("eps1"), py::arg("eps2"), py::arg("d"),
          py::arg("weight_decay"), py::arg("maximize"), py::arg("name") = "adafactor",
          py::arg("index") = py::none(), py::arg("check_only") = false,
          py::arg("sr_seed") = py::none(), py::arg("param_copies") = py::none(),
          py::arg("kahan_comps") = py::none(),
          "Adafactor over NumPy arrays (csrc/algorithms/adafactor.h), updated in place: for a "
          "param of 2 or more dims its row_var [..., R, 1] and col_var [..., 1, C] (variances[i] "
          "None), else its variance (row_vars[i], col_vars[i] None); steps[i] its 1-based step. "
          "Params float32, float64, bfloat16 or float16, each grad of its param's dtype, states "
          "of it too (float32 for a 16-bit param); sr_seed: None (a 16-bit param is rounded to "
          "nearest) or an int (stochastically, keyed by (sr_seed, steps[i], i, element)). A "
          "float32 param may take bfloat16 or float16 grads, and param_copies[i] of that dtype "
          "(written with it: master weights); a 16-bit param kahan_comps[i] of its dtype. "
          "Everything is checked before anything is written (check_only: nothing is). The hyper-parameters are taken as "
          "given (fusedopt.functional.adafactor checks them).");
}

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

#include "arrays.h"

#include <algorithm>
#include <atomic>

namespace fusedopt::bindings {

namespace {

using npy = py::detail::npy_api;

constexpr int kFlagC = npy::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kFlagF = npy::NPY_ARRAY_F_CONTIGUOUS_;
constexpr int kFlagAligned = npy::NPY_ARRAY_ALIGNED_;
constexpr int kFlagWriteable = npy::NPY_ARRAY_WRITEABLE_;

std::atomic<int> g_threads{0};

constexpr int kNpyHalf = 23;       // NPY_HALF
constexpr int kNpyUserDef = 256;   // NPY_USERDEF: the first type number of a registered dtype

const char* order_str(int flags) { return (flags & kFlagC) ? "C" : "F"; }

// A masked array of numpy.ma (only an ndarray subclass can be one; numpy.ma must be imported).
bool is_masked(PyObject* o) {
  PyObject* ma = PyImport_GetModule(py::str("numpy.ma").ptr());
  if (ma == nullptr) {
    PyErr_Clear();
    return false;
  }
  py::object mod = py::reinterpret_steal<py::object>(ma);
  py::object cls = py::getattr(mod, "MaskedArray", py::none());
  if (cls.is_none()) return false;
  const int r = PyObject_IsInstance(o, cls.ptr());
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

// "float32", "float32 or float64": the dtypes of `role` in the combinations with a slot-0 type
// p (-1: any), and for a state, grad type g (-1: any).
std::string allowed(Role role, int p) {
  bool seen[kNumDTypes] = {};
  for (int c = 0; c < kNumCombos; ++c) {
    const Combo& k = kCombos.at[c];
    if (p >= 0 && static_cast<int>(k.param) != p) continue;
    const DType d = role == Role::Grad ? k.grad : role == Role::State ? k.state : k.param;
    seen[static_cast<int>(d)] = true;
  }
  const char* names[kNumDTypes];
  int n = 0;
  for (int d = 0; d < kNumDTypes; ++d) {
    if (seen[d]) names[n++] = dtype_name(static_cast<DType>(d));
  }
  std::string out;  // "a", "a or b", "a, b or c"
  for (int i = 0; i < n; ++i) out += std::string(i == 0 ? "" : i + 1 == n ? " or " : ", ") + names[i];
  return out;
}

// ok[role][p][d]: whether a slot of `role` (0: the reference, 1: grad, 2: state) may hold dtype d
// in a tensor whose reference holds p (for the reference itself, p is ignored). Made once from
// StorageCombos, so that the check of an array is a table look-up.
struct DTypeTable {
  bool ok[3][kNumDTypes][kNumDTypes] = {};
  constexpr DTypeTable() {
    for (int c = 0; c < kNumCombos; ++c) {
      const Combo& k = kCombos.at[c];
      const int p = static_cast<int>(k.param);
      for (int q = 0; q < kNumDTypes; ++q) ok[0][q][p] = true;
      ok[1][p][static_cast<int>(k.grad)] = true;
      ok[2][p][static_cast<int>(k.state)] = true;
    }
  }
};
constexpr DTypeTable kDTypes{};

bool allowed_has(Role role, int p, int d) {
  const int r = role == Role::Grad ? 1 : role == Role::State ? 2 : 0;
  return p >= 0 && d >= 0 && kDTypes.ok[r][p][d];
}

}  // namespace

// ml_dtypes.bfloat16's type number, once seen (a dtype NumPy numbers when ml_dtypes registers it).
std::atomic<int> g_bf16_num{-1};

static int bf16_num() {
  int n = g_bf16_num.load(std::memory_order_relaxed);
  if (n >= 0) return n;
  // An array of ml_dtypes.bfloat16 means ml_dtypes is imported: look it up, never import it.
  PyObject* mod = PyImport_GetModule(py::str("ml_dtypes").ptr());
  if (mod == nullptr) {
    PyErr_Clear();
    return -1;
  }
  py::object ml = py::reinterpret_steal<py::object>(mod);
  py::object bf = py::getattr(ml, "bfloat16", py::none());
  if (bf.is_none()) return -1;
  n = py::module_::import("numpy").attr("dtype")(bf).attr("num").cast<int>();
  g_bf16_num.store(n, std::memory_order_relaxed);
  return n;
}

int dtype_of(int type_num) {
  if (type_num == npy::NPY_FLOAT_) return static_cast<int>(DType::Float32);
  if (type_num == npy::NPY_DOUBLE_) return static_cast<int>(DType::Float64);
  if (type_num == kNpyHalf) return static_cast<int>(DType::Float16);
  if (type_num >= kNpyUserDef && type_num == bf16_num()) return static_cast<int>(DType::BFloat16);
  return -1;
}

const char* type_name_of(int type_num) {
  const int d = dtype_of(type_num);
  return d < 0 ? "?" : dtype_name(static_cast<DType>(d));
}

int type_num_of(const Names& names, const char* what, py::handle dtype) {
  if (dtype.is_none()) return 0;
  py::object d;
  try {
    d = py::module_::import("numpy").attr("dtype")(dtype);
  } catch (py::error_already_set&) {
    names.type(std::string(what) + " must be a dtype, got " + py::repr(dtype).cast<std::string>());
  }
  const int num = d.attr("num").cast<int>();
  if (dtype_of(num) < 0) {
    names.type(std::string(what) + " must be float32, float64, float16 or bfloat16, got " +
               py::str(d).cast<std::string>());
  }
  return num;
}

bool sr_seed_of(const Names& names, py::handle sr_seed, uint64_t* seed) {
  if (sr_seed.is_none()) return false;
  if (!PyLong_Check(sr_seed.ptr()) || PyBool_Check(sr_seed.ptr())) {
    names.type("sr_seed must be an int (or None: round to nearest), got " + type_name(sr_seed));
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(sr_seed.ptr());
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    names.value("sr_seed must be in [0, 2**64), got " + py::repr(sr_seed).cast<std::string>());
  }
  *seed = static_cast<uint64_t>(v);
  return true;
}

void check_kahan_alone(const Names& names, bool copies, bool stochastic) {
  if (copies) {
    names.value("kahan_comps and param_copies exclude each other (compensations are of 16-bit "
                "params, copies of float32 ones)");
  }
  if (stochastic) {
    names.value("kahan_comps and sr_seed exclude each other (a stochastically rounded param has "
                "no rounding error to carry)");
  }
}

int thread_setting() { return g_threads.load(std::memory_order_relaxed); }
void set_thread_setting(int n) { g_threads.store(n, std::memory_order_relaxed); }

std::string dtype_str(py::handle a) { return py::str(a.attr("dtype")).cast<std::string>(); }

std::string shape_str(const int64_t* dims, int nd) {
  std::string s = "(";
  for (int d = 0; d < nd; ++d) {
    if (d) s += ", ";
    s += std::to_string(dims[d]);
  }
  if (nd == 1) s += ",";
  return s + ")";
}

int64_t numel_of(const py::detail::PyArray_Proxy* a) {
  int64_t n = 1;
  for (int d = 0; d < a->nd; ++d) n *= a->dimensions[d];
  return n;
}

std::pair<uintptr_t, uintptr_t> extent(const char* data, int64_t numel, int type_num) {
  const auto lo = reinterpret_cast<uintptr_t>(data);
  const int d = dtype_of(type_num);
  return {lo, lo + static_cast<uintptr_t>(numel) * dtype_size(static_cast<DType>(d < 0 ? 0 : d))};
}

int combo_of(int p, int g, int s) {
  const int dp = dtype_of(p), dg = g ? dtype_of(g) : -1, ds = s ? dtype_of(s) : -1;
  for (int c = 0; c < kNumCombos; ++c) {
    const Combo& k = kCombos.at[c];
    if (static_cast<int>(k.param) != dp) continue;
    if (dg >= 0 && static_cast<int>(k.grad) != dg) continue;
    if (ds >= 0 && static_cast<int>(k.state) != ds) continue;
    return c;
  }
  return -1;
}

namespace {

// check_array and check_slot, inlined into check_call's loop over every array of a call.
inline __attribute__((always_inline)) const py::detail::PyArray_Proxy* check_array_inline(
    const Names& names, const ListArg& a, int slot, size_t i, PyObject* o, PyObject* ref,
    const char* ref_list, FirstState* first) {
  auto& api = npy::get();
  if (!api.PyArray_Check_(o)) {
    names.type(names.item(a.name, i) + " is a " + type_name(o) + ", expected a numpy.ndarray");
  }
  if (Py_TYPE(o) != api.PyArray_Type_ && is_masked(o)) {
    names.type(names.item(a.name, i) + " is a masked array (numpy.ma.MaskedArray), whose mask "
               "fusedopt would ignore; pass its data (arr.data) or a plain ndarray");
  }
  const auto* arr = py::detail::array_proxy(o);
  const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
  const int dt = dtype_of(descr->type_num);
  if (ref == nullptr) {
    if (!allowed_has(Role::Param, 0, dt)) {
      names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) + ", expected " +
                 allowed(Role::Param, -1));
    }
  } else {
    const int pdt = dtype_of(py::detail::array_descriptor_proxy(py::detail::array_proxy(ref)->descr)->type_num);
    const Role role = slot == 1 ? Role::Grad : Role::State;
    if (!allowed_has(role, pdt, dt)) {
      const std::string set = allowed(role, pdt);
      const std::string ref_item = names.item(ref_list, i);
      names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) + ", expected " + set +
                 (set == dtype_name(static_cast<DType>(pdt))
                      ? " (the dtype of " + ref_item + ")"
                      : " (with a " + std::string(dtype_name(static_cast<DType>(pdt))) + " " +
                            ref_item + ")"));
    }
    if (role == Role::State) {
      if (first->type_num == 0) {
        *first = {descr->type_num, a.name};
      } else if (first->type_num != descr->type_num) {
        names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) + ", expected " +
                   dtype_name(static_cast<DType>(dtype_of(first->type_num))) + " (the dtype of " +
                   names.item(first->list, i) + ")");
      }
    }
  }
  if (descr->byteorder == '>') {
    names.type(names.item(a.name, i) + " has a non-native byte order (dtype " + dtype_str(o) + ")" +
               (a.written() ? "; fusedopt updates arrays in place and cannot convert it"
                            : "; pass arr.astype(arr.dtype.newbyteorder('='))"));
  }
  return arr;
}

// What every array of a call must be besides its dtype: of its reference's shape and memory order
// (unless it is the reference, p == arr), writeable if written, contiguous and aligned.
void check_layout(const Names& names, const ListArg& a, size_t i,
                  const py::detail::PyArray_Proxy* arr, PyObject* ref, const char* ref_list);

inline __attribute__((always_inline)) const py::detail::PyArray_Proxy* check_slot_inline(
    const Names& names, const ListArg& a, int slot, size_t i, PyObject* o, PyObject* ref,
    const char* ref_list, FirstState* first) {
  const auto* arr = check_array_inline(names, a, slot, i, o, ref, ref_list, first);
  check_layout(names, a, i, arr, ref, ref_list);
  return arr;
}

void check_layout(const Names& names, const ListArg& a, size_t i,
                  const py::detail::PyArray_Proxy* arr, PyObject* ref, const char* ref_list) {
  const auto* p = ref ? py::detail::array_proxy(ref) : arr;
  if (ref) {
    bool same = arr->nd == p->nd;
    for (int d = 0; same && d < arr->nd; ++d) same = arr->dimensions[d] == p->dimensions[d];
    if (!same) {
      names.value(names.item(a.name, i) + " has shape " + shape_str(arr->dimensions, arr->nd) +
                  ", expected " + shape_str(p->dimensions, p->nd) + " (the shape of " +
                  names.item(ref_list, i) + ")");
    }
  }
  if (a.written() && !(arr->flags & kFlagWriteable)) {
    names.value(names.item(a.name, i) + " is read-only");
  }
  if (!(arr->flags & (kFlagC | kFlagF))) {
    names.value(names.item(a.name, i) +
                " is not contiguous (fusedopt never copies a buffer; pass a contiguous array)");
  }
  if (ref) {
    const int order = p->flags & (kFlagC | kFlagF);
    if ((arr->flags & order) == 0) {
      names.value(names.item(a.name, i) + " has a different memory order (" +
                  order_str(arr->flags) + ") than " + names.item(ref_list, i) + " (" +
                  order_str(p->flags) + ")");
    }
  }
  if (!(arr->flags & kFlagAligned)) names.value(names.item(a.name, i) + " is not aligned");
}

// The quick tests of Note [The common array]. The reference (slot 0): a plain ndarray of a param
// dtype, native byte order, contiguous, with the flags `want`; sets *pdt to its dtype.
inline __attribute__((always_inline)) bool is_common_ref(PyObject* o,
                                                         const py::detail::PyArray_Proxy* arr,
                                                         int want, int* pdt) {
  if (Py_TYPE(o) != reinterpret_cast<PyTypeObject*>(npy::get().PyArray_Type_)) return false;
  const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
  const int dt = dtype_of(descr->type_num);
  *pdt = dt;
  return dt >= 0 && kDTypes.ok[0][0][dt] && descr->byteorder != '>' &&
         (arr->flags & want) == want && (arr->flags & (kFlagC | kFlagF)) != 0;
}

// Another slot's array against its reference `p` (of dtype pdt): a plain ndarray of a dtype the
// combinations allow beside pdt (role: 1 a grad, 2 a state, whose dtype must be the first
// state's), native byte order, with the flags `want`, p's memory order and p's shape.
inline __attribute__((always_inline)) bool is_common(PyObject* o, const py::detail::PyArray_Proxy* arr,
                                                     int role, int want, int pdt,
                                                     const py::detail::PyArray_Proxy* p,
                                                     FirstState* first, const char* list) {
  if (Py_TYPE(o) != reinterpret_cast<PyTypeObject*>(npy::get().PyArray_Type_)) return false;
  const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
  const int dt = dtype_of(descr->type_num);
  const int flags = arr->flags;
  if (dt < 0 || !kDTypes.ok[role][pdt][dt] || descr->byteorder == '>' || (flags & want) != want ||
      (flags & p->flags & (kFlagC | kFlagF)) == 0 || arr->nd != p->nd) {
    return false;
  }
  for (int d = 0; d < arr->nd; ++d) {
    if (arr->dimensions[d] != p->dimensions[d]) return false;
  }
  if (role == 2) {
    if (first->type_num == 0) {
      *first = {descr->type_num, list};
    } else if (first->type_num != descr->type_num) {
      return false;
    }
  }
  return true;
}

}  // namespace

// A param copy (Note [Param copies] in cpu/driver.h) of the param `ref`: a plain or subclassed
// ndarray, bfloat16 or float16 of the first copy's dtype (*copy_type, set by the first), of a
// float32 param, native byte order, with check_layout's layout. Or, in a list of Kahan
// compensations (ListArg::kahan), one of a 16-bit param, of that param's dtype.
const py::detail::PyArray_Proxy* check_copy(const Names& names, const ListArg& a, size_t i,
                                            PyObject* o, PyObject* ref, const char* ref_list,
                                            int* copy_type) {
  auto& api = npy::get();
  const char* none = a.kahan ? "(or None: no compensation)" : "(or None: no copy)";
  if (!api.PyArray_Check_(o)) {
    names.type(names.item(a.name, i) + " is a " + type_name(o) + ", expected a numpy.ndarray " +
               none);
  }
  if (Py_TYPE(o) != api.PyArray_Type_ && is_masked(o)) {
    names.type(names.item(a.name, i) + " is a masked array (numpy.ma.MaskedArray)");
  }
  const auto* arr = py::detail::array_proxy(o);
  const auto* descr = py::detail::array_descriptor_proxy(arr->descr);
  const int dt = dtype_of(descr->type_num);
  const int pt = py::detail::array_descriptor_proxy(py::detail::array_proxy(ref)->descr)->type_num;
  if (a.kahan) {
    const int pd = dtype_of(pt);
    if (pd != static_cast<int>(DType::BFloat16) && pd != static_cast<int>(DType::Float16)) {
      names.type(names.item(a.name, i) + ": Kahan compensations are of bfloat16 or float16 "
                 "params, but " + names.item(ref_list, i) + " has dtype " + type_name_of(pt) +
                 " (pass None for it)");
    }
    if (descr->type_num != pt) {
      names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) + ", expected " +
                 type_name_of(pt) + " (its param's)");
    }
  } else {
    if (dt != static_cast<int>(DType::BFloat16) && dt != static_cast<int>(DType::Float16)) {
      names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) +
                 ", expected bfloat16 or float16");
    }
    if (*copy_type == 0) {
      *copy_type = descr->type_num;
    } else if (*copy_type != descr->type_num) {
      names.type(names.item(a.name, i) + " has dtype " + dtype_str(o) + ", expected " +
                 type_name_of(*copy_type) + " (every copy of a call has one dtype)");
    }
    if (dtype_of(pt) != static_cast<int>(DType::Float32)) {
      names.type(names.item(a.name, i) + ": copies are written of float32 params, but " +
                 names.item(ref_list, i) + " has dtype " + type_name_of(pt));
    }
  }
  if (descr->byteorder == '>') {
    names.type(names.item(a.name, i) + " has a non-native byte order (dtype " + dtype_str(o) + ")");
  }
  check_layout(names, a, i, arr, ref, ref_list);
  return arr;
}


const py::detail::PyArray_Proxy* check_grad(const Names& names, const ListArg& a, size_t i,
                                            PyObject* o, PyObject* ref, const char* ref_list) {
  const auto* arr = py::detail::array_proxy(o);
  const auto* p = py::detail::array_proxy(ref);
  const int pdt = dtype_of(py::detail::array_descriptor_proxy(p->descr)->type_num);
  FirstState first;
  if (pdt >= 0 && is_common(o, arr, 1, kFlagAligned, pdt, p, &first, a.name)) return arr;
  return check_slot_inline(names, a, 1, i, o, ref, ref_list, &first);
}


const py::detail::PyArray_Proxy* check_array(const Names& names, const ListArg& a, int slot,
                                             size_t i, PyObject* o, PyObject* ref,
                                             const char* ref_list, FirstState* first) {
  return check_array_inline(names, a, slot, i, o, ref, ref_list, first);
}

const py::detail::PyArray_Proxy* check_slot(const Names& names, const ListArg& a, int slot,
                                            size_t i, PyObject* o, PyObject* ref,
                                            const char* ref_list, FirstState* first) {
  return check_slot_inline(names, a, slot, i, o, ref, ref_list, first);
}

// Note [The common array]
// A call over many small tensors spends its time in the checks of its arrays (800 for Adam over
// 200 tensors), so check_call takes the array it meets almost always -- a plain ndarray of an
// allowed dtype, native byte order, aligned, contiguous, writeable where written, of its param's
// shape and memory order, of the first state's dtype -- on the facts of its slot looked up once
// per call; a step's grads are checked the same way against their params (check_grad). Every
// other array goes through check_slot, which is the rule: it raises what is wrong, or takes the
// array (an ndarray subclass that is not a masked array). The two must agree on every array the
// quick test takes: tests/test_errors.py, test_review_defects.py, test_fuzz.py and
// test_bound.py reach every refusal through both.
CheckedCall check_call(const Names& names, const ListArg* a, int nargs, const Site* sites,
                       int rank, bool keep) {
  CheckedCall out;
  // 1. Every list is a list or tuple, all of one length.
  for (int k = 0; k < nargs; ++k) {
    if (!a[k].present) continue;
    py::handle l = a[k].list;
    if (!PyList_Check(l.ptr()) && !PyTuple_Check(l.ptr())) {
      names.type(std::string(a[k].name) + " must be a list or tuple of numpy arrays, got " +
                 type_name(l));
    }
  }
  const size_t n = static_cast<size_t>(PySequence_Fast_GET_SIZE(a[0].list.ptr()));
  for (int k = 1; k < nargs; ++k) {
    if (!a[k].present) continue;
    const size_t nk = static_cast<size_t>(PySequence_Fast_GET_SIZE(a[k].list.ptr()));
    if (nk != n) {
      names.value(std::string(a[k].name) + " has " + std::to_string(nk) + " arrays, expected " +
                  std::to_string(n) + " (one per param)");
    }
  }
  out.n = n;
  out.at.assign(n, {-1, -1});

  // 2. Every array, index by index, against the reference at that index.
  if (keep) out.dims.reserve(n * nargs * 2);
  std::vector<WorkList> per_combo(kNumCombos);
  for (int c = 0; c < kNumCombos; ++c) per_combo[c].combo = c;
  PyObject* first = n > 0 ? PySequence_Fast_ITEMS(a[0].list.ptr())[0] : nullptr;
  if (first != nullptr && npy::get().PyArray_Check_(first)) {
    // Most calls are of one storage combination: room for all their tensors.
    const int c0 = combo_of(
        py::detail::array_descriptor_proxy(py::detail::array_proxy(first)->descr)->type_num, 0, 0);
    if (c0 >= 0) {
      per_combo[c0].tensors.reserve(n);
      per_combo[c0].origin.reserve(n);
      per_combo[c0].chunks.reserve(n);
    }
  }
  // What the loop asks of every array of a slot, looked up once (Note [The common array]).
  struct SlotFacts {
    PyObject** items;
    int role;       // kDTypes.ok's index: 0 the reference, 1 the grad, 2 a state
    int flags;      // the flags every array must have besides an order
    uint16_t rank;  // its spans' rank
    bool written;
  };
  SlotFacts facts[kMaxBuffers + 1];  // the slots, and the param copies (role 3) last
  int slots_present[kMaxBuffers + 1];
  int npresent = 0;
  int copy_type = 0;  // the copies' NumPy type number, once one is seen
  for (int k = 0; k < nargs; ++k) {
    if (!a[k].present) continue;
    slots_present[npresent++] = k;
    facts[k] = {PySequence_Fast_ITEMS(a[k].list.ptr()), a[k].copy ? 3 : k == 0 ? 0 : k == 1 ? 1 : 2,
                kFlagAligned | (a[k].written() ? kFlagWriteable : 0),
                static_cast<uint16_t>(rank * 8 + k), a[k].written()};
  }
  // Every non-empty array's memory, list by list (Note [Sorting spans]): slot j's spans from
  // j * n, tail[j] past its last.
  std::vector<Span> spans(n * static_cast<size_t>(npresent));
  Span* tail[kMaxBuffers + 1];
  for (int j = 0; j < npresent; ++j) tail[j] = spans.data() + static_cast<size_t>(j) * n;
  std::vector<const py::detail::PyArray_Proxy*> arrs(nargs);
  int last_types[3] = {-1, -1, -1};  // the type numbers of the tensor before, and their combo
  int last_combo = -1;
  for (size_t i = 0; i < n; ++i) {
    TensorRef t{};
    FirstState first;
    int64_t numel = 0;
    PyObject* ref = nullptr;
    const py::detail::PyArray_Proxy* p = nullptr;
    int pdt = -1;
    for (int j = 0; j < npresent; ++j) {
      const int k = slots_present[j];
      const SlotFacts& f = facts[k];
      PyObject* o = f.items[i];
      if (f.role == 3) {  // a param copy: none, or checked on its own
        if (o == Py_None) continue;
        const auto* c = check_copy(names, a[k], i, o, ref, a[0].name, &copy_type);
        t.copy = c->data;
        if (numel > 0) {
          const uintptr_t lo = reinterpret_cast<uintptr_t>(c->data);
          *tail[j]++ = {lo, lo + static_cast<uintptr_t>(numel) * 2, &sites[k],
                        static_cast<uint32_t>(i), f.rank, true};
        }
        continue;
      }
      const py::detail::PyArray_Proxy* arr = py::detail::array_proxy(o);
      const bool common = k == 0 ? is_common_ref(o, arr, f.flags, &pdt)
                                 : is_common(o, arr, f.role, f.flags, pdt, p, &first, a[k].name);
      if (!common) arr = check_slot_inline(names, a[k], k, i, o, ref, a[0].name, &first);
      if (k == 0) {
        ref = o;
        p = arr;
        if (!common) pdt = dtype_of(py::detail::array_descriptor_proxy(arr->descr)->type_num);
        numel = numel_of(arr);
      }
      arrs[k] = arr;
      t.ptr[k] = arr->data;
      if (numel > 0) {
        const int tn = py::detail::array_descriptor_proxy(arr->descr)->type_num;
        const auto [lo, hi] = extent(arr->data, numel, tn);
        *tail[j]++ = {lo, hi, &sites[k], static_cast<uint32_t>(i), f.rank, f.written};
      }
    }
    if (numel == 0) continue;
    t.numel = numel;
    const int pt = py::detail::array_descriptor_proxy(arrs[0]->descr)->type_num;
    const int gt = nargs > 1 && a[1].present
                       ? py::detail::array_descriptor_proxy(arrs[1]->descr)->type_num
                       : nargs > 1 ? (a[1].later_types ? a[1].later_types[i] : a[1].later_type)
                                   : 0;
    if (pt != last_types[0] || gt != last_types[1] || first.type_num != last_types[2]) {
      last_types[0] = pt, last_types[1] = gt, last_types[2] = first.type_num;  // usually once
      last_combo = combo_of(pt, gt, first.type_num);
      // Grads announced (later_type) that no combination takes with this param: bound for the
      // param's own grad dtype, and a run with the announced grads is refused by name.
      if (last_combo < 0) last_combo = combo_of(pt, 0, first.type_num);
    }
    const int c = last_combo;
    WorkList& wl = per_combo[c];
    const int64_t ti = static_cast<int64_t>(wl.tensors.size());
    wl.tensors.push_back(t);
    wl.origin.push_back(static_cast<int64_t>(i));
    out.at[i] = {c, ti};
    for (int64_t b = 0; b < numel; b += cpu::kChunk) {
      const int64_t len = std::min(cpu::kChunk, numel - b);
      wl.chunks.push_back({ti, b, len, wl.total});
      wl.total += len;
    }
  }

  // 3. No written buffer may share memory with any other buffer of the call (read-only lists may
  //    share memory with each other).
  Span* end = spans.data();
  for (int j = 0; j < npresent; ++j) {  // empty arrays have no span: close the gaps they left
    const Span* from = spans.data() + static_cast<size_t>(j) * n;
    if (end != from) std::copy(from, static_cast<const Span*>(tail[j]), end);
    end += tail[j] - from;
  }
  spans.resize(static_cast<size_t>(end - spans.data()));
  check_no_overlap(spans);

  // What was checked, for the calls that keep it (Note [A bound call]).
  int remap[kNumCombos];
  for (int c = 0; c < kNumCombos; ++c) {
    remap[c] = -1;
    if (per_combo[c].total > 0) {
      remap[c] = static_cast<int>(out.lists.size());
      out.lists.push_back(std::move(per_combo[c]));
    }
  }
  for (auto& at : out.at) {
    if (at.first >= 0) at.first = remap[at.first];
  }
  if (copy_type != 0) {
    for (WorkList& wl : out.lists) wl.copy = dtype_of(copy_type);
  }
  for (int k = 0; k < nargs; ++k) {
    if (a[k].present && a[k].kahan) {  // the lists of 16-bit params: the others have no comps
      for (WorkList& wl : out.lists) {
        const DType pd = slot_dtype(wl.combo, 0);
        wl.kahan = pd == DType::BFloat16 || pd == DType::Float16;
      }
    }
  }
  if (!keep) return out;
  for (const Span& s : spans) (s.written ? out.written : out.read).push_back(s);
  // What was seen of each array, list by list (the order CpuBound::verify_unchanged walks).
  size_t present = 0;
  for (int k = 0; k < nargs; ++k) present += a[k].present ? 1 : 0;
  out.seen.resize(present * n);
  size_t row = 0;
  for (int k = 0; k < nargs; ++k) {
    if (!a[k].present) continue;
    PyObject** items = PySequence_Fast_ITEMS(a[k].list.ptr());
    Seen* seen = out.seen.data() + row * n;
    for (size_t i = 0; i < n; ++i) {
      if (items[i] == Py_None) {  // a param without a copy
        seen[i] = {nullptr, 0, 0, 0, 0, out.dims.size()};
        continue;
      }
      const auto* arr = py::detail::array_proxy(items[i]);
      const auto* d = py::detail::array_descriptor_proxy(arr->descr);
      seen[i] = {arr->data, arr->flags, d->type_num, d->byteorder, arr->nd, out.dims.size()};
      out.dims.insert(out.dims.end(), arr->dimensions, arr->dimensions + arr->nd);
    }
    ++row;
  }
  return out;
}

}  // namespace fusedopt::bindings

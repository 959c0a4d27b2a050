// A bound call: what the CPU and CUDA binders share, and the check across the calls of a step.
//
// Note [A bound call]
// An update of a list of tensors is made in two steps. bind(spec, lists, hyper, name, index)
// checks everything but the grads -- the lists, every array (or pointer) of the params and
// states, their overlap, and the hyper-parameters, which choose the variant and the buffers it
// needs -- and keeps what it checked: the arrays (held), their memory, the work lists. Then
// check(grads) checks a list of grads against the held params (type, dtype, shape, memory order,
// alignment, and that no grad overlaps a written buffer), writing nothing; and run(grads, step,
// lr, ...) checks the same and updates. fusedopt.functional binds and runs at once (the grads
// given to bind); an optimizer keeps one bound call per param group and place, and each step
// runs it with new grads. A step of several calls checks them all (each call's grads, and across
// the calls that no grad of one overlaps a written buffer of another and no two calls write the
// same memory: Calls), then runs them all, so that a refused step writes nothing. Before it runs,
// a bound call makes sure that the arrays it holds are as it checked them (the same memory,
// dtype, shape and flags): an array changed in place since is refused by name. Messages are made
// where a check fails, in the caller's words: the name given to bind ("adamw", "Adam.step") and
// the caller's indices (Names).
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "specs.h"

namespace fusedopt::bindings {

#pragma GCC visibility push(hidden)

class Bound {
 public:
  Bound(const SpecInfo& spec, std::string name, py::handle index)
      : spec_(spec), names_(std::move(name), index) {}
  virtual ~Bound() = default;
  Bound(const Bound&) = delete;
  Bound& operator=(const Bound&) = delete;

  const SpecInfo& spec() const { return spec_; }
  const Names& names() const { return names_; }
  // The written buffers, sorted by address and disjoint.
  const std::vector<Span>& written() const { return written_; }
  // Checks grads as check() does and returns the spans they cover (rank: `rank`).
  virtual std::vector<Span> grad_spans(py::handle grads, int rank) = 0;
  size_t size() const { return n_; }
  // Calls the StepFn callables for the 1-based `step` and checks their values, for the runs of
  // that step (a step of several calls prepares them all before the first runs, so that a
  // callable that fails or returns a bad value writes nothing); whether there were any.
  bool prepare(py::handle step);

 protected:
  // Refuses a second thread while one runs this call (busy() as a guard).
  class Busy {
   public:
    explicit Busy(Bound& b);
    ~Busy() { b_.busy_.store(false); }

   private:
    Bound& b_;
  };

  const SpecInfo& spec_;
  Names names_;
  Site sites_[kMaxBuffers + 1];  // how the spans of each slot (and the copies) name their list
  std::vector<double> hyper_;    // the spec's Hyper
  std::vector<double> numbers_;  // the hyper-parameters' numbers (SpecInfo::parse)
  std::vector<Span> written_;
  std::vector<std::string> aliases_;  // the lists' names in messages, by spec buffer
  // The StepFn hyper-parameters given as callables: (index in the spec's hypers, the callable),
  // called at each run (Note [Hyper-parameters of the step] in spec.h).
  std::vector<std::pair<int, py::object>> step_fns_;
  // Their values at step prepared_step_ (0: none yet): each callable is called once per step,
  // by prepare() or by the first run (or check by address) of that step.
  mutable std::vector<double> prepared_;
  mutable int64_t prepared_step_ = 0;
  // Makes prepared_ the values at step t, calling the callables unless they are already.
  void prepare_step(int64_t t) const;
  size_t n_ = 0;
  bool has_grad_slot_ = false;  // the variant reads grads
  bool grads_bound_ = false;    // ... and they were given to bind
  std::atomic<bool> busy_{false};

  // Parses the in-call hyper-parameters (a tuple, the signature's order) into hyper_, numbers_.
  void parse_hyper(py::handle hyper);
  // The step, learning rate and scalar state of a run, into a copy of hyper_ (`h`) and `in`.
  int64_t run_args(py::handle step, py::handle lr, py::handle scalars, std::vector<double>& h,
                   std::vector<double>& in) const;
  // The run's input of a spec of several passes (Note [Passes] in spec.h: LAMB's grad_norm), or
  // kNoRunInput for None; refused for a spec without one.
  double run_input(py::handle input) const;
  // What run returns besides a reduction: the scalar state after the step (a float, a tuple of
  // floats, or None).
  py::object scalars_result(const std::vector<double>& h, int64_t step,
                            const std::vector<double>& in) const;
  // The slots of the call (Note [Kernel slots]): spec buffer index per slot, given the numbers.
  std::vector<int> slots() const;
  // What both binders do first with bind's lists, after parse_hyper: names the lists (aliases_),
  // checks that `lists` is a tuple of the spec's lists and that every list the variant needs is
  // given, sets has_grad_slot_ and grads_bound_, and returns slots().
  std::vector<int> bind_lists(py::handle lists, py::handle aliases, bool grads_later);
  // grad_spans when the grads were given to bind: `read`, the spans checked then, at rank `rank`.
  static std::vector<Span> bound_grad_spans(const std::vector<Span>& read, int rank);
};

// The bound calls of one step, checked together (Note [A bound call]): no two write the same
// memory, and no grad of one overlaps a written buffer of another.
class Calls {
 public:
  explicit Calls(py::list bounds);
  // grads: one list per bound call. Checks each call's grads, then across the calls.
  void check(py::list grads);

 private:
  std::vector<py::object> keep_;
  std::vector<Bound*> bounds_;
  std::vector<Span> written_;  // all calls', sorted by address
};

void def_bound(py::module_& m);

#pragma GCC visibility pop

}  // namespace fusedopt::bindings

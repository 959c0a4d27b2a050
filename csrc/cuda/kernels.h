// The CUDA kernels as the bindings see them: one entry per spec of algorithms/registry.h over a
// framework-free list of device tensors, and the few CUDA runtime queries the bindings need. No
// CUDA header is included here, so csrc/bindings/ compiles without the toolkit.
//
// Every function here throws std::runtime_error carrying CUDA's own text when a CUDA call fails
// (pybind11 turns it into RuntimeError); none of them synchronizes: the work is queued on the
// given stream, ordered after whatever the caller queued there before.
#pragma once

#include <cstdint>
#include <string>

#include "driver.h"

namespace fusedopt::cuda {

// One call of a kernel: the spec's Hyper, the step, and for a reduction the device array of
// [call tensor][kReduce] doubles its sums are added to (zeroed by the caller).
struct Launch {
  const void* hyper;
  StepArgs step;
  double* out;
};

using KernelFn = void (*)(const DeviceList&, const Launch&);

// kNumSpecs entries, by kSpecIndex; each makes l.device current for its launches.
const KernelFn* kernels();

// A spec of several passes (Note [Passes] in spec.h): its between() queued on `stream` of
// `device` as one device thread, over device memory (sums, call and tensor values), after the
// pass before it. kNumSpecs entries by kSpecIndex; a spec of one pass has a no-op.
using BetweenFn = void (*)(const void* hyper, int64_t step, int pass, int64_t n,
                           const double* sums, double* call, double* tensor, int device,
                           uintptr_t stream);
const BetweenFn* between_kernels();

// Queues *p = value on `stream` of `device` (p in device memory).
void set_async(int device, uintptr_t stream, double* p, double value);

// A stream-ordered device allocation: made on `stream` of `device`, freed on it when the work
// queued before the destructor is done.
class Scratch {
 public:
  Scratch(int device, uintptr_t stream, size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return ptr_; }

 private:
  int device_;
  uintptr_t stream_;
  void* ptr_ = nullptr;
};

// --- Runtime queries (runtime.cpp) ---

// Number of CUDA devices; 0 when there is no driver or no device (never throws). When it is 0
// and `why` is given, *why receives CUDA's reason ("no CUDA-capable device is detected", ...).
int device_count(std::string* why = nullptr);

enum class MemoryKind { Unregistered, Host, Device, Managed };

struct PointerInfo {
  MemoryKind kind;
  int device;  // for Device and Managed memory
};

// What `p` points to, from cudaPointerGetAttributes. Plain host memory is Unregistered.
PointerInfo pointer_info(const void* p);

// The driver allocation `p` lies in, [*base, *base + *size), from cuMemGetAddressRange. False where
// the driver cannot say (no such entry point, or `p` in no allocation of the driver's). A pool
// allocator (PyTorch's, CuPy's) carves many tensors out of one allocation, so one query can vouch
// for thousands of pointers.
bool allocation_range(const void* p, uintptr_t* base, size_t* size);

// Queues on `stream` (of `device`) a wait for the work queued so far on `other`: the
// __cuda_array_interface__ v3 duty of a consumer whose producer used another stream.
void stream_wait(int device, uintptr_t stream, uintptr_t other);

// Queues the zeroing of `bytes` at device pointer p on `stream` of `device`.
void zero_async(int device, uintptr_t stream, void* p, size_t bytes);

int runtime_version();  // e.g. 13000 for CUDA 13.0
int driver_version();   // 0 when there is no driver

}  // namespace fusedopt::cuda

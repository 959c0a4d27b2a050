// The CUDA kernels' entry points as the bindings see them: plain functions over a framework-free
// list of device tensors, and the few CUDA runtime queries the bindings need. No CUDA header is
// included here, so csrc/bindings/ compiles without the toolkit. Every algorithm is listed once
// here, once in kernels.cu and once in csrc/bindings/cuda.cpp.
//
// Every function here throws std::runtime_error carrying CUDA's own text when a CUDA call fails
// (pybind11 turns it into RuntimeError); none of them synchronizes: the update is queued on the
// given stream, ordered after whatever the caller queued there before.
#pragma once

#include <cstdint>
#include <string>

#include "../algorithms/adadelta.h"
#include "../algorithms/adagrad.h"
#include "../algorithms/adam.h"
#include "../algorithms/adamax.h"
#include "../algorithms/ewa.h"
#include "../algorithms/nadam.h"
#include "../algorithms/rmsprop.h"
#include "../algorithms/sgd.h"
#include "../common.h"

namespace fusedopt::cuda {

// Elements one thread block updates: a tensor is cut into chunks of this many elements and each
// chunk is one block of a launch (the last chunk of a tensor is shorter). 64Ki elements give a
// block of 512 threads 32 iterations of 4 elements: enough work to hide the block's start, and
// still thousands of blocks for a 256Mi-element tensor. A multiple of 4, so that every chunk of
// an aligned tensor starts aligned for the vector path.
constexpr int64_t kChunk = 1 << 16;

// One call's tensors: all of one dtype, all on `device`; buffers as in TensorRef (buffer 0
// written, buffer 1 only read, the rest written). Tensors with numel == 0 are skipped.
struct DeviceList {
  const TensorRef* tensors;
  int64_t ntensors;
  DType dtype;
  int device;        // CUDA device ordinal the pointers belong to; made current for the launch
  uintptr_t stream;  // a cudaStream_t; 0 is the legacy default stream
};

void sgd(const DeviceList& l, const SgdHyper& h, int64_t step);
void adagrad(const DeviceList& l, const AdagradHyper& h, int64_t step);
void adadelta(const DeviceList& l, const AdadeltaHyper& h, int64_t step);
void rmsprop(const DeviceList& l, const RmspropHyper& h, int64_t step);
void adam(const DeviceList& l, const AdamHyper& h, int64_t step);
void nadam(const DeviceList& l, const NadamHyper& h, int64_t step, double mu_product_prev,
           double* mu_product_new);
void adamax(const DeviceList& l, const AdamaxHyper& h, int64_t step);
void ewa(const DeviceList& l, const EwaHyper& h);
void ewa_readout(const DeviceList& l, const EwaHyper& h, int64_t step);

// --- Runtime queries (runtime.cpp) ---

// Number of CUDA devices; 0 when there is no driver or no device (never throws). When it is 0
// and `why` is given, *why receives CUDA's reason ("no CUDA-capable device is detected", ...).
int device_count(std::string* why = nullptr);

enum class MemoryKind { Unregistered, Host, Device, Managed };

struct PointerInfo {
  MemoryKind kind;
  int device;  // for Device and Managed memory
};

// What `p` points to, from cudaPointerGetAttributes (about 1 us a call). Plain host memory is
// Unregistered.
PointerInfo pointer_info(const void* p);

// The driver allocation `p` lies in, [*base, *base + *size), from cuMemGetAddressRange. False where
// the driver cannot say (no such entry point, or `p` in no allocation of the driver's). A pool
// allocator (PyTorch's, CuPy's) carves many tensors out of one allocation, so one query can vouch
// for thousands of pointers.
bool allocation_range(const void* p, uintptr_t* base, size_t* size);

// Queues on `stream` (of `device`) a wait for the work queued so far on `other`: the
// __cuda_array_interface__ v3 duty of a consumer whose producer used another stream.
void stream_wait(int device, uintptr_t stream, uintptr_t other);

int runtime_version();  // e.g. 13000 for CUDA 13.0
int driver_version();   // 0 when there is no driver

}  // namespace fusedopt::cuda

// The CPU kernels as seen from outside the per-instruction-set builds: one table per instruction
// set, one entry per spec of algorithms/registry.h, each taking a framework-free work list.
#pragma once

#include <cstdint>

#include "../algorithms/adafactor.h"
#include "../algorithms/registry.h"

namespace fusedopt::cpu {

// Elements per chunk of the work list. Chunks are the unit the threads share, and their
// boundaries never depend on the thread count, so every element takes the same code path (vector
// body or tail) whatever OMP_NUM_THREADS is: that is what makes results bitwise reproducible
// across thread counts. 64Ki elements (256 KiB of fp32 per buffer) make the per-chunk overhead
// negligible while leaving hundreds of chunks to balance a 16M-element tensor over the cores.
constexpr int64_t kChunk = 1 << 16;

// Below this many elements in one call everything runs on the calling thread: opening an OpenMP
// parallel region costs more than updating this many elements.
constexpr int64_t kParallelMin = 1 << 15;

// Lanes of a reduction (Note [Deterministic reductions] in driver.h): the CUDA driver's threads
// per block, so that both drivers add the same terms in the same order.
constexpr int kLanes = 512;

struct Chunk {
  int64_t tensor;  // index into the tensor list
  int64_t begin;   // first element within that tensor
  int64_t len;     // elements in this chunk
  int64_t start;   // elements of the whole list before this chunk (for balancing)
};

// A work list for one storage combination: tensors (numel > 0 only) cut into chunks, in order.
struct WorkView {
  const TensorRef* tensors;
  const int64_t* origin;  // each tensor's index in the call (where a reduction writes its sums)
  const Chunk* chunks;
  int64_t nchunks;
  int64_t total;    // elements over all tensors
  int combo;        // index in kCombos
  int max_threads;  // 0: OpenMP's default (OMP_NUM_THREADS or the core count)
  int copy = -1;    // the DType of the param copies its tensors may have, or -1 (none)
  // whether 16-bit stores round stochastically, and the run's key (of its seed and step; Note
  // [Stochastic rounding] in storage.h)
  bool stochastic = false;
  uint64_t sr_key = 0;
  // whether TensorRef::copy is each 16-bit param's Kahan compensation, of its dtype (Note [Kahan
  // summation] in storage.h), instead of a param copy
  bool kahan = false;
};

// One call of a kernel: the spec's Hyper, the step, and where a reduction's sums go
// ([call tensor][kReduce], zeroed by the caller; the sums of every work list of a call add up).
struct Launch {
  const void* hyper;
  StepArgs step;
  double* out;
};

using KernelFn = void (*)(const WorkView&, const Launch&);

struct KernelTable {
  const char* name;
  KernelFn kernels[kNumSpecs];  // by kSpecIndex
  // Benchmark ceiling: reads nbuf buffers and writes nwrite of them (slot 0 and the states,
  // in slot order; never slot 1), with trivial math (x += g), through the same driver: the
  // bytes an algorithm, or a pass of one, that reads nbuf buffers and writes nwrite must move.
  // nwrite 0 is a reduction pass (the buffers' sum per tensor, into a scratch array).
  void (*rmw)(const WorkView&, int nbuf, int nwrite);
  // Adafactor over params of one dtype (cpu/factored.h): its own driver, since its row and
  // column sums are not per-tensor reductions. max_threads 0: OpenMP's default.
  void (*adafactor)(const AdafactorTensor* tensors, int64_t n, const AdafactorHyper& h,
                    int max_threads);
};

// The instruction sets this build compiled, best last, and the one in use.
struct IsaInfo {
  const char* name;
  const KernelTable* table;
  bool supported;  // by this CPU
};
int compiled_isas(const IsaInfo** out);
const KernelTable& active();
// Selects an instruction set by name; returns false (and changes nothing) if it was not compiled
// or this CPU lacks it.
bool select_isa(const char* name);

}  // namespace fusedopt::cpu

// The CPU driver of Adafactor (algorithms/adafactor.h): its passes over a call's params, the row
// and column sums of the factored ones, and the sums in the order of Note [Adafactor's sums].
// Compiled once per instruction set with the kernels (kernels.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../algorithms/adafactor.h"
#include "driver.h"
#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN

// The tile of a factored param of rows x cols (Note [Adafactor's sums]): whole rows up to
// kTileCols columns (a tile of whole rows is one contiguous run of memory, which the hardware
// prefetchers stream), and at least kTileRows rows or about kChunk elements. Its column sums, a
// double per column, stay in L1 or L2 as it goes down its rows; the column partial sums, one
// per column and row block, add at most 1/32 of an fp32 param's bytes to the pass.
constexpr int64_t kTileCols = 16384;
constexpr int64_t kTileRows = 64;

struct TileShape {
  int64_t rows, cols;
};

constexpr TileShape adafactor_tiles(int64_t cols) {
  const int64_t c = cols < kTileCols ? (cols > 0 ? cols : 1) : kTileCols;
  const int64_t r = kChunk / c;
  return {r < kTileRows ? kTileRows : r, c};
}

namespace factored {

// Note [Adafactor's prefetch]
// Each loop over a factored param streams its params and grads from memory while it reads its
// columns' factors or sums (kept in L1 or L2) beside them. The hardware prefetchers alone keep
// too few of the streamed lines in flight there: on the Zen 5 guest of bench/results, pass B
// read its grads at about half the rate of a plain sum of their squares (bench/README.md,
// "Adafactor's prefetch"). So every block of kFactorLanes elements (and of the stochastic
// stores) asks for the lines of its params and grads, and of a Kahan store's compensation,
// kPrefetchAhead elements on. Past a row's end that is the next row, the tile's next memory,
// where a tile is whole rows (up to kTileCols columns; a wider param's tile row is followed in
// memory by the next column block, so its prefetches there are wasted and the start of its next
// row is not prefetched). Past the array's end a prefetch is harmless: it never faults, and its
// address is formed as an integer, not by pointer arithmetic past the array.
constexpr int64_t kPrefetchAhead = 1024;

// Asks for the lines of the block of kFactorLanes elements kPrefetchAhead elements after p (a
// block of unaligned elements spans one line more, which the next block's first request covers).
template <class T>
FUSEDOPT_INLINE void prefetch_block(const T* p) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(p) + kPrefetchAhead * sizeof(T);
  for (size_t b = 0; b < kFactorLanes * sizeof(T); b += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(at + b));
  }
}

// Calls f(j, q) for j in [0, len) in order, q = j % kFactorLanes its lane: a block of
// kFactorLanes elements at a time, which the compiler vectorizes across the lanes, each block
// prefetching the arrays `ahead` (Note [Adafactor's prefetch]).
template <class F, class... T>
FUSEDOPT_INLINE void for_lanes(int64_t len, F&& f, const T*... ahead) {
  int64_t j = 0;
  for (; j + kFactorLanes <= len; j += kFactorLanes) {
    (prefetch_block(ahead + j), ...);
#pragma GCC ivdep
    for (int q = 0; q < kFactorLanes; ++q) f(j + q, q);
  }
  // (the tail is every element of a row narrower than kFactorLanes: vectorized too, each lane
  // taking one element at most)
#pragma GCC ivdep
  for (int q = 0; j + q < len; ++q) f(j + q, q);
}

// Adds term(j) to lane j % kFactorLanes for j in [0, len), in order within each lane.
template <class F, class... T>
FUSEDOPT_INLINE void lanes_add(double* __restrict acc, int64_t len, F&& term, const T*... ahead) {
  for_lanes(len, [&](int64_t j, int q) { acc[q] += term(j); }, ahead...);
}

// A sum's lanes (Note [Adafactor's sums]) combined by the fixed pairwise tree.
FUSEDOPT_INLINE double lane_sum(double* acc) {
  for (int s = kFactorLanes / 2; s > 0; s /= 2) {
    for (int k = 0; k < s; ++k) acc[k] += acc[k + s];
  }
  return acc[0];
}

// One unit of work: rows [r0, r1) x columns [c0, c1) of matrix m of a param (an unfactored param:
// m = 0, one row, its elements [c0, c1)).
struct Item {
  int64_t tensor, m, r0, r1, c0, c1;
  int64_t rb, cb;  // the block's row-block and column-block index
};

struct Work {
  std::vector<Item> items;
  std::vector<int64_t> first;  // items of tensor i: [first[i], first[i + 1])
  std::vector<int64_t> nrb, ncb;  // row and column blocks per matrix of each tensor
  std::vector<int64_t> row_at, col_at;  // offsets of each tensor's row and column partial sums
  std::vector<int64_t> rows_at, cols_at;  // offsets of each tensor's rows and columns
  int64_t row_parts = 0, col_parts = 0, rows = 0, cols = 0;
};

inline Work plan(const AdafactorTensor* ts, int64_t n) {
  Work w;
  const size_t un = static_cast<size_t>(n);
  w.first.assign(un + 1, 0);
  for (auto* v : {&w.nrb, &w.ncb, &w.row_at, &w.col_at, &w.rows_at, &w.cols_at}) v->assign(un, 0);
  for (int64_t i = 0; i < n; ++i) {
    const AdafactorTensor& t = ts[i];
    w.first[i] = static_cast<int64_t>(w.items.size());
    if (!t.factored) {
      for (int64_t c = 0, k = 0; c < t.cols; c += kChunk, ++k) {
        w.items.push_back({i, 0, 0, 1, c, std::min(t.cols, c + kChunk), 0, k});
      }
      continue;
    }
    const TileShape s = adafactor_tiles(t.cols);
    const int64_t nrb = (t.rows + s.rows - 1) / s.rows;
    const int64_t ncb = (t.cols + s.cols - 1) / s.cols;
    w.nrb[i] = nrb;
    w.ncb[i] = ncb;
    w.row_at[i] = w.row_parts;
    w.col_at[i] = w.col_parts;
    w.rows_at[i] = w.rows;
    w.cols_at[i] = w.cols;
    w.row_parts += t.batch * t.rows * ncb;
    w.col_parts += t.batch * nrb * t.cols;
    w.rows += t.batch * t.rows;
    w.cols += t.batch * t.cols;
    for (int64_t m = 0; m < t.batch; ++m) {
      for (int64_t rb = 0; rb < nrb; ++rb) {
        for (int64_t cb = 0; cb < ncb; ++cb) {
          w.items.push_back({i, m, rb * s.rows, std::min(t.rows, (rb + 1) * s.rows), cb * s.cols,
                             std::min(t.cols, (cb + 1) * s.cols), rb, cb});
        }
      }
    }
  }
  w.first[n] = static_cast<int64_t>(w.items.size());
  return w;
}

// Runs f(item index) over every item, the items shared among the threads in equal runs.
template <class F>
void for_items(int64_t count, int64_t elements, int max_threads, F&& f) {
  int team = 1;
#if defined(_OPENMP)
  team = max_threads > 0 ? max_threads : omp_get_max_threads();
#endif
  if (elements < kParallelMin) team = 1;
  team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(team, count)));
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int64_t k = 0; k < count; ++k) f(k);
}

// The scratch of the calls made from one thread, kept from call to call (a fresh allocation of
// a large step's column partial sums costs a page fault per 4 KiB). Every entry a pass reads was
// written by an earlier pass of the same call, so nothing is cleared; it grows and is kept with
// its thread (about 1/32 of the largest call's fp32 params).
template <class O>
struct Scratch {
  std::vector<double> p2, u2;                // per item
  std::vector<double> row_parts, col_parts;  // partial sums of g^2 (Work's offsets)
  // b_i and the overflow limit per row, s_j per column (Note [Adafactor's direction])
  std::vector<O> row_b, row_limit, col_s;
};

template <class O>
Scratch<O>& scratch() {
  thread_local Scratch<O> s;
  return s;
}

// P: the storage type of the params (float, double, bf16, f16), G of the grads (P, or bf16 or
// f16 for float P); O: the compute and state type (double for double, else float; Note
// [Adafactor in 16 bits]).
template <class P, class G, class O>
struct Call {
  const AdafactorHyper& h;
  const AdafactorTensor* ts;
  int64_t n;
  int max_threads;
  Work w;
  std::vector<double>& p2;
  std::vector<double>& u2;
  std::vector<double>& row_parts;
  std::vector<double>& col_parts;
  std::vector<O>& row_b;
  std::vector<O>& row_limit;
  std::vector<O>& col_s;
  int64_t total = 0;

  Call(const AdafactorHyper& hyper, const AdafactorTensor* t, int64_t count, int threads,
       Scratch<O>& s)
      : h(hyper), ts(t), n(count), max_threads(threads), w(plan(t, count)), p2(s.p2), u2(s.u2),
        row_parts(s.row_parts), col_parts(s.col_parts), row_b(s.row_b),
        row_limit(s.row_limit), col_s(s.col_s) {
    p2.resize(w.items.size());
    u2.resize(w.items.size());
    row_parts.resize(static_cast<size_t>(w.row_parts));
    col_parts.resize(static_cast<size_t>(w.col_parts));
    row_b.resize(static_cast<size_t>(w.rows));
    row_limit.resize(static_cast<size_t>(w.rows));
    col_s.resize(static_cast<size_t>(w.cols));
    for (int64_t i = 0; i < n; ++i) total += ts[i].batch * ts[i].rows * ts[i].cols;
  }

  AdafactorDirection<O> direction() const { return AdafactorDirection<O>::of(h.eps1); }

  // f(j, r) for j in [0, n), r the random bits of element at + j of param t's buffer `slot`
  // (Note [Stochastic rounding]: a key per 2^32 elements, as sr_key makes them), a block of
  // kFactorLanes elements at a time, each prefetching the arrays `ahead` (Note [Adafactor's
  // prefetch]).
  template <class F, class... T>
  FUSEDOPT_INLINE void with_sr_bits(int64_t n, int64_t at, const AdafactorTensor& t, int slot,
                                    F&& f, const T*... ahead) const {
    const uint64_t run = sr_run_key(h.sr_seed, t.step);
    for (int64_t j0 = 0; j0 < n;) {
      const int64_t e = at + j0;
      const int64_t block_end = (e | int64_t{0xffffffff}) + 1;  // the next multiple of 2^32
      const int64_t stop = std::min(n, j0 + (block_end - e));
      const SrKey key = sr_key(run, t.index, slot, e);
      const uint32_t first = key.first, lo = key.lo, hi = key.hi;
      for_lanes(stop - j0, [&](int64_t j, int) {
        f(j0 + j, sr_bits(first + static_cast<uint32_t>(j), lo, hi));
      }, (ahead + j0)...);
      j0 = stop;
    }
  }

  // Stores the new params value(j) at out[j], j in [0, n), out being element `at` on of param
  // t (Note [Adafactor in 16 bits]): rounded to nearest; for a 16-bit P with its Kahan
  // compensation, or stochastically; for a float32 P with 16-bit grads, with its 16-bit copy
  // rounded to nearest or stochastically (the copy's key, as the other algorithms key it).
  // Each block prefetches the arrays `ahead` that value reads, and the compensation of a Kahan
  // store (Note [Adafactor's prefetch]).
  template <class F, class... T>
  FUSEDOPT_INLINE void store_params(P* __restrict out, int64_t n, int64_t at,
                                    const AdafactorTensor& t, F&& value, const T*... ahead) const {
    if constexpr (!std::is_same_v<P, O>) {  // a 16-bit param
      if (t.comp != nullptr) {
        auto* o = reinterpret_cast<uint16_t*>(out);
        auto* c = static_cast<uint16_t*>(t.comp) + at;
        for_lanes(n, [&](int64_t j, int) { kahan_store<P>(value(j), o + j, c + j); }, ahead...,
                  static_cast<const uint16_t*>(c));
        return;
      }
      if (h.stochastic) {
        with_sr_bits(n, at, t, 0, [&](int64_t j, uint32_t r) {
          out[j] = P{float_to_sr<P>(value(j), r)};
        }, ahead...);
        return;
      }
    } else if constexpr (!std::is_same_v<G, P>) {  // a float32 master and its 16-bit copy
      if (t.copy != nullptr) {
        G* __restrict cp = static_cast<G*>(t.copy) + at;
        if (h.stochastic) {
          with_sr_bits(n, at, t, kMaxBuffers, [&](int64_t j, uint32_t r) {
            const O x = value(j);
            out[j] = x;
            cp[j] = G{float_to_sr<G>(x, r)};
          }, ahead...);
          return;
        }
        for_lanes(n, [&](int64_t j, int) {
          const O x = value(j);
          out[j] = x;
          cp[j] = store<G>(x);
        }, ahead...);
        return;
      }
    }
    for_lanes(n, [&](int64_t j, int) { out[j] = store<P>(value(j)); }, ahead...);
  }

  // Pass A of a factored item: sum p^2, the rows' and the columns' partial sums of g^2.
  void factored_sums(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const int64_t C = t.cols, width = it.c1 - it.c0;
    // kept per thread: a fresh allocation of up to 128 KiB per tile would be mapped and faulted
    thread_local std::vector<double> col_sums;
    col_sums.assign(static_cast<size_t>(width), 0.0);
    double* __restrict col = col_sums.data();
    alignas(64) double pl[kFactorLanes] = {};  // the tile's p^2, row after row
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const int64_t at = (it.m * t.rows + r) * C + it.c0;
      const P* __restrict pr = static_cast<const P*>(t.param) + at;
      const G* __restrict gr = static_cast<const G*>(t.grad) + at;
      alignas(64) double gl[kFactorLanes] = {};  // the row's g^2
      auto one = [&](int64_t j, int q) {
        const double x = static_cast<double>(load<O>(pr[j]));
        const double y = static_cast<double>(load<O>(gr[j]));
        const double y2 = y * y;
        col[j] += y2;
        gl[q] += y2;
        pl[q] += x * x;
      };
      for_lanes(width, one, pr, gr);
      row_parts[w.row_at[it.tensor] + (it.m * t.rows + r) * w.ncb[it.tensor] + it.cb] =
          lane_sum(gl);
    }
    std::copy(col, col + width,
              col_parts.begin() + w.col_at[it.tensor] + (it.m * w.nrb[it.tensor] + it.rb) * C +
                  it.c0);
    p2[k] = lane_sum(pl);
  }

  // Between A and B, per factored param: the lerps of row_var and col_var, and the per-row and
  // per-column factors of the direction.
  void factored_state(int64_t i) {
    const AdafactorTensor& t = ts[i];
    const O wgt = O(adafactor_scalars(h, t.step).w), one_minus = O(1) - wgt;
    const bool high = std::fabs(static_cast<double>(wgt)) >= 0.5;
    auto lerp = [&](O a, O b) {
      return high ? torch_lerp<true>(a, b, wgt, one_minus) : torch_lerp<false>(a, b, wgt, one_minus);
    };
    O* rv = static_cast<O*>(t.row_var);
    O* cv = static_cast<O*>(t.col_var);
    const int64_t nrb = w.nrb[i], ncb = w.ncb[i];
    for (int64_t m = 0; m < t.batch; ++m) {
      double mean_sum = 0.0;
      for (int64_t r = 0; r < t.rows; ++r) {
        const double* part = row_parts.data() + w.row_at[i] + (m * t.rows + r) * ncb;
        double s = 0.0;
        for (int64_t b = 0; b < ncb; ++b) s += part[b];
        O& x = rv[m * t.rows + r];
        x = lerp(x, adafactor_mean_square<O>(s, t.cols));
        mean_sum += static_cast<double>(x);
      }
      // each column's partial sums in row-block order, the blocks outermost (contiguous)
      double* sums = col_parts.data() + w.col_at[i] + m * nrb * t.cols;
      for (int64_t b = 1; b < nrb; ++b) {
        const double* part = sums + b * t.cols;
#pragma GCC ivdep
        for (int64_t c = 0; c < t.cols; ++c) sums[c] += part[c];
      }
      for (int64_t c = 0; c < t.cols; ++c) {
        O& x = cv[m * t.cols + c];
        x = lerp(x, adafactor_mean_square<O>(nrb > 0 ? sums[c] : 0.0, t.rows));
        col_s[w.cols_at[i] + m * t.cols + c] = adafactor_col_factor<O>(x);
      }
      const O mean = nan_max(O(mean_sum / static_cast<double>(t.rows)), O(h.eps1));
      for (int64_t r = 0; r < t.rows; ++r) {
        row_b[w.rows_at[i] + m * t.rows + r] = adafactor_row_factor<O>(rv[m * t.rows + r], mean);
        row_limit[w.rows_at[i] + m * t.rows + r] = adafactor_overflow_limit<O>(mean);
      }
    }
  }

  // What passes B and C read of a factored item beside its params and grads: its columns'
  // s_j and col_var, and its matrix's row_var (Note [Adafactor's direction]).
  struct Factors {
    const O* s;
    const O* c;
    const O* rv;
  };
  Factors factors(const Item& it, const AdafactorTensor& t) const {
    return {col_s.data() + w.cols_at[it.tensor] + it.m * t.cols + it.c0,
            static_cast<const O*>(t.col_var) + it.m * t.cols + it.c0,
            static_cast<const O*>(t.row_var) + it.m * t.rows};
  }

  // Pass B of a factored item: sum U^2.
  template <bool Maximize>
  void factored_norm(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const Factors f = factors(it, t);
    const O* __restrict s = f.s;
    const O* __restrict c = f.c;
    const AdafactorDirection<O> dir = direction();
    const int64_t width = it.c1 - it.c0;
    alignas(64) double ul[kFactorLanes] = {};  // the tile's U^2, row after row
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const G* __restrict gr =
          static_cast<const G*>(t.grad) + (it.m * t.rows + r) * t.cols + it.c0;
      const int64_t row = w.rows_at[it.tensor] + it.m * t.rows + r;
      const O b = row_b[row], rr = f.rv[r], limit = row_limit[row];
      lanes_add(ul, width, [&](int64_t j) {
        const double u = static_cast<double>(
            dir.template factored<Maximize>(load<O>(gr[j]), b, s[j], rr, c[j], limit));
        return u * u;
      }, gr);
    }
    u2[k] = lane_sum(ul);
  }

  // Pass C of a factored item: p = p decay - factor U.
  template <bool Maximize, bool Decay>
  void factored_update(int64_t k, const std::vector<O>& neg_factor) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const Factors fs = factors(it, t);
    const O* __restrict s = fs.s;
    const O* __restrict c = fs.c;
    const AdafactorDirection<O> dir = direction();
    const O decay = O(adafactor_scalars(h, t.step).decay), f = neg_factor[it.tensor];
    const int64_t width = it.c1 - it.c0;
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const int64_t at = (it.m * t.rows + r) * t.cols + it.c0;
      P* __restrict pr = static_cast<P*>(t.param) + at;
      const G* __restrict gr = static_cast<const G*>(t.grad) + at;
      const int64_t row = w.rows_at[it.tensor] + it.m * t.rows + r;
      const O b = row_b[row], rr = fs.rv[r], limit = row_limit[row];
      store_params(pr, width, at, t, [&](int64_t j) {
        const O u = dir.template factored<Maximize>(load<O>(gr[j]), b, s[j], rr, c[j], limit);
        return adafactor_param<Decay>(load<O>(pr[j]), u, decay, f);
      }, pr, gr);
    }
  }

  // Pass A of an unfactored item: the variance's lerp, sum p^2 and sum U^2.
  template <bool Maximize, bool High>
  void plain_sums(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const O wgt = O(adafactor_scalars(h, t.step).w), one_minus = O(1) - wgt;
    const AdafactorDirection<O> dir = direction();
    const int64_t len = it.c1 - it.c0;
    const P* __restrict p = static_cast<const P*>(t.param) + it.c0;
    const G* __restrict g = static_cast<const G*>(t.grad) + it.c0;
    O* __restrict v = static_cast<O*>(t.variance) + it.c0;
    alignas(64) double pl[kFactorLanes] = {};
    alignas(64) double ul[kFactorLanes] = {};
    auto one = [&](int64_t j, int q) {
      const O gj = load<O>(g[j]);
      const O nv = torch_lerp<High>(v[j], gj * gj, wgt, one_minus);
      v[j] = nv;
      const double x = static_cast<double>(load<O>(p[j]));
      const double u = static_cast<double>(dir.template plain<Maximize>(gj, nv));
      pl[q] += x * x;
      ul[q] += u * u;
    };
    for_lanes(len, one);
    p2[k] = lane_sum(pl);
    u2[k] = lane_sum(ul);
  }

  // Pass C of an unfactored item.
  template <bool Maximize, bool Decay>
  void plain_update(int64_t k, const std::vector<O>& neg_factor) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    P* __restrict p = static_cast<P*>(t.param) + it.c0;
    const G* __restrict g = static_cast<const G*>(t.grad) + it.c0;
    const O* __restrict v = static_cast<const O*>(t.variance) + it.c0;
    const O decay = O(adafactor_scalars(h, t.step).decay), f = neg_factor[it.tensor];
    const AdafactorDirection<O> dir = direction();
    const int64_t len = it.c1 - it.c0;
    store_params(p, len, it.c0, t, [&](int64_t j) {
      return adafactor_param<Decay>(load<O>(p[j]), dir.template plain<Maximize>(load<O>(g[j]), v[j]),
                                    decay, f);
    });
  }

  template <bool Maximize, bool Decay>
  void run() {
    const int64_t count = static_cast<int64_t>(w.items.size());
    // A: sums (and the variances' lerp)
    for_items(count, total, max_threads, [&](int64_t k) {
      const AdafactorTensor& t = ts[w.items[k].tensor];
      if (t.factored) {
        factored_sums(k);
      } else if (std::fabs(static_cast<double>(O(adafactor_scalars(h, t.step).w))) >= 0.5) {
        plain_sums<Maximize, true>(k);
      } else {
        plain_sums<Maximize, false>(k);
      }
    });
    // the factored state, O(R + C) per matrix (each param's its own: any thread may take it)
    for_items(n, total, max_threads, [&](int64_t i) {
      if (ts[i].factored) factored_state(i);
    });
    // B: the factored params' sum U^2
    for_items(count, total, max_threads, [&](int64_t k) {
      if (ts[w.items[k].tensor].factored) factored_norm<Maximize>(k);
    });
    // each param's factor, its sums combined in item order
    std::vector<O> neg_factor(static_cast<size_t>(n), O(0));
    for (int64_t i = 0; i < n; ++i) {
      double ps = 0.0, us = 0.0;
      for (int64_t k = w.first[i]; k < w.first[i + 1]; ++k) {
        ps += p2[k];
        us += u2[k];
      }
      const AdafactorTensor& t = ts[i];
      neg_factor[i] = O(-adafactor_factor<O>(h, t.step, t.batch * t.rows * t.cols, ps, us));
    }
    // C: the update
    for_items(count, total, max_threads, [&](int64_t k) {
      if (ts[w.items[k].tensor].factored) {
        factored_update<Maximize, Decay>(k, neg_factor);
      } else {
        plain_update<Maximize, Decay>(k, neg_factor);
      }
    });
  }
};

}  // namespace factored

// Adafactor over params of one storage type P and grads of one type G (O: double for double,
// else float).
template <class P, class G = P, class O = opmath_t<P>>
void adafactor_of(const AdafactorTensor* ts, int64_t n, const AdafactorHyper& h, int max_threads) {
  factored::Call<P, G, O> call(h, ts, n, max_threads, factored::scratch<O>());
  bool_switch(h.maximize, [&](auto M) {
    bool_switch(h.weight_decay != 0.0, [&](auto D) {
      call.template run<decltype(M)::value, decltype(D)::value>();
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

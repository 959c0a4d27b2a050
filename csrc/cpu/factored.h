// The CPU driver of Adafactor (algorithms/adafactor.h): its passes over a call's params, the row
// and column sums of the factored ones, and the sums in the order of Note [Adafactor's sums].
// Compiled once per instruction set with the kernels (kernels.cpp).
#pragma once

#include <algorithm>
#include <vector>

#include "../algorithms/adafactor.h"
#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fusedopt::cpu {
FUSEDOPT_ISA_BEGIN

// Lanes of Adafactor's sums (Note [Adafactor's sums]).
constexpr int kFactorLanes = 8;
// The widest column block of a tile: a tile's column sums stay in L1 as it goes down its rows.
constexpr int64_t kTileCols = 2048;

struct TileShape {
  int64_t rows, cols;
};

// The tile of a factored param of rows x cols: kTileCols columns at most, and rows enough for
// about kChunk elements (at least 32 rows: the column partial sums, a double per column and row
// block, stay under a sixteenth of the fp32 param).
constexpr TileShape adafactor_tiles(int64_t rows, int64_t cols) {
  const int64_t c = cols < kTileCols ? (cols > 0 ? cols : 1) : kTileCols;
  const int64_t r = kChunk / c;
  (void)rows;
  return {r > 0 ? r : 1, c};
}

namespace factored {

// lane k of acc adds the terms of elements k, k + kFactorLanes, ... of each run it is given.
template <class F>
FUSEDOPT_INLINE void lanes_add(double* __restrict acc, int64_t len, F&& term) {
  int64_t j = 0;
  for (; j + kFactorLanes <= len; j += kFactorLanes) {
    for (int k = 0; k < kFactorLanes; ++k) acc[k] += term(j + k);
  }
  for (int k = 0; j + k < len; ++k) acc[k] += term(j + k);
}

// The lanes combined by the fixed pairwise tree.
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
  int64_t rows_total = 0, cols_total = 0;
};

inline Work plan(const AdafactorTensor* ts, int64_t n) {
  Work w;
  w.first.assign(static_cast<size_t>(n + 1), 0);
  w.nrb.assign(static_cast<size_t>(n), 0);
  w.ncb.assign(static_cast<size_t>(n), 0);
  w.row_at.assign(static_cast<size_t>(n), 0);
  w.col_at.assign(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    const AdafactorTensor& t = ts[i];
    w.first[i] = static_cast<int64_t>(w.items.size());
    if (!t.factored) {
      for (int64_t c = 0, k = 0; c < t.cols; c += kChunk, ++k) {
        w.items.push_back({i, 0, 0, 1, c, std::min(t.cols, c + kChunk), 0, k});
      }
      continue;
    }
    const TileShape s = adafactor_tiles(t.rows, t.cols);
    const int64_t nrb = t.rows == 0 ? 0 : (t.rows + s.rows - 1) / s.rows;
    const int64_t ncb = t.cols == 0 ? 0 : (t.cols + s.cols - 1) / s.cols;
    w.nrb[i] = nrb;
    w.ncb[i] = ncb;
    w.row_at[i] = w.rows_total;
    w.col_at[i] = w.cols_total;
    w.rows_total += t.batch * t.rows * ncb;
    w.cols_total += t.batch * nrb * t.cols;
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
  team = static_cast<int>(std::min<int64_t>(team, count));
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int64_t k = 0; k < count; ++k) f(k);
}

template <class O>
struct Call {
  const AdafactorHyper& h;
  const AdafactorTensor* ts;
  int64_t n;
  int max_threads;
  Work w;
  std::vector<double> p2, u2;   // per item
  std::vector<double> rows, cols;  // partial sums of g^2 (Work's offsets)
  std::vector<O> mean;  // per tensor and matrix: max(mean(row_var), eps1)
  std::vector<int64_t> mean_at;
  int64_t total = 0;

  Call(const AdafactorHyper& hyper, const AdafactorTensor* t, int64_t count, int threads)
      : h(hyper), ts(t), n(count), max_threads(threads), w(plan(t, count)) {
    p2.assign(w.items.size(), 0.0);
    u2.assign(w.items.size(), 0.0);
    rows.assign(static_cast<size_t>(w.rows_total), 0.0);
    cols.assign(static_cast<size_t>(w.cols_total), 0.0);
    mean_at.assign(static_cast<size_t>(n + 1), 0);
    for (int64_t i = 0; i < n; ++i) {
      mean_at[i + 1] = mean_at[i] + (ts[i].factored ? ts[i].batch : 0);
      total += ts[i].batch * ts[i].rows * ts[i].cols;
    }
    mean.assign(static_cast<size_t>(mean_at[n]), O(0));
  }

  O eps1_sq() const { return O(h.eps1 * h.eps1); }

  // Pass A of a factored item: sum p^2, the rows' and the columns' partial sums of g^2.
  void factored_sums(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const O* p = static_cast<const O*>(t.param);
    const O* g = static_cast<const O*>(t.grad);
    const int64_t C = t.cols, width = it.c1 - it.c0;
    alignas(64) double pacc[kFactorLanes] = {};
    std::vector<double> col(static_cast<size_t>(width), 0.0);
    double* __restrict cs = col.data();
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const int64_t at = (it.m * t.rows + r) * C + it.c0;
      const O* __restrict pr = p + at;
      const O* __restrict gr = g + at;
      alignas(64) double racc[kFactorLanes] = {};
      lanes_add(pacc, width, [&](int64_t j) {
        const double x = static_cast<double>(pr[j]);
        return x * x;
      });
      lanes_add(racc, width, [&](int64_t j) {
        const double x = static_cast<double>(gr[j]);
        return x * x;
      });
      for (int64_t j = 0; j < width; ++j) {
        const double x = static_cast<double>(gr[j]);
        cs[j] += x * x;
      }
      rows[w.row_at[it.tensor] + (it.m * t.rows + r) * w.ncb[it.tensor] + it.cb] = lane_sum(racc);
    }
    std::copy(col.begin(), col.end(),
              cols.begin() + w.col_at[it.tensor] + (it.m * w.nrb[it.tensor] + it.rb) * C + it.c0);
    p2[k] = lane_sum(pacc);
  }

  // Between A and B: the lerps of row_var and col_var, and max(mean(row_var), eps1).
  void factored_state(int64_t i) {
    const AdafactorTensor& t = ts[i];
    const double wd = adafactor_scalars(h, t.step).w;
    const O wgt = O(wd), one_minus = O(1) - wgt;
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
        const double* part = rows.data() + w.row_at[i] + (m * t.rows + r) * ncb;
        double s = 0.0;
        for (int64_t b = 0; b < ncb; ++b) s += part[b];
        O& x = rv[m * t.rows + r];
        x = lerp(x, adafactor_mean_square<O>(s, t.cols));
        mean_sum += static_cast<double>(x);
      }
      for (int64_t c = 0; c < t.cols; ++c) {
        double s = 0.0;
        for (int64_t b = 0; b < nrb; ++b) s += cols[w.col_at[i] + (m * nrb + b) * t.cols + c];
        O& x = cv[m * t.cols + c];
        x = lerp(x, adafactor_mean_square<O>(s, t.rows));
      }
      const O mn = O(mean_sum / static_cast<double>(t.rows));
      mean[mean_at[i] + m] = nan_max(mn, O(h.eps1));
    }
  }

  // Pass B of a factored item: sum U^2.
  template <bool Maximize>
  void factored_norm(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const O* g = static_cast<const O*>(t.grad);
    const O* rv = static_cast<const O*>(t.row_var) + it.m * t.rows;
    const O* __restrict cv = static_cast<const O*>(t.col_var) + it.m * t.cols + it.c0;
    const O mc = mean[mean_at[it.tensor] + it.m], e = eps1_sq();
    const int64_t width = it.c1 - it.c0;
    alignas(64) double acc[kFactorLanes] = {};
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const O* __restrict gr = g + (it.m * t.rows + r) * t.cols + it.c0;
      const O row = rv[r];
      lanes_add(acc, width, [&](int64_t j) {
        const double u = static_cast<double>(
            adafactor_direction<Maximize>(gr[j], adafactor_vhat(row, cv[j], mc), e));
        return u * u;
      });
    }
    u2[k] = lane_sum(acc);
  }

  // Pass C of a factored item: p = p decay - factor U.
  template <bool Maximize, bool Decay>
  void factored_update(int64_t k, const std::vector<O>& neg_factor) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    O* p = static_cast<O*>(t.param);
    const O* g = static_cast<const O*>(t.grad);
    const O* rv = static_cast<const O*>(t.row_var) + it.m * t.rows;
    const O* __restrict cv = static_cast<const O*>(t.col_var) + it.m * t.cols + it.c0;
    const O mc = mean[mean_at[it.tensor] + it.m], e = eps1_sq();
    const O decay = O(adafactor_scalars(h, t.step).decay), f = neg_factor[it.tensor];
    const int64_t width = it.c1 - it.c0;
    for (int64_t r = it.r0; r < it.r1; ++r) {
      const int64_t at = (it.m * t.rows + r) * t.cols + it.c0;
      O* __restrict pr = p + at;
      const O* __restrict gr = g + at;
      const O row = rv[r];
#pragma GCC ivdep
      for (int64_t j = 0; j < width; ++j) {
        const O u = adafactor_direction<Maximize>(gr[j], adafactor_vhat(row, cv[j], mc), e);
        pr[j] = adafactor_param<Decay>(pr[j], u, decay, f);
      }
    }
  }

  // Pass A of an unfactored item: the variance's lerp, sum p^2 and sum U^2.
  template <bool Maximize, bool High>
  void plain_sums(int64_t k) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    const O* __restrict p = static_cast<const O*>(t.param) + it.c0;
    const O* __restrict g = static_cast<const O*>(t.grad) + it.c0;
    O* __restrict v = static_cast<O*>(t.variance) + it.c0;
    const O wgt = O(adafactor_scalars(h, t.step).w), one_minus = O(1) - wgt, e = eps1_sq();
    const int64_t len = it.c1 - it.c0;
    alignas(64) double pacc[kFactorLanes] = {};
    alignas(64) double uacc[kFactorLanes] = {};
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) v[j] = torch_lerp<High>(v[j], g[j] * g[j], wgt, one_minus);
    lanes_add(pacc, len, [&](int64_t j) {
      const double x = static_cast<double>(p[j]);
      return x * x;
    });
    lanes_add(uacc, len, [&](int64_t j) {
      const double u = static_cast<double>(adafactor_direction<Maximize>(g[j], v[j], e));
      return u * u;
    });
    p2[k] = lane_sum(pacc);
    u2[k] = lane_sum(uacc);
  }

  // Pass C of an unfactored item.
  template <bool Maximize, bool Decay>
  void plain_update(int64_t k, const std::vector<O>& neg_factor) {
    const Item& it = w.items[k];
    const AdafactorTensor& t = ts[it.tensor];
    O* __restrict p = static_cast<O*>(t.param) + it.c0;
    const O* __restrict g = static_cast<const O*>(t.grad) + it.c0;
    const O* __restrict v = static_cast<const O*>(t.variance) + it.c0;
    const O decay = O(adafactor_scalars(h, t.step).decay), f = neg_factor[it.tensor], e = eps1_sq();
    const int64_t len = it.c1 - it.c0;
#pragma GCC ivdep
    for (int64_t j = 0; j < len; ++j) {
      p[j] = adafactor_param<Decay>(p[j], adafactor_direction<Maximize>(g[j], v[j], e), decay, f);
    }
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
    // the factored state, O(R + C) per matrix
    for (int64_t i = 0; i < n; ++i) {
      if (ts[i].factored) factored_state(i);
    }
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
      neg_factor[i] = O(-adafactor_factor(h, t.step, t.batch * t.rows * t.cols, ps, us));
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

// Adafactor over params of one dtype (O: float for float32, double for float64).
template <class O>
void adafactor_of(const AdafactorTensor* ts, int64_t n, const AdafactorHyper& h, int max_threads) {
  factored::Call<O> call(h, ts, n, max_threads);
  bool_switch(h.maximize, [&](auto M) {
    bool_switch(h.weight_decay != 0.0, [&](auto D) {
      call.template run<decltype(M)::value, decltype(D)::value>();
    });
  });
}

FUSEDOPT_ISA_END
}  // namespace fusedopt::cpu

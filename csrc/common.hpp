// Shared definitions of the taylorkern kernels.
//
// Index letters (as in the Python docstrings): N samples, L layers (0-based l = 0..L-1),
// layer l maps a_l (width d[l]) to z_l (width d[l+1]); k = d[L] outputs; P parameters;
// m directions.  Layer l's parameters are the augmented matrix [W_l; b_l] of shape
// (d[l]+1, d[l+1]) raveled row-major at theta[off[l]:off[l+1]] (DESIGN §1).
// All arrays are row-major and contiguous; sizes are 64-bit.
#pragma once
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tk {

using idx = std::int64_t;

// An allocator whose resize() leaves new elements uninitialised: workspaces are grown once
// and reused across calls, and every kernel writes (or explicitly zeroes) what it reads.
template <class T>
struct uninit_allocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = uninit_allocator<U>;
  };
  uninit_allocator() = default;
  template <class U>
  uninit_allocator(const uninit_allocator<U>&) {}
  template <class U>
  void construct(U* p) noexcept {
    ::new ((void*)p) U;
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new ((void*)p) U(std::forward<A>(a)...);
  }
};
template <class T>
using vec = std::vector<T, uninit_allocator<T>>;

enum class Act : int { identity = 0, relu, tanh, sigmoid, softplus, gelu, sin };
enum class Loss : int { mse = 0, ce };

// The network description: built once per MLP, shared by every call.
struct Net {
  std::vector<idx> d;    // widths d[0..L]
  std::vector<Act> act;  // activation of hidden layer outputs z_0..z_{L-2}
  Loss loss = Loss::mse;
  std::vector<idx> off;  // off[l] = start of layer l in theta, off[L] = P

  Net(std::vector<idx> widths, std::vector<int> acts, int loss_code);
  idx L() const { return (idx)d.size() - 1; }
  idx P() const { return off.back(); }
  idx k() const { return d.back(); }
  idx din(idx l) const { return d[l]; }
  idx dout(idx l) const { return d[l + 1]; }
};

// The loss targets: float Y (N, k) for mse, int64 labels (N,) for ce.
template <class T>
struct Targets {
  const T* y = nullptr;
  const std::int64_t* labels = nullptr;
};

// Weight of each sample's loss in the data term: 1/N for reduction="mean", 1 for "sum".
template <class T>
inline T sample_weight(idx N, bool mean) {
  return mean ? T(1) / T(N) : T(1);
}

// Per-call scratch of every kernel family, pooled per network and reused (workspace.hpp).
template <class T>
struct Workspace;

// Run a loop over rows in parallel only when it is worth waking the threads (values
// touched; a parallel region costs microseconds when the machine is quiet and up to a
// scheduler tick when another process holds the second core).
constexpr idx kParallelMin = 1 << 16;

// f(i) for i in [0, n): across the OpenMP threads when `work` (values touched) is worth it,
// else inline, without entering libgomp at all (an `if(false)` parallel region still sets
// up a team: about a microsecond, which is the whole budget of a small problem).
// `dynamic` balances rows of uneven cost.
template <class F>
inline void parallel_for(idx n, idx work, F&& f, bool dynamic = false) {
  if (work > kParallelMin && n > 1 && !omp_in_parallel() && omp_get_max_threads() > 1) {
    if (dynamic) {
#pragma omp parallel for schedule(dynamic, 16)
      for (idx i = 0; i < n; ++i) f(i);
    } else {
#pragma omp parallel for schedule(static)
      for (idx i = 0; i < n; ++i) f(i);
    }
  } else {
    for (idx i = 0; i < n; ++i) f(i);
  }
}

}  // namespace tk

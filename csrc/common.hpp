// Shared definitions of the taylorkern kernels: the network description (net.hpp, index
// letters and layout there), workspace vectors, threads and chunks of samples.
// All arrays are row-major and contiguous; sizes are 64-bit.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "interrupt.hpp"
#include "net.hpp"
#include "omp_compat.hpp"

namespace tk {

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

// Per-call scratch of every kernel family, pooled per network and reused (workspace.hpp).
template <class T>
struct Workspace;

// Threads (threads.cpp, docs/threading.md).  The kernels run on kernel_threads() threads:
// min(set_kernel_threads's count, the calling thread's omp_get_max_threads()), so that
// OMP_NUM_THREADS, omp_set_num_threads and threadpoolctl's limits in the calling thread bound
// them too; 1 inside a parallel region.  Every decision of how many threads to use goes
// through it, and every parallel region is opened by omp_team.
void set_kernel_threads(int n);  // n <= 0: no limit of taylorkern's own
int own_kernel_threads();        // 0 when unset
int kernel_threads();
// True on the thread that called fork() in a child process: libgomp's pool of this thread did
// not survive the fork, and a region of more than one thread opened here would hang.
bool pool_lost_in_fork();
// fn(arg) on a helper thread of this process (created on first use), the caller waiting.
// For pool_lost_in_fork() threads only.
void run_on_fresh_thread(void (*fn)(void*), void* arg);

// body() on each thread of a team of nt (> 1) OpenMP threads; inline when nt <= 1.  On a thread
// whose pool was lost in a fork the region is opened on a helper thread, which has a pool.
template <class F>
inline void omp_team(int nt, F&& body) {
  if (nt <= 1) {
    body();
    return;
  }
  auto region = [&] {
#pragma omp parallel num_threads(nt)
    body();
  };
  if (pool_lost_in_fork())
    run_on_fresh_thread([](void* r) { (*static_cast<decltype(region)*>(r))(); }, &region);
  else
    region();
}

// Run a loop over rows in parallel only when it is worth waking the threads (values
// touched; a parallel region costs microseconds when the machine is quiet and up to a
// scheduler tick when another process holds the second core).
constexpr idx kParallelMin = 1 << 16;

// f(i) for i in [0, n): across the kernel threads when `work` (values touched) is worth it,
// else inline, without entering libgomp at all (an `if(false)` parallel region still sets
// up a team: about a microsecond, which is the whole budget of a small problem).
// `dynamic` balances rows of uneven cost.
template <class F>
inline void parallel_for(idx n, idx work, F&& f, bool dynamic = false) {
  const int nt = work > kParallelMin && n > 1 ? kernel_threads() : 1;
  if (nt > 1) {
    omp_team(nt, [&] {
      if (dynamic) {
#pragma omp for schedule(dynamic, 16)
        for (idx i = 0; i < n; ++i) f(i);
      } else {
#pragma omp for schedule(static)
        for (idx i = 0; i < n; ++i) f(i);
      }
    });
  } else {
    for (idx i = 0; i < n; ++i) f(i);
  }
}

// Whole calls (forward, backward and the reductions into parameter-sized results) split
// over samples: one contiguous slice per thread, ONE parallel region per call, and every
// product and elementwise loop inside runs serially on its slice.  For the widths of small
// and medium networks this beats splitting each product (a wake-up per product, and
// products too thin to split well).  Below kSampleParallelMin multiply-adds the whole call
// stays on the calling thread: waking a team that has gone idle costs about 20 us, so with the
// caller's own work between calls (an optimizer's iteration) a split loses until one thread
// would take ~50 us (bench/RESULTS.md).  sample_parallel_min() can be set
// (_core._set_sample_parallel_min) so that tests split small problems.
constexpr idx kSampleParallelMin = idx(1) << 19;
inline std::atomic<idx>& sample_parallel_min() {
  static std::atomic<idx> work{kSampleParallelMin};
  return work;
}

// Threads to split N samples over for `work` multiply-adds.
inline int sample_threads(idx N, idx work) {
  if (work < sample_parallel_min().load(std::memory_order_relaxed)) return 1;
  return (int)std::max<idx>(1, std::min<idx>(kernel_threads(), N / 16));
}

// body(tid, n0, n1) for the slice of [0, N) of each of `nt` threads (inline when nt == 1).
// body may synchronise the team with `#pragma omp barrier` (a no-op when inline).  The team
// shares the calling thread's Interrupt (interrupt.hpp); only the calling thread polls.
template <class F>
inline void over_samples(idx N, int nt, F&& body) {
  if (nt <= 1) {
    body(0, idx(0), N);
    return;
  }
  const Interrupt::Current call = Interrupt::current();
  omp_team(nt, [&] {
    const idx t = omp_get_thread_num(), T = omp_get_num_threads();
    Interrupt::Scope scope(call.call, call.caller && t == 0);
    body((int)t, N * t / T, N * (t + 1) / T);
  });
}

// Rows per chunk of a slice of samples, for calls that take a chunk's rows through every layer
// (forward, loss head, backward, the call's own pass) while they are in cache, instead of
// taking the whole slice through one layer at a time: per_row values of scratch per sample in
// about chunk_bytes(), at least kChunkMin rows (thinner products lose more to their set-up than
// the cache saves), and at least 4 * sums / per_row rows, where `sums` values (a gradient, the
// R-op's per-layer sums) are read and added to by every chunk: a chunk's own scratch is then
// at least four times that traffic, and a slice too small for that is one chunk.
// 2 MB keeps a chunk in a core's cache share with products long enough to amortise their
// set-up (bench/RESULTS.md).  chunk_bytes() can be set (_core._set_chunk_bytes) so that tests
// see many chunks on small problems.
constexpr idx kChunkBytes = idx(1) << 21, kChunkMin = 32;
inline std::atomic<idx>& chunk_bytes() {
  static std::atomic<idx> bytes{kChunkBytes};
  return bytes;
}
inline idx chunk_rows(idx per_row, idx sums, idx bytes) {
  per_row = std::max<idx>(per_row, 1);
  return std::max({kChunkMin, chunk_bytes().load() / (per_row * bytes), 4 * sums / per_row});
}

// body(c0, c1, first) for consecutive chunks [c0, c1) covering [n0, n1): as few as hold at most
// `rows` rows each, of equal size within one row (no short last chunk).  Stops early, between
// chunks, once the call is interrupted (interrupt.hpp).
template <class F>
inline void over_chunks(idx n0, idx n1, idx rows, F&& body) {
  const idx n = n1 - n0, chunks = (n + rows - 1) / rows;
  for (idx i = 0; i < chunks && !interrupted(); ++i) body(n0 + n * i / chunks, n0 + n * (i + 1) / chunks, i == 0);
}

// Inside over_samples, after a barrier: out[i] += part(t)[i] for the team's other threads
// t = 1..T-1 (thread 0 wrote into out itself), each thread summing its share of [0, len).
template <class T, class Part>
inline void sum_parts(T* out, idx len, Part&& part) {
  const idx t = omp_get_thread_num(), nt = omp_get_num_threads();
  const idx i0 = len * t / nt, i1 = len * (t + 1) / nt;
  for (idx p = 1; p < nt; ++p) {
    const T* src = part(p);
    for (idx i = i0; i < i1; ++i) out[i] += src[i];
  }
}

}  // namespace tk

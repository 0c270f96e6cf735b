// The kernels' thread count and fork safety (common.hpp: kernel_threads, omp_team;
// docs/threading.md has the user's view).
//
// libgomp keeps one pool of worker threads per thread that opens parallel regions, and has
// no fork handler: in a child of fork() only the forking thread exists, but its pool still
// lists the parent's workers, so the first region it opens with more than one thread waits
// forever for them.  Nothing restarts that pool.  Checked in a child: omp_get_max_threads,
// omp_in_parallel, omp_set_num_threads and a region of one thread (num_threads(1) or
// if(false)) are safe on the forking thread; a region of two hangs; a thread created in the
// child starts a pool of its own and opens regions of any size.  So a child marks its
// forking thread (pthread_atfork), and omp_team opens that thread's regions on a helper
// thread created in the child instead: the child gets every thread it asks for, at the cost
// of a hand-over per region.
#include <pthread.h>

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "common.hpp"

namespace tk {

namespace {

std::atomic<int> g_own_threads{0};   // set_kernel_threads; 0 = no limit of taylorkern's own
thread_local bool t_forked = false;  // this thread called fork() and is the child's first thread

// A thread that runs regions for the forking thread of a child process.  Created on first
// use, never destroyed (it idles on its condition variable until the process exits).
class FreshThread {
 public:
  FreshThread() : thread_([this] { loop(); }) { thread_.detach(); }

  void run(void (*fn)(void*), void* arg) {
    std::unique_lock<std::mutex> lock(mu_);
    fn_ = fn, arg_ = arg, done_ = false, error_ = nullptr;
    cv_.notify_all();
    cv_.wait(lock, [this] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return fn_ != nullptr; });
      void (*fn)(void*) = fn_;
      fn_ = nullptr;
      lock.unlock();
      std::exception_ptr error;
      try {
        fn(arg_);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      error_ = error, done_ = true;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  void (*fn_)(void*) = nullptr;
  void* arg_ = nullptr;
  bool done_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

// The process's helper (nullptr until needed), used only by the one thread of the process with
// t_forked set.  A child of a child starts without one: the helper thread was not copied, and
// its mutexes may have been held at the fork.
FreshThread* g_fresh = nullptr;

void in_child() {
  t_forked = true;
  g_fresh = nullptr;  // leaked: its thread is gone and its locks are unusable
}

[[maybe_unused]] const int g_registered = pthread_atfork(nullptr, nullptr, in_child);

}  // namespace

void set_kernel_threads(int n) {
  g_own_threads.store(n > 0 ? n : 0);
}
int own_kernel_threads() {
  return g_own_threads.load();
}

int kernel_threads() {
  if (omp_in_parallel()) return 1;
  const int omp = std::max(1, omp_get_max_threads()), own = g_own_threads.load(std::memory_order_relaxed);
  return own > 0 ? std::min(own, omp) : omp;
}

bool pool_lost_in_fork() {
  return t_forked;
}

void run_on_fresh_thread(void (*fn)(void*), void* arg) {
  if (!g_fresh) g_fresh = new FreshThread();
  g_fresh->run(fn, arg);
}

}  // namespace tk

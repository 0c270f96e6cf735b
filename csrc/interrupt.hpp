// Interruption of long calls (docs/design.md, threading): the bindings give each call an
// Interrupt whose poll asks the caller's environment whether the call should stop (for Python:
// a pending SIGINT); the kernels call interrupted() between chunks of work and, once it is true,
// skip the rest of the call.  Their results are then garbage and the caller discards them; the
// workspace stays valid because every call overwrites the scratch it reads.  This header holds
// no Python: the poll is a plain function pointer.
//
// Threads: the calling thread polls, rate-limited by a steady clock, so that a call shorter than
// the poll period never polls; every thread of the call's parallel regions reads the shared flag
// (over_samples hands the call's Interrupt to its threads; parallel_for's loops are short and
// checked between, by the calling thread).
#pragma once
#include <atomic>
#include <chrono>

namespace tk {

class Interrupt {
 public:
  using Poll = bool (*)();  // true when the call must stop; run on the calling thread only
  using clock = std::chrono::steady_clock;
  static constexpr clock::duration kPeriod = std::chrono::milliseconds(25);

  explicit Interrupt(Poll poll) : poll_(poll), next_(clock::now() + kPeriod) {}

  // True once the call must stop; `caller`: the thread that may poll.
  bool check(bool caller) {
    if (stop_.load(std::memory_order_relaxed)) return true;
    if (!caller || !poll_) return false;
    const clock::time_point now = clock::now();
    if (now < next_) return false;
    next_ = now + kPeriod;
    if (!poll_()) return false;
    stop_.store(true, std::memory_order_relaxed);
    return true;
  }
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }

  // This thread's call (nullptr: none) and whether this thread polls for it.
  struct Current {
    Interrupt* call = nullptr;
    bool caller = false;
  };
  static Current& current() {
    static thread_local Current c;
    return c;
  }

  // Makes `call` this thread's call for the scope's lifetime (`caller`: this thread polls).
  class Scope {
   public:
    Scope(Interrupt* call, bool caller) : saved_(current()) { current() = {call, caller}; }
    ~Scope() { current() = saved_; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Current saved_;
  };

 private:
  Poll poll_;
  clock::time_point next_;  // the caller's next poll
  std::atomic<bool> stop_{false};
};

// Between chunks of work: true when this thread's call must stop (false outside any call).
inline bool interrupted() {
  const Interrupt::Current& c = Interrupt::current();
  return c.call && c.call->check(c.caller);
}

}  // namespace tk

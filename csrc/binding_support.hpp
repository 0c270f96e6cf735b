// What the bindings of both compiled modules share (bindings.cpp: _core, cuda/bindings.cpp:
// _cuda): a network description with a pool of workspaces, and calls run with the GIL released
// and interruptible by signals (interrupt.hpp; docs/design.md, "Interruption").  Host code with
// pybind11; no CUDA.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "interrupt.hpp"
#include "net.hpp"

namespace tk {

// A network description plus a pool of workspaces (Workspace<float>, Workspace<double>): one
// per call in flight, reused after.
template <template <class> class Workspace>
class PooledNet : public Net {
 public:
  using Net::Net;

  // A workspace from the pool, or a new one when none is free; give() puts it back.
  template <class T>
  std::unique_ptr<Workspace<T>> take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& free = pool<T>();
      if (!free.empty()) {
        std::unique_ptr<Workspace<T>> ws = std::move(free.back());
        free.pop_back();
        return ws;
      }
    }
    return std::make_unique<Workspace<T>>();
  }
  template <class T>
  void give(std::unique_ptr<Workspace<T>> ws) {
    std::lock_guard<std::mutex> lock(mu_);
    pool<T>().push_back(std::move(ws));
  }

 private:
  template <class T>
  auto& pool() {
    if constexpr (sizeof(T) == 4)
      return pool32_;
    else
      return pool64_;
  }
  std::mutex mu_;
  std::vector<std::unique_ptr<Workspace<float>>> pool32_;
  std::vector<std::unique_ptr<Workspace<double>>> pool64_;
};

// The main thread's id (set by each module's init): only it handles signals, so only its calls
// poll for them.
inline unsigned long& main_thread_id() {
  static unsigned long id = 0;
  return id;
}
inline void remember_main_thread() {
  namespace py = pybind11;
  main_thread_id() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
}

// Pending signals, under a briefly re-acquired GIL: true when a handler raised (SIGINT's
// KeyboardInterrupt), the exception then being set.
inline bool poll_signals() {
  pybind11::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// fn() with the GIL released, interruptible by signals (interrupt.hpp): the kernels stop
// between chunks of work once a handler raised, and the exception is raised here.  fn must own
// its workspace lease so that the workspace is back in the pool before the exception leaves.
template <class F>
void without_gil(F&& fn) {
  Interrupt call(PyThread_get_thread_ident() == main_thread_id() ? &poll_signals : nullptr);
  {
    pybind11::gil_scoped_release nogil;
    Interrupt::Scope scope(&call, true);
    fn();
  }
  if (call.stopped()) throw pybind11::error_already_set();
}

// fn(ws) inside call(body) -- call being without_gil or a wrapper of it -- with a workspace
// `ws` leased for it (Lease(net).ws(), given back before call returns); returns what fn returns.
template <class Lease, class Net, class Call, class F>
decltype(auto) leased(Net& net, Call&& call, F&& fn) {
  using R = decltype(fn(std::declval<Lease&>().ws()));
  if constexpr (std::is_void_v<R>) {
    call([&] {
      Lease lease(net);
      fn(lease.ws());
    });
  } else {
    R value{};
    call([&] {
      Lease lease(net);
      value = fn(lease.ws());
    });
    return value;
  }
}

}  // namespace tk

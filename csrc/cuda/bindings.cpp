// taylorkern._cuda: thin forwarding to the CUDA kernels (mirrors ../bindings.cpp).  The
// Python layer (taylorkern.model, taylorkern.backends.cuda) validates every input once; here
// we only refuse arrays of the wrong dtype, shape or layout, stage host arrays on the device
// (copied once per call into the network's pooled workspace), take device arrays as raw
// pointers (from __cuda_array_interface__, no copy), allocate the results (numpy arrays, or
// DeviceArray objects that stay on the GPU), and release the GIL while the kernels run.
//
// Importing this module needs neither a GPU nor cuBLAS: init() finds out whether both are
// there (cuBLAS is dlopen'ed from the candidates the Python layer passes) and says why not.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "../binding_support.hpp"
#include "../with_dtype.hpp"
#include "blas.hpp"
#include "checks.cuh"
#include "curvature.cuh"
#include "diagonal.cuh"
#include "forward_backward.cuh"
#include "jacobian.cuh"
#include "rop.cuh"
#include "transfer.hpp"
#include "workspace.cuh"

namespace py = pybind11;
namespace tc = tk::cuda;
using tc::idx;

namespace {

// ----------------------------------------------------------------------------- state
std::mutex g_init_mu;
bool g_ready = false;
std::string g_reason = "taylorkern._cuda.init() has not been called";
int g_device = 0;
std::atomic<bool> g_tf32{false};

void require() {
  if (!g_ready) throw std::runtime_error("the CUDA backend is unavailable: " + g_reason);
}

// Makes the backend's device current for the scope (restoring the caller's).
class DeviceGuard {
 public:
  DeviceGuard() {
    TK_CUDA(cudaGetDevice(&prev_));
    if (prev_ != g_device) TK_CUDA(cudaSetDevice(g_device));
  }
  ~DeviceGuard() {
    if (prev_ >= 0 && prev_ != g_device) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

// fn() with the GIL released and the backend's device current, interruptible by signals
// (../binding_support.hpp, without_gil): once the call is stopped, fn's host code throws
// Interrupted (common.cuh) and the signal handler's exception (KeyboardInterrupt) is raised.
template <class F>
void on_device(F&& fn) {
  tk::without_gil([&] {
    DeviceGuard guard;
    try {
      fn();
    } catch (const tc::Interrupted&) {
      const tk::Interrupt* call = tk::Interrupt::current().call;
      if (!call || !call->stopped()) throw;  // never: only a stopped call throws it
    }
  });
}

std::string cuda_message(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

std::string init(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (g_ready) return "";
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear
    int drv = 0;
    cudaDriverGetVersion(&drv);
    g_reason = drv == 0 ? "no NVIDIA driver on this machine (libcuda.so.1 is not loadable): no GPU to run on"
                        : "no usable GPU (driver " + std::to_string(drv / 1000) + "." +
                              std::to_string(drv % 1000 / 10) + ", cudaGetDeviceCount: " + cuda_message(err) + ")";
    return g_reason;
  }
  if (count < 1) {
    g_reason = "no CUDA GPU visible (cudaGetDeviceCount returned 0)";
    return g_reason;
  }
  if (cudaGetDevice(&g_device) != cudaSuccess) g_device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, g_device) != cudaSuccess) {
    cudaGetLastError();
    g_reason = "cudaGetDeviceProperties failed for device " + std::to_string(g_device);
    return g_reason;
  }
  const std::string gpu = std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
                          std::to_string(prop.minor) + ")";
  try {
    DeviceGuard guard;
    tc::probe();
  } catch (const std::exception& e) {
    g_reason = "taylorkern's CUDA kernels cannot run on " + gpu + ": " + e.what();
    return g_reason;
  }
  const std::string why = tc::load_cublas(candidates);
  if (!why.empty()) {
    g_reason = why;
    return g_reason;
  }
  try {
    DeviceGuard guard;
    tc::Stream s;
    tc::BlasHandle h(s.s);
  } catch (const std::exception& e) {
    g_reason = std::string("cuBLAS does not start on ") + gpu + ": " + e.what();
    return g_reason;
  }
  g_ready = true;
  g_reason.clear();
  return "";
}

py::dict device_info() {
  py::dict d;
  d["ready"] = g_ready;
  d["reason"] = g_reason;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    count = 0;
  }
  d["device_count"] = count;
  int rt = 0, drv = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  d["runtime_version"] = rt;
  d["driver_version"] = drv;
  if (count > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, g_device) == cudaSuccess) {
      d["device"] = g_device;
      d["name"] = std::string(prop.name);
      d["compute_capability"] = py::make_tuple(prop.major, prop.minor);
      d["total_memory"] = (std::uint64_t)prop.totalGlobalMem;
      d["multiprocessors"] = prop.multiProcessorCount;
    }
  }
  if (const tc::Cublas* c = tc::cublas()) {
    d["cublas_path"] = c->path;
    if (g_ready) {
      try {
        DeviceGuard guard;
        tc::Stream s;
        tc::BlasHandle h(s.s);
        int v = 0;
        if (c->get_version(h.get(), &v) == tc::CUBLAS_STATUS_SUCCESS) d["cublas_version"] = v;
      } catch (const std::exception&) {
      }
    }
  }
  return d;
}

// ----------------------------------------------------------------------------- networks
// A network description plus a pool of device workspaces (../binding_support.hpp).
struct Net : tk::PooledNet<tc::Workspace> {
  using PooledNet::PooledNet;
};

// The lanes (workspace.cuh) of all calls: as many as calls have ever been in flight at once.
// Never destroyed: at interpreter exit the CUDA runtime may already be gone.
std::mutex g_lanes_mu;
std::atomic<int> g_lanes_made{0};
std::vector<tc::Lane*>& free_lanes() {
  static auto* lanes = new std::vector<tc::Lane*>();
  return *lanes;
}

// Borrows a workspace of the network and a lane for one call (GIL released, device current).
template <class T>
class Lease {
 public:
  explicit Lease(Net& net) : net_(net), ws_(net.take<T>()) {
    {
      std::lock_guard<std::mutex> lock(g_lanes_mu);
      auto& lanes = free_lanes();
      if (!lanes.empty()) {
        ws_->lane = lanes.back();
        lanes.pop_back();
      }
    }
    if (!ws_->lane) {
      ws_->lane = new tc::Lane();
      ++g_lanes_made;
    }
    const bool tf32 = sizeof(T) == 4 && g_tf32.load();
    if (ws_->lane->tf32 != tf32) {
      ws_->lane->blas_.set_tf32(tf32);
      ws_->lane->tf32 = tf32;
    }
    // An error left by an earlier failed call (a refused allocation, say) would be reported by
    // this call's first launch check: clear it.
    (void)cudaGetLastError();
  }
  ~Lease() {
    if (ws_->lane) {
      // Normally done already (every call waits for its work); after an error or an interrupt,
      // the lane and the workspace's buffers are reused only once what was queued has finished
      // (a few checkpoints' worth: workspace.cuh, Pace).
      (void)cudaStreamSynchronize(ws_->lane->stream_.s);
      std::lock_guard<std::mutex> lock(g_lanes_mu);
      free_lanes().push_back(ws_->lane);
      ws_->lane = nullptr;
    }
    net_.give(std::move(ws_));
  }
  tc::Workspace<T>& ws() { return *ws_; }

 private:
  Net& net_;
  std::unique_ptr<tc::Workspace<T>> ws_;
};

// ----------------------------------------------------------------------------- device arrays
// Device memory owned by Python: a result left on the GPU, or data put there once.  Exposes
// __cuda_array_interface__ (CuPy, PyTorch, Numba take it without a copy) and get() -> numpy.
struct DeviceArray {
  void* ptr = nullptr;
  std::vector<idx> shape;
  std::string typestr;  // "<f8", "<f4", "<i8"
  size_t itemsize = 0;

  DeviceArray(std::vector<idx> s, std::string ts) : shape(std::move(s)), typestr(std::move(ts)) {
    itemsize = typestr == "<f4" ? 4 : 8;
    DeviceGuard guard;
    ptr = tc::result_malloc(nbytes());
  }
  ~DeviceArray() { tc::result_free(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  idx size() const {
    idx n = 1;
    for (idx s : shape) n *= s;
    return n;
  }
  size_t nbytes() const { return (size_t)size() * itemsize; }

  py::tuple py_shape() const {
    py::tuple t(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t[i] = py::int_(shape[i]);
    return t;
  }
  py::dict cai() const {
    py::dict d;
    d["shape"] = py_shape();
    d["typestr"] = typestr;
    d["data"] = py::make_tuple((std::uintptr_t)ptr, false);
    d["version"] = 3;
    d["strides"] = py::none();
    d["stream"] = py::none();  // complete when handed out: no synchronisation needed
    return d;
  }
  py::array get() const {
    py::array out(py::dtype(typestr), std::vector<py::ssize_t>(shape.begin(), shape.end()));
    void* dst = out.mutable_data();
    // the legacy stream: after every blocking stream's work
    on_device([&] { tc::copy_to_host(dst, ptr, nbytes(), nullptr); });
    return out;
  }
};

std::unique_ptr<DeviceArray> to_device(py::array a) {
  require();
  std::string ts;
  if (py::isinstance<py::array_t<double>>(a))
    ts = "<f8";
  else if (py::isinstance<py::array_t<float>>(a))
    ts = "<f4";
  else if (py::isinstance<py::array_t<std::int64_t>>(a))
    ts = "<i8";
  else
    throw py::type_error("to_device: expected a float64, float32 or int64 array");
  if (!(a.flags() & py::array::c_style)) throw py::type_error("to_device: expected a C-contiguous array");
  std::vector<idx> shape(a.shape(), a.shape() + a.ndim());
  auto d = std::make_unique<DeviceArray>(shape, ts);
  const void* src = a.data();
  on_device([&] {
    tc::copy_to_device(d->ptr, src, d->nbytes(), nullptr);
    tc::await_stream(nullptr);  // complete when handed out (DeviceArray::cai)
  });
  return d;
}

// A copy of device memory (any pointer of this device) into a new numpy array.
py::array to_host(std::uintptr_t ptr, std::vector<py::ssize_t> shape, const std::string& typestr) {
  require();
  py::array out(py::dtype(typestr), shape);
  void* dst = out.mutable_data();
  const size_t n = (size_t)out.nbytes();
  on_device([&] { tc::copy_to_host(dst, reinterpret_cast<const void*>(ptr), n, nullptr); });
  return out;
}

// (memory type, device) of a pointer: type 2 = device memory, 3 = managed, 1 = pinned host,
// 0 = not known to CUDA.
py::tuple pointer_info(std::uintptr_t ptr) {
  require();
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return py::make_tuple(0, -1);
  }
  return py::make_tuple((int)attr.type, attr.device);
}

// ----------------------------------------------------------------------------- arguments
// An input: host memory (a checked numpy array, staged per call) or a device pointer.
struct Arg {
  const void* host = nullptr;
  const void* dev = nullptr;
  idx count = 0;
};

idx product(const std::vector<idx>& shape) {
  idx n = 1;
  for (idx s : shape) n *= s;
  return n;
}

template <class U>
Arg make_arg(const py::object& o, const std::string& name, const std::vector<idx>& shape, const char* dtype_name) {
  Arg a;
  a.count = product(shape);
  if (py::isinstance<py::int_>(o)) {  // a device pointer, checked by the Python layer
    a.dev = reinterpret_cast<const void*>(o.cast<std::uintptr_t>());
    if (!a.dev) throw py::value_error(name + ": null device pointer");
    return a;
  }
  if (!py::isinstance<py::array_t<U>>(o))
    throw py::type_error(name + ": expected a C-contiguous array of " + dtype_name + " or a device pointer");
  py::array arr = py::reinterpret_borrow<py::array>(o);
  if (!(arr.flags() & py::array::c_style))
    throw py::type_error(name + ": expected a C-contiguous array of " + dtype_name);
  if ((size_t)arr.ndim() != shape.size()) throw py::value_error(name + ": wrong number of dimensions");
  for (size_t i = 0; i < shape.size(); ++i)
    if (arr.shape(i) != shape[i]) throw py::value_error(name + ": wrong shape");
  a.host = arr.data();
  return a;
}

template <class T>
Arg arg(const py::object& o, const std::string& name, const std::vector<idx>& shape) {
  return make_arg<T>(o, name, shape, sizeof(T) == 8 ? "float64" : "float32");
}

// The device copy of an input (staged into buf when it is in host memory).
template <class U>
const U* place(const Arg& a, tc::DevBuf<U>& buf, cudaStream_t s) {
  if (a.dev) return static_cast<const U*>(a.dev);
  buf.resize(a.count);
  tc::copy_to_device(buf.data(), a.host, sizeof(U) * a.count, s);
  return buf.data();
}

struct TargetsArg {
  Arg a;
  bool labels = false;
};

template <class T>
TargetsArg targets_arg(const tc::Net& net, const py::object& Y, idx N) {
  TargetsArg t;
  t.labels = net.loss == tk::Loss::ce;
  t.a = t.labels ? make_arg<std::int64_t>(Y, "Y", {N}, "int64 labels") : arg<T>(Y, "Y", {N, net.ky()});
  return t;
}

template <class T>
tc::Targets<T> place_targets(const TargetsArg& t, tc::Workspace<T>& ws) {
  tc::Targets<T> tg;
  if (t.labels)
    tg.labels = place<std::int64_t>(t.a, ws.labels, ws.stream());
  else
    tg.y = place<T>(t.a, ws.Y, ws.stream());
  return tg;
}

// A result: a numpy array (computed in the workspace, then copied back) or a DeviceArray.
template <class T>
struct Result {
  py::object obj;
  T* host = nullptr;
  T* dev = nullptr;
  idx count = 0;

  Result(const std::vector<idx>& shape, bool device_out) : count(product(shape)) {
    if (device_out) {
      auto d = std::make_unique<DeviceArray>(shape, sizeof(T) == 8 ? "<f8" : "<f4");
      dev = static_cast<T*>(d->ptr);
      obj = py::cast(std::move(d));
    } else {
      py::array_t<T> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
      host = a.mutable_data();
      obj = std::move(a);
    }
  }
  T* target(tc::Workspace<T>& ws) {
    if (dev) return dev;
    ws.out.resize(count);
    return ws.out.data();
  }
  // Copies a host result back and waits for the call's work.
  void finish(tc::Workspace<T>& ws) {
    if (dev)
      tc::await_stream(ws.stream());
    else
      tc::copy_to_host(host, ws.out.data(), sizeof(T) * count, ws.stream());
  }
};

// The dtype and the number of samples of a call: from theta and X where they are numpy arrays,
// else (device pointers) from the keyword arguments f32 and n.
struct CallShape {
  bool f32 = false;
  idx N = 0;
};
CallShape call_shape(const py::object& theta, const py::object& X, std::optional<bool> f32, std::optional<idx> n) {
  require();
  CallShape c;
  if (f32)
    c.f32 = *f32;
  else if (py::isinstance<py::array_t<float>>(theta))
    c.f32 = true;
  else if (!py::isinstance<py::array_t<double>>(theta))
    throw py::type_error("theta: expected float64 or float32 (or pass f32= with a device pointer)");
  if (n)
    c.N = *n;
  else if (py::isinstance<py::array>(X) && py::reinterpret_borrow<py::array>(X).ndim() == 2)
    c.N = py::reinterpret_borrow<py::array>(X).shape(0);
  else
    throw py::value_error("X: expected a 2-D array (or pass n= with a device pointer)");
  if (c.N < 1) throw py::value_error("X: needs at least one sample (N >= 1)");
  return c;
}

// The checked inputs of a call (theta, X and, when given, Y and the sample weights w), placed on
// the device by place().  w: None, or the weights (N,) in theta's dtype with the reduction
// folded in (../net.hpp, Targets), a numpy array or a device pointer.
template <class T>
struct Inputs {
  idx N;
  Arg theta, X, w;
  TargetsArg Y;
  bool has_y = false, has_w = false;
  Inputs(const Net& net, idx N, const py::object& th, const py::object& x, const py::object* y = nullptr,
         const py::object& wt = py::none())
      : N(N), theta(arg<T>(th, "theta", {net.P()})), X(arg<T>(x, "X", {N, net.d[0]})) {
    if (y) Y = targets_arg<T>(net, *y, N), has_y = true;
    if (!wt.is_none()) w = arg<T>(wt, "sample_weight", {N}), has_w = true;
  }
  struct Placed {
    const T *theta, *X;
    tc::Targets<T> tg;
  };
  Placed place(tc::Workspace<T>& ws) const {
    Placed p{::place(theta, ws.theta, ws.stream()), ::place(X, ws.X, ws.stream()), {}};
    if (has_y) p.tg = place_targets(Y, ws);
    if (has_w) p.tg.w = ::place(w, ws.sw, ws.stream());
    return p;
  }
};

// fn(workspace) with the GIL released, the backend's device current, a workspace leased and the
// call interruptible (on_device); returns what fn returns.
template <class T, class F>
decltype(auto) run(Net& net, F&& fn) {
  return tk::leased<Lease<T>>(net, [](auto&& body) { on_device(body); }, fn);
}

// ----------------------------------------------------------------------------- calls
// The same operations, names and leading arguments as taylorkern._core; the trailing keyword
// arguments f32, n (and m for the products) describe device-pointer inputs, and device_out
// leaves the result on the GPU as a DeviceArray.
using OptF32 = std::optional<bool>;
using OptIdx = std::optional<idx>;

// A call with one result of `shape`: kernel(inputs placed on the device, result, workspace)
// with the GIL released.
template <class T, class K>
py::object one_result(Net& net, const Inputs<T>& in, std::vector<idx> shape, bool device_out, K&& kernel) {
  Result<T> r(shape, device_out);
  run<T>(net, [&](auto& ws) {
    kernel(in.place(ws), r.target(ws), ws);
    r.finish(ws);
  });
  return r.obj;
}

py::object predict(Net& net, py::object theta, py::object X, OptF32 f32, OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    return one_result<T>(net, Inputs<T>(net, c.N, theta, X), {c.N, net.k()}, device_out,
                         [&](auto p, T* o, auto& ws) { tc::predict<T>(net, p.theta, p.X, c.N, o, ws); });
  });
}

py::object jacobian(Net& net, py::object theta, py::object X, OptF32 f32, OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    return one_result<T>(net, Inputs<T>(net, c.N, theta, X), {c.N * net.k(), net.P()}, device_out,
                         [&](auto p, T* o, auto& ws) { tc::jacobian<T>(net, p.theta, p.X, c.N, o, ws); });
  });
}

double loss(Net& net, py::object theta, py::object X, py::object Y, bool mean, py::object w, OptF32 f32, OptIdx n) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, c.N, theta, X, &Y, w);
    return run<T>(net, [&](auto& ws) {
      const auto p = in.place(ws);
      return tc::loss<T>(net, p.theta, p.X, c.N, p.tg, mean, ws);
    });
  });
}

py::tuple loss_and_grad(Net& net, py::object theta, py::object X, py::object Y, bool mean, py::object w, OptF32 f32,
                        OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    double value = 0;
    py::object grad = one_result<T>(
        net, Inputs<T>(net, c.N, theta, X, &Y, w), {net.P()}, device_out,
        [&](auto p, T* g, auto& ws) { value = tc::loss_and_grad<T>(net, p.theta, p.X, c.N, p.tg, mean, g, ws); });
    return py::make_tuple(value, grad);
  });
}

// V is (P, m); m from V where it is a numpy array, else the keyword argument m.
py::object product(Net& net, py::object theta, py::object X, py::object Y, py::object V, bool mean, py::object w,
                   bool gn, OptF32 f32, OptIdx n, OptIdx m_opt, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  idx m = -1;
  if (m_opt)
    m = *m_opt;
  else if (py::isinstance<py::array>(V) && py::reinterpret_borrow<py::array>(V).ndim() == 2)
    m = py::reinterpret_borrow<py::array>(V).shape(1);
  else
    throw py::value_error("V: expected a 2-D array (P, m) (or pass m= with a device pointer)");
  if (m < 1) throw py::value_error("V: needs at least one column (m >= 1)");
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, c.N, theta, X, &Y, w);
    const Arg v = arg<T>(V, "V", {net.P(), m});
    return one_result<T>(net, in, {net.P(), m}, device_out, [&](auto p, T* o, auto& ws) {
      tc::rop<T>(net, p.theta, p.X, c.N, p.tg, mean, place(v, ws.V, ws.stream()), m, o, gn, ws);
    });
  });
}

py::object full(Net& net, py::object theta, py::object X, py::object Y, bool mean, py::object w, bool gn, OptF32 f32,
                OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    return one_result<T>(
        net, Inputs<T>(net, c.N, theta, X, &Y, w), {net.P(), net.P()}, device_out,
        [&](auto p, T* o, auto& ws) { tc::curvature_full<T>(net, p.theta, p.X, c.N, p.tg, mean, gn, o, ws); });
  });
}

py::object diag(Net& net, py::object theta, py::object X, py::object Y, bool mean, py::object w, bool gn, OptF32 f32,
                OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) {
    using T = typename decltype(dt)::type;
    return one_result<T>(net, Inputs<T>(net, c.N, theta, X, &Y, w), {net.P()}, device_out, [&](auto p, T* o, auto& ws) {
      tc::curvature_diag<T>(net, p.theta, p.X, c.N, p.tg, mean, gn, o, ws);
    });
  });
}

py::object blocks(Net& net, py::object theta, py::object X, py::object Y, bool mean, py::object w, bool gn, OptF32 f32,
                  OptIdx n, bool device_out) {
  const CallShape c = call_shape(theta, X, f32, n);
  return tk::with_dtype(c.f32, [&](auto dt) -> py::object {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, c.N, theta, X, &Y, w);
    py::list result;
    std::vector<T*> host, dev;
    std::vector<idx> sizes;
    for (idx l = 0; l < net.L(); ++l) {
      const idx Pl = net.off[l + 1] - net.off[l];
      sizes.push_back(Pl * Pl);
      if (device_out) {
        auto d = std::make_unique<DeviceArray>(std::vector<idx>{Pl, Pl}, sizeof(T) == 8 ? "<f8" : "<f4");
        dev.push_back(static_cast<T*>(d->ptr));
        result.append(py::cast(std::move(d)));
      } else {
        py::array_t<T> b({Pl, Pl});
        host.push_back(b.mutable_data());
        result.append(b);
      }
    }
    run<T>(net, [&](auto& ws) {
      std::vector<T*> outs = dev;
      if (!device_out) {  // one staging buffer for all blocks, copied back block by block
        idx total = 0;
        for (idx s : sizes) total += s;
        ws.out.resize(total);
        idx o = 0;
        for (idx s : sizes) {
          outs.push_back(ws.out.data() + o);
          o += s;
        }
      }
      const auto p = in.place(ws);
      tc::curvature_blocks<T>(net, p.theta, p.X, c.N, p.tg, mean, gn, outs, ws);
      if (!device_out)
        for (size_t l = 0; l < sizes.size(); ++l) tc::copy_to_host(host[l], outs[l], sizeof(T) * sizes[l], ws.stream());
      tc::await_stream(ws.stream());
    });
    return std::move(result);
  });
}

// {name: code} of the activations and losses, as Net takes them (../formulas.hpp).
template <size_t count>
py::dict code_table(const char* const (&names)[count]) {
  py::dict d;
  for (size_t i = 0; i < count; ++i) d[names[i]] = (int)i;
  return d;
}

// ----------------------------------------------------------------------------- helpers
bool device_all_finite(std::uintptr_t ptr, idx n, bool f32) {
  require();
  py::gil_scoped_release nogil;
  DeviceGuard guard;
  if (n <= 0) return true;
  return f32 ? tc::all_finite<float>(reinterpret_cast<const float*>(ptr), n)
             : tc::all_finite<double>(reinterpret_cast<const double*>(ptr), n);
}

bool device_labels_in_range(std::uintptr_t ptr, idx n, idx k) {
  require();
  py::gil_scoped_release nogil;
  DeviceGuard guard;
  if (n <= 0) return true;
  return tc::labels_in_range(reinterpret_cast<const std::int64_t*>(ptr), n, k);
}

void add_diagonal(DeviceArray& a, double v) {
  require();
  if (a.shape.size() != 2 || a.shape[0] != a.shape[1] || a.typestr == "<i8")
    throw py::value_error("add_diagonal: expected a square float matrix");
  py::gil_scoped_release nogil;
  DeviceGuard guard;
  if (a.typestr == "<f8")
    tc::add_diagonal<double>(static_cast<double*>(a.ptr), a.shape[0], a.shape[1], v);
  else
    tc::add_diagonal<float>(static_cast<float*>(a.ptr), a.shape[0], a.shape[1], (float)v);
}

// y += alpha x, x a device pointer with as many elements of y's dtype.
void axpy(double alpha, std::uintptr_t x, DeviceArray& y) {
  require();
  if (y.typestr == "<i8") throw py::value_error("axpy: expected a float array");
  py::gil_scoped_release nogil;
  DeviceGuard guard;
  if (y.typestr == "<f8")
    tc::axpy<double>(y.size(), alpha, reinterpret_cast<const double*>(x), static_cast<double*>(y.ptr));
  else
    tc::axpy<float>(y.size(), (float)alpha, reinterpret_cast<const float*>(x), static_cast<float*>(y.ptr));
}

void sync_stream(std::uintptr_t stream) {
  require();
  on_device([&] { tc::await_stream(reinterpret_cast<cudaStream_t>(stream)); });
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "taylorkern CUDA kernels (cuBLAS loaded at run time); see taylorkern.backends.cuda";
  tk::remember_main_thread();
  py::register_exception<tc::OutOfDeviceMemory>(m, "OutOfDeviceMemory", PyExc_MemoryError);
  m.def("init", &init, py::arg("cublas_candidates"),
        "Find the GPU and load cuBLAS from the first candidate that loads; returns '' when ready, else why not");
  m.def("ready", []() { return g_ready; });
  m.def("reason", []() { return g_reason; });
  m.def("device_info", &device_info);
  m.def("set_tf32", [](bool on) { g_tf32 = on; }, "float32 products on TF32 tensor cores (opt-in; off by default)");
  m.def("get_tf32", []() { return g_tf32.load(); });
  m.def("lanes_made", []() { return g_lanes_made.load(); }, "streams with a cuBLAS handle made so far");
  m.def("set_chunk_budget", &tc::set_chunk_budget,
        "values of per-chunk scratch for the curvature kernels (0: from the free memory); for tests");

  py::class_<Net>(m, "Net")
      .def(py::init<std::vector<idx>, std::vector<int>, int, double>(), py::arg("sizes"), py::arg("activations"),
           py::arg("loss"), py::arg("loss_scale") = 1.0)
      .def_property_readonly("num_params", [](const Net& n) { return n.P(); });

  py::class_<DeviceArray>(m, "DeviceArray")
      .def_property_readonly("shape", &DeviceArray::py_shape)
      .def_property_readonly("dtype", [](const DeviceArray& a) { return py::dtype(a.typestr); })
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("ptr", [](const DeviceArray& a) { return (std::uintptr_t)a.ptr; })
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::cai)
      .def("get", &DeviceArray::get, "a numpy copy")
      .def(
          "__array__",
          [](const DeviceArray& a, py::object dtype, py::object /*copy*/) {
            py::array out = a.get();
            return dtype.is_none() ? py::object(out) : out.attr("astype")(dtype);
          },
          py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("__repr__", [](const DeviceArray& a) {
        return "DeviceArray(shape=" + py::str(a.py_shape()).cast<std::string>() + ", dtype=" + a.typestr + ")";
      });

  m.def("to_device", &to_device, "copy a C-contiguous numpy array to the GPU");
  m.def("to_host", &to_host, py::arg("ptr"), py::arg("shape"), py::arg("typestr"));
  m.def("pointer_info", &pointer_info);
  m.def("sync_stream", &sync_stream);
  m.def("all_finite", &device_all_finite);
  m.def("labels_in_range", &device_labels_in_range);
  m.def("add_diagonal", &add_diagonal);
  m.def("axpy", &axpy);

  m.attr("ACTIVATION_CODES") = code_table(tk::kActNames);
  m.attr("LOSS_CODES") = code_table(tk::kLossNames);
  // As taylorkern._core: (net, theta, X[, Y[, V]][, mean, w]), then the keyword-only f32, n (m)
  // and device_out.  Inputs are numpy arrays of the network's dtype or device pointers (int);
  // w, the sample weights with the reduction folded in (../net.hpp, Targets), may be None.
  const auto net = py::arg("net"), theta = py::arg("theta"), X = py::arg("X"), Y = py::arg("Y"), V = py::arg("V"),
             mean = py::arg("mean");
  const auto w = py::arg("w") = py::none();
  const auto f32 = py::arg("f32") = py::none(), n = py::arg("n") = py::none(), m_cols = py::arg("m") = py::none(),
             device_out = py::arg("device_out") = false;
  m.def("predict", &predict, net, theta, X, py::kw_only(), f32, n, device_out);
  m.def("loss", &loss, net, theta, X, Y, mean, w, py::kw_only(), f32, n);
  m.def("loss_and_grad", &loss_and_grad, net, theta, X, Y, mean, w, py::kw_only(), f32, n, device_out);
  m.def("jacobian", &jacobian, net, theta, X, py::kw_only(), f32, n, device_out);
  for (const bool gn : {false, true})
    m.def(
        gn ? "ggn_vp" : "hvp",
        [gn](Net& nt, py::object t, py::object x, py::object y, py::object v, bool mn, py::object wt, OptF32 f,
             OptIdx rows, OptIdx cols, bool dev) { return product(nt, t, x, y, v, mn, wt, gn, f, rows, cols, dev); },
        net, theta, X, Y, V, mean, w, py::kw_only(), f32, n, m_cols, device_out);
  // hessian / ggn, hessian_blocks / ggn_blocks, hessian_diag / ggn_diag: (net, theta, X, Y, mean, w).
  auto pair = [&](const char* h, const char* g, auto fn) {
    for (const bool gn : {false, true})
      m.def(
          gn ? g : h,
          [fn, gn](Net& nt, py::object t, py::object x, py::object y, bool mn, py::object wt, OptF32 f, OptIdx rows,
                   bool dev) { return fn(nt, t, x, y, mn, wt, gn, f, rows, dev); },
          net, theta, X, Y, mean, w, py::kw_only(), f32, n, device_out);
  };
  pair("hessian", "ggn", &full);
  pair("hessian_blocks", "ggn_blocks", &blocks);
  pair("hessian_diag", "ggn_diag", &diag);
}

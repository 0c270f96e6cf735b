// taylorkern._core: thin forwarding to the kernels.  The Python layer (taylorkern.model)
// validates every input once; here we only refuse arrays of the wrong dtype, shape or
// layout (never copy silently), allocate the results, and release the GIL while the
// kernels run.  BLAS comes from scipy's bundled OpenBLAS, looked up at import.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <utility>

#include "activations.hpp"
#include "binding_support.hpp"
#include "blas.hpp"
#include "curvature.hpp"
#include "diagonal.hpp"
#include "forward_backward.hpp"
#include "gemm_avx512.hpp"
#include "gram.hpp"
#include "jacobian.hpp"
#include "kfac.hpp"
#include "lbfgs.hpp"
#include "omp_compat.hpp"
#include "rop.hpp"
#include "trust_region.hpp"
#include "with_dtype.hpp"
#include "workspace.hpp"

namespace py = pybind11;
using tk::idx;

namespace {

// A network description plus a pool of workspaces (binding_support.hpp).
struct Net : tk::PooledNet<tk::Workspace> {
  using PooledNet::PooledNet;
};

// Borrows a workspace for one call (GIL released) and, where the kernels call the BLAS, holds
// it to one thread meanwhile (blas.hpp).
template <class T>
class Lease {
 public:
  explicit Lease(Net& net) : net_(net), ws_(net.take<T>()) {}
  ~Lease() { net_.give(std::move(ws_)); }
  tk::Workspace<T>& ws() { return *ws_; }

 private:
  Net& net_;
  std::unique_ptr<tk::Workspace<T>> ws_;
  tk::SerialBlas serial_;
};

template <class T>
const T* data(const py::array& a, const char* name, std::vector<idx> shape) {
  if (!py::isinstance<py::array_t<T>>(a) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + ": expected a C-contiguous array of " +
                         (sizeof(T) == 8 ? "float64" : "float32"));
  if ((idx)a.ndim() != (idx)shape.size()) throw py::value_error(std::string(name) + ": wrong number of dimensions");
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] >= 0 && a.shape(i) != shape[i]) throw py::value_error(std::string(name) + ": wrong shape");
  return static_cast<const T*>(a.data());
}

template <class T>
tk::Targets<T> targets(const tk::Net& net, const py::array& y, idx N) {
  tk::Targets<T> tg;
  if (net.loss == tk::Loss::ce) {
    if (!py::isinstance<py::array_t<std::int64_t>>(y) || !(y.flags() & py::array::c_style) || y.ndim() != 1 ||
        y.shape(0) != N)
      throw py::type_error("Y: expected C-contiguous int64 labels of shape (N,)");
    tg.labels = static_cast<const std::int64_t*>(y.data());
  } else {
    tg.y = data<T>(y, "Y", {N, net.ky()});
  }
  return tg;
}

bool is_f32(const py::array& theta) {
  if (py::isinstance<py::array_t<double>>(theta)) return false;
  if (py::isinstance<py::array_t<float>>(theta)) return true;
  throw py::type_error("theta: expected float64 or float32");
}

// The checked inputs of a call, as pointers: theta, X (N rows) and, when given, Y.
template <class T>
struct Inputs {
  const T *theta, *X;
  idx N;
  tk::Targets<T> tg;
  // w: None, or the sample weights (N,) in theta's dtype, the reduction folded in (net.hpp, Targets).
  Inputs(const tk::Net& net, const py::array& th, const py::array& x, const py::array* y = nullptr,
         const py::object& w = py::none())
      : theta(data<T>(th, "theta", {net.P()})), X(nullptr), N(x.ndim() == 2 ? x.shape(0) : -1) {
    X = data<T>(x, "X", {N, net.d[0]});
    if (y) tg = targets<T>(net, *y, N);
    if (!w.is_none()) {
      if (!py::isinstance<py::array>(w)) throw py::type_error("sample_weight: expected an array or None");
      tg.w = data<T>(py::reinterpret_borrow<py::array>(w), "sample_weight", {N});
    }
  }
};

// fn(workspace) with the GIL released, a workspace leased and the call interruptible
// (without_gil); returns what fn returns.
template <class T, class F>
decltype(auto) run(Net& net, F&& fn) {
  return tk::leased<Lease<T>>(net, [](auto&& body) { tk::without_gil(body); }, fn);
}

// A call with one array result of `shape`: kernel(result, workspace) with the GIL released.
template <class T, class K>
py::object one_result(Net& net, std::vector<idx> shape, K&& kernel) {
  py::array_t<T> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  T* o = out.mutable_data();
  run<T>(net, [&](auto& ws) { kernel(o, ws); });
  return std::move(out);
}

// The calls, each for theta's dtype (float32 or float64).
py::object predict(Net& net, py::array theta, py::array X) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X);
    return one_result<T>(net, {in.N, net.k()},
                         [&](T* o, auto& ws) { tk::predict<T>(net, in.theta, in.X, in.N, o, ws); });
  });
}

py::object jacobian(Net& net, py::array theta, py::array X) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X);
    return one_result<T>(net, {in.N * net.k(), net.P()},
                         [&](T* o, auto& ws) { tk::jacobian<T>(net, in.theta, in.X, in.N, o, ws); });
  });
}

double loss(Net& net, py::array theta, py::array X, py::array Y, bool mean, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    return run<T>(net, [&](auto& ws) { return tk::loss<T>(net, in.theta, in.X, in.N, in.tg, mean, ws); });
  });
}

py::tuple loss_and_grad(Net& net, py::array theta, py::array X, py::array Y, bool mean, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    double value = 0;
    py::object grad = one_result<T>(net, {net.P()}, [&](T* g, auto& ws) {
      value = tk::loss_and_grad<T>(net, in.theta, in.X, in.N, in.tg, mean, g, ws);
    });
    return py::make_tuple(value, grad);
  });
}

py::tuple loss_grad_ggn(Net& net, py::array theta, py::array X, py::array Y, bool mean, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    py::array_t<T> grad(net.P()), G(std::vector<py::ssize_t>{net.P(), net.P()});
    T *g = grad.mutable_data(), *o = G.mutable_data();
    const double value = run<T>(
        net, [&](auto& ws) { return tk::loss_grad_ggn<T>(net, in.theta, in.X, in.N, in.tg, mean, g, o, ws); });
    return py::tuple(py::make_tuple(value, std::move(grad), std::move(G)));
  });
}

py::object product(Net& net, py::array theta, py::array X, py::array Y, py::array V, bool mean, bool gn, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    const idx m = V.ndim() == 2 ? V.shape(1) : -1;
    const T* v = data<T>(V, "V", {net.P(), m});
    return one_result<T>(net, {net.P(), m},
                         [&](T* o, auto& ws) { tk::rop<T>(net, in.theta, in.X, in.N, in.tg, mean, v, m, o, gn, ws); });
  });
}

py::object full(Net& net, py::array theta, py::array X, py::array Y, bool mean, bool gn, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    return one_result<T>(net, {net.P(), net.P()}, [&](T* o, auto& ws) {
      tk::curvature_full<T>(net, in.theta, in.X, in.N, in.tg, mean, gn, o, ws);
    });
  });
}

py::object diag(Net& net, py::array theta, py::array X, py::array Y, bool mean, bool gn, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    return one_result<T>(net, {net.P()}, [&](T* o, auto& ws) {
      tk::curvature_diag<T>(net, in.theta, in.X, in.N, in.tg, mean, gn, o, ws);
    });
  });
}

py::list blocks(Net& net, py::array theta, py::array X, py::array Y, bool mean, bool gn, py::object w) {
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    py::list result;
    std::vector<T*> outs;
    for (idx l = 0; l < net.L(); ++l) {
      const idx Pl = net.off[l + 1] - net.off[l];
      py::array_t<T> b({Pl, Pl});
      outs.push_back(b.mutable_data());
      result.append(b);
    }
    run<T>(net, [&](auto& ws) { tk::curvature_blocks<T>(net, in.theta, in.X, in.N, in.tg, mean, gn, outs, ws); });
    return result;
  });
}

// K-FAC's factors, [(A_l, B_l)] (kfac.hpp); noise None for the exact rows, else (N, M) uniforms
// (ce) or (N, M, k) unit-weight sampled gradient rows (the other likelihoods) of theta's dtype.
// With bases [(Qa, Qb)], EKFAC's eigenvalues instead, [(d_l + 1, d_{l+1})] per layer.  w: None or
// the sample weights, the reduction folded in (Inputs).  input_factor false: the first layer's A
// is not computed, None in its place.
py::list kfac_factors(Net& net, py::array theta, py::array X, py::array Y, bool mean, py::object noise,
                      py::object bases, py::object w, bool input_factor) {
  // huber and soft_l1 define no distribution to draw from (the MLP refuses them by name first).
  if (!noise.is_none() && (net.loss == tk::Loss::huber || net.loss == tk::Loss::soft_l1))
    throw py::value_error("kind: 'mc' draws targets from a likelihood; huber and soft_l1 are not ones");
  return tk::with_dtype(is_f32(theta), [&](auto dt) {
    using T = typename decltype(dt)::type;
    const Inputs<T> in(net, theta, X, &Y, w);
    const T* nz = nullptr;
    idx M = 0;
    if (!noise.is_none()) {
      const py::array a = noise.cast<py::array>();
      M = a.ndim() >= 2 ? a.shape(1) : -1;
      nz = net.loss == tk::Loss::ce ? data<T>(a, "noise", {in.N, M}) : data<T>(a, "noise", {in.N, M, net.k()});
      if (M < 1) throw py::value_error("noise: needs at least one draw per sample");
    }
    py::list result;
    if (!bases.is_none()) {
      const py::list bl = bases.cast<py::list>();
      if ((idx)bl.size() != net.L()) throw py::value_error("bases: one (Qa, Qb) per layer");
      std::vector<py::array> keep;
      std::vector<const T*> Qa, Qb;
      std::vector<T*> out;
      for (idx l = 0; l < net.L(); ++l) {
        const py::tuple pair = bl[l].cast<py::tuple>();
        keep.push_back(pair[0].cast<py::array>()), keep.push_back(pair[1].cast<py::array>());
        Qa.push_back(data<T>(keep[2 * l], "bases", {net.d[l] + 1, net.d[l] + 1}));
        Qb.push_back(data<T>(keep[2 * l + 1], "bases", {net.d[l + 1], net.d[l + 1]}));
        py::array_t<T> s({net.d[l] + 1, net.d[l + 1]});
        out.push_back(s.mutable_data());
        result.append(s);
      }
      run<T>(net, [&](auto& ws) {
        tk::kfac_eigen_scales<T>(net, in.theta, in.X, in.N, in.tg, mean, nz, M, Qa, Qb, out, ws);
      });
      return result;
    }
    std::vector<T*> A, B;
    for (idx l = 0; l < net.L(); ++l) {
      py::array_t<T> b({net.d[l + 1], net.d[l + 1]});
      B.push_back(b.mutable_data());
      if (l == 0 && !input_factor) {
        A.push_back(nullptr);
        result.append(py::make_tuple(py::none(), b));
        continue;
      }
      py::array_t<T> a({net.d[l] + 1, net.d[l] + 1});
      A.push_back(a.mutable_data());
      result.append(py::make_tuple(a, b));
    }
    run<T>(net, [&](auto& ws) { tk::kfac_factors<T>(net, in.theta, in.X, in.N, in.tg, mean, nz, M, A, B, ws); });
    return result;
  });
}

// {name: code} of the activations and losses, as Net takes them (formulas.hpp).
template <size_t n>
py::dict code_table(const char* const (&names)[n]) {
  py::dict d;
  for (size_t i = 0; i < n; ++i) d[names[i]] = (int)i;
  return d;
}

// True when every element is finite: sums of x * 0 are 0, or NaN as soon as one x is +-inf
// or NaN.  Four registers' worth of independent sums, so that the loop vectorises without
// reassociating (one running sum would be a serial chain of dependent adds).
template <class T>
bool all_finite_impl(const T* x, idx n) {
  constexpr idx W = 4 * 64 / sizeof(T);
  T acc[W] = {};
  idx i = 0;
  for (; i + W <= n; i += W)
    for (idx j = 0; j < W; ++j) acc[j] += x[i + j] * T(0);
  for (; i < n; ++i) acc[0] += x[i] * T(0);
  T sum = 0;
  for (idx j = 0; j < W; ++j) sum += acc[j];
  return sum == T(0);
}

// L-BFGS's direction into out (lbfgs.hpp).  The optimizer owns and sizes every array.
void lbfgs_direction(const py::array& S, const py::array& Y, const py::array& rho, idx head, idx k, double gamma,
                     const py::array& g, py::array& alpha, py::array& out) {
  const idx m = S.ndim() == 2 ? (idx)S.shape(0) : -1, F = S.ndim() == 2 ? (idx)S.shape(1) : -1;
  const double* s = data<double>(S, "S", {m, F});
  if (m < 1) throw py::value_error("S: expected at least one row");
  const double* y = data<double>(Y, "Y", {m, F});
  const double* r = data<double>(rho, "rho", {m});
  const double* gv = data<double>(g, "g", {F});
  double* a = const_cast<double*>(data<double>(alpha, "alpha", {m}));
  double* o = const_cast<double*>(data<double>(out, "out", {F}));
  if (head < 0 || head >= m) throw py::value_error("head: expected 0 <= head < m");
  if (k < 0 || k > m) throw py::value_error("k: expected 0 <= k <= m");
  if (o == gv) throw py::value_error("out: must not be g");
  if (!alpha.writeable() || !out.writeable())
    throw py::value_error("alpha, out: expected writeable arrays");
  tk::lbfgs_direction(s, y, r, m, F, head, k, gamma, gv, a, o);
}

// Newton's trust-region step in the eigenbasis (trust_region.hpp): (ph, predicted decrease, on boundary).
py::tuple trust_region_eigenbasis(const py::array& lam, const py::array& gh, double radius, double eps) {
  const idx F = lam.ndim() == 1 ? (idx)lam.shape(0) : -1;
  const double* l = data<double>(lam, "lam", {F});
  if (F < 1) throw py::value_error("lam: expected at least one eigenvalue");
  const double* g = data<double>(gh, "gh", {F});
  if (!(radius > 0) || !std::isfinite(radius)) throw py::value_error("radius: expected a finite value > 0");
  if (!(eps >= 0) || !std::isfinite(eps)) throw py::value_error("eps: expected a finite value >= 0");
  py::array_t<double> ph(F);
  double pred = 0.0;
  const bool boundary = tk::trust_region_eigenbasis(l, g, F, radius, eps, ph.mutable_data(), &pred);
  return py::make_tuple(ph, pred, boundary);
}

py::object all_finite(const py::array& a) {
  if (a.flags() & py::array::c_style) {
    if (py::isinstance<py::array_t<double>>(a))
      return py::bool_(all_finite_impl(static_cast<const double*>(a.data()), (idx)a.size()));
    if (py::isinstance<py::array_t<float>>(a))
      return py::bool_(all_finite_impl(static_cast<const float*>(a.data()), (idx)a.size()));
  }
  return py::none();  // not a contiguous float array: the caller checks another way
}

void* capsule_pointer(const py::object& capsule) {
  PyObject* c = capsule.ptr();
  void* p = PyCapsule_GetPointer(c, PyCapsule_GetName(c));
  if (!p) throw py::error_already_set();
  return p;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "taylorkern compiled kernels (C++/OpenMP, BLAS from scipy)";
  tk::remember_main_thread();
  {
    py::dict capi = py::module_::import("scipy.linalg.cython_blas").attr("__pyx_capi__");
    tk::set_blas(capsule_pointer(capi["dgemm"]), capsule_pointer(capi["sgemm"]), capsule_pointer(capi["dsyrk"]),
                 capsule_pointer(capi["ssyrk"]));
  }
  // module_local: two builds of _core can be loaded side by side (bench/interrupt_ab.py's A/B)
  // without their Net types colliding in pybind11's process-wide registry.
  py::class_<Net>(m, "Net", py::module_local())
      .def(py::init<std::vector<idx>, std::vector<int>, int, double>(), py::arg("sizes"), py::arg("activations"),
           py::arg("loss"), py::arg("loss_scale") = 1.0)
      .def_property_readonly("num_params", [](const Net& n) { return n.P(); });
  m.attr("ACTIVATION_CODES") = code_table(tk::kActNames);
  m.attr("LOSS_CODES") = code_table(tk::kLossNames);
  // (net, theta, X[, Y[, V]][, mean]): C-contiguous arrays of theta's dtype (labels int64).
  const auto net = py::arg("net"), theta = py::arg("theta"), X = py::arg("X"), Y = py::arg("Y"), V = py::arg("V"),
             mean = py::arg("mean");
  const auto w = py::arg("w") = py::none();  // sample weights, the reduction folded in (net.hpp, Targets)
  m.def("predict", &predict, net, theta, X);
  m.def("loss", &loss, net, theta, X, Y, mean, w);
  m.def("loss_and_grad", &loss_and_grad, net, theta, X, Y, mean, w);
  m.def("jacobian", &jacobian, net, theta, X);
  m.def("loss_grad_ggn", &loss_grad_ggn, net, theta, X, Y, mean, w);
  for (const bool gn : {false, true})
    m.def(
        gn ? "ggn_vp" : "hvp",
        [gn](Net& nt, py::array t, py::array x, py::array y, py::array v, bool mn, py::object ws) {
          return product(nt, t, x, y, v, mn, gn, ws);
        },
        net, theta, X, Y, V, mean, w);
  // hessian / ggn, hessian_blocks / ggn_blocks, hessian_diag / ggn_diag: (net, theta, X, Y, mean, w).
  auto pair = [&](const char* h, const char* g, auto fn) {
    m.def(
        h,
        [fn](Net& n, py::array t, py::array x, py::array y, bool mean, py::object ws) {
          return fn(n, t, x, y, mean, false, ws);
        },
        net, theta, X, Y, mean, w);
    m.def(
        g,
        [fn](Net& n, py::array t, py::array x, py::array y, bool mean, py::object ws) {
          return fn(n, t, x, y, mean, true, ws);
        },
        net, theta, X, Y, mean, w);
  };
  pair("hessian", "ggn", &full);
  pair("hessian_blocks", "ggn_blocks", &blocks);
  pair("hessian_diag", "ggn_diag", &diag);
  m.def("kfac_factors", &kfac_factors, net, theta, X, Y, mean, py::arg("noise") = py::none(),
        py::arg("bases") = py::none(), w, py::arg("input_factor") = true);
  m.def(
      "product_memory_values",
      [](const Net& n, idx N, idx m, idx bytes) { return tk::rop_memory_values(n, N, m, bytes); }, net, py::arg("N"),
      py::arg("m"), py::arg("itemsize"));
  m.def(
      "_set_chunk_bytes", [](idx bytes) { return tk::chunk_bytes().exchange(bytes > 0 ? bytes : tk::kChunkBytes); },
      py::arg("bytes"), "Scratch per chunk of samples (0: the default); returns the previous value.  For tests.");
  m.def(
      "_set_curvature_chunk",
      [](idx rows) { return tk::max_chunk_rows().exchange(rows > 0 ? rows : tk::kMaxChunkRows); }, py::arg("rows"),
      "Most samples per chunk of the full matrices, blocks and diagonals (0: the default); returns the "
      "previous value.  For tests.");
  m.def(
      "_set_sample_parallel_min",
      [](idx work) { return tk::sample_parallel_min().exchange(work > 0 ? work : tk::kSampleParallelMin); },
      py::arg("work"),
      "Fewest multiply-adds of a call split over threads by samples (0: the default); returns the previous "
      "value.  For tests.");
  m.def(
      "_set_gram_route", [](int mode) { return tk::gram_mode().exchange(mode); }, py::arg("mode"),
      "1 forces the full GGN's Gram route, -1 the Kronecker route, 0 the cost model's choice; returns the "
      "previous value.  For tests.");
  m.def("lbfgs_direction", &lbfgs_direction, py::arg("S"), py::arg("Y"), py::arg("rho"), py::arg("head"),
        py::arg("k"), py::arg("gamma"), py::arg("g"), py::arg("alpha"), py::arg("out"),
        "out = -H g for L-BFGS's k newest pairs, rows (head + j) % m of S and Y (two-loop recursion)");
  m.def("trust_region_eigenbasis", &trust_region_eigenbasis, py::arg("lam"), py::arg("gh"), py::arg("radius"),
        py::arg("eps"),
        "(ph, predicted decrease, on boundary): the trust-region step min gh.ph + 1/2 ph.diag(lam).ph, |ph| <= "
        "radius, for ascending eigenvalues lam and gh = Q^T g");
  m.def("all_finite", &all_finite, py::arg("a"),
        "True if a C-contiguous float array has no NaN/Inf; None for other arrays");
  m.def("have_blas", &tk::have_blas, "whether the BLAS function pointers were found");
  m.def("blas_threads_controllable", &tk::blas_threads_controllable,
        "whether BLAS can be held to one thread per calling thread (OpenBLAS >= 0.3.27)");
  m.def("set_num_threads", &tk::set_kernel_threads,
        "taylorkern's own thread limit for the kernels, process-wide (0: none)");
  m.def("get_num_threads", &tk::kernel_threads,
        "threads a kernel called from this thread uses: min(own limit, omp_get_max_threads())");
  m.def("own_num_threads", &tk::own_kernel_threads, "the limit set_num_threads set (0: none)");
  m.def("kernels_call_blas", &tk::kernels_call_blas,
        "whether the kernels' products go to the BLAS (no AVX-512 GEMM), which they then hold to one thread");
  m.def("pool_lost_in_fork", &tk::pool_lost_in_fork,
        "whether this thread forked this process: its regions run on a helper thread (docs/threading.md)");
  m.def(
      "_team_size",
      [] {
        std::atomic<int> size{1};
        py::gil_scoped_release nogil;
        tk::omp_team(tk::kernel_threads(), [&] {
          if (omp_get_thread_num() == 0) size = omp_get_num_threads();
        });
        return size.load();
      },
      "TEST-ONLY: threads in a parallel region that a kernel called from this thread opens");
  m.def("_set_gemm_avx512", &tk::set_gemm_avx512,
        "TEST-ONLY: False makes the kernels use the BLAS as without AVX-512 (tests/test_gemm.py, bench/gemm_ab.py); "
        "returns the previous setting");
  // Test-only (tests/test_gemm.py): one row-major product C = alpha op(A) op(B) + beta C on flat
  // buffers, A at a_off with row stride lda, etc., so that sub-matrix views can be tested.
  // which: 0 tk::gemm (the dispatch, threads included), 1 the AVX-512 kernel alone,
  // 2 the BLAS alone, 3 the single-threaded dispatch.  False if that path is unavailable.
  m.def(
      "_gemm",
      [](int which, bool ta, bool tb, idx M, idx N, idx K, double alpha, py::array A, idx a_off, idx lda, py::array B,
         idx b_off, idx ldb, double beta, py::array C, idx c_off, idx ldc) {
        const bool f32 = py::isinstance<py::array_t<float>>(C);
        auto check = [&](const py::array& x, const char* name, idx off, idx rows, idx cols, idx ld, bool out) {
          if (!(f32 ? py::isinstance<py::array_t<float>>(x) : py::isinstance<py::array_t<double>>(x)) ||
              !(x.flags() & py::array::c_style) || (out && !x.writeable()))
            throw py::type_error(std::string(name) +
                                 ": expected a C-contiguous (writeable) float32/float64 array of C's dtype");
          if (off < 0 || ld < std::max<idx>(cols, 1) ||
              (rows > 0 && cols > 0 && off + (rows - 1) * ld + cols > (idx)x.size()))
            throw py::value_error(std::string(name) + ": offset / leading dimension out of range");
        };
        if (M < 0 || N < 0 || K < 0) throw py::value_error("negative size");
        check(A, "A", a_off, ta ? K : M, ta ? M : K, lda, false);
        check(B, "B", b_off, tb ? N : K, tb ? K : N, ldb, false);
        check(C, "C", c_off, M, N, ldc, true);
        py::gil_scoped_release nogil;
        tk::SerialBlas serial;
        if (f32)
          return tk::gemm_test<float>(which, ta, tb, M, N, K, (float)alpha, (const float*)A.data() + a_off, lda,
                                      (const float*)B.data() + b_off, ldb, (float)beta,
                                      (float*)C.mutable_data() + c_off, ldc);
        return tk::gemm_test<double>(which, ta, tb, M, N, K, alpha, (const double*)A.data() + a_off, lda,
                                     (const double*)B.data() + b_off, ldb, beta, (double*)C.mutable_data() + c_off,
                                     ldc);
      },
      "TEST-ONLY: one GEMM through a chosen path (see tests/test_gemm.py); not part of the API");
  // Test-only (tests/test_gemm.py, bench/syrk_ab.py): C's lower triangle = beta C + R^T R on flat
  // buffers (R: K x D at r_off, row stride ldr; C: D x D at c_off, row stride ldc).  which: 0
  // tk::syrk_lower, 1 the AVX-512 kernel alone, 2 the column panels, 3 the BLAS's syrk alone.
  // False if that path is unavailable.
  m.def(
      "_syrk_lower",
      [](int which, idx D, idx K, py::array R, idx r_off, idx ldr, double beta, py::array C, idx c_off, idx ldc) {
        const bool f32 = py::isinstance<py::array_t<float>>(C);
        for (auto [x, name] : {std::pair<py::array*, const char*>{&R, "R"}, {&C, "C"}})
          if (!(f32 ? py::isinstance<py::array_t<float>>(*x) : py::isinstance<py::array_t<double>>(*x)) ||
              !(x->flags() & py::array::c_style))
            throw py::type_error(std::string(name) + ": expected a C-contiguous float32/float64 array of C's dtype");
        if (!C.writeable()) throw py::type_error("C: expected a writeable array");
        if (D < 0 || K < 0) throw py::value_error("negative size");
        auto fits = [](const py::array& x, idx off, idx rows, idx cols, idx ld) {
          return off >= 0 && ld >= std::max<idx>(cols, 1) &&
                 (rows == 0 || cols == 0 || off + (rows - 1) * ld + cols <= (idx)x.size());
        };
        if (!fits(R, r_off, K, D, ldr)) throw py::value_error("R: offset / leading dimension out of range");
        if (!fits(C, c_off, D, D, ldc)) throw py::value_error("C: offset / leading dimension out of range");
        py::gil_scoped_release nogil;
        tk::SerialBlas serial;
        if (f32)
          return tk::syrk_test<float>(which, D, K, (const float*)R.data() + r_off, ldr, (float)beta,
                                      (float*)C.mutable_data() + c_off, ldc);
        return tk::syrk_test<double>(which, D, K, (const double*)R.data() + r_off, ldr, beta,
                                     (double*)C.mutable_data() + c_off, ldc);
      },
      "TEST-ONLY: one symmetric rank update (lower triangle) through a chosen path; not part of the API");
  m.def(
      "_activate",
      [](int code, py::array z) -> py::tuple {
        if (code < 0 || code > (int)tk::Act::sin) throw py::value_error("code: unknown activation");
        auto run = [&](auto zero) -> py::tuple {
          using T = decltype(zero);
          auto x = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(z);
          const idx n = (idx)x.size();
          py::array_t<T> a(n), d1(n), d2(n);
          tk::activate<T>((tk::Act)code, 1, n, x.data(), nullptr, a.mutable_data(), d1.mutable_data(),
                          d2.mutable_data());
          return py::make_tuple(a, d1, d2);
        };
        if (py::isinstance<py::array_t<float>>(z)) return run(0.0f);
        return run(0.0);
      },
      py::arg("code"), py::arg("z"),
      "TEST-ONLY: (act(z), act'(z), act''(z)) of a flat float32 or float64 array (tests/test_activations.py)");
}

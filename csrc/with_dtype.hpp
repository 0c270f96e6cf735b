// One body for both dtypes in the Python bindings (_core and _cuda):
//   with_dtype(f32, [&](auto dt) { using T = typename decltype(dt)::type; ... });
// runs the body with T = float or T = double; both instances must return the same type.
#pragma once

namespace tk {

template <class T>
struct DType {
  using type = T;
};

template <class F>
decltype(auto) with_dtype(bool f32, F&& body) {
  if (f32) return body(DType<float>());
  return body(DType<double>());
}

}  // namespace tk

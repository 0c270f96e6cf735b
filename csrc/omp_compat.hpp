// OpenMP where the compiler has it (-fopenmp); otherwise the kernels run on one thread and
// the few OpenMP calls they make are answered as a serial run would answer them.  Without
// -fopenmp the `#pragma omp` lines are ignored (CMakeLists.txt silences -Wunknown-pragmas).
// Include this instead of <omp.h>.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#else
inline int omp_get_max_threads() {
  return 1;
}
inline int omp_get_num_threads() {
  return 1;
}
inline int omp_get_thread_num() {
  return 0;
}
inline int omp_get_num_procs() {
  return 1;
}
inline int omp_in_parallel() {
  return 0;
}
inline void omp_set_num_threads(int) {}
#endif

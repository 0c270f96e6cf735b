"""Benchmark machinery shared by ``bench/`` (pytest-benchmark) and ``python -m taylorkern bench``.

* :mod:`.problems` -- the benchmark configurations and the seeded problems built from them;
* :mod:`.peers` -- the same quantities computed by other libraries (PyTorch, torch.func, JAX,
  BackPACK, curvlinops) when they are installed, returned in taylorkern's conventions;
* :mod:`.flops` -- the FLOP model of every quantity and the machine's GEMM ceiling;
* :mod:`.harness` -- implementations, cases checked against the reference, timing plan, machine;
* :mod:`.pinning` -- thread pins of every library (standard library only, used before imports);
* :mod:`.cli` -- ``python -m taylorkern bench``.
"""

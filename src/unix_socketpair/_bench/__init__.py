"""The benchmark harness behind ``unix-socketpair bench`` (private).

Every case runs side by side with the physical limit (small C programs
compiled at run time with ``cc``) and the alternatives (``multiprocessing.Pipe``,
``os.pipe``, TCP on loopback, asyncio streams), interleaved, and is reported as
medians with their range and ratios to C and to ``multiprocessing.Pipe``.
See ``docs/performance.md``.
"""

from ._command import add_bench_arguments, main, run_bench

__all__ = ["add_bench_arguments", "main", "run_bench"]

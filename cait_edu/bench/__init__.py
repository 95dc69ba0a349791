"""Throughput benchmark: ``cait_edu`` against timm's CaiT, side by side in one process (issue #3).

Run ``python -m cait_edu.bench`` (about half an hour on a 2-core CPU, most of it compiling) or
``python -m cait_edu.bench --quick`` (a smoke run of seconds). It writes one JSON file, named after
the device so that runs on different hardware do not overwrite each other (``data/bench/bench_cpu.json``
on the CPU, ``data/bench/bench_cuda.json`` on a GPU; ``--out`` to choose), and prints a table.
``python -m cait_edu.bench --show FILE`` prints the report of an earlier run.

What is measured, for each model (default ``cait_xxs24_224`` and the CIFAR preset
``cait_cifar_tiny``) and each task:

* ``train``: one training step = forward, cross-entropy, backward, AdamW step;
* ``infer``: one forward pass in eval mode under ``torch.inference_mode()``;

for each implementation (``ours`` = :mod:`cait_edu`, ``timm`` = ``timm.models.cait.Cait``) and each
mode (``eager``; ``compiled`` = ``torch.compile`` with default options), with identical weights
(timm's random initialisation loaded into ours through :func:`cait_edu.load_official`), the same
batch, fp32, and the same number of threads.

How (the machine is shared, so single timings are noisy):

* all configurations of a (model, task) live in one process and are measured round-robin
  (A/B/C/D, then B/C/D/A, ...) so that each repeat of each configuration sees about the same load;
* one measurement = ``iters`` steps, ``iters`` chosen so that it lasts about ``--target-seconds``;
  every measurement is kept; figures are the median (and min) over the repeats; the load average
  is recorded with each repeat;
* speed-ups are the **median of the paired ratios** ``t_timm[r] / t_ours[r]`` of the same repeat
  (paired ratios cancel most of the load drift); the ratio of medians and of minima is kept too.
  The report calls a configuration faster or slower only when that median is beyond 1 +- 3% and
  80% of the repeats agree, and "within noise" otherwise; it states no cause;
* compile time = the first call of a compiled model (tracing + Inductor + C++ build), reported
  separately and never mixed into the throughput; note that Inductor caches compiled kernels on
  disk, so a second run of this script compiles faster;
* FLOPs of one training step (forward + backward, counted by ``torch.utils.flop_counter``;
  the AdamW update is not counted) divided by the measured step time gives the achieved FLOP rate,
  compared with the measured rate of a large square fp32 matmul on the same device;
* peak memory: on CPU each configuration runs again in a fresh subprocess; after two warm-up steps
  (so a compiled model's compiler memory is excluded) the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs``) and the peak resident set size (``VmHWM``) of two more steps is read.
  On CUDA: ``torch.cuda.max_memory_allocated``;
* ``torch.profiler`` of our training step lists the top operators by self CPU time (on a GPU: the
  top kernels by GPU time) and the share of that time spent in matrix products and the optimizer.

The training step uses ``torch.optim.AdamW(fused=True)`` for both implementations (where the device
has the fused kernel), so the optimizer adds the same work to both sides. Stochastic depth and
dropout are 0 in both, so both do exactly the same arithmetic.

Modules: :mod:`.workload` (models, inputs, steps), :mod:`.timing` (round-robin timing, speed-ups),
:mod:`.machine` (machine info, GEMM rate, FLOPs), :mod:`.memory` (peak memory in a subprocess),
:mod:`.profiling`, :mod:`.report` (targets, conclusions, printing), :mod:`.cli`.
"""
from __future__ import annotations

from .cli import DEFAULT_MODELS, default_out, main, parse_args, run
from .machine import gemm_rate, machine_info, train_step_flops
from .memory import measure_memory, memory_worker
from .profiling import op_kind, profile_step
from .report import TARGETS, evaluate, print_report, speedup_conclusions, speedup_verdict
from .timing import bench_model_task, ratio_entry
from .workload import build_pair, make_step

__all__ = [
    "main", "parse_args", "run", "default_out", "DEFAULT_MODELS", "TARGETS",
    "build_pair", "make_step", "bench_model_task", "ratio_entry",
    "gemm_rate", "train_step_flops", "machine_info", "measure_memory", "memory_worker",
    "op_kind", "profile_step", "evaluate", "print_report", "speedup_conclusions", "speedup_verdict",
]

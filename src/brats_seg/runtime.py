"""The garbage collector of a brats-seg program (a stage, ``brats-seg``, a flow), tuned for a short process that
imports large libraries.

A stage imports torch, MLflow, pandas and great-expectations: a heap of a few hundred thousand objects that live
until the process ends. CPython's cyclic collector looks at its youngest objects every 700 allocations, now and then
at the whole heap, imported modules included; and at exit it walks the whole heap once more. On the test pipeline's
tiny data that was a quarter of a train stage's CPU time (``python benchmarks/process_gc.py`` measures it, stage by
stage, beside the default collector). Two settings, for programs only (the library leaves a caller's collector alone):

- the youngest generation is collected every :data:`GEN0_THRESHOLD` allocations (cyclic garbage waits a little
  longer; memory is still freed by reference counting as soon as nothing refers to it);
- at exit the heap is frozen (:func:`gc.freeze`), so that the interpreter's last collections skip what was alive
  at the end. Nothing brats-seg writes depends on them: files are closed by their
  ``with`` blocks, logging flushes in its own exit handler, and Python never promised to collect what lives at exit.
"""

from __future__ import annotations

import atexit
import gc

GEN0_THRESHOLD = 10_000
_tuned = False


def tune_for_a_short_process() -> None:
    """Set the collector up for a program's process (once; later calls do nothing): see the module's docstring."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    first, *older = gc.get_threshold()
    if first:  # 0: automatic collection was turned off (gc.set_threshold(0)): leave it off
        gc.set_threshold(max(first, GEN0_THRESHOLD), *older)
    # exit handlers run last registered first: a library imported once the stage has started (MLflow: its end of
    # run) runs its handler before this one, logging's flush after it; freezing only stops the collector looking
    atexit.register(gc.freeze)

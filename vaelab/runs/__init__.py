"""The lab: everything that writes a run folder, built on the library below it.

The *library* (:mod:`vaelab.model`, :mod:`vaelab.guide`, :mod:`vaelab.data`,
:mod:`vaelab.inference` and the base modules :mod:`vaelab.registry`, :mod:`vaelab.config`,
:mod:`vaelab.devices`, :mod:`vaelab.seed`, :mod:`vaelab.notes`, :mod:`vaelab.vae`) is the
mathematics and never imports this package (``tests/test_layout.py`` holds the rule). The lab is:

* :mod:`~vaelab.runs.train`: the training loop; :mod:`~vaelab.runs.stepper`, one step (the
  optimizer, the learning-rate and KL-weight schedules, the step losses);
  :mod:`~vaelab.runs.resume`, where a run stands and whether it may continue;
* :mod:`~vaelab.runs.folder` and :mod:`~vaelab.runs.checkpoint`: the run folder (commit, lock,
  checkpoint files, metrics);
* :mod:`~vaelab.runs.run`: a trained run folder as an object (:class:`~vaelab.runs.run.Run`,
  :func:`~vaelab.runs.run.load_run`, :func:`~vaelab.runs.run.evaluate`);
* :mod:`~vaelab.runs.world`, :mod:`~vaelab.runs.data_parallel`, :mod:`~vaelab.runs.sharded`:
  the processes of a torchrun job, data-parallel training and sharded evaluation;
* :mod:`~vaelab.runs.tracking`, :mod:`~vaelab.runs.report`, :mod:`~vaelab.runs.plots`: logs,
  reports and figures;
* :mod:`~vaelab.runs.sweep` (its plan :mod:`~vaelab.runs.grid`, its runners
  :mod:`~vaelab.runs.executors`), :mod:`~vaelab.runs.compare`: many runs at once, a table over
  seeds (:mod:`~vaelab.runs.stats`, one statistic over seeds);
* :mod:`~vaelab.runs.reproduce`: paper recipes run end to end (:mod:`~vaelab.runs.recipes`, the
  recipe schema; :mod:`~vaelab.runs.stages`, the staged evaluation; :mod:`~vaelab.runs.tables`,
  the table and chart).

:mod:`vaelab.resolve`, :mod:`vaelab.catalog` and :mod:`vaelab.cli` sit above both wings.
"""

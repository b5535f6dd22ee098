"""The run floor: the one keeper of a run's shared state, below the loop and above nothing of it.

* `visplay.run.stages`: the stage list, the only speller and parser of stage names (``iter<t>/<kind>``).
* `visplay.run.rundir`: the run directory -- manifest, lock, metrics, every path -- and "done".
* `visplay.run.tracker`: the loop's metrics in TensorBoard / wandb.
* `visplay.run.publish`: what a run's outputs say about themselves (phase cards, dataset cards, the final model).

`visplay status`, the report and the loop read it; it imports nothing from `visplay.evolve`.
Test: `pytest tests/test_evolve.py tests/test_status.py tests/test_reliability.py`.
"""

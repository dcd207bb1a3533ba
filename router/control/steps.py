"""How a rollout step is shown to people, in one place.

Display is 1-based with the total and the percentage ("step 2 of 4 (50%)"); JSON keeps the
0-based `step_index` next to the list of `steps`. The CLI, the demo, the decision log's reasons
and the status page all use this form, so an operator sees the same words everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence


def step_label(step_index: int, steps: Sequence[float]) -> str:
    """"step 2 of 4 (50%)" for step_index 1 of steps (0, 10, 50, 100)."""
    return f"step {step_index + 1} of {len(steps)} ({steps[step_index]:g}%)"

"""The query layer's one error type: it names the step and says what to change."""

from __future__ import annotations


class QueryError(ValueError):
    """A bad query: ``step`` names the step (e.g. ``"2 where"``), the message the problem."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(f"step {step}: {problem}")
        self.step, self.problem = step, problem

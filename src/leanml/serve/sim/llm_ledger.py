"""The accuracy ledger of the planned LLM policies: the mean accuracy of what they routed and was answered.

Adaptive routes some requests to options below the mean accuracy target and pays for them with options
above it; the ledger keeps that mix honest. A request is booked at the accuracy of the option it was routed
to and taken back out if the engine drops it (it expired in the queue, or its KV reservation never fits:
`LLMPolicy.on_drop`), so the ledger is the mean over answered and still-running requests: counted anyway,
the dropped requests' accuracy would stand in for answers never given (under EDF queues the ones that
expire are those later deadlines hold back). `tests/serve/sim/test_llm_sim.py` checks both rules.
"""

from __future__ import annotations


class AccuracyLedger:
    """Booked accuracies per request id and their running total, against a mean ``target``."""

    def __init__(self, target: float) -> None:
        self.target = float(target)
        self.total = 0.0
        self.booked: dict[int, float] = {}

    @property
    def n(self) -> int:
        return len(self.booked)

    def mean(self) -> float:
        return self.total / self.n if self.booked else float("nan")

    def allows(self, acc: float) -> bool:
        """Whether routing at accuracy ``acc`` keeps the rule: the mean stays at or above the target, or ``acc``
        itself meets it. The second clause matters once a drop has left the mean below the target: the mean
        rule alone then refuses every request below the target, and a policy whose every option is below it
        answers nothing from then on (a request at or above the target only raises the mean)."""
        return acc >= self.target or (self.total + acc) / (self.n + 1) >= self.target

    def book(self, request_id: int, acc: float) -> None:
        self.total += acc
        self.booked[request_id] = acc

    def drop(self, request_id: int) -> None:
        """Take a dropped request back out (an id never booked changes nothing)."""
        acc = self.booked.pop(request_id, None)
        if acc is not None:
            self.total -= acc

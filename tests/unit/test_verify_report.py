"""What ``verify`` prints, as a user reads it."""

from __future__ import annotations

from orchestrator.verify import Report


def test_the_count_of_problems_agrees_with_its_noun() -> None:
    assert Report(checked=3).lines()[-1] == "all is well"
    assert Report(checked=3, orphans=["a.png"]).lines()[-1] == "1 problem"
    assert Report(checked=3, orphans=["a.png"], staged=1).lines()[-1] == "2 problems"

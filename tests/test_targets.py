"""experiments/targets.py: the target counts it prints follow `random_shapes.tally`'s rules."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def targets() -> Iterator[ModuleType]:
    sys.path.insert(0, str(EXPERIMENTS))  # targets.py imports random_shapes beside it
    try:
        import targets
        yield targets
    finally:
        sys.path.remove(str(EXPERIMENTS))


def _summary(task: str, agent: float, optuna: float, sweep: float, agent_gpu_h: float,
             optuna_gpu_h: float, best_at_10: float) -> list[dict]:
    row = {"task": task, "best_frac_at_10": best_at_10}
    return [{**row, "strategy": "agent", "trials_to_99_median": agent,
             "gpu_hours_to_99_median": agent_gpu_h},
            {**row, "strategy": "optuna", "trials_to_99_median": optuna,
             "gpu_hours_to_99_median": optuna_gpu_h},
            {**row, "strategy": "sweep", "trials_to_99_median": sweep,
             "gpu_hours_to_99_median": float("inf")}]


def test_a_target_counts_only_where_the_agent_reached_99_percent(targets: ModuleType,
                                                                 tmp_path: Path) -> None:
    rows = (_summary("solved", 5, 41, 4, 0.1, float("inf"), 0.99)  # Optuna never got there
            + _summary("unsolved", 41, 41, 41, float("inf"), float("inf"), 0.5)
            + _summary("half", 10, 20, 12, 0.2, 0.1, 0.98))
    path = tmp_path / "summary.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    counted, agent = targets.load(path, 40)
    met = counted.set_index("task")
    assert met.loc["solved", ["half_optuna", "sweep_or_less", "best_at_10"]].tolist() == [
        True, False, True]
    # both fell short: nothing is met, not "equal to Optuna and the sweep"
    assert not met.loc["unsolved", ["half_optuna", "sweep_or_less",
                                    "gpu_h_optuna_or_less"]].any()
    claims = ["half_optuna", "sweep_or_less", "gpu_h_optuna_or_less", "best_at_10"]
    assert met.loc["half", claims].tolist() == [True, True, False, True]
    lines = targets.misses(counted, agent, 40)
    assert "trials <= sweep's: solved 5 vs 4, unsolved >40 vs 41" in lines
    assert "best@10 >= 0.97: unsolved 0.500" in lines


def test_every_kept_set_is_read_and_a_readme_section_rewritten_in_place(
        targets: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    start, end = "<!-- targets.py: start -->", "<!-- targets.py: end -->"
    readme.write_text(f"# Title\n\nBefore.\n\n{start}\nstale figures\n{end}\n\nAfter.\n")
    targets.main(["--readme", str(readme)])
    out = capsys.readouterr().out
    for name, path, _ in targets.SETS:
        assert path.exists(), path
        assert f"| {name} |" in out
    text = readme.read_text()
    assert "stale figures" not in text and out.strip() in text
    assert text.startswith("# Title\n\nBefore.\n\n" + start) and text.endswith(f"{end}\n\nAfter.\n")
    targets.main(["--readme", str(readme)])  # a rerun leaves one section, the same
    assert readme.read_text() == text

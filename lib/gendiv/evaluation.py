"""The evaluation (notebook 06; paper Sec. 5): win rates of every method against the reference
(PvR) and head to head against SFT, per split, by the world's gold judge (and an LLM judge when
configured); generalisation gaps (ID minus OOD); proxy RM scores beside gold utilities.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gendiv import artifacts, data, judges, runs, stats
from gendiv.config import Config

METHODS = tuple(artifacts.METHOD_SOURCES)
WINRATE_COLUMNS = ["method", "split", "opponent", "judge", "win_rate", "ci_low", "ci_high", "n"]
GAP_COLUMNS = ["method", "split", "judge", "gap", "ci_low", "ci_high"]
SCORE_COLUMNS = ["method", "split", "measure", "value", "ci_low", "ci_high", "n"]
VERDICT_COLUMNS = ["method", "split", "opponent", "judge", "uid", "verdict"]


def judge_list(cfg: Config, root: Path) -> list[tuple[object, int | None]]:
    """(judge, inputs per split it judges or None for all): the world's gold judge where the
    world is the data, and the LLM judge when configured (its answers cached under ``root``)."""
    out = []
    world = data.world_or_none(cfg)
    if world is not None:
        out.append((judges.WorldJudge(world), None))
    llm = judges.make_llm_judge(cfg.judge, root / "cache" / "judge")
    if llm is not None:
        out.append((llm, cfg.judge.n_inputs))
    return out


def judge_methods(cfg: Config, root: Path, outputs: dict[str, dict[str, list[dict]]],
                  sft: dict[str, list[dict]], tests: dict[str, list[dict]]) -> pd.DataFrame:
    """Per-input verdicts (``uid``, ``verdict``: 1 win, 0.5 tie, 0 loss) of every method's one
    output per input against the reference and, for methods other than SFT, against SFT's
    output (``sft``), by every judge of :func:`judge_list`."""
    verdict_rows = []
    for judge, limit in judge_list(cfg, root):
        for method, by_split in outputs.items():
            for split, rows in by_split.items():
                rows, records = rows[:limit], tests[split][:limit]
                mine = [r["output"] for r in rows]
                opponents = {"reference": [r["reference"] for r in records]}
                if method != "sft":
                    opponents["sft"] = [r["output"] for r in sft[split][:limit]]
                for opponent, theirs in opponents.items():
                    v = judges.verdicts(judge, records, mine, theirs)
                    verdict_rows += [{"method": method, "split": split, "opponent": opponent, "judge": judge.name,
                                      "uid": r["uid"], "verdict": x} for r, x in zip(records, v)]
    return pd.DataFrame(verdict_rows, columns=VERDICT_COLUMNS)


def winrate_rows(verdicts: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Win rates (``WINRATE_COLUMNS``) with bootstrap intervals over inputs, from per-input verdicts."""
    rows = []
    for (method, split, opponent, judge), g in verdicts.groupby(["method", "split", "opponent", "judge"], sort=False):
        mean, lo, hi = stats.bootstrap_ci(g["verdict"], seed=seed)
        rows.append({"method": method, "split": split, "opponent": opponent, "judge": judge,
                     "win_rate": mean, "ci_low": lo, "ci_high": hi, "n": len(g)})
    return pd.DataFrame(rows, columns=WINRATE_COLUMNS)


def gap_rows(verdicts: pd.DataFrame, splits: list[str], seed: int) -> pd.DataFrame:
    """Generalisation gaps (``GAP_COLUMNS``): the win rate against the reference in distribution
    minus on each OOD split, with a bootstrap interval of the difference."""
    rows = []
    vs_ref = verdicts[verdicts["opponent"] == "reference"]
    for (method, judge), g in vs_ref.groupby(["method", "judge"], sort=False):
        ident = g[g["split"] == "id"]["verdict"].to_numpy()
        for split in [s for s in splits if s != "id"]:
            gap, lo, hi = stats.difference_ci(ident, g[g["split"] == split]["verdict"].to_numpy(), seed=seed)
            rows.append({"method": method, "split": split, "judge": judge, "gap": gap, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def score_rows(cfg: Config, outputs: dict[str, dict[str, list[dict]]], rm) -> pd.DataFrame:
    """The proxy RM score (and the gold utility, where the rows carry it) of every method's
    outputs per split (``SCORE_COLUMNS``), means with bootstrap intervals over inputs."""
    scores = []
    for method, by_split in outputs.items():
        for split, rows in by_split.items():
            proxy = [r["rm_score"] for r in rows] if "rm_score" in rows[0] else \
                rm.score([r["prompt"] for r in rows], [r["output"] for r in rows], cfg.reward.score_batch_size)
            measures = {"rm_score": proxy}
            if "utility" in rows[0]:
                measures["gold_utility"] = [r["utility"] for r in rows]
            for measure, values in measures.items():
                mean, lo, hi = stats.bootstrap_ci(values, seed=cfg.seed)
                scores.append({"method": method, "split": split, "measure": measure, "value": mean,
                               "ci_low": lo, "ci_high": hi, "n": len(values)})
    return pd.DataFrame(scores, columns=SCORE_COLUMNS)


def write_tables(cfg: Config, root: Path, verdicts: pd.DataFrame, scores: pd.DataFrame,
                 methods: list[str]) -> dict[str, Path]:
    """Write (or update) ``results/winrates.csv``, ``gaps.csv``, ``scores.csv`` and
    ``logs/verdicts.csv`` with the rows of ``methods``, keeping the other methods' rows: chapter 6
    writes base, SFT, BoN and PPO, chapter 9 the other alignment methods, into the same tables."""
    res = runs.results_dir(cfg)
    tables = {"winrates": (res / "winrates.csv", winrate_rows(verdicts, cfg.seed)),
              "gaps": (res / "gaps.csv", gap_rows(verdicts, data.available_splits(cfg), cfg.seed)),
              "scores": (res / "scores.csv", scores),
              "verdicts": (root / "logs" / "verdicts.csv", verdicts)}
    return {name: runs.merge_csv(path, frame, "method", methods) for name, (path, frame) in tables.items()}


def build_evaluation(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``evaluation`` (notebook 06): win rates against the reference and against SFT for
    every method and split, by the world's gold judge (and the LLM judge when configured);
    generalisation gaps ID minus each OOD split; proxy RM scores beside gold utilities.
    Writes ``results/winrates.csv``, ``results/gaps.csv``, ``results/scores.csv`` and the
    per-input verdicts (``logs/verdicts.csv``, which the claims scorecard pairs across methods);
    rows of chapter 9's methods in those files are kept."""
    def body(root: Path) -> dict[str, Path]:
        outputs = artifacts.method_outputs(cfg)
        verdicts = judge_methods(cfg, root, outputs, outputs["sft"], artifacts.test_records(cfg))
        scores = score_rows(cfg, outputs, artifacts.load_reward_model(cfg))
        return write_tables(cfg, root, verdicts, scores, list(outputs))

    return runs.run_stage(cfg, "evaluation", body, force=force)

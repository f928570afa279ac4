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


def build_evaluation(cfg: Config, force: bool = False) -> dict[str, Path]:
    """Stage ``evaluation`` (notebook 06): win rates against the reference and against SFT for
    every method and split, by the world's gold judge (and the LLM judge when configured);
    generalisation gaps ID minus each OOD split; proxy RM scores beside gold utilities.
    Writes ``results/winrates.csv``, ``results/gaps.csv``, ``results/scores.csv`` and the
    per-input verdicts (``logs/verdicts.csv``, which the claims scorecard pairs across methods)."""
    def body(root: Path) -> dict[str, Path]:
        outputs = artifacts.method_outputs(cfg)
        tests = artifacts.test_records(cfg)
        judge_list = []
        if cfg.data.source == "world":
            judge_list.append((judges.WorldJudge(data.make_world(cfg)), None))
        llm = judges.make_llm_judge(cfg.judge, root / "cache" / "judge")
        if llm is not None:
            judge_list.append((llm, cfg.judge.n_inputs))
        verdict_rows = []
        for judge, limit in judge_list:
            for method, by_split in outputs.items():
                for split, rows in by_split.items():
                    rows, records = rows[:limit], tests[split][:limit]
                    mine = [r["output"] for r in rows]
                    opponents = {"reference": [r["reference"] for r in records]}
                    if method != "sft":
                        opponents["sft"] = [r["output"] for r in outputs["sft"][split][:limit]]
                    for opponent, theirs in opponents.items():
                        v = judges.verdicts(judge, records, mine, theirs)
                        verdict_rows += [{"method": method, "split": split, "opponent": opponent, "judge": judge.name,
                                          "uid": r["uid"], "verdict": x} for r, x in zip(records, v)]
        verdicts = pd.DataFrame(verdict_rows, columns=["method", "split", "opponent", "judge", "uid", "verdict"])
        winrates = []
        for (method, split, opponent, judge), g in verdicts.groupby(["method", "split", "opponent", "judge"],
                                                                      sort=False):
            mean, lo, hi = stats.bootstrap_ci(g["verdict"], seed=cfg.seed)
            winrates.append({"method": method, "split": split, "opponent": opponent, "judge": judge,
                             "win_rate": mean, "ci_low": lo, "ci_high": hi, "n": len(g)})
        gaps = []
        vs_ref = verdicts[verdicts["opponent"] == "reference"]
        for (method, judge), g in vs_ref.groupby(["method", "judge"], sort=False):
            ident = g[g["split"] == "id"]["verdict"].to_numpy()
            for split in [s for s in data.available_splits(cfg) if s != "id"]:
                gap, lo, hi = stats.difference_ci(ident, g[g["split"] == split]["verdict"].to_numpy(), seed=cfg.seed)
                gaps.append({"method": method, "split": split, "judge": judge, "gap": gap, "ci_low": lo, "ci_high": hi})
        rm = artifacts.load_reward_model(cfg)
        scores = []
        for method, by_split in outputs.items():
            for split, rows in by_split.items():
                proxy = [r["rm_score"] for r in rows] if "rm_score" in rows[0] else \
                    rm.score([r["prompt"] for r in rows], [r["output"] for r in rows], cfg.sampling.batch_size)
                measures = {"rm_score": proxy}
                if "utility" in rows[0]:
                    measures["gold_utility"] = [r["utility"] for r in rows]
                for measure, values in measures.items():
                    mean, lo, hi = stats.bootstrap_ci(values, seed=cfg.seed)
                    scores.append({"method": method, "split": split, "measure": measure, "value": mean,
                                   "ci_low": lo, "ci_high": hi, "n": len(values)})
        res = runs.results_dir(cfg)
        return {"winrates": runs.write_csv(res / "winrates.csv", pd.DataFrame(winrates, columns=WINRATE_COLUMNS)),
                "gaps": runs.write_csv(res / "gaps.csv", pd.DataFrame(gaps, columns=GAP_COLUMNS)),
                "scores": runs.write_csv(res / "scores.csv", pd.DataFrame(scores, columns=SCORE_COLUMNS)),
                "verdicts": runs.write_csv(root / "logs" / "verdicts.csv", verdicts)}

    return runs.run_stage(cfg, "evaluation", body, force=force)

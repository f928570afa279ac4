import json

import pytest
from gendiv import data, runs
from gendiv.config import load_profile


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), runs.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    runs.write_text(target, "whole")
    assert target.read_text() == "whole"


def test_stage_is_cached_until_config_changes_or_forced(tmp_path):
    calls = []

    def body(root):
        calls.append(1)
        return {"thing": runs.write_text(root / "stage" / "thing.txt", "x")}

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    runs.run_stage(cfg, "data", body)
    runs.run_stage(cfg, "data", body)
    assert len(calls) == 1
    runs.run_stage(cfg, "data", body, force=True)
    assert len(calls) == 2
    other = load_profile("smoke", run_dir=str(tmp_path), **{"data.n_test": 3})
    runs.run_stage(other, "data", body)
    assert len(calls) == 3
    manifest = json.loads((tmp_path / "manifests" / "data.json").read_text())
    assert manifest["artifacts"] == {"thing": "stage/thing.txt"}
    assert {"config_hash", "wall_time_s", "versions", "device"} <= set(manifest)
    assert manifest["versions"]["gendiv"] != "not installed"


def test_missing_artifact_reruns_the_stage(tmp_path):
    calls = []

    def body(root):
        calls.append(1)
        return {"thing": runs.write_text(root / "thing.txt", "x")}

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    runs.run_stage(cfg, "data", body)
    (tmp_path / "thing.txt").unlink()
    runs.run_stage(cfg, "data", body)
    assert len(calls) == 2


def test_crashed_stage_leaves_no_manifest(tmp_path):
    def body(root):
        runs.write_text(root / "part.txt", "x")
        raise KeyboardInterrupt

    cfg = load_profile("smoke", run_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        runs.run_stage(cfg, "data", body)
    assert runs.load_manifest(cfg, "data") is None


def test_stage_run_before_its_inputs_names_what_to_run(tmp_path):
    cfg = load_profile("smoke", run_dir=str(tmp_path))
    with pytest.raises(runs.StageMissingError,
                       match=r"Stage 'data' has not been run for profile 'smoke'.*01_data_splits.*--stages 01"):
        data.load_split(cfg, "id", "test")

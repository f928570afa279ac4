import dataclasses

import pytest
from gendiv.config import ConfigError, available_profiles, load_profile


def test_shipped_profiles_load():
    assert {"smoke", "tiny"} <= set(available_profiles())
    for name in available_profiles():
        cfg = load_profile(name)
        assert cfg.profile == name


def test_overrides_top_level_and_dotted():
    cfg = load_profile("smoke", seed=7, **{"data.n_test": 5, "world.labeller_temperature": 1})
    assert cfg.seed == 7 and cfg.data.n_test == 5
    assert cfg.world.labeller_temperature == 1.0 and isinstance(cfg.world.labeller_temperature, float)
    assert load_profile("smoke", seed=None).seed == load_profile("smoke").seed  # None keeps the profile's


def test_config_is_frozen():
    cfg = load_profile("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_mistyped_profile_name_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"Unknown profile 'tinny'.*Did you mean 'tiny'"):
        load_profile("tinny")


def test_unknown_key_is_named_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown key 'n_tset' in data.*Did you mean 'n_test'"):
        load_profile("smoke", **{"data.n_tset": 3})
    path = tmp_path / "mine.yaml"
    path.write_text("sede: 3\n")
    with pytest.raises(ConfigError, match=r"Unknown key 'sede' in profile 'mine'.*Did you mean 'seed'"):
        load_profile(path)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"data.n_test must be of type int, got '10'"):
        load_profile("smoke", **{"data.n_test": "10"})
    with pytest.raises(ConfigError, match=r"seed must be of type int, got True"):
        load_profile("smoke", seed=True)
    with pytest.raises(ConfigError, match=r"world.heldout_domains must be a list"):
        load_profile("smoke", **{"world.heldout_domains": "travel"})


@pytest.mark.parametrize("override, message", [
    ({"data.n_test": 0}, r"data.n_test must be at least 1, got 0"),
    ({"data.pretrain_summary_share": 1.5}, r"pretrain_summary_share must lie in \[0, 1\]"),
    ({"data.pretrain_summary_share": 0.6, "data.pretrain_comment_share": 0.5},
     r"pretrain_summary_share \(0.6\), data.pretrain_comment_share \(0.5\), data.pretrain_instruction_share "
     r"\(0.0\) add up to more than 1"),
    ({"data.pretrain_instruction_share": 0.8, "data.pretrain_comment_share": 0.3},
     r"data.pretrain_instruction_share \(0.8\) add up to more than 1; lower one"),
    ({"data.pretrain_instruction_share": -0.1}, r"pretrain_instruction_share must lie in \[0, 1\], got -0.1"),
    ({"data.instruction_pair_share": 1.2}, r"instruction_pair_share must lie in \[0, 1\], got 1.2"),
    ({"data.instruction_pair_share": 0.2},
     r"instruction_pair_share \(0.2\) is a share of the miniature instruction world's ID instructions; "
     r"data.source 'world' has none: set it to 0"),
    ({"world.heldout_domains": ["atlantis"]}, r"unknown domain\(s\) \['atlantis'\]"),
    ({"world.heldout_domains": []}, r"heldout_domains is empty"),
    ({"world.labeller_temperature": 0.0}, r"labeller_temperature must be > 0"),
    ({"data.source": "reddit"}, r"data.source must be 'world' \(summarisation\), 'instruct'"),
])
def test_impossible_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("smoke", **override)


def test_missing_profile_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile("no/such/profile.yaml")


def test_section_hash_ignores_unrelated_sections():
    a = load_profile("smoke")
    b = load_profile("smoke", embedding_model="elsewhere")
    c = load_profile("smoke", **{"data.n_test": 3})
    assert a.section_hash("world", "data") == b.section_hash("world", "data")
    assert a.section_hash("world", "data") != c.section_hash("world", "data")


def test_a_profile_extending_another_changes_only_the_keys_it_names(tmp_path):
    """extends: the parent's sections with the child's keys replacing theirs one by one (not whole
    sections), the child's name, a YAML parent relative to the child's folder, and chains."""
    (tmp_path / "mid.yaml").write_text("extends: smoke\nppo:\n  steps: 7\nseed: 3\n")
    (tmp_path / "leaf.yaml").write_text("extends: mid.yaml\nppo:\n  kl_coef: 0.2\nsft:\n  lr: 0.5\n")
    smoke, leaf = load_profile("smoke"), load_profile(tmp_path / "leaf.yaml")
    assert leaf.profile == "leaf" and leaf.seed == 3
    assert (leaf.ppo.steps, leaf.ppo.kl_coef, leaf.sft.lr) == (7, 0.2, 0.5)
    # every other key of the sections the children touched is the parent's, not the default
    assert dataclasses.replace(leaf.ppo, steps=smoke.ppo.steps, kl_coef=smoke.ppo.kl_coef) == smoke.ppo
    assert dataclasses.replace(leaf.sft, lr=smoke.sft.lr) == smoke.sft
    assert leaf.data == smoke.data and leaf.align == smoke.align
    # a file named like the shipped profile it extends is not that profile
    (tmp_path / "smoke.yaml").write_text("extends: smoke\nseed: 5\n")
    mine = load_profile(tmp_path / "smoke.yaml")
    assert (mine.profile, mine.seed, mine.ppo) == ("smoke", 5, smoke.ppo)


def test_the_full_tiny_profiles_add_only_what_the_book_leaves_out():
    for name in ("tiny", "tiny-instruct"):
        lean, full = load_profile(name), load_profile(f"{name}-full")
        assert full.profile == f"{name}-full"
        assert (lean.ppo.sweep_estimators, lean.align.methods) == ((), ())
        assert (full.ppo.sweep_estimators, full.align.methods) == (("log_ratio",), ("dpo", "grpo"))
        assert dataclasses.replace(full, profile=name, ppo=lean.ppo, align=lean.align) == lean
        assert dataclasses.replace(full.ppo, sweep_estimators=()) == lean.ppo
        assert dataclasses.replace(full.align, methods=()) == lean.align


@pytest.mark.parametrize("text, message", [
    ("extends: leaf.yaml\n", r"extends itself"),
    ("extends: other.yaml\n", r"extends itself"),
    ("extends: tinny\n", r"Unknown profile 'tinny'.*Did you mean 'tiny'"),
    ("extends: 3\n", r"extends in profile 'leaf' must name a profile"),
    ("extends: gone.yaml\n", r"gone.yaml' does not exist"),
])
def test_a_bad_extends_is_named(tmp_path, text, message):
    (tmp_path / "other.yaml").write_text("extends: leaf.yaml\n")
    (tmp_path / "leaf.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profile(tmp_path / "leaf.yaml")

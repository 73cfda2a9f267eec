import pytest

from gatgan.train.config import PRESET_DIR, Config, load_config, read_config, resolve_preset, save_config


def test_defaults_are_the_papers_recipe():
    c = Config()
    assert (c.optim.base_lr, c.optim.base_width, c.optim.beta1, c.optim.beta2) == (2e-4, 768, 0.0, 0.99)
    assert (c.optim.grad_clip, c.optim.ema_decay, c.train.global_batch) == (1.0, 0.999, 512)
    assert (c.loss.penalty.sigma, c.loss.penalty.gamma_r1, c.loss.penalty.gamma_r2) == (0.01, 0.1, 0.1)
    assert c.loss.mng.num_levels == 4 and c.loss.mng.form == "cumulative"
    assert c.loss.augment.flip_prob == 0.4 and c.model.z_dim == 64


@pytest.mark.parametrize("preset", sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix()
                                           for p in PRESET_DIR.rglob("*.yaml")))
def test_every_shipped_preset_loads(preset):
    config = load_config(preset)
    assert config.run.name


def test_overrides_parse_yaml_scalars_and_nested_keys():
    c = load_config("fmnist", ["optim.base_lr=1e-3", "loss.mng.num_levels=1", "optim.width_aware=false",
                               "loss.augment.policy=", "train.kimg=5"])
    assert c.optim.base_lr == 1e-3 and c.loss.mng.num_levels == 1 and c.optim.width_aware is False
    assert c.loss.augment.policy == "" and c.train.kimg == 5.0


@pytest.mark.parametrize("override, message", [
    ("train.kimgs=3", "unknown config key"),
    ("optim.base_lr=fast", "must be a number"),
    ("optim.width_aware=2", "true or false"),
    ("model.generator=7", "must be a str"),
    ("train", "section.key=value"),
    ("loss.mng.form=sideways", "unknown MNG form"),
    ("loss.penalty.mode=r3", "unknown penalty mode"),
    ("eval.every=30", "multiple of train.log_every"),
    ("train.align_every=75", "multiple of train.log_every"),
])
def test_bad_settings_get_a_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("fmnist", [override])


def test_saved_config_round_trips(tmp_path):
    config = load_config("fmnist", ["loss.mng.schedule=linear", "train.seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml") == config


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(FileNotFoundError, match="fmnist"):
        resolve_preset("imagenet9000")


def test_an_ablation_preset_inherits_its_base_and_changes_only_what_it_states():
    base, arm = load_config("ablations/baseline"), load_config("ablations/mng-off")
    assert arm.loss.mng.num_levels == 1 and base.loss.mng.num_levels == 4
    assert arm.run.name == "ablation-mng-off"
    arm.loss.mng.num_levels, arm.run.name = base.loss.mng.num_levels, base.run.name
    assert arm == base
    fmnist = load_config("fmnist")
    assert base.model == fmnist.model and base.data == fmnist.data


def test_the_ablation_baseline_stays_the_preset_the_ablations_were_run_with():
    """The `fmnist` preset changed after the ablations (reports/quality); their baseline pins the
    earlier recipe so that the committed report can be reproduced."""
    base = load_config("ablations/baseline")
    assert base.loss.mng.num_levels == 4 and base.loss.penalty.every == 1
    assert (base.optim.base_lr, base.optim.ema_decay, base.optim.ema_kimg, base.train.kimg) == (2e-4, 0.99, 0, 72)


def test_base_chains_merge_nested_sections_and_overrides_win(tmp_path):
    (tmp_path / "a.yaml").write_text("run: {name: a}\noptim: {base_lr: 1.0e-3, ema_decay: 0.9}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\noptim: {{ema_decay: 0.5}}\n")
    config = load_config(tmp_path / "b.yaml", ["optim.base_lr=2e-3"])
    assert (config.run.name, config.optim.ema_decay, config.optim.base_lr) == ("a", 0.5, 2e-3)


def test_a_base_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ValueError, match="inherits itself"):
        load_config(tmp_path / "a.yaml")

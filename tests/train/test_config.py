import pytest

from gatgan.train.config import (PRESET_DIR, RULES, Config, TrainConfig, config_text, load_config, read_config,
                                 resolve_preset)


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
    ("loss.mng.form=sideways", "loss.mng.form must be one of cumulative, independent, vp, msg, got 'sideways'"),
    ("loss.penalty.mode=r3", "loss.penalty.mode must be one of approx, exact, none, got 'r3'"),
    ("train.kimg=[", "override 'train.kimg=\\[' is not valid YAML \\(line 1, column 2\\)"),
    ("eval.every=30", "multiple of train.log_every"),
    ("train.align_every=75", "multiple of train.log_every"),
])
def test_bad_settings_get_a_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("fmnist", [override])


# One value outside the limits of every setting that has limits (as a `key=value` override).
OUT_OF_RANGE = {
    "run.name": "", "data.workers": "-2", "model.generator": "GAT-Q/2", "model.discriminator": "GAT-B/3",
    "model.z_dim": "0", "model.mapping_lr_mult": "0",
    "loss.mng.num_levels": "0", "loss.mng.schedule": "cosine", "loss.mng.form": "sideways",
    "loss.mng.min_signal": "0", "loss.mng.floor": "1", "loss.augment.policy": "color,zoom",
    "loss.augment.color_prob": "1.5", "loss.augment.color": "mine", "loss.augment.translation_ratio": "-0.1", "loss.augment.cutout_ratio": "2",
    "loss.augment.flip_prob": "-1", "loss.penalty.mode": "r3", "loss.penalty.sigma": "0",
    "loss.penalty.gamma_r1": "-0.1", "loss.penalty.gamma_r2": "-1", "loss.penalty.every": "0",
    "loss.repa.weight": "-1",
    "optim.base_lr": "0", "optim.base_width": "0", "optim.beta1": "-0.1", "optim.beta2": "1", "optim.eps": "0",
    "optim.weight_decay": "-1", "optim.grad_clip": "0", "optim.ema_decay": "1.5", "optim.ema_kimg": "-1",
    "optim.ema_rampup": "-0.5", "optim.lr_decay": "step", "optim.lr_decay_start": "1", "optim.lr_final": "0",
    "train.kimg": "-1", "train.global_batch": "0", "train.batch_per_device": "-4", "train.seed": "-1",
    "train.precision": "fp16", "train.device": "tpu", "train.log_every": "0", "train.sample_every": "0",
    "train.align_every": "-1", "train.diagnose_every": "-50", "train.checkpoint_every": "0",
    "train.keep_checkpoints": "-1", "train.threads": "-1", "train.processes": "0", "train.divergence_retries": "-1",
    "train.divergence_lr_backoff": "0", "train.timeout_minutes": "0", "train.strategy": "tpu",
    "train.logger": "mlflow",
    "eval.every": "-1", "eval.metric": "fid", "eval.samples": "1", "eval.truncation": ".inf", "eval.batch_size": "0",
}


def test_every_limited_setting_has_an_out_of_range_case():
    assert sorted(OUT_OF_RANGE) == sorted(RULES)


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
def test_an_out_of_range_setting_is_refused_naming_its_key_and_limit(key):
    with pytest.raises(ValueError) as error:
        load_config("fmnist", [f"{key}={OUT_OF_RANGE[key]}"])
    assert str(error.value).startswith(f"{key} must be {RULES[key].text}, got ")


@pytest.mark.parametrize("override, message", [
    ("train.kimg=-1", "train.kimg must be > 0, got -1"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("optim.beta2=1.0", "optim.beta2 must be in [0, 1), got 1"),
    ("train.precision=fp16", "train.precision must be one of fp32, bf16, got 'fp16'"),
    ("optim.base_lr=.nan", "optim.base_lr must be > 0, got nan"),
    ("run.name=", "run.name must be a non-empty name, got ''"),
])
def test_the_message_says_key_limit_and_value(override, message):
    with pytest.raises(ValueError) as error:
        load_config("fmnist", [override])
    assert str(error.value) == message


def test_the_limits_hold_for_a_config_built_directly_too():
    with pytest.raises(ValueError, match="train.sample_every must be >= 1, got 0"):
        Config(train=TrainConfig(sample_every=0))


def test_the_global_batch_must_split_into_per_device_batches():
    with pytest.raises(ValueError, match="train.global_batch=30 must be a multiple of train.batch_per_device=4"):
        load_config("fmnist", ["train.global_batch=30", "train.batch_per_device=4"])


def test_a_preset_that_is_not_yaml_is_named_with_its_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  kimg: [1,\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML \(line 3, column 1\)"):
        load_config(tmp_path / "bad.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config("fmnist", ["loss.mng.schedule=linear", "train.seed=7"])
    (tmp_path / "config.yaml").write_text(config_text(config))
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
    assert base.optim.lr_decay == "none"
    assert not base.train.compile and not base.train.single_generator_pass
    assert (base.train.global_batch, base.train.processes) == (32, 1)


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

import math

import numpy as np
import pytest
import torch

import multibox.engine as engine
import multibox.kinds as kinds
from multibox.checkpoint import load_checkpoint, save_checkpoint
from multibox.config import PRESETS, ConfigError, load_config, preset
from multibox.criterion import RetinaNetCriterion
from multibox.engine import train
from multibox.engine.optim import build_optimizer

TINY = [
    "model.backbone=resnet18",
    "model.pretrained=none",
    "model.fpn_channels=16",
    "model.head_convs=1",
    "model.anchor_sizes=[12, 24, 48, 96, 192]",
    "train.image_size=[64, 64]",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.workers=0",
]


def _config(digits, output, *extra):
    return load_config(None, [f"data.path={digits}", f"output={output}", *TINY, *extra])


def test_config_rejects_unknown_keys_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'.*did you mean 'epochs'"):
        load_config(None, ["train.epoch=3"])
    (tmp_path / "c.yaml").write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"train.epochs must be a whole number"):
        load_config(None, ["train.epochs=1.5"])
    with pytest.raises(ConfigError, match=r"section.key=value"):
        load_config(None, ["train.lr"])


def test_config_yaml_overrides_and_round_trip(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  backbone: resnet18\ntrain:\n  image_size: [320, 256]\n  lr: 1\n")
    config = load_config(tmp_path / "c.yaml", ["train.lr=0.02", "model.anchor_sizes=[8, 16, 32, 64, 128]"])
    assert config.model.backbone.name == "resnet18" and config.input.size == (320, 256)
    assert config.train.lr == 0.02 and config.model.retinanet.anchor_sizes == (8, 16, 32, 64, 128)
    (tmp_path / "resolved.yaml").write_text(config.to_yaml())
    assert load_config(tmp_path / "resolved.yaml") == config


class Payload:
    """An arbitrary object: unpickling it would run code, so weights_only loading refuses it."""


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})
    with pytest.raises(Exception):  # noqa: B017 - any serialisation error
        save_checkpoint(path, {"step": 2, "bad": lambda: 0})
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind

    torch.save({"obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match=r"not a readable multibox checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match=r"checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_training_writes_its_outputs(digits, tmp_path):
    metrics = train(_config(digits, tmp_path, "train.epochs=2"), progress=False)
    for name in ("config.yaml", "last.pt", "best.pt", "train_log.csv", "val_log.csv", "losses.png", "pr_curves.png"):
        assert (tmp_path / name).is_file(), name
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["step"] == 8 and saved["epoch"] == 2 and saved["class_names"] == [str(d) for d in range(10)]
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert load_config(tmp_path / "config.yaml").train.epochs == 2


def test_resume_gives_the_same_weights_as_a_straight_run(digits, tmp_path):
    straight = tmp_path / "straight"
    settings = ("train.epochs=2", "train.deterministic=true", "train.ema_decay=0.9")
    train(_config(digits, straight, *settings), progress=False)
    split = tmp_path / "split"
    train(_config(digits, split, *settings, "train.max_steps=3"), progress=False)
    assert load_checkpoint(split / "last.pt")["step"] == 3  # stopped mid-epoch
    train(_config(digits, split, *settings), resume=split / "last.pt", progress=False)
    assert not torch.are_deterministic_algorithms_enabled()  # for the run only, not for the process
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["step"] == b["step"] == 8 and a["ema"]["updates"] == b["ema"]["updates"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"]["module"].items():
        assert torch.equal(value, b["ema"]["module"][key]), key
    assert not all(torch.equal(v, a["model"][k]) for k, v in a["ema"]["module"].items())  # an average, not a copy


def test_non_finite_losses_stop_with_a_clear_message(digits, tmp_path, monkeypatch):
    original = RetinaNetCriterion.__call__

    def poisoned(self, outputs, anchors, targets):
        losses = original(self, outputs, anchors, targets)
        return {k: v * float("nan") for k, v in losses.items()}

    monkeypatch.setattr(RetinaNetCriterion, "__call__", poisoned)
    with pytest.raises(FloatingPointError, match=r"not finite for 3 steps in a row.*lower train.lr"):
        train(_config(digits, tmp_path, "train.epochs=2", "train.max_bad_steps=2"), progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["bad_steps"] == 3


def test_predictor_cli_eval_and_predict(digits, tmp_path):
    import json

    import numpy as np
    from typer.testing import CliRunner

    import multibox
    from multibox.cli import app

    runner = CliRunner()
    (tmp_path / "defaults.yaml").write_text("{}\n")  # the configuration's own defaults, not the default recipe
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tmp_path / "defaults.yaml"),
            f"data.path={digits}",
            f"output={tmp_path / 'run'}",
            *TINY,
            "train.epochs=1",
            "train.score_thresh=0.0",
        ],
    )
    assert result.exit_code == 0, result.output
    weights = tmp_path / "run" / "best.pt"
    predictor = multibox.load(weights)
    image = next((digits / "JPEGImages").glob("val_*.jpg"))
    det = predictor.predict(image, conf=0.0)
    assert len(det) == 100 and det.names == [str(d) for d in range(10)]
    assert (det.boxes[:, 2] <= 64).all() and (det.boxes[:, :2] >= 0).all()  # original pixels (64x64 scenes)
    batch = predictor.predict([image, np.zeros((30, 40, 3), np.uint8)], conf=0.0)
    assert len(batch) == 2 and (batch[1].boxes[:, 2] <= 40).all() and (batch[1].boxes[:, 3] <= 30).all()
    with pytest.raises(ValueError, match="RGB uint8"):
        predictor.predict(np.zeros((5, 5), np.float32))

    result = runner.invoke(app, ["eval", "--weights", str(weights), "--data", str(digits), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class_AP"}
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "bbox", "score"}

    result = runner.invoke(
        app, ["predict", "--weights", str(weights), str(image), "--out", str(tmp_path / "p"), "--conf", "0.0"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / image.name).is_file() and json.loads((tmp_path / "p" / "predictions.json").read_text())

    result = runner.invoke(app, ["train", "train.lrate=1"])
    assert result.exit_code == 2 and "unknown key 'lrate'" in result.output


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_their_yaml_files(name):
    from multibox.config import PRESET_DIR

    assert PRESETS[name], "an empty preset"
    yaml_file = PRESET_DIR / f"{name}.yaml"  # the one source: PRESETS is read from these files
    assert load_config(yaml_file) == preset(name) == load_config(name)
    with pytest.raises(ConfigError, match=r"unknown preset 'retinanet_r50'; did you mean 'retinanet_r50_fpn'"):
        preset("retinanet_r50")


def test_model_ema_follows_the_ramped_decay():
    from multibox.engine.ema import ModelEMA

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, ramp=2.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    decay = 0.9 * (1 - math.exp(-1 / 2))  # 0.354...: early averages lean on the new weights
    assert torch.allclose(ema.module.weight, torch.full((1, 2), decay * 1.0 + (1 - decay) * 3.0))
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_mixed_precision_on_cpu_trains_with_float32_losses(digits, tmp_path):
    run = engine.Trainer(_config(digits, tmp_path, "train.amp=bf16", "train.device=cpu"))
    assert run.amp_dtype == torch.bfloat16 and not run.scaler.is_enabled()  # bf16 needs no loss scaling
    images, targets = next(iter(run.loader(0)))
    losses = run.losses(images, targets)
    assert losses["total"].dtype == torch.float32 and torch.isfinite(losses["total"])
    before = [p.detach().clone() for p in run.model.parameters() if p.requires_grad]
    assert run.step(losses)
    after = [p for p in run.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match=r"train\.amp must be auto, bf16, fp16 or none, got 'True'"):
        engine.Trainer(_config(digits, tmp_path, "train.amp=on"))  # YAML reads 'on' as true


def test_optimizer_groups_discriminative_rates_and_decay(digits, tmp_path):
    config = _config(digits, tmp_path, "train.lr=0.01", "train.backbone_lr_mult=0.1", "train.weight_decay=0.001")
    model = kinds.build_model(config.model, 10)
    optimizer = build_optimizer(config.train, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(group_of) == len(trained)
    for name, parameter in trained:
        group = group_of[id(parameter)]
        assert group["lr"] == pytest.approx(0.001 if name.startswith("backbone.body.") else 0.01), name
        assert group["weight_decay"] == (0.0 if name.endswith(".bias") or parameter.ndim == 1 else 0.001), name
    assert optimizer.defaults["fused"]  # one kernel per step on CPU and CUDA


def test_lr_finder_analysis_and_sweep(digits, tmp_path):
    from multibox.engine.lr_find import _analyse, lr_find

    lrs = np.geomspace(1e-6, 1.0, 61)
    smoothed = (np.log10(lrs) + 2) ** 2  # lowest at 1e-2, falling fastest at the start of the kept part
    minimum, steepest = _analyse(lrs, smoothed)
    assert minimum == pytest.approx(1e-2) and steepest < minimum

    result = lr_find(_config(digits, tmp_path), tmp_path / "lr", start_lr=1e-5, end_lr=1e3, steps=40)
    assert np.allclose(np.diff(np.log(result.lrs)), np.log(1e8) / 39)  # a geometric sweep
    assert result.diverged and len(result.lrs) < 40  # lr 1e3 blows the loss up well before the end
    assert result.suggestion == pytest.approx(max(result.minimum / 10, 1e-5))  # never below the sweep
    assert (tmp_path / "lr" / "lr_find.png").is_file()
    assert len((tmp_path / "lr" / "lr_find.csv").read_text().splitlines()) == len(result.lrs) + 1


def test_precompute_trains_the_same_weights_and_reads_later_epochs_from_the_cache(digits, tmp_path):
    settings = ("model.backbone=mobilenet_v2", "model.trainable_stages=3", "train.augment=none", "train.hflip=0",
                "train.epochs=2", "train.deterministic=true")  # fmt: skip
    train(_config(digits, tmp_path / "plain", *settings), progress=False)
    train(_config(digits, tmp_path / "cached", *settings, "train.precompute=true"), progress=False)
    plain, cached = load_checkpoint(tmp_path / "plain" / "last.pt"), load_checkpoint(tmp_path / "cached" / "last.pt")
    for key, value in plain["model"].items():
        assert torch.equal(value, cached["model"][key]), key

    run = engine.Trainer(_config(digits, tmp_path / "steps", *settings, "train.precompute=true"))
    cache = next(m.cache for m in run.model.modules() if hasattr(m, "cache"))
    counts = []
    for epoch in range(2):
        seen = 0
        for images, targets in run.loader(epoch):
            run.step(run.losses(images, targets))
            seen += len(images)
        counts.append((seen, cache.misses, cache.hits))
    assert len(run.dataset) == 16 and counts == [(16, 16, 0), (16, 16, 16)]  # the second epoch: all read
    with pytest.raises(ValueError, match=r"train\.augment=none, train\.hflip=0.*got augment 'flip', hflip 0\.5"):
        engine.Trainer(_config(digits, tmp_path, "model.backbone=mobilenet_v2", "train.precompute=true"))
    with pytest.raises(ValueError, match="use it with backbone mobilenet_v2"):
        engine.Trainer(_config(digits, tmp_path, "train.augment=none", "train.hflip=0", "train.precompute=true"))

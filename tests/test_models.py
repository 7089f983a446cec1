import math

import pytest
import torch
import torchvision
from conftest import assert_same_detections

from multibox.coding import DeltaCoder
from multibox.config import config_from_dict
from multibox.kinds import build_model
from multibox.models import AnchorConfig, build_backbone, build_retinanet
from multibox.models.backbones import offline_mobilenet_v2_weights
from multibox.postprocess import postprocess


@pytest.mark.parametrize("frozen_bn", [False, True])  # True: FrozenBN folded into the convs, same keys
def test_torchvision_retinanet_weights_give_the_same_detections(frozen_bn):
    torch.manual_seed(0)
    theirs = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=256,
        max_size=256,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    ).eval()
    with torch.no_grad():  # random weights that give detections above the score threshold
        theirs.head.classification_head.cls_logits.bias.normal_(0, 2)
        theirs.head.regression_head.bbox_reg.weight.mul_(30)
    ours = build_retinanet(5, backbone="resnet50", pretrained="none", p6_from="p5", frozen_bn=frozen_bn).eval()
    ours.load_state_dict(theirs.state_dict())  # same module names: loads strictly, unchanged
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        expected = theirs(list(images))
        output = ours(images)
        anchors = ours.anchors((256, 256))
        detections = postprocess(
            *output,
            anchors,
            [(256, 256)] * 2,
            coder=DeltaCoder(),
            level_sizes=ours.level_sizes((256, 256)),
            max_det=300,
        )
    assert output.cls_logits.shape == (2, len(anchors), 5) and output.box_deltas.shape == (2, len(anchors), 4)
    for mine, ref in zip(detections, expected, strict=True):
        assert len(mine) == len(ref["scores"]) > 10
        if frozen_bn:  # folding BN into the convs reorders float sums: measured 1.2e-7 on scores, and
            # 2e-3 px on boxes (deltas x30), on AVX2, AVX-512 and scalar kernels alike
            assert_same_detections(mine, ref, score_atol=1e-5, box_atol=5e-3)
        else:  # the same convs on the same shapes: the same detections to an ulp (measured: equal)
            assert_same_detections(mine, ref)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_folded_frozen_batchnorm_keeps_outputs_keys_and_gradients(name):
    torch.manual_seed(0)
    plain = build_backbone(name, pretrained="none", frozen_bn=False, trainable_stages=1)
    with torch.no_grad():  # BN statistics and affine maps far from the identity
        for module in plain.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    folded = build_backbone(name, pretrained="none", frozen_bn=True, trainable_stages=1)
    assert folded.state_dict().keys() == {k for k in plain.state_dict() if not k.endswith("num_batches_tracked")}
    folded.load_state_dict(plain.state_dict())
    assert any(type(m).__name__ == "_ConvFrozenBN" for m in folded.modules())
    images = torch.randn(2, 3, 96, 128)
    expected = plain.eval()(images)
    found = folded(images)
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-4)
    found["2"].square().mean().backward()
    trained = [p for p in folded.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert all(p.grad is None for p in folded.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name,channels", [("resnet18", [128, 256, 512]), ("mobilenet_v2", [32, 96, 320])])
def test_backbone_strides_and_channels(name, channels):
    backbone = build_backbone(name, pretrained="none").eval()
    features = list(backbone(torch.zeros(1, 3, 100, 130)).values())
    assert [f.shape[1] for f in features] == channels == backbone.out_channels
    assert [tuple(f.shape[2:]) for f in features] == [(13, 17), (7, 9), (4, 5)]  # ceil(side / stride)


def test_model_output_matches_its_anchors_for_odd_sizes():
    model = build_retinanet(
        3,
        backbone="resnet18",
        pretrained="none",
        fpn_channels=64,
        head_convs=1,
        anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)),
    ).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 200, 330))
    anchors = model.anchors((200, 330))
    assert out.cls_logits.shape == (2, len(anchors), 3) and sum(model.level_sizes((200, 330))) == len(anchors)


def test_head_initialisation_follows_the_paper():
    model = build_retinanet(7, backbone="resnet18", pretrained="none")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    probabilities = out.cls_logits.sigmoid()
    assert abs(float(probabilities.mean()) - 0.01) < 0.002  # prior 0.01 everywhere at the start
    assert float(model.head.regression_head.bbox_reg.bias.detach().abs().sum()) == 0.0


def test_mobilenet_imagenet_weights_load_offline_and_freezing():
    assert offline_mobilenet_v2_weights() is not None  # installed by make, no download
    backbone = build_backbone("mobilenet_v2", pretrained="imagenet", trainable_stages=1)
    reference = torch.load(offline_mobilenet_v2_weights(), weights_only=True)
    first_conv = backbone.body.features[0][0].weight
    assert torch.equal(first_conv, reference["features.0.0.weight"])
    trainable = {n.split(".")[2] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {str(i) for i in range(14, 18)}  # only the stride-32 stage (C5 is block 17)
    for stages, first in ((3, 4), (4, 2), (5, 0)):  # stride 8 from block 4, stride 4 from 2, the stem
        backbone = build_backbone("mobilenet_v2", pretrained="none", trainable_stages=stages)
        trainable = {int(n.split(".")[2]) for n, p in backbone.named_parameters() if p.requires_grad}
        assert trainable == set(range(first, 18)), stages


def _trained_mobilenet_blocks(model):
    names = (n for n, p in model.named_parameters() if p.requires_grad and "features." in n)
    return {int(n.split("features.")[1].split(".")[0]) for n in names}


@pytest.mark.parametrize("kind", ["retinanet", "ssdlite", "yolov3"])
def test_frozen_blocks_freeze_mobilenet_blocks_on_top_of_stages(kind):
    def build(**options):
        model = config_from_dict({"model": {"kind": kind, "pretrained": "none", **options}}).model
        return build_model(model, 3, image_size=(128, 128))

    model = build(trainable_stages=3, frozen_blocks=5)
    assert _trained_mobilenet_blocks(model) == set(range(5, 18))  # trainable_stages=3 alone trains 4-17
    assert all(p.requires_grad for n, p in model.named_parameters() if "features." not in n)
    assert _trained_mobilenet_blocks(build(trainable_stages=1, frozen_blocks=5)) == set(range(14, 18))
    with pytest.raises(ValueError, match=r"frozen_blocks must be 0\.\.18"):
        build(frozen_blocks=19)
    with pytest.raises(ValueError, match="use it with backbone mobilenet_v2"):
        build(backbone="resnet18", frozen_blocks=5)


def test_bad_backbone_options():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone("resnet18", pretrained="coco")


def test_three_level_pyramid_with_a_separable_head():
    anchors = AnchorConfig(strides=(8, 16, 32), sizes=(16, 48, 128))
    model = build_retinanet(
        4,
        backbone="mobilenet_v2",
        pretrained="none",
        fpn_channels=32,
        head_convs=2,
        anchors=anchors,
        separable_head=True,
    ).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 96, 128))
    assert out.cls_logits.shape == (1, len(model.anchors((96, 128))), 4)
    assert model.level_sizes((96, 128)) == [12 * 16 * 9, 6 * 8 * 9, 3 * 4 * 9]
    depthwise = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 32]
    assert len(depthwise) == 4  # two per subnet
    with pytest.raises(ValueError, match="five strides and sizes"):
        build_retinanet(4, pretrained="none", anchors=AnchorConfig(strides=(8, 16), sizes=(16, 32)))


def test_separable_fpn_and_predictors_keep_shapes_names_and_prior():
    anchors = AnchorConfig(strides=(8, 16, 32), sizes=(16, 48, 128))
    options = dict(backbone="mobilenet_v2", pretrained="none", fpn_channels=32, head_convs=2, anchors=anchors)
    torch.manual_seed(0)
    dense = build_retinanet(3, **options).eval()
    light = build_retinanet(3, **options, separable_fpn=True, separable_predictors=True).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, got = dense(images), light(images)
    assert got.cls_logits.shape == expected.cls_logits.shape and got.box_deltas.shape == expected.box_deltas.shape
    # every 3x3 conv of the FPN outputs and the predictors is depthwise, followed by a 1x1
    for block in light.backbone.fpn.layer_blocks:
        depthwise, pointwise = block[0]
        assert depthwise.groups == 32 and depthwise.kernel_size == (3, 3) and pointwise.kernel_size == (1, 1)
    cls_out = light.head.classification_head.out
    assert cls_out.kernel_size == (1, 1) and cls_out.out_channels == 9 * 3
    assert torch.allclose(cls_out.bias, torch.full_like(cls_out.bias, -math.log(99)))
    # the prior holds at initialisation: every anchor starts near probability 0.01
    assert float(torch.sigmoid(got.cls_logits).mean()) == pytest.approx(0.01, abs=2e-3)
    assert 0 < float(got.box_deltas.std()) < 1
    names = {n.rsplit(".", 2)[0] for n, _ in light.named_parameters()}
    assert {"head.classification_head.cls_logits", "head.regression_head.bbox_reg"} <= names


def test_separable_head_keeps_the_signal():
    model = build_retinanet(
        4,
        backbone="resnet18",
        pretrained="none",
        fpn_channels=64,
        head_convs=2,
        anchors=AnchorConfig(strides=(8, 16, 32), sizes=(16, 48, 128)),
        separable_head=True,
    ).eval()
    features = [torch.randn(1, 64, 8, 8)]
    with torch.no_grad():
        tower = model.head.classification_head.conv(features[0])
    assert 0.1 < float(tower.std()) < 10  # not shrunk to nothing by the initialisation


def test_mobilenet_runs_its_frozen_high_resolution_blocks_image_by_image(monkeypatch):
    import multibox.models.backbones as backbones

    torch.manual_seed(0)
    body = build_backbone("mobilenet_v2", pretrained="none", trainable_stages=3).body.train()
    images = torch.randn(3, 3, 64, 64)
    assert body._image_by_image(images) == 4  # stem and stride-4 stage: frozen, folded BatchNorm
    sliced = body(images)
    with torch.no_grad():
        assert body._image_by_image(images) == 4
    assert build_backbone("mobilenet_v2", "none", trainable_stages=5).body._image_by_image(images) == 0
    assert body._image_by_image(images[:1]) == 0
    # BatchNorm in training mode normalises over the batch: never split
    batch_norm = build_backbone("mobilenet_v2", "none", frozen_bn=False, trainable_stages=3).body.train()
    assert batch_norm._image_by_image(images) == 0
    monkeypatch.setattr(backbones, "_MOBILENET_STAGES_BEFORE_C3", 0)
    assert body._image_by_image(images) == 0
    whole = body(images)
    for key in whole:
        assert torch.allclose(sliced[key], whole[key], atol=1e-5), key
    assert sliced["2"].requires_grad  # the trained blocks after the split still get gradients


def test_mobilenet_relu6_without_input_copy_gives_the_same_values_and_gradients():
    import copy

    from multibox.models.backbones import _ReLU6, copy_free_relu6

    torch.manual_seed(0)
    ours = build_backbone("mobilenet_v2", pretrained="none", trainable_stages=3)
    plain = copy_free_relu6(copy.deepcopy(ours), enabled=False)
    assert not any(isinstance(m, _ReLU6) for m in plain.modules())
    assert sum(isinstance(m, _ReLU6) for m in ours.modules()) == 34  # two per block, stem: all of them
    images = torch.randn(2, 3, 96, 96) * 3  # wide enough for values below 0 and above 6
    outputs = [ours(images), plain(images)]
    weights = [torch.randn_like(o) for o in outputs[0].values()]
    for output in outputs:
        sum((w * o).sum() for w, o in zip(weights, output.values(), strict=True)).backward()
    for key in outputs[0]:
        assert torch.equal(outputs[0][key], outputs[1][key]), key
    trained = [(a.grad, b.grad) for a, b in zip(ours.parameters(), plain.parameters(), strict=True) if a.requires_grad]
    assert trained and all(torch.equal(a, b) for a, b in trained)
    # the in-place autograd function is the one used; its gradient is zero at both clamp edges
    leaf = torch.tensor([-1.0, 0.0, 0.5, 1.5, 2.0, 3.0], requires_grad=True)
    y = _ReLU6()(leaf * 4)  # in place on the product
    assert y.grad_fn.name() == "_ClampSixBackward"
    assert y.tolist() == [0.0, 0.0, 2.0, 6.0, 6.0, 6.0]
    (gradient,) = torch.autograd.grad(y.sum(), leaf)
    assert gradient.tolist() == [0.0, 0.0, 4.0, 0.0, 0.0, 0.0]  # zero at the clamp edges, as hardtanh


def test_precompute_cache_answers_each_image_once_with_the_same_outputs_and_gradients():
    """``train.precompute``: the frozen leading blocks' outputs come from the cache after an
    image's first pass; outputs and the trained blocks' gradients are those without it."""
    import copy

    from multibox.models.backbones import attach_prefix_cache, freeze_leading_blocks

    torch.manual_seed(0)
    body = build_backbone("mobilenet_v2", pretrained="none", trainable_stages=3).body.train()
    freeze_leading_blocks(body, 7)  # blocks 0-6 (up to C3) frozen; 7-17 train
    images = torch.randn(3, 3, 64, 64)
    reference = body(images)
    reference["2"].square().sum().backward()
    grads = [p.grad.clone() for p in body.parameters() if p.requires_grad]
    body.zero_grad()

    cache = attach_prefix_cache(body)
    assert cache.blocks == 7 and body.cache is cache
    for passes in (1, 2):  # the first pass fills the cache, the second reads it
        outputs = body(images)
        assert (cache.misses, cache.hits, len(cache)) == (3, 3 * (passes - 1), 3)
        for key in reference:
            torch.testing.assert_close(outputs[key], reference[key], atol=1e-5, rtol=1e-5)
    outputs["2"].square().sum().backward()
    trained = [p.grad for p in body.parameters() if p.requires_grad]
    for got, expected in zip(trained, grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    changed = images.clone()
    changed[0, 0, 0, 0] += 1.0  # keyed by the image's values: a changed image is computed anew
    body(changed)
    assert (cache.misses, cache.hits) == (4, 5)
    assert copy.deepcopy(body).cache is cache  # the EMA's copy shares the same frozen blocks' outputs

    full = attach_prefix_cache(body, max_bytes=0)  # holds nothing, still answers
    torch.testing.assert_close(body(images)["2"], reference["2"], atol=1e-5, rtol=1e-5)
    assert len(full) == 0 and full.misses == 3

    assert attach_prefix_cache(build_backbone("mobilenet_v2", "none", trainable_stages=3).body).blocks == 4
    with pytest.raises(ValueError, match="no frozen leading block"):
        attach_prefix_cache(build_backbone("mobilenet_v2", "none", trainable_stages=5).body)
    with pytest.raises(ValueError, match="no frozen leading block"):  # BatchNorm that learns statistics
        attach_prefix_cache(build_backbone("mobilenet_v2", "none", frozen_bn=False).body)
    with pytest.raises(ValueError, match="use it with backbone mobilenet_v2"):
        attach_prefix_cache(build_backbone("resnet18", "none"))

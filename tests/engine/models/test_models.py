"""Backbone registry, head replacement, stages, input transforms and weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from atl_desktop.models import FEATURES, LOGITS, WeightsError, available_backbones, build_model
from atl_desktop.models.classifier import head_input_width
from atl_desktop.models.registry import BACKBONES
from atl_desktop.models.transforms import RandomRot90, input_transform
from atl_desktop.models.weights import _renamed_densenet_keys, imagenet_weights_file

# Feature width of each backbone (torchvision's documented classifier input widths)
# and the smallest convenient input size for a quick forward pass.
EXPECTED = {
    "smallcnn": (256, 28),
    "resnet18": (512, 32),
    "resnet34": (512, 32),
    "resnet50": (2048, 32),
    "mobilenet_v3_small": (1024, 32),
    "mobilenet_v3_large": (1280, 32),
    "efficientnet_b0": (1280, 32),
    "densenet121": (1024, 32),
    "vgg16_bn": (4096, 32),
    "alexnet": (4096, 64),
    "squeezenet1_1": (512, 32),
    "convnext_tiny": (768, 32),
    "vit_b_16": (768, 32),
}
SLOW = {"vgg16_bn", "vit_b_16"}


def test_registry_covers_the_required_backbones():
    assert set(available_backbones()) == set(EXPECTED)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXPECTED]
)
def test_backbone_builds_and_gives_features_logits_and_layers(name):
    dim, size = EXPECTED[name]
    model = build_model(name, 3, input_size=size, seed=0).eval()
    assert model.backbone_name == name and model.feature_dim == dim and model.num_classes == 3
    assert model.spec.size == size and model.spec.channels == 3
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        f, logits = model.features_and_logits(x)
        layers = model.intermediate(x, model.layer_names())
    assert f.shape == (2, dim) and logits.shape == (2, 3)
    assert torch.allclose(layers[LOGITS], logits, atol=1e-5)
    assert torch.allclose(layers[FEATURES], f, atol=1e-5)
    assert all(t.shape[0] == 2 for t in layers.values())
    # Every body parameter belongs to exactly one stage (freezing and layer-wise rates
    # would silently skip any other).
    for pname, _ in model.body.named_parameters():
        assert sum(s.owns(pname) for s in model.stages) == 1, pname
    names = model.layer_names()
    assert len(set(names)) == len(names) and len(model.stages) >= 3


def test_generic_head_finder_on_hand_built_networks():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
    assert head_input_width(net) == ("4", 5)
    squeeze_like = nn.Sequential(nn.Conv2d(3, 7, 3), nn.Dropout(), nn.Conv2d(7, 10, 1))
    assert head_input_width(squeeze_like) == ("2", 7)
    with pytest.raises(ValueError):
        head_input_width(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_bottleneck_changes_feature_width():
    model = build_model("smallcnn", 4, bottleneck_dim=16, seed=0).eval()
    f, logits = model.features_and_logits(torch.zeros(3, 3, 28, 28))
    assert f.shape == (3, 16) and logits.shape == (3, 4)
    assert [n for n, _ in model.stage_parameters()][-2:] == ["bottleneck", "head"]


def test_unknown_layer_is_named_in_the_error():
    model = build_model("smallcnn", 2, seed=0)
    with pytest.raises(KeyError, match="conv9"):
        model.intermediate(torch.zeros(1, 3, 28, 28), ["conv9"])


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_model("smallcnn", 3, seed=5)
    b = build_model("smallcnn", 3, seed=5)
    c = build_model("smallcnn", 3, seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


# ---- input transforms ------------------------------------------------------------


def test_grayscale_is_replicated_and_normalised():
    spec = BACKBONES["smallcnn"].spec  # 28 px, mean 0.5, std 0.5
    pixels = np.zeros((16, 16), np.uint8)
    pixels[:, 8:] = 255
    out = input_transform(spec)(Image.fromarray(pixels, "L"))
    assert out.shape == (3, 28, 28)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    # Black -> (0 - 0.5) / 0.5 = -1; white -> (1 - 0.5) / 0.5 = 1.
    assert out[0, 5, 0].item() == -1.0 and out[0, 5, 27].item() == 1.0


def test_imagenet_normalisation_of_a_constant_image():
    spec = BACKBONES["resnet18"].spec
    img = Image.new("RGB", (300, 240), (255, 0, 128))
    out = input_transform(spec)(img)
    assert out.shape == (3, 224, 224)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert out[channel].sub(value).abs().max().item() < 1e-5


def test_rot90_gives_all_four_rotations_and_keeps_pixels():
    pixels = np.arange(9, dtype=np.uint8).reshape(3, 3)
    img = Image.fromarray(pixels, "L")
    seen = set()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(0)
        for _ in range(40):
            out = np.asarray(RandomRot90()(img))
            assert sorted(out.ravel()) == list(range(9))
            seen.add(out.tobytes())
    assert seen == {np.rot90(pixels, k).tobytes() for k in range(4)}


@pytest.mark.parametrize("augment", ["natural", "histology"])
def test_training_augmentations_are_random_and_seedable(augment):
    spec = BACKBONES["smallcnn"].spec
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB")
    transform = input_transform(spec, train=True, augment=augment)

    def draw(seed):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return [transform(img) for _ in range(4)]

    first, again = draw(1), draw(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(first[0], t) for t in first[1:])
    assert first[0].shape == (3, 28, 28)
    with pytest.raises(ValueError):
        input_transform(spec, train=True, augment="sepia")


# ---- weights -----------------------------------------------------------------------


def test_missing_imagenet_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        build_model("resnet18", 2, weights="imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert not (tmp_path / "hub" / "checkpoints").exists()  # nothing was downloaded


def test_imagenet_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import squeezenet1_1

    with torch.random.fork_rng(devices=[]):
        reference = squeezenet1_1(weights=None).state_dict()
    path, _ = imagenet_weights_file("squeezenet1_1")
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    model = build_model("squeezenet1_1", 4, weights="imagenet", seed=1)
    body = model.body.state_dict()
    assert torch.equal(body["features.0.weight"], reference["features.0.weight"])
    assert "classifier.1.weight" not in body  # the ImageNet classifier was replaced
    assert model.head.out_features == 4


def test_smallcnn_has_no_imagenet_weights():
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_model("smallcnn", 2, weights="imagenet")


def test_unknown_backbone():
    with pytest.raises(WeightsError, match="Unknown backbone"):
        build_model("lenet9000", 2)


class NotATensor:
    """Pickling this needs its class: the kind of object a weights file must not hold."""

    def __init__(self):
        self.value = 3


def test_pth_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with pytest.raises(WeightsError, match="pickled Python objects"):
        build_model("smallcnn", 2, weights=path)


def test_local_weight_files_load_body_and_drop_their_head(tmp_path):
    source = build_model("smallcnn", 7, seed=3)
    st = tmp_path / "body.safetensors"
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, str(st))
    pth = tmp_path / "full.pth"
    torch.save({"state_dict": source.state_dict()}, pth)  # nested, ATL-style keys
    for path in (st, pth):
        model = build_model("smallcnn", 2, weights=path, seed=0)
        assert torch.equal(model.body.conv1[0].weight, source.body.conv1[0].weight)
        assert model.head.out_features == 2
    from torchvision.models import squeezenet1_1

    tv = squeezenet1_1(weights=None, num_classes=10)  # its own classifier is dropped
    tv_file = tmp_path / "squeeze.pt"
    torch.save(tv.state_dict(), tv_file)
    model = build_model("squeezenet1_1", 3, weights=tv_file, seed=0)
    assert torch.equal(model.body.features[0].weight, tv.features[0].weight)


def test_weights_for_another_architecture_are_refused_with_details(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"conv1.0.weight": torch.zeros(16, 3, 5, 5), "stray": torch.zeros(1)}, str(path))
    with pytest.raises(WeightsError) as error:
        build_model("smallcnn", 2, weights=path)
    message = str(error.value)
    assert "missing keys" in message and "unexpected keys: stray" in message
    assert "conv1.0.weight (16, 3, 5, 5) vs (32, 3, 5, 5)" in message
    odd = tmp_path / "w.ckpt.txt"
    odd.write_bytes(b"weights")
    with pytest.raises(WeightsError, match=".safetensors"):
        build_model("smallcnn", 2, weights=odd)


def test_old_densenet_key_names_are_renamed():
    t = torch.zeros(1)
    renamed = _renamed_densenet_keys({
        "features.denseblock1.denselayer1.norm.1.weight": t,
        "features.denseblock2.denselayer12.conv.2.weight": t,
        "features.norm5.running_var": t,
        "classifier.weight": t,
    })
    assert set(renamed) == {
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock2.denselayer12.conv2.weight",
        "features.norm5.running_var",
        "classifier.weight",
    }

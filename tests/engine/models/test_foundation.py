"""Foundation-model encoders from local files: layouts, key mapping, messages, and no network.

Tiny variants of the registry entries (2 blocks, width 32) keep the tests fast; each is
checked against a reference timm model holding the same weights. The Hugging Face layout
is produced here by mapping timm's keys the other way, written independently of the
module's own mapping.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from atl_desktop.models.classifier import InputSpec
from atl_desktop.models.foundation import (
    FOUNDATION_MODELS,
    FoundationModel,
    build_foundation_encoder,
    find_weights,
)
from atl_desktop.models.weights import WeightsError

TINY = (("embed_dim", 32), ("depth", 2), ("num_heads", 2), ("mlp_ratio", 2.0))


def _tiny(name, timm_name, size, pooling="cls", norm_eps=1e-6, layout="timm", extra=()):
    width = 32 * (2 if pooling == "cls+mean" else 1)
    return FoundationModel(
        name=name,
        timm_name=timm_name,
        layout=layout,
        input_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        dim=width,
        expected_files=("model.safetensors", "pytorch_model.bin"),
        description=f"tiny {name}",
        citation="test",
        source="the test",
        pooling=pooling,
        norm_eps=norm_eps,
        timm_kwargs=(("img_size", size), *TINY, *extra),
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any network access or timm pretrained loading fails the test."""

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise AssertionError("network access attempted")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", no_download)
    import huggingface_hub

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_download, raising=False)


@pytest.fixture
def tiny(monkeypatch):
    models = {
        "tiny_dino": _tiny("tiny_dino", "vit_small_patch14_dinov2", 28, pooling="cls+mean"),
        "tiny_uni": _tiny(
            "tiny_uni",
            "vit_large_patch16_224",
            32,
            extra=(("init_values", 1e-5), ("dynamic_img_size", True)),
        ),
        "tiny_phikon": _tiny(
            "tiny_phikon", "vit_base_patch16_224", 32, norm_eps=1e-12, layout="hf_vit"
        ),
    }
    for name, model in models.items():
        monkeypatch.setitem(FOUNDATION_MODELS, name, model)
    return models


def _reference(model: FoundationModel, seed: int = 0) -> nn.Module:
    """A timm ViT as the entry describes it, with random weights far from its initialisation."""
    kwargs = dict(model.timm_kwargs)
    if model.norm_eps != 1e-6:
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=model.norm_eps)
    vit = timm.create_model(model.timm_name, pretrained=False, num_classes=0, **kwargs).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return vit


def _embed(vit: nn.Module, model: FoundationModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if model.pooling == "cls":
            return vit.forward_head(vit.forward_features(x), pre_logits=True)
        tokens = vit.forward_features(x)
        return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1)


def _input(model: FoundationModel, n: int = 3) -> torch.Tensor:
    return torch.randn(
        n, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(1)
    )


def _assert_same_embedding(encoder, vit, model):
    x = _input(model)
    with torch.no_grad():
        out = encoder(x)
    ref = _embed(vit, model, x)
    assert out.dtype == torch.float32 and out.shape == (3, model.dim)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    assert out.std() > 0.01  # not a constant: the comparison means something


def _to_hf(state: dict[str, torch.Tensor], dinov2: bool = False) -> dict[str, torch.Tensor]:
    """timm keys -> transformers ViTModel (or Dinov2Model) keys, splitting qkv."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if dinov2:
        out["embeddings.mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
        names = {"norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    else:
        names = {
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense",
        }
    names["attn.proj"] = "attention.output.dense"
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    for i in blocks:
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{leaf}"].chunk(3, dim=0)
            for part, t in zip(("query", "key", "value"), (q, k, v), strict=True):
                out[f"{dst}attention.attention.{part}.{leaf}"] = t.clone()
            for timm_name, hf_name in names.items():
                out[f"{dst}{hf_name}.{leaf}"] = state[f"{src}{timm_name}.{leaf}"]
        if dinov2:
            out[f"{dst}layer_scale1.lambda1"] = state[f"{src}ls1.gamma"]
            out[f"{dst}layer_scale2.lambda1"] = state[f"{src}ls2.gamma"]
    return out


def _one_line_error(call) -> str:
    with pytest.raises(WeightsError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the registry ------------------------------------------------------------------------


def test_registry_names_real_timm_models_and_consistent_widths():
    widths = {"dinov2_vits14": 384, "dinov2_vitb14": 768, "uni_vitl16": 1024, "phikon_vitb16": 768}
    assert set(widths) <= set(FOUNDATION_MODELS)
    for name, width in widths.items():
        model = FOUNDATION_MODELS[name]
        assert timm.is_model(model.timm_name), model.timm_name
        assert model.dim == width * (2 if model.pooling == "cls+mean" else 1)
        assert model.spec == InputSpec(224, 3, model.mean, model.std)
        assert model.expected_files and model.citation and model.source
    assert FOUNDATION_MODELS["phikon_vitb16"].layout == "hf_vit"
    assert FOUNDATION_MODELS["phikon_vitb16"].norm_eps == 1e-12  # transformers' ViT default


@pytest.mark.slow  # about 10 s: a real ViT-S/14 built twice and an 88 MB file
def test_real_dinov2_vits14_loads_the_authors_518px_file_at_224(tmp_path):
    # The DINOv2 release: timm keys plus mask_token, position embeddings for a 37x37 grid.
    big = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)
    state = {k: v.clone() for k, v in big.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    state["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    encoder = build_foundation_encoder("dinov2_vits14", tmp_path)
    assert encoder.dim == 768 and encoder.spec.size == 224 and not encoder.training
    assert encoder.vit.pos_embed.shape == (1, 1 + 16 * 16, 384)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 224, 224)).shape == (1, 768)


# --- layouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_dino", "tiny_uni"])
@pytest.mark.parametrize("file_name", ["model.safetensors", "weights.pth", "pytorch_model.bin"])
def test_timm_state_dict_files_give_the_reference_embedding(tiny, tmp_path, name, file_name):
    model = tiny[name]
    vit = _reference(model)
    path = tmp_path / file_name
    if file_name.endswith(".safetensors"):
        save_file(vit.state_dict(), str(path))
    else:
        torch.save({"model": vit.state_dict()}, path)  # nested, as training scripts save
    encoder = build_foundation_encoder(name, path)
    _assert_same_embedding(encoder, vit, model)
    assert encoder.name == name and encoder.dim == model.dim and not encoder.training
    assert encoder.spec == InputSpec(model.input_size, 3, model.mean, model.std)
    assert encoder.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_clip_tower_prefix_is_stripped(tiny, tmp_path):
    model = tiny["tiny_uni"]
    vit = _reference(model)
    state = {f"visual.trunk.{k}": v for k, v in vit.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 4)  # the other tower, ignored
    save_file(state, str(tmp_path / "model.safetensors"))
    _assert_same_embedding(build_foundation_encoder("tiny_uni", tmp_path), vit, model)


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_vit_snapshot_is_mapped_to_timm(tiny, tmp_path, file_name):
    model = tiny["tiny_phikon"]
    vit = _reference(model)
    hf = _to_hf(vit.state_dict())
    hf = {f"vit.{k}": v for k, v in hf.items()}  # as a ViTFor... task model saves it
    hf["vit.pooler.dense.weight"] = torch.zeros(32, 32)
    hf["classifier.weight"] = torch.zeros(2, 32)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    if file_name.endswith(".safetensors"):
        save_file(hf, str(tmp_path / file_name))
    else:
        torch.save(hf, tmp_path / file_name)
    assert find_weights("tiny_phikon", tmp_path) == tmp_path / file_name
    _assert_same_embedding(build_foundation_encoder("tiny_phikon", tmp_path), vit, model)


def test_hugging_face_dinov2_snapshot_with_layer_scales_is_mapped(tiny, tmp_path):
    model = tiny["tiny_dino"]
    vit = _reference(model)
    save_file(_to_hf(vit.state_dict(), dinov2=True), str(tmp_path / "model.safetensors"))
    _assert_same_embedding(build_foundation_encoder("tiny_dino", tmp_path), vit, model)


def test_qkv_order_matters(tiny, tmp_path):
    # Swapping query and key must change the embedding: the comparison can fail.
    model = tiny["tiny_phikon"]
    vit = _reference(model)
    hf = _to_hf(vit.state_dict())
    for leaf in ("weight", "bias"):
        q, k = (f"encoder.layer.0.attention.attention.{p}.{leaf}" for p in ("query", "key"))
        hf[q], hf[k] = hf[k], hf[q]
    save_file(hf, str(tmp_path / "model.safetensors"))
    encoder = build_foundation_encoder("tiny_phikon", tmp_path)
    x = _input(model)
    with torch.no_grad():
        assert not torch.allclose(encoder(x), _embed(vit, model, x), atol=1e-3)


def test_hugging_face_cache_folder_uses_the_snapshot_refs_main_names(tiny, tmp_path):
    model = tiny["tiny_phikon"]
    vit = _reference(model)
    repo = tmp_path / "models--owner--tiny"
    for rev in ("aaa", "bbb"):
        (repo / "snapshots" / rev).mkdir(parents=True)
    save_file(_to_hf(vit.state_dict()), str(repo / "snapshots" / "bbb" / "model.safetensors"))
    save_file(
        _to_hf(_reference(model, seed=5).state_dict()),
        str(repo / "snapshots" / "aaa" / "model.safetensors"),
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("bbb\n")
    assert find_weights("tiny_phikon", repo) == repo / "snapshots" / "bbb" / "model.safetensors"
    _assert_same_embedding(build_foundation_encoder("tiny_phikon", repo), vit, model)


def test_position_embeddings_of_a_larger_grid_are_resampled_bicubically(tiny, tmp_path):
    model = tiny["tiny_dino"]  # 28 px, patch 14: a 2x2 grid
    big = _reference(
        FoundationModel(**{**model.__dict__, "timm_kwargs": (("img_size", 42), *TINY)})
    )
    state = big.state_dict()
    assert state["pos_embed"].shape == (1, 1 + 9, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    encoder = build_foundation_encoder("tiny_dino", tmp_path)
    grid = state["pos_embed"][:, 1:].reshape(1, 3, 3, 32).permute(0, 3, 1, 2)
    small = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
    expected = torch.cat(
        [state["pos_embed"][:, :1], small.permute(0, 2, 3, 1).reshape(1, 4, 32)], 1
    )
    assert torch.allclose(encoder.vit.pos_embed, expected, atol=1e-6)


def test_half_precision_weights_are_read_as_float32(tiny, tmp_path):
    model = tiny["tiny_uni"]
    vit = _reference(model)
    save_file(
        {k: v.half() for k, v in vit.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    vit.load_state_dict({k: v.half().float() for k, v in vit.state_dict().items()})
    _assert_same_embedding(build_foundation_encoder("tiny_uni", tmp_path), vit, model)


# --- messages ----------------------------------------------------------------------------


def test_missing_file_in_a_folder_names_the_expected_files_and_the_folder(tiny, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    message = _one_line_error(lambda: build_foundation_encoder("tiny_phikon", tmp_path))
    assert "model.safetensors or pytorch_model.bin" in message and str(tmp_path) in message


def test_real_entries_name_their_files_when_missing(tmp_path):
    message = _one_line_error(lambda: find_weights("uni_vitl16", tmp_path))
    assert "pytorch_model.bin" in message and "MahmoodLab/UNI" in message
    message = _one_line_error(lambda: find_weights("dinov2_vits14", tmp_path / "nowhere"))
    assert "does not exist" in message and "dinov2_vits14_pretrain.pth" in message


def test_other_files_and_unknown_models_are_refused(tiny, tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    assert "model.safetensors" in _one_line_error(
        lambda: find_weights("tiny_uni", tmp_path / "weights.txt")
    )
    assert "known:" in _one_line_error(lambda: find_weights("no_such_model", tmp_path))


def test_sharded_checkpoints_are_refused_with_a_message(tiny, tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert "shards" in _one_line_error(lambda: find_weights("tiny_uni", tmp_path))


def test_weights_of_another_width_are_refused_in_one_line(tiny, tmp_path):
    other = FoundationModel(
        **{
            **tiny["tiny_uni"].__dict__,
            "timm_kwargs": (("img_size", 32), ("embed_dim", 48), ("depth", 2), ("num_heads", 2)),
        }
    )
    save_file(_reference(other).state_dict(), str(tmp_path / "model.safetensors"))
    message = _one_line_error(lambda: build_foundation_encoder("tiny_uni", tmp_path))
    assert "does not fit tiny_uni" in message and "wrong shape" in message
    assert "cls_token: (1, 1, 48) in the file, (1, 1, 32) in the model" in message


def test_weights_of_another_model_are_refused_naming_missing_and_unknown_keys(tiny, tmp_path):
    state = _reference(tiny["tiny_uni"]).state_dict()
    del state["blocks.1.attn.qkv.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    message = _one_line_error(lambda: build_foundation_encoder("tiny_uni", tmp_path))
    assert "1 tensors missing (e.g. blocks.1.attn.qkv.weight)" in message
    assert "1 unknown (e.g. blocks.0.extra.weight)" in message


def test_integer_tensors_are_refused_in_one_line(tiny, tmp_path):
    state = {
        k: (v * 100).to(torch.int32) for k, v in _reference(tiny["tiny_uni"]).state_dict().items()
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    message = _one_line_error(lambda: build_foundation_encoder("tiny_uni", tmp_path))
    assert "int32" in message and "not floating-point" in message


_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_a_bin_holding_pickled_objects_is_refused_without_running_it(tiny, tmp_path):
    state = dict(_reference(tiny["tiny_uni"]).state_dict())
    torch.save({"state_dict": state, "extra": _Payload()}, tmp_path / "pytorch_model.bin")
    message = _one_line_error(lambda: build_foundation_encoder("tiny_uni", tmp_path))
    assert "pickled Python objects" in message
    assert not _UNPICKLED

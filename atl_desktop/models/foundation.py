"""Foundation-model encoders (DINOv2, UNI, Phikon) from weights the user already has.

Strictly offline. The architectures come from `timm`, always built with
`pretrained=False`, so timm's loader and the Hugging Face Hub client it depends
on are never entered; the weights are read by `weights.load_weights_file`
(safetensors, or `torch.load(weights_only=True)`, which refuses pickled code)
from a file or folder the user names. Nothing global is set (no environment
variables, no hub configuration).

Two layouts of state dict are understood, whatever the registry entry says the
model is published in:
- timm's own (timm and open_clip `model.safetensors` / `pytorch_model.bin`, the
  DINOv2 authors' `dinov2_vit*14_pretrain.pth`, UNI's `pytorch_model.bin`);
- the Hugging Face *transformers* layout of `ViTModel` (Phikon) and
  `Dinov2Model` (the `facebook/dinov2-*` snapshots), whose keys we rename to
  timm's here, fusing the separate query/key/value projections into timm's qkv.
  We map the keys ourselves rather than depend on `transformers` because the
  mapping is a few dozen lines, while the library is a large dependency with its
  own hub-download code paths, and one architecture implementation (timm's)
  serving every layout keeps the embeddings of the same weights identical.

Input size: every model runs at 224 px, the resolution each was evaluated at by
linear probing. DINOv2's ViTs are built by timm at 518 px (their last training
stage); at 224 a ViT-S/14 sees 257 tokens instead of 1,370, a fifth of the cost
or less. The 37x37 grid of position embeddings is resampled once, at load, to
16x16 (bicubic, no anti-aliasing, as DINOv2's own code interpolates).

Embedding (what a linear probe reads, as each model's authors use it):
- DINOv2: the final-norm class token concatenated with the mean of the patch
  tokens (the `layers=1` form of the DINOv2 linear classifiers), 2 x width;
- UNI and Phikon: the final-norm class token (timm's pooled pre-logits; Phikon's
  `last_hidden_state[:, 0]`), 1 x width.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from atl_desktop.models.classifier import InputSpec
from atl_desktop.models.weights import WeightsError, load_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
POOLINGS = ("cls", "cls+mean")


@dataclass(frozen=True)
class FoundationModel:
    """A ViT foundation model: how timm builds it, what it expects and where its weights come from.

    `timm_kwargs` are extra keyword arguments for `timm.create_model` as (name, value)
    pairs (kept a tuple so the entry stays hashable); a test registers a tiny variant
    by overriding depth and width there.
    """

    name: str
    timm_name: str
    layout: str  # the layout the weights are published in: "timm" | "hf_vit"
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    expected_files: tuple[str, ...]  # looked for in a folder, in this order
    description: str
    citation: str
    source: str = ""  # where a user obtains the weights (never fetched by us)
    pooling: str = "cls"  # "cls" or "cls+mean" (see the module docstring)
    norm_eps: float = 1e-6  # LayerNorm epsilon; Hugging Face ViT uses 1e-12
    timm_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def spec(self) -> InputSpec:
        return InputSpec(self.input_size, 3, tuple(self.mean), tuple(self.std))


_DINOV2_CITATION = (
    "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024"
)
_DINOV2_FILES = ("model.safetensors", "pytorch_model.bin")

FOUNDATION_MODELS: dict[str, FoundationModel] = {
    m.name: m
    for m in (
        FoundationModel(
            name="dinov2_vits14",
            timm_name="vit_small_patch14_dinov2",
            layout="timm",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=2 * 384,
            expected_files=(*_DINOV2_FILES, "dinov2_vits14_pretrain.pth"),
            description="DINOv2 ViT-S/14 (natural images, self-supervised)",
            citation=_DINOV2_CITATION,
            source="timm/vit_small_patch14_dinov2.lvd142m or facebook/dinov2-small "
            "(Hugging Face), or dinov2_vits14_pretrain.pth from the DINOv2 repository",
            pooling="cls+mean",
            timm_kwargs=(("img_size", 224),),
        ),
        FoundationModel(
            name="dinov2_vitb14",
            timm_name="vit_base_patch14_dinov2",
            layout="timm",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=2 * 768,
            expected_files=(*_DINOV2_FILES, "dinov2_vitb14_pretrain.pth"),
            description="DINOv2 ViT-B/14 (natural images, self-supervised)",
            citation=_DINOV2_CITATION,
            source="timm/vit_base_patch14_dinov2.lvd142m or facebook/dinov2-base "
            "(Hugging Face), or dinov2_vitb14_pretrain.pth from the DINOv2 repository",
            pooling="cls+mean",
            timm_kwargs=(("img_size", 224),),
        ),
        FoundationModel(
            name="uni_vitl16",
            timm_name="vit_large_patch16_224",
            layout="timm",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=1024,
            expected_files=("pytorch_model.bin", "model.safetensors"),
            description="UNI ViT-L/16 (histopathology, self-supervised)",
            citation="Chen et al., Towards a general-purpose foundation model for "
            "computational pathology, Nature Medicine 2024",
            source="MahmoodLab/UNI (Hugging Face, gated: accept its licence there)",
            # As the UNI model card builds it.
            timm_kwargs=(("img_size", 224), ("init_values", 1e-5), ("dynamic_img_size", True)),
        ),
        FoundationModel(
            name="phikon_vitb16",
            timm_name="vit_base_patch16_224",
            layout="hf_vit",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            dim=768,
            expected_files=("model.safetensors", "pytorch_model.bin"),
            description="Phikon ViT-B/16 (histopathology, iBOT)",
            citation="Filiot et al., Scaling Self-Supervised Learning for Histopathology "
            "with Masked Image Modeling, medRxiv 2023",
            source="owkin/phikon (Hugging Face)",
            norm_eps=1e-12,
            timm_kwargs=(("img_size", 224),),
        ),
    )
}


def foundation_model(name: str) -> FoundationModel:
    try:
        return FOUNDATION_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(FOUNDATION_MODELS))
        raise WeightsError(f"Unknown foundation model {name!r}; known: {known}.") from None


def find_weights(name: str, path: str | os.PathLike) -> Path:
    """The weights file for model `name` at `path`: the file itself, or the expected file in a folder.

    A folder may be a model folder holding one of `expected_files` (a Hugging Face
    snapshot, a timm or open_clip folder) or a Hugging Face cache folder
    (`models--owner--name`, whose `snapshots/` hold the files).
    """
    model = foundation_model(name)
    path = Path(path).expanduser()
    wanted = " or ".join(model.expected_files)
    if path.is_file():
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise WeightsError(
                f"{path.name} is not a weights file for {name}: expected {wanted} "
                "(.safetensors, .bin, .pth or .pt)."
            )
        return path
    if not path.exists():
        raise WeightsError(
            f"{path} does not exist: pass the {model.description} weights ({wanted}, "
            f"from {model.source}) or the folder that holds them."
        )
    if not path.is_dir():
        raise WeightsError(f"{path} is neither a weights file nor a folder.")
    for folder in _candidate_folders(path):
        for file_name in model.expected_files:
            if (folder / file_name).is_file():
                return folder / file_name
        if any(folder.glob("*.safetensors.index.json")) or any(folder.glob("*.bin.index.json")):
            raise WeightsError(
                f"{folder} holds weights split into shards, which ATL Desktop does not "
                f"read; {name} needs one file, {wanted}."
            )
    raise WeightsError(
        f"No {name} weights in {path}: put {wanted} (the {model.description} weights "
        f"from {model.source}) in that folder, or pass the weights file itself."
    )


def _candidate_folders(folder: Path) -> list[Path]:
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return [folder]
    # A Hugging Face cache folder: the snapshot that refs/main names first, then the newest.
    found = sorted(
        (p for p in snapshots.iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    ref = folder / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text(encoding="utf-8").strip()
        found = [main] + [p for p in found if p != main]
    return [folder, *found]


def build_foundation_encoder(name: str, weights: str | os.PathLike) -> nn.Module:
    """The encoder `name` holding the weights at `weights` (a file or folder), in eval mode."""
    model = foundation_model(name)
    path = find_weights(name, weights)
    vit = _create_vit(model)
    state = _timm_state(model, load_weights_file(path), vit, path)
    vit.load_state_dict(state, strict=True)
    encoder = FoundationEncoder(model, vit, file_sha256(path))
    return encoder.eval()


class FoundationEncoder(nn.Module):
    """A timm ViT that returns the embedding its authors probe linearly (see the module docstring)."""

    def __init__(self, model: FoundationModel, vit: nn.Module, weights_sha256: str) -> None:
        super().__init__()
        if model.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {model.pooling!r}")
        self.vit = vit
        self.name = model.name
        self.dim = model.dim
        self.spec = model.spec
        self.pooling = model.pooling
        self.weights_sha256 = weights_sha256

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit.forward_features(x)  # (N, prefix + patches, width), after the final norm
        cls = tokens[:, 0]
        if self.pooling == "cls+mean":
            patches = tokens[:, self.vit.num_prefix_tokens :]
            cls = torch.cat([cls, patches.mean(dim=1)], dim=1)
        return cls.float()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _create_vit(model: FoundationModel) -> nn.Module:
    import timm  # imported here: reading the registry must not cost timm's import

    kwargs = dict(model.timm_kwargs)
    if model.norm_eps != 1e-6:  # timm's default
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=model.norm_eps)
    # pretrained=False: timm never looks for weights, so its hub client is never called.
    vit = timm.create_model(model.timm_name, pretrained=False, num_classes=0, **kwargs)
    width = vit.num_features * (2 if model.pooling == "cls+mean" else 1)
    if width != model.dim:
        raise ValueError(f"{model.name}: {model.timm_name} gives {width} features, not {model.dim}")
    return vit


# Prefixes under which a ViT's own keys sit in larger checkpoints: transformers' task
# models ("vit.", "dinov2."), open_clip's timm towers ("visual.trunk."), wrapped backbones.
_PREFIXES = ("visual.trunk.", "vit.", "dinov2.", "backbone.", "model.", "encoder.")
# Keys that belong to pre-training or task heads, not to the embedding.
_DROPPED = re.compile(r"^(mask_token|embeddings\.mask_token|pooler\..*|head\..*|classifier\..*)$")


def _timm_state(
    model: FoundationModel, state: dict[str, Tensor], vit: nn.Module, path: Path
) -> dict[str, Tensor]:
    """`state` renamed to timm's keys, checked against `vit`, as float32; or a one-line WeightsError."""
    state = _unprefixed(state)
    if "embeddings.patch_embeddings.projection.weight" in state:
        state = _hf_to_timm(state)
    state = {k: v for k, v in state.items() if not _DROPPED.match(k)}
    for key, value in state.items():
        if not value.is_floating_point():
            raise WeightsError(
                f"{path.name}: {key} holds {str(value.dtype).removeprefix('torch.')} values, "
                f"not floating-point weights; this is not a {model.description} weights file."
            )
    state = {k: v.float() for k, v in state.items()}
    expected = vit.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[-1] == expected["pos_embed"].shape[-1]:
        state["pos_embed"] = _resampled_pos_embed(pos, vit)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unknown (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            problems.append(
                f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)} in the "
                f"file, {tuple(expected[k].shape)} in the model)"
            )
        raise WeightsError(
            f"{path.name} does not fit {model.name}: {'; '.join(problems)}. Expected the "
            f"{model.description} weights ({' or '.join(model.expected_files)}, from {model.source})."
        )
    return state


def _unprefixed(state: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in _PREFIXES:
        markers = (prefix + "cls_token", prefix + "embeddings.cls_token")
        if any(m in state for m in markers):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _resampled_pos_embed(pos: Tensor, vit: nn.Module) -> Tensor:
    """Position embeddings of another grid (DINOv2's 37x37 at 518 px) resampled to the model's."""
    target = vit.pos_embed.shape[1]
    if pos.shape[1] == target:
        return pos
    prefix = vit.num_prefix_tokens
    side = math.isqrt(pos.shape[1] - prefix)
    if side * side != pos.shape[1] - prefix:
        return pos  # not a square grid: reported as a shape mismatch
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        pos,
        new_size=list(vit.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=prefix,
        interpolation="bicubic",
        antialias=False,
    )


# Hugging Face transformers -> timm, per encoder layer; ViTModel and Dinov2Model differ in
# the names of the norms and the MLP, and Dinov2 adds layer scales (a `lambda1` vector).
_HF_LAYER_KEYS = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",  # ViT
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "norm1": "norm1",  # Dinov2
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_HF_TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_HF_QKV = re.compile(r"^attention\.attention\.(query|key|value)$")
_LEAVES = {"weight": "weight", "bias": "bias", "lambda1": "gamma"}


def _hf_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys of a transformers ViTModel/Dinov2Model renamed to timm's; others pass through.

    timm computes q, k and v with one Linear whose output rows are [q; k; v], so the three
    projections are concatenated in that order along the output dimension.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, tuple[str, Tensor]]] = {}
    for key, value in state.items():
        if key in _HF_TOP_KEYS:
            out[_HF_TOP_KEYS[key]] = value
            continue
        m = _HF_LAYER.match(key)
        inner = m and m.group(2)
        if m and _HF_QKV.match(inner):
            part = _HF_QKV.match(inner).group(1)
            qkv.setdefault((int(m.group(1)), m.group(3)), {})[part] = (key, value)
        elif m and inner in _HF_LAYER_KEYS:
            out[f"blocks.{m.group(1)}.{_HF_LAYER_KEYS[inner]}.{_LEAVES[m.group(3)]}"] = value
        else:
            out[key] = value  # reported as unknown unless it is a dropped head
    for (block, leaf), parts in qkv.items():
        if len(parts) == 3:
            fused = [parts[n][1] for n in ("query", "key", "value")]
            out[f"blocks.{block}.attn.qkv.{leaf}"] = torch.cat(fused, dim=0)
        else:  # an incomplete triple: its parts are unknown keys and the fused qkv is missing
            out.update(dict(parts.values()))
    return out

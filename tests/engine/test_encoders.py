"""The encoder registry and the embedding cache's key."""

import pytest
import torch

from atl_desktop.models.encoders import EncoderChoice, build_encoder, encoder_key, encoder_names
from atl_desktop.models.weights import WeightsError


def test_key_is_stable_and_ignores_the_placeholder_head():
    a = build_encoder(EncoderChoice("untrained:smallcnn", input_size=32), 3)
    b = build_encoder(EncoderChoice("untrained:smallcnn", input_size=32), 5)  # other head size
    assert encoder_key(a) == encoder_key(b)
    with torch.no_grad():
        b.head.weight.add_(1.0)
    assert encoder_key(a) == encoder_key(b)


def test_key_changes_with_the_weights_or_the_input_transform():
    a = build_encoder(EncoderChoice("untrained:smallcnn", input_size=32), 3)
    bigger = build_encoder(EncoderChoice("untrained:smallcnn", input_size=48), 3)
    assert encoder_key(a) != encoder_key(bigger)
    changed = build_encoder(EncoderChoice("untrained:smallcnn", input_size=32), 3)
    with torch.no_grad():
        next(changed.body.parameters()).add_(1e-3)
    assert encoder_key(a) != encoder_key(changed)
    renormalised = build_encoder(EncoderChoice("untrained:smallcnn", input_size=32), 3)
    renormalised.spec = type(renormalised.spec)(32, 3, (0.4, 0.4, 0.4), (0.5, 0.5, 0.5))
    assert encoder_key(a) != encoder_key(renormalised)


def test_foundation_model_without_weights_names_what_to_pass():
    with pytest.raises(WeightsError, match="--weights"):
        build_encoder(EncoderChoice("dinov2_vits14"), 2)


def test_unknown_encoder_lists_the_choices():
    with pytest.raises(WeightsError, match="resnet18"):
        build_encoder(EncoderChoice("psychic"), 2)
    assert "dinov2_vits14" in encoder_names() and "untrained:resnet18" in encoder_names()


def test_choice_round_trips_through_json():
    choice = EncoderChoice("dinov2_vits14", "/models/dinov2")
    assert EncoderChoice.from_json(choice.to_json()) == choice

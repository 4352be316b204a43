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


def test_options_say_which_take_weights_and_what_file_a_foundation_model_expects():
    from atl_desktop.models.encoders import OPTIONAL_WEIGHTS, REQUIRED_WEIGHTS, encoder_options

    options = {o.name: o for o in encoder_options()}
    assert next(iter(options)) == "untrained:resnet18"
    assert options["untrained:resnet18"].weights == "none" and options["untrained:resnet18"].sized
    assert options["resnet18"].weights == OPTIONAL_WEIGHTS and options["resnet18"].sized
    assert "smallcnn" not in options  # no ImageNet weights exist for it
    dino = options["dinov2_vits14"]
    assert dino.weights == REQUIRED_WEIGHTS and not dino.sized
    assert "model.safetensors" in dino.weights_hint and "DINOv2 ViT-S/14" in dino.description
    assert {"dinov2_vitb14", "uni_vitl16", "phikon_vitb16"} <= set(options)
    assert all(o.description and "\n" not in o.description for o in options.values())


def test_checkpoints_are_options_named_by_id_and_phase():
    from types import SimpleNamespace

    from atl_desktop.models.encoders import encoder_options

    ssl = SimpleNamespace(id=4, backbone="resnet18", config={"phase": "self-supervised", "method": "simclr"})
    options = encoder_options([ssl])
    option = options[1]  # after the untrained backbone, before the models that need a file
    assert (option.name, option.checkpoint_id, option.weights) == ("checkpoint", 4, "none")
    assert option.description == "checkpoint #4: resnet18, self-supervised"


def test_set_encoder_job_saves_only_an_encoder_that_builds(tmp_path):
    from atl_desktop.jobs import run_job
    from atl_desktop.loop.session import cold_start_encoder, set_encoder_job
    from atl_desktop.store import Project

    with Project.create(tmp_path / "p.atl") as project:
        missing = EncoderChoice("dinov2_vits14", str(tmp_path / "nowhere"))
        with pytest.raises(WeightsError, match="nowhere does not exist"):
            run_job(set_encoder_job(project, missing), lambda p: None, lambda: False)
        assert project.get_setting("encoder") is None
        chosen = EncoderChoice("untrained:smallcnn", input_size=16)
        assert run_job(set_encoder_job(project, chosen), lambda p: None, lambda: False) == chosen
        assert cold_start_encoder(project) == chosen
        assert chosen.describe() == "an untrained smallcnn (no weights)"

"""Registering a model from the command line: validated like the admin upload."""
from __future__ import annotations

import pickle

import pytest
from django.core.management import CommandError, call_command

from studyapp.models import MLModel
from tests.factories import DatasetFactory, StimulusFactory, tabular_weights

pytestmark = pytest.mark.django_db


def test_a_safetensors_file_is_registered_with_its_hash_and_held_out_accuracy(tmp_path, capsys):
    dataset = DatasetFactory(name="cells")
    StimulusFactory.create_batch(4, dataset=dataset)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(tabular_weights(seed=1))
    call_command("register_model", "--name", "mlp", "--architecture", "tabular_mlp", "--weights", str(weights),
                 "--dataset", "cells")
    model = MLModel.objects.get(name="mlp")
    assert model.weights.read() == weights.read_bytes()
    assert 0.0 <= model.metrics["test_accuracy"] <= 1.0 and model.metrics["test_n"] == 4
    assert "Registered mlp" in capsys.readouterr().out


class CreatesAFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_is_refused_by_the_command_and_never_runs(tmp_path):
    DatasetFactory(name="cells")
    marker = tmp_path / "pwned"
    weights = tmp_path / "model.pt"
    weights.write_bytes(pickle.dumps(CreatesAFile(str(marker))))
    with pytest.raises(CommandError, match="pickle"):
        call_command("register_model", "--name", "evil", "--architecture", "tabular_mlp", "--weights", str(weights),
                     "--dataset", "cells")
    assert not marker.exists() and not MLModel.objects.exists()


def test_an_unknown_architecture_lists_the_allowed_ones(tmp_path):
    DatasetFactory(name="cells")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(tabular_weights())
    with pytest.raises(CommandError, match="image_cnn, tabular_mlp"):
        call_command("register_model", "--name", "x", "--architecture", "resnet152", "--weights", str(weights),
                     "--dataset", "cells")


def test_an_unknown_dataset_names_the_known_ones(tmp_path):
    DatasetFactory(name="cells")
    with pytest.raises(CommandError, match="Imported datasets: cells"):
        call_command("register_model", "--name", "x", "--architecture", "tabular_mlp", "--weights", "w",
                     "--dataset", "nope")


def test_a_wrong_input_shape_is_explained(tmp_path):
    DatasetFactory(name="cells")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(tabular_weights())
    with pytest.raises(CommandError, match=r"input shape \[4\] does not match the dataset 'cells'"):
        call_command("register_model", "--name", "x", "--architecture", "tabular_mlp", "--weights", str(weights),
                     "--dataset", "cells", "--input-shape", "4")

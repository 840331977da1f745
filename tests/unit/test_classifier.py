"""The MLP classifier: restricted loading of published-style pickles, safetensors conversion, exact forward pass."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from virnucpro.classify.model import load_classifier
from virnucpro.cli import app
from virnucpro.errors import ModelError

# The original training script's class, as it sat in `__main__` when torch.save(model) pickled it.
ORIGINAL_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super(MLPClassifier, self).__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.output_layer = nn.Linear(hidden_dim, num_class)
            self.dropout = nn.Dropout(0.5)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = F.relu(x)
            x = self.dropout(x)
            return self.output_layer(x)

    path, input_dim, hidden_dim, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    eps = float(sys.argv[5])
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim, hidden_dim, 2)
    model.bn1.eps = eps
    with torch.no_grad():
        # Trained-looking BatchNorm statistics, so eval mode and train mode give different answers.
        model.bn1.running_mean.normal_(0, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.normal_(1, 0.2)
        model.bn1.bias.normal_(0, 0.2)
    model.train()
    torch.save(model, path)
    # The same weights as plain arrays, for the numpy reference (the test never unpickles the module itself).
    import numpy as np
    np.savez(path + ".npz", bn_eps=np.array(eps),
             **{k: v.detach().double().numpy() for k, v in model.state_dict().items()})
""")


def save_original_classifier(path: Path, input_dim: int = 24, hidden_dim: int = 16, seed: int = 0,
                             bn_eps: float = 1e-5) -> Path:
    script = path.parent / "train_like_original.py"
    script.write_text(ORIGINAL_SCRIPT)
    subprocess.run([sys.executable, str(script), str(path), str(input_dim), str(hidden_dim), str(seed), str(bn_eps)],
                   check=True)
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    # A large eps, so that using the default eps instead of the pickled one would change the scores.
    return save_original_classifier(tmp_path_factory.mktemp("weights") / "300_model.pth", bn_eps=0.3)


def numpy_reference(state: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    hidden = features @ state["hidden_layer.weight"].T + state["hidden_layer.bias"]
    normalised = (hidden - state["bn1.running_mean"]) / np.sqrt(state["bn1.running_var"] + state["bn_eps"])
    hidden = np.maximum(normalised * state["bn1.weight"] + state["bn1.bias"], 0)
    logits = hidden @ state["output_layer.weight"].T + state["output_layer.bias"]
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def raw_state(path: Path) -> dict[str, np.ndarray]:
    with np.load(f"{path}.npz") as arrays:
        return dict(arrays)


def test_published_pickle_loads_and_matches_numpy(published):
    loaded = load_classifier(published)
    assert (loaded.chunk_length, loaded.input_dim, loaded.source) == (300, 24, "pickle")
    assert not loaded.model.training
    features = np.random.default_rng(1).normal(size=(9, 24))
    scores = loaded.model.probabilities(torch.tensor(features, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(scores, numpy_reference(raw_state(published), features), atol=2e-6)


def test_scores_do_not_depend_on_the_batch(published):
    """Eval-mode BatchNorm: a row scores the same alone (train mode would fail on 1 row) or in a batch."""
    model = load_classifier(published).model
    features = torch.randn(5, 24)
    together = model.probabilities(features)
    alone = torch.cat([model.probabilities(features[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone)


def test_column_one_is_virus(tmp_path):
    path = save_original_classifier(tmp_path / "500_model.pth")
    model = load_classifier(path).model
    with torch.no_grad():
        model.output_layer.weight.zero_()
        model.output_layer.bias.copy_(torch.tensor([0.0, 5.0]))
    scores = model.probabilities(torch.randn(3, 24))
    assert (scores[:, 1] > 0.99).all()


def test_foreign_globals_are_refused_before_they_run(tmp_path):
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        class Payload:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"hidden_layer.weight": Payload()}}, "{tmp_path / '300_model.pth'}")
    """))
    subprocess.run([sys.executable, str(script)], check=True)
    with pytest.raises(ModelError, match=r"300_model\.pth: refusing to unpickle class '(posix|os)\.system'"):
        load_classifier(tmp_path / "300_model.pth")
    assert not marker.exists()


def test_chunk_length_of_a_pth_comes_from_its_name_or_the_option(tmp_path, published):
    renamed = tmp_path / "classifier.pth"
    renamed.write_bytes(published.read_bytes())
    with pytest.raises(ModelError, match="cannot tell which chunk length"):
        load_classifier(renamed)
    assert load_classifier(renamed, classifier_chunk_length=500).chunk_length == 500


def test_convert_classifier_writes_safetensors_with_metadata(tmp_path, published):
    output = tmp_path / "300_model.safetensors"
    result = CliRunner().invoke(app, ["convert-classifier", str(published), "--output", str(output)])
    assert result.exit_code == 0, result.output
    with safe_open(str(output), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["chunk_length"] == "300"
    assert metadata["input_dim"] == "24"
    assert metadata["format"] == "virnucpro-classifier"
    converted = load_classifier(output)
    original = load_classifier(published)
    features = torch.randn(7, 24)
    torch.testing.assert_close(converted.model.probabilities(features), original.model.probabilities(features),
                               rtol=0, atol=0)
    with pytest.raises(ModelError, match="metadata says chunk length 300"):
        load_classifier(output, classifier_chunk_length=500)


def test_a_state_dict_of_the_wrong_layout_is_refused(tmp_path):
    path = tmp_path / "500_model.pth"
    torch.save({"fc.weight": torch.zeros(2, 3)}, path)
    with pytest.raises(ModelError, match="not a VirNucPro classifier"):
        load_classifier(path)

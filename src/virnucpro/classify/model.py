"""The VirNucPro MLP classifier and the two ways its weights arrive.

Layout (the original `MLPClassifier`, attribute names as in its state dict): ``hidden_layer`` Linear(D, 512) ->
``bn1`` BatchNorm1d(512) -> ReLU -> ``dropout`` Dropout(0.5) -> ``output_layer`` Linear(512, 2); softmax over the
logits, column 0 = others, column 1 = virus. D = 768 (DNABERT-S) + ESM-2 width (2560 for the 3B model) = 3328.

Weights:

* ``.safetensors`` written by ``convert-classifier``: a plain state dict, with ``chunk_length`` and the layer sizes in
  the file's metadata. Loading it executes nothing.
* the published ``300_model.pth`` / ``500_model.pth``: whole modules pickled by ``torch.save(model)`` from a
  ``__main__`` script. They are read by ``torch.load(weights_only=True)`` with an explicit allow-list: the pickled
  ``__main__.MLPClassifier`` is rebuilt as an inert stand-in (no code from the file runs), plus the torch layer
  classes it contains. Any other class in the pickle is refused with an error naming it. A pickled plain state dict
  is accepted too.

Which chunk length a classifier was trained for: safetensors metadata; for ``.pth`` an explicit
``classifier_chunk_length`` or, failing that, the published file-name convention ``300_model.pth`` / ``500_model.pth``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from virnucpro.errors import ModelError

CLASSIFIER_FORMAT = "virnucpro-classifier"
VIRUS_CLASS = 1
CLASS_NAMES = ("others", "virus")
_PUBLISHED_NAME = re.compile(r"^(300|500)_model\b")


class MLPClassifier(nn.Module):
    def __init__(self, input_dim: int = 3328, hidden_dim: int = 512, num_class: int = 2, bn_eps: float = 1e-5):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim, eps=bn_eps)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.bn1(self.hidden_layer(features)))
        return self.output_layer(self.dropout(hidden))

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax scores [N, 2] (others, virus); the module must be in eval mode (BatchNorm running statistics)."""
        return torch.softmax(self(features), dim=1)


class _PickledMLPClassifier(nn.Module):
    """Inert stand-in for the `__main__.MLPClassifier` of the published pickles: receives their attributes only."""


# Everything a `torch.save(model)` of the original classifier references; nothing else may be unpickled.
_ALLOWED_PICKLE_GLOBALS = [
    (_PickledMLPClassifier, "__main__.MLPClassifier"),
    nn.Linear,
    nn.BatchNorm1d,
    nn.Dropout,
    nn.ReLU,
]


@dataclass(frozen=True)
class LoadedClassifier:
    model: MLPClassifier
    chunk_length: int
    input_dim: int
    source: str  # "safetensors" or "pickle"


def _layer_sizes(state: dict[str, torch.Tensor], path: Path) -> tuple[int, int, int]:
    try:
        hidden_dim, input_dim = state["hidden_layer.weight"].shape
        num_class, hidden_out = state["output_layer.weight"].shape
    except (KeyError, ValueError) as err:
        raise ModelError(f"{path}: not a VirNucPro classifier (missing or misshapen hidden_layer/output_layer "
                         f"weights; keys: {', '.join(sorted(state)[:8])})") from err
    if hidden_out != hidden_dim or num_class != 2:
        raise ModelError(f"{path}: unexpected classifier shape: hidden {hidden_dim}->{hidden_out}, "
                         f"{num_class} classes (expected 2)")
    return int(input_dim), int(hidden_dim), int(num_class)


def _normalise_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Some re-implementations name the BatchNorm `batch_norm`; the published weights call it `bn1`.
    return {re.sub(r"^batch_norm\.", "bn1.", key): value for key, value in state.items()}


def build_classifier(state: dict[str, torch.Tensor], path: Path, bn_eps: float = 1e-5) -> MLPClassifier:
    state = _normalise_state(state)
    input_dim, hidden_dim, num_class = _layer_sizes(state, path)
    model = MLPClassifier(input_dim, hidden_dim, num_class, bn_eps)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - {"bn1.num_batches_tracked"})
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: classifier weights do not match the VirNucPro layout"
                         f"{'; missing ' + ', '.join(missing) if missing else ''}"
                         f"{'; unexpected ' + ', '.join(unexpected) if unexpected else ''}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def read_pickled_state(path: str | Path) -> tuple[dict[str, torch.Tensor], float]:
    """(state dict, BatchNorm eps) of a published `.pth` (a whole pickled module, or a plain state dict).

    The eps is not part of a state dict: a pickled module carries it, a plain state dict gets PyTorch's default.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: classifier file not found")
    try:
        with torch.serialization.safe_globals(_ALLOWED_PICKLE_GLOBALS):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path) and "persistent_load" in str(err):
            raise ModelError(f"{path}: legacy (pre-1.6) torch file that embeds module source code; the restricted "
                             "loader refuses it (re-save it as a state dict with a current torch)") from err
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"class {refused.group(1)!r}" if refused else "an object"
        raise ModelError(f"{path}: refusing to unpickle {what}: only the VirNucPro MLPClassifier layout "
                         "(Linear, BatchNorm1d, Dropout, ReLU, tensors) is allowed") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable classifier checkpoint: {str(err).splitlines()[0]}") from err
    if isinstance(loaded, nn.Module):
        norm = getattr(loaded, "bn1", None) or getattr(loaded, "batch_norm", None)
        eps = float(norm.eps) if isinstance(norm, nn.BatchNorm1d) else 1e-5
        return {key: value.detach() for key, value in loaded.state_dict().items()}, eps
    if isinstance(loaded, dict) and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return dict(loaded), 1e-5
    raise ModelError(f"{path}: holds a {type(loaded).__name__}, expected a pickled MLPClassifier or a state dict")


def chunk_length_from_name(path: Path) -> int | None:
    match = _PUBLISHED_NAME.match(path.name)
    return int(match.group(1)) if match else None


def load_classifier(path: str | Path, *, classifier_chunk_length: int | None = None) -> LoadedClassifier:
    """Load either format; the chunk length comes from metadata, the explicit value, or the published file name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        if not path.is_file():
            raise ModelError(f"{path}: classifier file not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ModelError(f"{path}: unreadable safetensors file: {err}") from err
        if metadata.get("format") != CLASSIFIER_FORMAT or "chunk_length" not in metadata:
            raise ModelError(f"{path}: not written by `virnucpro convert-classifier` (no {CLASSIFIER_FORMAT} "
                             "metadata with chunk_length)")
        chunk_length = int(metadata["chunk_length"])
        if classifier_chunk_length is not None and classifier_chunk_length != chunk_length:
            raise ModelError(f"{path}: metadata says chunk length {chunk_length}, but "
                             f"--classifier-chunk-length {classifier_chunk_length} was given")
        model = build_classifier(state, path, float(metadata.get("bn_eps", 1e-5)))
        return LoadedClassifier(model, chunk_length, model.hidden_layer.in_features, "safetensors")
    chunk_length = classifier_chunk_length or chunk_length_from_name(path)
    if chunk_length is None:
        raise ModelError(f"{path}: cannot tell which chunk length this classifier was trained for; name it "
                         "300_model.pth / 500_model.pth as published, or pass --classifier-chunk-length")
    state, bn_eps = read_pickled_state(path)
    model = build_classifier(state, path, bn_eps)
    return LoadedClassifier(model, chunk_length, model.hidden_layer.in_features, "pickle")


def save_classifier(model: MLPClassifier, chunk_length: int, output: str | Path, *, source: str) -> Path:
    """Write a classifier as safetensors with chunk_length and layer sizes in its metadata (what load_classifier reads)."""
    from safetensors.torch import save

    from virnucpro.io.bundle import atomic_write_bytes

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ModelError(f"{output}: the converted classifier must be named *.safetensors")
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    metadata = {
        "format": CLASSIFIER_FORMAT,
        "chunk_length": str(chunk_length),
        "input_dim": str(model.hidden_layer.in_features),
        "hidden_dim": str(model.hidden_layer.out_features),
        "num_class": str(model.output_layer.out_features),
        "bn_eps": repr(model.bn1.eps),
        "class_names": ",".join(CLASS_NAMES),
        "source": source,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, save(state, metadata=metadata))
    return output


def convert_classifier(source: str | Path, output: str | Path, *, classifier_chunk_length: int | None = None) -> LoadedClassifier:
    """Write a `.pth` classifier as safetensors with chunk_length and layer sizes in its metadata."""
    loaded = load_classifier(source, classifier_chunk_length=classifier_chunk_length)
    if Path(output).suffix != ".safetensors":
        raise ModelError(f"{output}: the converted classifier must be named *.safetensors")
    save_classifier(loaded.model, loaded.chunk_length, output, source=Path(source).name)
    return loaded

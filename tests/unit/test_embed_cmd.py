"""`virnucpro make-tiny-models` and `virnucpro embed` end to end on tiny real-format models."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from virnucpro.cli import app
from virnucpro.io import read_embeddings
from virnucpro.models.packing import pack_token_ids
from virnucpro.models.registry import load_encoder, load_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    result = runner.invoke(app, ["make-tiny-models", "--outdir", str(out)])
    assert result.exit_code == 0, result.output
    return out


def write_fasta(path, records):
    path.write_text("".join(f">{rid} some description\n{seq}\n" for rid, seq in records))
    return path


@pytest.fixture(scope="module")
def proteins():
    rng = random.Random(2)
    lengths = [30, 3, 200, 1, 75, 1200, 12, 75, 40, 8]  # unsorted, with a duplicate length and a >1024 outlier
    return [(f"p{i}", "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n))) for i, n in enumerate(lengths)]


def test_make_tiny_models_layout(models):
    assert json.loads((models / "esm2" / "config.json").read_text())["model_type"] == "esm"
    for name in ("model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (models / "esm2" / name).is_file()
    assert (models / "esm2-fair" / "tiny.pt").is_file()
    assert (models / "dnabert" / "config.json").is_file()


def test_make_tiny_models_is_deterministic(models, tmp_path):
    assert runner.invoke(app, ["make-tiny-models", "--outdir", str(tmp_path)]).exit_code == 0
    a = load_encoder("esm2", models / "esm2").fingerprint
    assert a == load_encoder("esm2", tmp_path / "esm2").fingerprint


@pytest.mark.parametrize("budget", ["64", "100000"])
def test_embed_esm2_input_order_and_values(models, proteins, tmp_path, budget):
    fasta = write_fasta(tmp_path / "p.fa", proteins)
    out = tmp_path / "emb"
    result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(models / "esm2"),
                                 "--input", str(fasta), "--output", str(out), "--max-tokens-per-pack", budget,
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1 longer than 1024 residues truncated" in result.output
    ids, array = read_embeddings(out, verify=True)
    assert ids == [rid for rid, _ in proteins]
    enc, tok = load_encoder("esm2", models / "esm2"), load_tokenizer("esm2", models / "esm2")
    for row, (_, seq) in zip(array, proteins):  # each alone, in its own pack
        pack = pack_token_ids([tok.encode(seq)])
        want = enc.embed_packed(pack.input_ids, pack.cu_seqlens, pack.max_seqlen)[0].numpy()
        np.testing.assert_allclose(row, want, atol=1e-5, rtol=1e-5)


def test_embed_fair_checkpoint_same_as_hf(models, proteins, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", proteins)
    outs = []
    for i, model_dir in enumerate((models / "esm2", models / "esm2-fair" / "tiny.pt")):
        out = tmp_path / f"emb{i}"
        result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(model_dir), "--input",
                                     str(fasta), "--output", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        outs.append(read_embeddings(out)[1])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_embed_dnabert(models, tmp_path):
    rng = random.Random(4)
    records = [(f"r{i}", "".join(rng.choice("ACGT") for _ in range(n))) for i, n in enumerate([150, 20, 301, 90])]
    fasta = write_fasta(tmp_path / "d.fa", records)
    out = tmp_path / "emb"
    result = runner.invoke(app, ["embed", "--model-kind", "dnabert", "--model-dir", str(models / "dnabert"),
                                 "--input", str(fasta), "--output", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    ids, array = read_embeddings(out)
    assert ids == ["r0", "r1", "r2", "r3"]
    enc = load_encoder("dnabert", models / "dnabert")
    assert array.shape == (4, enc.hidden_size) and np.isfinite(array).all()
    meta = json.loads((out / "manifest.json").read_text())["metadata"]
    assert meta["model_kind"] == "dnabert" and meta["fingerprint"] == enc.fingerprint


def test_embed_wrong_kind_is_one_line_error(models, proteins, tmp_path):
    """Through the real entry point: one line on stderr, ModelError's exit code 4, no traceback."""
    fasta = write_fasta(tmp_path / "p.fa", proteins)
    proc = subprocess.run([sys.executable, "-c", "from virnucpro.cli import main; main()", "embed", "--model-kind",
                           "esm2", "--model-dir", str(models / "dnabert"), "--input", str(fasta), "--output",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 4
    assert proc.stderr.strip().count("\n") == 0 and "it belongs to --model-kind dnabert / --dnabert-model" in proc.stderr


def test_embed_empty_sequence_refused(models, tmp_path):
    fasta = tmp_path / "e.fa"
    fasta.write_text(">a\nMKV\n>b\n\n")
    result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(models / "esm2"), "--input",
                                 str(fasta), "--output", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "record 'b' has an empty sequence" in str(result.exception)


def test_embed_unusable_backend(models, proteins, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", proteins[:2])
    result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(models / "esm2"), "--input",
                                 str(fasta), "--output", str(tmp_path / "x"), "--backend", "torch_varlen"])
    assert result.exit_code != 0
    assert "torch_varlen" in str(result.exception) and "CUDA" in str(result.exception)


def test_embed_flex_backend_on_cpu_matches_sdpa(models, proteins, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", proteins[:5])
    arrays = []
    for backend in ("sdpa", "flex"):
        out = tmp_path / backend
        result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(models / "esm2"), "--input",
                                     str(fasta), "--output", str(out), "--backend", backend, "--quiet"])
        assert result.exit_code == 0, result.output
        arrays.append(np.asarray(read_embeddings(out)[1]))
    np.testing.assert_allclose(arrays[0], arrays[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_embed_cuda_absent_is_a_model_error(models, proteins, tmp_path):
    fasta = write_fasta(tmp_path / "p.fa", proteins[:2])
    result = runner.invoke(app, ["embed", "--model-kind", "esm2", "--model-dir", str(models / "esm2"), "--input",
                                 str(fasta), "--output", str(tmp_path / "x"), "--device", "cuda"])
    assert result.exit_code != 0 and "CUDA is not available" in str(result.exception)

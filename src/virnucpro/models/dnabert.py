"""DNABERT-S (zhihan1996/DNABERT-S): the DNABERT-2 / MosaicBERT encoder, packed.

Architecture, as in the published remote code (`bert_layers.py` of DNABERT-2-117M / DNABERT-S):
- embeddings: word + token_type[0] (no position embeddings: ALiBi), LayerNorm(eps 1e-12), dropout (identity here);
- each layer, post-LayerNorm:
    x = LN(x + Wo(attention(Wqkv(x))))       attention: scale 1/sqrt(head_dim), bias -slope_h * |i - j| (symmetric)
    x = LN(x + wo(gelu(a) * b))              [a | b] = gated_layers(x), GELU exact (erf), no bias in gated_layers;
- embedding of a sequence = mean of the last hidden state over ALL its tokens, [CLS] and [SEP] included
  (the reference: `torch.mean(model(ids)[0][0], dim=0)`).

Sequences arrive packed: one token stream `input_ids` [T] with `cu_seqlens` [B + 1]; every op except attention is
per token, and attention (`varlen_attention`) never crosses a sequence boundary, so the packed forward equals B
separate forwards. ALiBi has no length limit, only memory does, so the tokenizer never truncates; the engine's
outlier rule applies instead: a sequence longer than the pack token budget or than `max_tokens` (8192) is embedded
alone in its own pack (FlexAttention/flash-attn memory grows linearly with its length; the per-sequence sdpa
fallback materialises an [heads, L, L] bias, fine for CPU-sized inputs).

Checkpoints are read from the published Hugging Face folder (config.json, model.safetensors or pytorch_model.bin,
tokenizer.json) without running its remote code: the published parameter names are mapped onto this file's own
layout by `published_key_map`. Keys may carry a `bert.` prefix (BertForMaskedLM checkpoints) or not (BertModel);
heads (`cls.*`, `pooler.*`, `classifier.*`) are ignored; anything else missing, unexpected or mis-shaped is a ModelError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F

from virnucpro.errors import ModelError
from virnucpro.models.attention import (FLEX_BLOCK_SIZE, alibi_slopes, document_block_mask, flex_varlen,
                                        resolve_backend, varlen_attention)

KIND = "dnabert"
log = logging.getLogger(__name__)
# Not a model limit (ALiBi has none and `encode` never truncates): the length from which the engine's outlier rule
# embeds a sequence alone in its own pack, as it does with anything over the pack budget. The engine never sizes a
# budget below max_tokens, so this must stay a modest number (8192 tokens ~ 35 kb of DNA; frames are <= 501 nt).
MAX_TOKENS = 8192
# Published checkpoints are saved from BertForMaskedLM (`bert.` prefix + `cls.*`) or BertModel (bare + `pooler.*`);
# fine-tuned BertForSequenceClassification ones add `classifier.*`. None of them is part of the encoder.
HEAD_PREFIXES = ("cls.", "pooler.", "classifier.")
# Non-persistent buffers that some exporters still write; they carry no weights.
IGNORED_BUFFERS = ("embeddings.token_type_ids", "embeddings.position_ids")
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")  # ids 0..4, the order of DNABERT-2's tokenizer.json


# ----------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DNABERTConfig:
    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: Path) -> "DNABERTConfig":
        """Reads an HF config.json; refuses other model families with a one-line reason."""
        if not path.is_file():
            raise ModelError(f"{path.parent}: no config.json, not a DNABERT-S model folder")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable config ({exc})") from exc
        model_type = str(raw.get("model_type", ""))
        architectures = [str(a) for a in raw.get("architectures") or []]
        if model_type != "bert" or any(not a.startswith("Bert") for a in architectures):
            found = model_type or "?"
            if architectures:
                found += f", architectures {', '.join(architectures)}"
            raise ModelError(f"{path}: not a DNABERT-S (MosaicBERT) config (model_type {found}); "
                             f"expected model_type 'bert' with architectures BertModel / BertForMaskedLM")
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in raw]
        if missing:
            raise ModelError(f"{path}: missing config field(s) {', '.join(missing)}")
        config = cls(vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
                     num_hidden_layers=int(raw["num_hidden_layers"]),
                     num_attention_heads=int(raw["num_attention_heads"]),
                     intermediate_size=int(raw["intermediate_size"]),
                     type_vocab_size=int(raw.get("type_vocab_size", 2)),
                     layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)))
        if config.hidden_size % config.num_attention_heads:
            raise ModelError(f"{path}: hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
        return config


PRESETS = {"dnabert-s": DNABERTConfig()}


# ----------------------------------------------------------------------------------------------------- model
class Embeddings(nn.Module):
    def __init__(self, config: DNABERTConfig):
        super().__init__()
        self.tok = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The reference always passes token_type_ids = 0; dropout is the identity at inference.
        return self.norm(self.tok(input_ids) + self.token_type.weight[0])


class Attention(nn.Module):
    def __init__(self, config: DNABERTConfig, backend: str):
        super().__init__()
        self.n_head, self.head_dim = config.num_attention_heads, config.head_dim
        self.wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.wo = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.backend = backend

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                slopes: torch.Tensor, block_mask=None) -> torch.Tensor:
        # Wqkv's output is laid out (3, heads, head_dim), the published 'b s (t h d)' order. FlexAttention reads
        # q, k, v through their strides and writes its output in q's stride order, i.e. [T, heads, head_dim]
        # contiguous, so the reshape below is a view, not a copy.
        if torch.compiler.is_compiling():
            # The same projection as three matmuls on row blocks of Wqkv (views, no copy; the same FLOPs): in a
            # compiled layer Inductor then hands FlexAttention three buffers rather than three views of one (its
            # CPU lowering refuses those, and a separate buffer per operand is the plainest input for any kernel).
            q, k, v = (F.linear(x, w, b).view(-1, self.n_head, self.head_dim)
                       for w, b in zip(self.wqkv.weight.chunk(3), self.wqkv.bias.chunk(3)))
        else:
            q, k, v = self.wqkv(x).view(-1, 3, self.n_head, self.head_dim).unbind(1)
        scale = 1.0 / math.sqrt(self.head_dim)
        if block_mask is not None:
            # flex with the pack's document mask (built once per pack by DNABERT.forward). Inside a compiled layer
            # the bare flex_attention is traced into the layer's graph; called eagerly, flex_varlen compiles it alone.
            block = block_mask.BLOCK_SIZE[0]
            # The kernel's tiles must divide the mask's blocks; the H100 default for head_dim 64 is 128 x 128.
            tiles = {"BLOCK_M": block, "BLOCK_N": block} if block < 128 else None
            y = flex_varlen(q, k, v, cu_seqlens, slopes, scale, block_mask=block_mask, kernel_options=tiles,
                            compiled=False if torch.compiler.is_compiling() else None)
        else:
            y = varlen_attention(q, k, v, cu_seqlens, max_seqlen, alibi_slopes=slopes, backend=self.backend,
                                 scale=scale)
        return self.norm(x + self.wo(y.reshape(x.shape)))


class GatedMLP(nn.Module):
    def __init__(self, config: DNABERTConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.w_gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.w_down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # First half is the activated ("gated") one, second half multiplies it; GELU is the exact erf form.
        gated, non_gated = self.w_gate_up(x).split(self.intermediate_size, dim=-1)
        return self.norm(x + self.w_down(F.gelu(gated) * non_gated))


class Layer(nn.Module):
    def __init__(self, config: DNABERTConfig, backend: str):
        super().__init__()
        self.attn = Attention(config, backend)
        self.mlp = GatedMLP(config)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                slopes: torch.Tensor, block_mask=None) -> torch.Tensor:
        return self.mlp(self.attn(x, cu_seqlens, max_seqlen, slopes, block_mask))


class DNABERT(nn.Module):
    """The encoder over a packed token stream: [T] ids -> [T, hidden] last hidden state."""

    def __init__(self, config: DNABERTConfig, backend: str = "auto", flex_block_size: int = FLEX_BLOCK_SIZE):
        super().__init__()
        self.config = config
        self.backend = backend
        self.flex_block_size = flex_block_size
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, backend) for _ in range(config.num_hidden_layers))
        # Kept out of the module's buffers on purpose: `.to(float16)` would round the slopes of non-power-of-two
        # head counts (12 heads: 2**-0.5 ...); `to_runtime` places them on the device, always in fp32.
        self.slopes = alibi_slopes(config.num_attention_heads)

    def to_runtime(self, device: torch.device, dtype: torch.dtype) -> "DNABERT":
        self.to(device=device, dtype=dtype)
        self.slopes = alibi_slopes(self.config.num_attention_heads).to(device=device, dtype=torch.float32)
        # A compiled layer takes the slopes as an input; with dynamic=True its size would be symbolic and "duck
        # sized" against the pack's block count (a recompile whenever a pack has exactly num_heads blocks).
        torch._dynamo.mark_static(self.slopes)
        return self

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        total = input_ids.shape[0]
        block_mask = None
        if self.backend == "flex":
            # The token stream is padded to a multiple of 128 tokens (whole blocks of any size up to 128), at least
            # 256: the padding is a document of its own (document_block_mask gives every token past cu_seqlens[-1]
            # the id `batch`), so it never attends to or from a real token, and it is cut off before pooling. With
            # >= 128 query tokens flex never switches to its short-query ("decoding") kernel, and with >= 2 blocks
            # Dynamo does not specialise a one-block pack: one compiled graph serves every pack (a unit test counts).
            # The mask is built once per pack, on the device without a host sync, and shared by all layers.
            unit = max(self.flex_block_size, 128)
            padded = max(-(-total // unit), 2) * unit
            if padded != total:
                input_ids = F.pad(input_ids, (0, padded - total))
            block_mask, _ = document_block_mask(cu_seqlens, padded, self.flex_block_size)
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, cu_seqlens, max_seqlen, self.slopes, block_mask)
        return x[:total]


def mean_per_sequence(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[T, H] -> float32 [B, H]: mean over each sequence's tokens (all of them), without a host sync."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    batch = lengths.shape[0]
    owner = torch.repeat_interleave(torch.arange(batch, device=hidden.device), lengths, output_size=hidden.shape[0])
    sums = torch.zeros(batch, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, owner, hidden.float())
    return sums / lengths.clamp(min=1).unsqueeze(1).to(torch.float32)


# ----------------------------------------------------------------------------------------------------- checkpoint
def published_key_map(config: DNABERTConfig) -> dict[str, str]:
    """Published parameter name (without the `bert.` prefix) -> this file's name."""
    names = {
        "embeddings.word_embeddings.weight": "embeddings.tok.weight",
        "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
        "embeddings.LayerNorm.weight": "embeddings.norm.weight",
        "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    }
    for i in range(config.num_hidden_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        names |= {
            src + "attention.self.Wqkv.weight": dst + "attn.wqkv.weight",
            src + "attention.self.Wqkv.bias": dst + "attn.wqkv.bias",
            src + "attention.output.dense.weight": dst + "attn.wo.weight",
            src + "attention.output.dense.bias": dst + "attn.wo.bias",
            src + "attention.output.LayerNorm.weight": dst + "attn.norm.weight",
            src + "attention.output.LayerNorm.bias": dst + "attn.norm.bias",
            src + "mlp.gated_layers.weight": dst + "mlp.w_gate_up.weight",
            src + "mlp.wo.weight": dst + "mlp.w_down.weight",
            src + "mlp.wo.bias": dst + "mlp.w_down.bias",
            src + "mlp.layernorm.weight": dst + "mlp.norm.weight",
            src + "mlp.layernorm.bias": dst + "mlp.norm.bias",
        }
    return names


def weights_file(model_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        # weights_only: a pickled checkpoint must not be able to run code on load.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many different types
        raise ModelError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def convert_state_dict(state: dict[str, torch.Tensor], config: DNABERTConfig, path: Path,
                       model: DNABERT) -> dict[str, torch.Tensor]:
    """Published layout (either prefix) -> this file's layout, checking every name and shape."""
    if any(k.startswith("esm.") or "rotary_embeddings" in k or "emb_layer_norm_after" in k for k in state):
        raise ModelError(f"{path}: holds ESM-2 weights, not DNABERT-S")
    # MaskedLM layout: the encoder lives under `bert.`, everything outside it is a head.
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    names = published_key_map(config)
    unexpected = [k for k in state if not k.startswith(prefix) and not k.startswith(HEAD_PREFIXES)]
    unexpected += [prefix + k for k in body
                   if k not in names and not k.startswith(HEAD_PREFIXES) and k not in IGNORED_BUFFERS]
    missing = [k for k in names if k not in body]
    if missing:
        hint = ""
        if any(".attention.self.query." in k for k in body):
            hint = " (separate query/key/value: a standard BERT checkpoint, not DNABERT-S)"
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(f"{path}: missing tensor {prefix}{missing[0]}{more}{hint}")
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelError(f"{path}: unexpected tensor {unexpected[0]}{more} "
                         f"(config.json says {config.num_hidden_layers} layers)")
    expected = model.state_dict()
    out = {}
    for src, dst in names.items():
        tensor = body[src]
        if tuple(tensor.shape) != tuple(expected[dst].shape):
            raise ModelError(f"{path}: tensor {prefix}{src} has shape {list(tensor.shape)}, "
                             f"expected {list(expected[dst].shape)} from config.json")
        if not tensor.is_floating_point():
            raise ModelError(f"{path}: tensor {prefix}{src} has dtype {tensor.dtype}, expected a floating type")
        out[dst] = tensor
    return out


def fingerprint(config: DNABERTConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the config and every weight's name, shape, dtype and bytes (as stored, before any cast)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": KIND, **asdict(config)}, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        digest.update(f"{name}:{list(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(hashlib.sha256(tensor.view(torch.uint8).numpy().tobytes()).digest()
                      if tensor.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------- public API
class DNABERTTokenizer:
    """BPE from the folder's tokenizer.json, `[CLS] seq [SEP]`, CPU only and picklable (reloaded from its path in
    spawned DataLoader workers). The sequence is encoded as given, like the reference (no upper-casing: the frames
    handed to it are upper-case already; DNABERT-2's vocabulary is upper-case, lower-case letters would encode
    differently). Never truncates, whatever the length: see MAX_TOKENS."""

    kind = KIND
    max_tokens = MAX_TOKENS

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:
            raise ModelError(f"{self.path}: unreadable tokenizer ({exc})") from exc
        # The reference calls `tokenizer(seq)`: transformers switches a tokenizer.json's truncation/padding off
        # unless asked, so do the same here whatever the file says.
        self._tok.no_truncation()
        self._tok.no_padding()
        # Ids index the embedding table, so what must fit is the id range, not the number of entries.
        self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, sequence: str) -> list[int]:
        return self._tok.encode(sequence).ids

    def encode_batch(self, sequences: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(sequences)]

    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


class DNABERTEncoder:
    """PackedEncoder for DNABERT-S: `embed_packed` returns float32 [B, hidden] on the model's device."""

    kind = KIND

    def __init__(self, model: DNABERT, fingerprint: str, device: torch.device, dtype: torch.dtype, backend: str,
                 options: dict | None = None):
        config = model.config
        self.model = model
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.intermediate_size = config.intermediate_size
        self.fingerprint = fingerprint
        self.device = device
        self.dtype = dtype
        self.backend = backend  # the concrete attention backend ("auto" resolved at load)
        self.options = dict(options or {})  # how it runs (compile scope/mode, flex block): for benchmarks, reports
        self._compile_args: dict = {}

    def compile(self, scope: str | None, *, mode: str | None = None, backend: str = "inductor") -> None:
        """(Re)compiles the layers: "layer", "mlp" or None (eager); see `compile_layers`. "layer" applies to the
        flex backend only; the others get "mlp" (the per-sequence sdpa loop reads cu_seqlens on the host: a graph
        break and a recompile for every new set of lengths; flash_attn is untested inside a compiled graph)."""
        if scope == "layer" and self.backend != "flex":
            scope = "mlp"
        for layer in self.model.layers:  # undo a previous compile (what nn.Module.compile sets)
            layer._compiled_call_impl = None
            layer.mlp._compiled_call_impl = None
        if scope:
            compile_layers(self.model, scope, mode=mode, backend=backend)
        self.options.update(compile=scope or None, compile_mode=mode if scope else None)
        self._compile_args = {"mode": mode, "backend": backend}

    @torch.inference_mode()
    def embed_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        input_ids = input_ids.to(self.device, non_blocking=True)
        cu_seqlens = cu_seqlens.to(self.device, dtype=torch.int32, non_blocking=True)
        try:
            hidden = self.model(input_ids, cu_seqlens, int(max_seqlen))
        except torch._dynamo.exc.TorchDynamoException as exc:
            if self.options.get("compile") != "layer":
                raise
            # Compiling a whole layer (FlexAttention inside) failed on this machine: a compile error, raised before
            # any kernel of this pack ran. Keep going with the compiled MLP (the previous, measured path); the
            # reason stays in `options` (the GPU tests and the bench report it, and the GPU test fails on it).
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
            log.warning("DNABERT-S: whole-layer compile failed (%s); using the compiled MLP only", reason)
            self.compile("mlp", **self._compile_args)
            self.options["compile_fallback"] = reason
            hidden = self.model(input_ids, cu_seqlens, int(max_seqlen))
        return mean_per_sequence(hidden, cu_seqlens)


# Embedding tables are sometimes padded past the tokenizer (MosaicBERT pads BERT's 30522 to 30528); DNABERT-S's is
# not (4096 both), but allow such padding rather than refuse a valid folder. Anything else is the wrong tokenizer.
VOCAB_PADDING = 64


def check_tokenizer_matches(tokenizer: DNABERTTokenizer, config: DNABERTConfig) -> None:
    n = tokenizer.vocab_size
    if not 0 <= config.vocab_size - n < VOCAB_PADDING:
        raise ModelError(f"{tokenizer.path}: tokenizer vocabulary has {n} tokens but config.json vocab_size is "
                         f"{config.vocab_size}: tokenizer and weights do not belong together")


def load_dnabert_tokenizer(model_dir: str | Path) -> DNABERTTokenizer:
    model_dir = Path(model_dir)
    config = DNABERTConfig.from_json(model_dir / "config.json")
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{model_dir}: no tokenizer.json (DNABERT-S ships its BPE tokenizer as tokenizer.json)")
    tokenizer = DNABERTTokenizer(path)
    check_tokenizer_matches(tokenizer, config)
    return tokenizer


COMPILE_SCOPES = ("layer", "mlp")


def compile_layers(model: DNABERT, scope: str = "layer", *, mode: str | None = None, backend: str = "inductor",
                   fullgraph: bool = False) -> None:
    """torch.compile each layer ("layer": the whole layer, attention included; "mlp": only the gated MLP), with
    symbolic lengths. All layers share one graph (same code, parameters are graph inputs), so it compiles once per
    dtype. "layer" fuses what eager runs as separate passes over the [T, hidden] and [T, 2 * FFN] activations: the
    Wqkv bias and split, the residual adds with their LayerNorms (computed in fp32 inside the fused kernels), and
    GELU * gate; FlexAttention (the "flex" backend) becomes one kernel of the same graph. The block mask is built
    outside, once per pack. mode: torch.compile's (None = "default"; "max-autotune-no-cudagraphs" also autotunes
    the matmuls and the flex kernel's tiles, at a longer first compile). backend/fullgraph: for the tests."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope {scope!r}; choose from {', '.join(COMPILE_SCOPES)}")
    # nn.Module.compile wraps Module._call_impl: every compiled module of the process (both scopes, every dtype,
    # the one-block-pack specialisation, ESM-2's compiled blocks) shares that code object's cache entries, and past
    # Dynamo's default limit of 8 it would silently run eager (FlexAttention then materialises T x T scores).
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    for layer in model.layers:
        target = layer if scope == "layer" else layer.mlp
        target.compile(dynamic=True, mode=mode, backend=backend, fullgraph=fullgraph)


# FlexAttention block size for DNABERT-S packs: the H200 bench above prefers 64 on reads and on wide lengths.
DNABERT_FLEX_BLOCK = 64


def load_dnabert_encoder(model_dir: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, backend: str = "auto",
                         compile: bool | str | None = None, compile_mode: str | None = None,
                         flex_block_size: int | None = None) -> DNABERTEncoder:
    """compile: True or "layer" = torch.compile every whole layer (see `compile_layers`; flex backend only, others
    get "mlp"), "mlp" = only the gated MLP (the previous default, kept for comparison), False = eager.
    None (default) = "layer" on CUDA unless VIRNUCPRO_NO_COMPILE=1, as the ESM-2 model does; never on CPU, where
    compiling costs more than it saves. `encoder.options` records what was applied.
    compile_mode: torch.compile mode (default VIRNUCPRO_COMPILE_MODE, else torch's default).
    flex_block_size: FlexAttention block (default VIRNUCPRO_FLEX_BLOCK, else 64): 64 halves the attention work
    wasted on 150-nt reads (~37 tokens, so a 128 block pairs each query with ~256 keys) at smaller kernel tiles.
    Measured on an H200 (bench/results/dnabert-h200-2026-11-30.json, whole-layer compile, fp16): 64 gives 1.74M
    tokens/s on 150-nt reads and 1.53M on 100..3000 nt, against 1.46M and 1.22M with 128."""
    model_dir = Path(model_dir)
    config = DNABERTConfig.from_json(model_dir / "config.json")
    path = weights_file(model_dir)
    device = torch.device(device)
    try:
        # Resolved once here: a backend that cannot run ALiBi on this device/dtype fails at load, not mid-run.
        backend = resolve_backend(backend, device=device, dtype=dtype, alibi=True)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    flex_block_size = int(flex_block_size or os.environ.get("VIRNUCPRO_FLEX_BLOCK") or DNABERT_FLEX_BLOCK)
    if flex_block_size < 16 or flex_block_size & (flex_block_size - 1):
        raise ModelError(f"flex block size {flex_block_size}: must be a power of two >= 16")
    with torch.device("meta"):
        # Shapes only: the real tensors come from the checkpoint (assign=True below).
        model = DNABERT(config, backend=backend, flex_block_size=flex_block_size)
    state = convert_state_dict(read_state_dict(path), config, path, model)
    digest = fingerprint(config, state)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.to_runtime(device, dtype).eval().requires_grad_(False)
    if compile is None:
        compile = device.type == "cuda" and os.environ.get("VIRNUCPRO_NO_COMPILE") != "1"
    compile_mode = compile_mode or os.environ.get("VIRNUCPRO_COMPILE_MODE") or None
    scope = None if not compile else "layer" if compile is True else str(compile)
    if scope not in (None, *COMPILE_SCOPES):
        raise ModelError(f"compile scope {scope!r}; choose from {', '.join(COMPILE_SCOPES)}")
    encoder = DNABERTEncoder(model, digest, device, dtype, backend,
                             {"flex_block_size": flex_block_size if backend == "flex" else None})
    encoder.compile(scope, mode=compile_mode)
    return encoder


# ----------------------------------------------------------------------------------------------------- tiny model
def _train_tiny_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, models, processors, trainers

    rng = torch.Generator().manual_seed(seed)
    corpus = ["".join("ACGT"[i] for i in torch.randint(0, 4, (int(n),), generator=rng).tolist())
              for n in torch.randint(50, 400, (200,), generator=rng)]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=list("ACGTN"))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIAL_TOKENS.index("[CLS]")), ("[SEP]", SPECIAL_TOKENS.index("[SEP]"))])
    return tokenizer


def tiny_state_dict(config: DNABERTConfig, seed: int, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random weights under the published names (no prefix). Large enough std that attention is far from uniform
    and every parameter, LayerNorms included, moves the output: tests must be able to fail."""
    rng = torch.Generator().manual_seed(seed)
    model = DNABERT(config)
    state = {}
    for published, ours in published_key_map(config).items():
        shape = model.state_dict()[ours].shape
        noise = torch.randn(shape, generator=rng) * std
        state[published] = (1.0 + noise) if ours.endswith("norm.weight") else noise
    return state


def save_tiny_dnabert(directory: str | Path, seed: int = 0, *, num_layers: int = 2, hidden_size: int = 32,
                      num_heads: int = 4, intermediate_size: int = 64, vocab_size: int = 128,
                      layout: str = "masked_lm", weights_format: str = "safetensors", std: float = 0.2) -> Path:
    """Writes a tiny random DNABERT-S in the published on-disk format: config.json (published fields, tiny sizes),
    weights under the published names and a BPE tokenizer.json trained on random DNA.

    layout "masked_lm": `bert.` prefix plus `cls.predictions.*` heads (the DNABERT-2-117M layout);
    layout "model": bare names plus `pooler.*` (a BertModel export). weights_format: "safetensors" or "bin".
    std: weight scale (0.2 suits the tiny default; ~0.05 keeps a DNABERT-S-sized 768-wide model well conditioned).
    """
    if layout not in ("masked_lm", "model") or weights_format not in ("safetensors", "bin"):
        raise ValueError(f"layout {layout!r} / weights_format {weights_format!r} not supported")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tiny_tokenizer(seed, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = DNABERTConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden_size,
                           num_hidden_layers=num_layers, num_attention_heads=num_heads,
                           intermediate_size=intermediate_size)
    published = {
        "_name_or_path": "virnucpro/tiny-dnabert-s",
        "alibi_starting_size": 512,
        "architectures": ["BertForMaskedLM" if layout == "masked_lm" else "BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_bert.BertConfig",
            "AutoModel": "bert_layers.BertModel",
            "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
            "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification",
        },
        "classifier_dropout": None,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": config.layer_norm_eps,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": config.type_vocab_size,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }
    (directory / "config.json").write_text(json.dumps(published, indent=2) + "\n")

    body = tiny_state_dict(config, seed, std)
    rng = torch.Generator().manual_seed(seed + 1)
    h, v = hidden_size, config.vocab_size
    if layout == "masked_lm":
        state = {"bert." + k: t for k, t in body.items()}
        state |= {
            "cls.predictions.transform.dense.weight": torch.randn(h, h, generator=rng) * 0.02,
            "cls.predictions.transform.dense.bias": torch.zeros(h),
            "cls.predictions.transform.LayerNorm.weight": torch.ones(h),
            "cls.predictions.transform.LayerNorm.bias": torch.zeros(h),
            # Tied to the word embeddings in the published model; a copy here (safetensors refuses shared storage).
            "cls.predictions.decoder.weight": body["embeddings.word_embeddings.weight"].clone(),
            "cls.predictions.decoder.bias": torch.zeros(v),
        }
    else:
        state = dict(body) | {"pooler.dense.weight": torch.randn(h, h, generator=rng) * 0.02,
                              "pooler.dense.bias": torch.zeros(h)}
    state = {k: t.contiguous() for k, t in state.items()}
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory

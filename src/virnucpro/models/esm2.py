"""ESM-2 (Lin et al. 2023), packed: one token stream per forward, attention kept inside each sequence.

The model knows only its own layout (fused `wqkv`, `attn_norm`, `ffn_norm`, `final_norm`); Hugging Face `EsmModel`
folders and fair-esm `.pt` checkpoints are converted to it at load time by `convert_hf_state_dict` /
`convert_fair_state_dict`, which fail with the file, tensor and shapes when anything is missing or mis-shaped.

Semantics follow fair-esm / HF `EsmModel` at inference: embeddings x0.88 (token-dropout rescale with no <mask>
tokens present; our tokenizer never emits <mask>), rotary positions (restarting per sequence), pre-LayerNorm
blocks, erf GELU, final `emb_layer_norm_after`. Pooling is VirNucPro's: mean of the last layer over residues
(first and last token of each sequence, i.e. <cls>/<eos>, excluded).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from virnucpro.errors import ModelError
from virnucpro.models.attention import resolve_backend, run_backend
from virnucpro.models.packing import position_ids_from_cu_seqlens, sequence_index

# The standard ESM-2 alphabet (fair-esm Alphabet "ESM-1b", HF vocab.txt): index = token id.
ESM_VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
             "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>")
# The reference truncates every protein to its first 1024 residues (BatchConverter(truncation_seq_length=1024)).
MAX_RESIDUES = 1024
# Fraction of tokens masked during ESM-2 training (15% selected x 80% replaced by <mask>); inference rescales by it.
MASK_RATIO_TRAIN = 0.15 * 0.8


# --------------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ESM2Config:
    num_layers: int = 36
    hidden_size: int = 2560
    num_heads: int = 40
    intermediate_size: int = 10240
    vocab_size: int = 33
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    token_dropout: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ModelError(f"ESM-2 config: hidden_size {self.hidden_size} is not a multiple of num_heads "
                             f"{self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_name(cls, name: str) -> "ESM2Config":
        key = name.removeprefix("facebook/").removesuffix("_UR50D")
        if key not in PRESETS:
            raise ModelError(f"unknown ESM-2 preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[key]

    @classmethod
    def from_hf(cls, config: dict[str, Any], where: str = "config.json") -> "ESM2Config":
        """From a Hugging Face `EsmConfig` dict; refuses ESM-1 / ESMFold shapes we do not implement."""
        if config.get("position_embedding_type", "absolute") != "rotary":
            raise ModelError(f"{where}: position_embedding_type is {config.get('position_embedding_type')!r}; "
                             "only ESM-2 (rotary) models are supported")
        if config.get("emb_layer_norm_before"):
            raise ModelError(f"{where}: emb_layer_norm_before is set (ESM-1b layout); only ESM-2 is supported")
        if config.get("is_folding_model"):
            raise ModelError(f"{where}: this is an ESMFold model, not an ESM-2 encoder")
        try:
            return cls(num_layers=int(config["num_hidden_layers"]), hidden_size=int(config["hidden_size"]),
                       num_heads=int(config["num_attention_heads"]),
                       intermediate_size=int(config["intermediate_size"]),
                       vocab_size=int(config.get("vocab_size", 33)),
                       layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
                       rope_theta=float(config.get("rope_theta", 10000.0)),
                       token_dropout=bool(config.get("token_dropout", True)))
        except KeyError as err:
            raise ModelError(f"{where}: missing key {err.args[0]!r} of an ESM-2 config") from None

    @classmethod
    def from_fair(cls, cfg: Any, where: str) -> "ESM2Config":
        """From a fair-esm checkpoint's `cfg["model"]` (argparse.Namespace or dict). fair-esm's ESM2 always uses a
        4x FFN and torch LayerNorm (eps 1e-5), whatever the stored config says."""
        get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
        try:
            layers, dim, heads = (int(get(k)) for k in ("encoder_layers", "encoder_embed_dim",
                                                        "encoder_attention_heads"))
        except TypeError:
            raise ModelError(f"{where}: cfg['model'] lacks encoder_layers / encoder_embed_dim / "
                             "encoder_attention_heads; not a fair-esm ESM-2 checkpoint") from None
        return cls(num_layers=layers, hidden_size=dim, num_heads=heads, intermediate_size=4 * dim,
                   token_dropout=bool(get("token_dropout", True)))

    def to_hf(self) -> dict[str, Any]:
        """The config.json Hugging Face writes for an ESM-2 `EsmForMaskedLM` of this shape."""
        return {
            "architectures": ["EsmForMaskedLM"], "model_type": "esm", "attention_probs_dropout_prob": 0.0,
            "classifier_dropout": None, "emb_layer_norm_before": False, "esmfold_config": None,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": self.hidden_size,
            "initializer_range": 0.02, "intermediate_size": self.intermediate_size, "is_folding_model": False,
            "layer_norm_eps": self.layer_norm_eps, "mask_token_id": 32, "max_position_embeddings": 1026,
            "num_attention_heads": self.num_heads, "num_hidden_layers": self.num_layers, "pad_token_id": 1,
            "position_embedding_type": "rotary", "token_dropout": self.token_dropout, "torch_dtype": "float32",
            "use_cache": True, "vocab_list": None, "vocab_size": self.vocab_size,
        }


PRESETS: dict[str, ESM2Config] = {
    "esm2_t6_8M": ESM2Config(6, 320, 20, 1280),
    "esm2_t12_35M": ESM2Config(12, 480, 20, 1920),
    "esm2_t30_150M": ESM2Config(30, 640, 20, 2560),
    "esm2_t33_650M": ESM2Config(33, 1280, 20, 5120),
    "esm2_t36_3B": ESM2Config(36, 2560, 40, 10240),
    "esm2_t48_15B": ESM2Config(48, 5120, 40, 20480),
}
TINY = ESM2Config(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=256)


# --------------------------------------------------------------------------------------------------- tokenizer

@dataclass(frozen=True)
class ESMTokenizer:
    """ESM-2 tokenizer: one token per character, <cls> ... <eos>, unknown characters -> <unk>.

    Outlier rule [PACK-06]: proteins longer than `max_residues` are truncated to their first `max_residues` residues
    before the model, exactly as the reference (fair-esm BatchConverter, truncation_seq_length=1024) does.
    Plain data, picklable, CUDA-free: safe in spawned DataLoader workers.
    """

    vocab: tuple[str, ...] = ESM_VOCAB
    max_residues: int = MAX_RESIDUES
    kind: str = "esm2"

    def __post_init__(self) -> None:
        index = {tok: i for i, tok in enumerate(self.vocab)}
        for special in ("<cls>", "<eos>", "<unk>", "<pad>"):
            if special not in index:
                raise ModelError(f"ESM vocabulary lacks {special}")
        unk = index["<unk>"]
        # A byte -> token-id table: str.encode + bytes.translate tokenizes a protein in C, not a Python loop.
        table = bytearray([unk] * 256)
        for tok, i in index.items():
            if len(tok) == 1 and ord(tok) < 256:
                if i > 255:
                    raise ModelError("ESM vocabulary with single-character tokens beyond id 255 is not supported")
                table[ord(tok)] = i
        object.__setattr__(self, "_table", bytes(table))
        object.__setattr__(self, "cls_id", index["<cls>"])
        object.__setattr__(self, "eos_id", index["<eos>"])
        object.__setattr__(self, "pad_id", index["<pad>"])
        object.__setattr__(self, "unk_id", unk)

    @property
    def max_tokens(self) -> int:
        return self.max_residues + 2

    def encode(self, sequence: str) -> list[int]:
        residues = sequence[: self.max_residues].encode("latin-1", errors="replace").translate(self._table)
        return [self.cls_id, *residues, self.eos_id]

    def decode(self, ids: list[int]) -> list[str]:
        return [self.vocab[i] for i in ids]


def read_vocab(path: Path) -> tuple[str, ...]:
    tokens = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not tokens:
        raise ModelError(f"{path}: empty vocabulary")
    return tokens


# --------------------------------------------------------------------------------------------------- model

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, 1, D] fp32. Rotated in fp32 (as HF does) then cast back."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def split_qkv_rotary(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """[T, 3, H, D] -> contiguous q, k (rotated) and v, the layout every varlen kernel wants."""
    q, k, v = qkv.unbind(1)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v.contiguous()


@functools.cache
def compiled_split_qkv_rotary():
    # Eager, the fp32 rotation is ~10 elementwise passes over q and k per layer: about a third of a 3B layer's
    # matmul time at 64K tokens. Compiled (CUDA) it is one fused read of qkv and one write of q, k, v, with the
    # fp32 math in registers. Symbolic lengths: packs differ in size every call.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)  # one graph per dtype x head shape
    return torch.compile(split_qkv_rotary, dynamic=True)


class Attention(nn.Module):
    def __init__(self, cfg: ESM2Config):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.wo = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        # Plain function by default; ESM2Encoder swaps in the compiled one on CUDA.
        self.qkv_rotary = split_qkv_rotary

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen: int, backend: str):
        T = x.shape[0]
        qkv = self.wqkv(x).view(T, 3, self.num_heads, self.head_dim)
        # ESM scales q before the rotation and HF / fair-esm agree; rotation is linear, so scaling inside the
        # attention kernel (scale=None -> 1/sqrt(head_dim)) gives the same numbers and one op less.
        q, k, v = self.qkv_rotary(qkv, cos, sin)
        o = run_backend(backend, q, k, v, cu_seqlens, max_seqlen)  # backend resolved once by the encoder
        return self.wo(o.reshape(T, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ESM2Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.w2(F.gelu(self.w1(x)))  # exact (erf) GELU, as ESM


class Block(nn.Module):
    def __init__(self, cfg: ESM2Config):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, cu_seqlens, max_seqlen: int, backend: str):
        x = x + self.attn(self.attn_norm(x), cos, sin, cu_seqlens, max_seqlen, backend)
        return x + self.ffn(self.ffn_norm(x))


class ESM2(nn.Module):
    def __init__(self, cfg: ESM2Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def rope_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        # Recomputed per forward (3 tiny kernels) rather than kept as a buffer: `model.half()` would round a
        # buffer to fp16 and shift every rotary angle.
        d = self.config.head_dim
        return 1.0 / (self.config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))

    def forward(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                position_ids: torch.Tensor | None = None, backend: str = "sdpa") -> torch.Tensor:
        """input_ids int64 [T], cu_seqlens int32 [B + 1] -> last hidden state [T, hidden]. `backend` must be a
        concrete attention backend name (see attention.resolve_backend)."""
        if position_ids is None:
            position_ids = position_ids_from_cu_seqlens(cu_seqlens, input_ids.shape[0])
        x = self.embed_tokens(input_ids)
        if self.config.token_dropout:
            x = x * (1.0 - MASK_RATIO_TRAIN)
        freqs = position_ids.to(torch.float32)[:, None] * self.rope_inv_freq(input_ids.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, head_dim]
        cos, sin = emb.cos(), emb.sin()
        for layer in self.layers:
            x = layer(x, cos, sin, cu_seqlens, max_seqlen, backend)
        return self.final_norm(x)


def mean_pool_residues(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[T, D] -> float32 [B, D]: per-sequence mean over tokens 1..len-2 (BOS/EOS excluded), on device, no sync.

    A sequence with no residue (just <cls><eos>) gets zeros; the reference would give NaN."""
    T = hidden.shape[0]
    seq = sequence_index(cu_seqlens, T)
    cu = cu_seqlens.to(torch.int64)
    pos = torch.arange(T, device=hidden.device) - cu[seq]
    lengths = cu[1:] - cu[:-1]
    inner = (pos > 0) & (pos < lengths[seq] - 1)
    weight = inner.to(torch.float32) / (lengths[seq] - 2).clamp(min=1).to(torch.float32)
    out = torch.zeros(cu_seqlens.numel() - 1, hidden.shape[1], device=hidden.device, dtype=torch.float32)
    return out.index_add_(0, seq, hidden.float() * weight[:, None])


# --------------------------------------------------------------------------------------------------- encoder

class ESM2Encoder:
    """`PackedEncoder` over an `ESM2` module (see virnucpro.models.encoder)."""

    kind = "esm2"

    def __init__(self, model: ESM2, *, backend: str = "auto", fingerprint: str = "", source: str = "",
                 compile_blocks: bool | None = None):
        self.model = model.eval()
        cfg = model.config
        self.config = cfg
        self.hidden_size, self.num_layers = cfg.hidden_size, cfg.num_layers
        self.num_heads, self.intermediate_size = cfg.num_heads, cfg.intermediate_size
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.backend = resolve_backend(backend, device=self.device, dtype=self.dtype, alibi=False)
        self.fingerprint = fingerprint
        self.source = source
        # Opt-in (VIRNUCPRO_COMPILE_BLOCKS=1 on CUDA, or compile_blocks=True): torch.compile every block with
        # symbolic lengths, fusing LayerNorm, GELU, residual adds and the rotary around the GEMMs and the
        # attention kernel. Only with the varlen kernels, which trace as single ops (flex compiles itself; the
        # per-sequence sdpa loop would break the graph at every sequence).
        if compile_blocks is None:
            compile_blocks = (self.device.type == "cuda" and os.environ.get("VIRNUCPRO_COMPILE_BLOCKS") == "1"
                              and self.backend in ("flash_attn", "torch_varlen"))
        self.compiled_blocks = bool(compile_blocks)
        no_compile = os.environ.get("VIRNUCPRO_NO_COMPILE") == "1"
        if self.compiled_blocks:
            import torch._dynamo.config as dynamo_config

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
            for layer in model.layers:
                layer.attn.qkv_rotary = split_qkv_rotary  # fused by the block's own compile
                layer.compile(dynamic=True)
        elif self.device.type == "cuda" and not no_compile:
            fused = compiled_split_qkv_rotary()
            for layer in model.layers:
                layer.attn.qkv_rotary = fused

    def _inputs(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # No-ops when the engine already placed the pack (the usual case); a convenience for everyone else.
        return (input_ids.to(self.device, torch.int64, non_blocking=True),
                cu_seqlens.to(self.device, torch.int32, non_blocking=True))

    @torch.inference_mode()
    def forward_hidden(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Last hidden state [T, hidden] of a pack (model dtype)."""
        input_ids, cu_seqlens = self._inputs(input_ids, cu_seqlens)
        return self.model(input_ids, cu_seqlens, int(max_seqlen), backend=self.backend)

    @torch.inference_mode()
    def embed_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        input_ids, cu_seqlens = self._inputs(input_ids, cu_seqlens)
        hidden = self.model(input_ids, cu_seqlens, int(max_seqlen), backend=self.backend)
        return mean_pool_residues(hidden, cu_seqlens)


# --------------------------------------------------------------------------------------------------- checkpoints

_LAYER_MAP_HF = {  # ours -> HF EsmModel names (inside encoder.layer.{i}.)
    "attn_norm": "attention.LayerNorm", "attn.wo": "attention.output.dense", "ffn_norm": "LayerNorm",
    "ffn.w1": "intermediate.dense", "ffn.w2": "output.dense",
}
_LAYER_MAP_FAIR = {  # ours -> fair-esm ESM2 names (inside layers.{i}.)
    "attn_norm": "self_attn_layer_norm", "attn.wo": "self_attn.out_proj", "ffn_norm": "final_layer_norm",
    "ffn.w1": "fc1", "ffn.w2": "fc2",
}
# Tensors a checkpoint may carry that the encoder does not use: heads and recomputed rotary / position buffers.
_IGNORED_HF = re.compile(r"^(lm_head\.|contact_head\.|pooler\.|classifier\.)|(inv_freq|position_ids)$")
_IGNORED_FAIR = re.compile(r"^(lm_head\.|contact_head\.)|inv_freq$")


def _source_names(cfg: ESM2Config, layout: str) -> dict[str, list[str]]:
    """For every tensor of our layout, the checkpoint tensor(s) it is made of (q/k/v are fused along dim 0)."""
    hf = layout == "hf"
    names = {
        "embed_tokens.weight": ["embeddings.word_embeddings.weight" if hf else "embed_tokens.weight"],
        "final_norm.weight": ["encoder.emb_layer_norm_after.weight" if hf else "emb_layer_norm_after.weight"],
        "final_norm.bias": ["encoder.emb_layer_norm_after.bias" if hf else "emb_layer_norm_after.bias"],
    }
    layer_map = _LAYER_MAP_HF if hf else _LAYER_MAP_FAIR
    qkv = ("attention.self.query", "attention.self.key", "attention.self.value") if hf else \
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    for i in range(cfg.num_layers):
        prefix = f"encoder.layer.{i}." if hf else f"layers.{i}."
        for p in ("weight", "bias"):
            names[f"layers.{i}.attn.wqkv.{p}"] = [f"{prefix}{n}.{p}" for n in qkv]
            for ours, theirs in layer_map.items():
                names[f"layers.{i}.{ours}.{p}"] = [f"{prefix}{theirs}.{p}"]
    return names


def expected_shapes(cfg: ESM2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = ESM2(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_state_dict(tensors: dict[str, torch.Tensor], cfg: ESM2Config, layout: str,
                       origin: dict[str, str]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (prefixes already stripped) -> our layout. `origin` maps a tensor name to its file, for
    error messages. Raises ModelError on a missing, mis-shaped or unexpected tensor."""
    ignored = _IGNORED_HF if layout == "hf" else _IGNORED_FAIR
    shapes = expected_shapes(cfg)
    any_file = next(iter(origin.values()), "checkpoint")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, sources in _source_names(cfg, layout).items():
        want = shapes[ours]
        part = (want[0] // len(sources), *want[1:])
        parts = []
        for name in sources:
            if name not in tensors:
                raise ModelError(f"{any_file}: missing tensor '{name}' (expected shape {list(part)}) for "
                                 f"{_describe(cfg)}")
            t = tensors[name]
            if tuple(t.shape) != part:
                raise ModelError(f"{origin.get(name, any_file)}: tensor '{name}' has shape {list(t.shape)}, "
                                 f"expected {list(part)} for {_describe(cfg)}")
            parts.append(t)
            used.add(name)
        out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
    unexpected = sorted(k for k in tensors if k not in used and not ignored.search(k))
    if unexpected:
        extra = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelError(f"{origin.get(unexpected[0], any_file)}: unexpected tensor '{unexpected[0]}'{extra} for "
                         f"{_describe(cfg)}; config and weights disagree")
    return out


def _describe(cfg: ESM2Config) -> str:
    return f"ESM-2 with {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads"


def _strip_prefix(tensors: dict[str, torch.Tensor], pattern: str) -> dict[str, torch.Tensor]:
    rx = re.compile(pattern)
    return {rx.sub("", k, count=1): v for k, v in tensors.items()}


def _torch_load(path: Path) -> Any:
    """Load a pickled checkpoint without running arbitrary code: tensors and plain containers only, plus
    argparse.Namespace, which fair-esm / fairseq checkpoints use for their config."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; all mean "cannot read it safely"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: cannot read as a PyTorch checkpoint with weights_only loading ({first})") from None


def _read_hf_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], list[Path]]:
    """All tensors of an HF folder (single or sharded safetensors / pytorch_model.bin) with each tensor's file."""
    from safetensors.torch import load_file

    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
            break
        if (folder / single).is_file():
            files = [folder / single]
            break
    else:
        raise ModelError(f"{folder}: no model.safetensors or pytorch_model.bin (Hugging Face EsmModel folder "
                         "expected)")
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for f in files:
        if not f.is_file():
            raise ModelError(f"{f}: weight file named in the index is missing")
        if f.suffix == ".safetensors":
            try:
                part = load_file(str(f))
            except Exception as err:  # noqa: BLE001
                raise ModelError(f"{f}: cannot read safetensors file ({err})") from None
        else:
            part = _torch_load(f)
            if not isinstance(part, dict):
                raise ModelError(f"{f}: expected a state dict, found {type(part).__name__}")
        tensors.update(part)
        origin.update(dict.fromkeys(part, str(f)))
    return tensors, origin, files


def find_checkpoint(path: str | Path) -> tuple[str, Path]:
    """("hf", folder) or ("fair", file.pt) for a model path; ModelError for anything else, incl. a wrong model kind."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model path does not exist")
    if path.is_file():
        if path.suffix == ".pt":
            return "fair", path
        raise ModelError(f"{path}: expected a Hugging Face ESM-2 folder or a fair-esm .pt checkpoint")
    config = path / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except json.JSONDecodeError as err:
            raise ModelError(f"{config}: not valid JSON ({err})") from None
        model_type = cfg.get("model_type")
        if model_type != "esm":
            arch = ",".join(cfg.get("architectures") or []) or "?"
            hint = " (looks like DNABERT-S: it belongs to --model-kind dnabert / --dnabert-model)" if model_type == "bert" else ""
            raise ModelError(f"{config}: model_type is {model_type!r} (architectures {arch}), not an ESM-2 model "
                             f"folder{hint}")
        return "hf", path
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return "fair", pts[0]
    if len(pts) > 1:
        raise ModelError(f"{path}: several .pt files ({', '.join(p.name for p in pts)}); name the checkpoint file")
    raise ModelError(f"{path}: neither a Hugging Face ESM-2 folder (config.json) nor a fair-esm .pt checkpoint")


def load_esm2_checkpoint(path: str | Path) -> tuple[ESM2Config, dict[str, torch.Tensor], list[Path], str]:
    """Read and convert a checkpoint: (config, our state dict, files read, layout)."""
    layout, where = find_checkpoint(path)
    if layout == "hf":
        cfg = ESM2Config.from_hf(json.loads((where / "config.json").read_text()), str(where / "config.json"))
        tensors, origin, files = _read_hf_weights(where)
        # Masked-LM checkpoints (facebook/esm2_*) keep the encoder under `esm.`; bare EsmModel saves do not.
        tensors = _strip_prefix(tensors, r"^esm\.")
        origin = {re.sub(r"^esm\.", "", k, count=1): v for k, v in origin.items()}
        files = [where / "config.json", *files]
    else:
        data = _torch_load(where)
        if not isinstance(data, dict) or "model" not in data:
            raise ModelError(f"{where}: not a fair-esm checkpoint (expected a dict with 'model' and 'cfg')")
        cfg_obj = (data.get("cfg") or {}).get("model") if isinstance(data.get("cfg"), dict) else None
        if cfg_obj is None:
            cfg_obj = data.get("args")
        if cfg_obj is None:
            raise ModelError(f"{where}: fair-esm checkpoint without 'cfg'['model'] or 'args'")
        cfg = ESM2Config.from_fair(cfg_obj, str(where))
        tensors = _strip_prefix(data["model"], r"^(encoder\.sentence_encoder\.|encoder\.)")
        origin = dict.fromkeys(tensors, str(where))
        files = [where]
        # fair-esm ESM-2 checkpoints have no rotary-less variant; an ESM-1 layout would lack rot_emb and have
        # embed_positions, which the unexpected-tensor check reports.
    return cfg, convert_state_dict(tensors, cfg, layout, origin), files, layout


def load_esm2_tokenizer(path: str | Path) -> ESMTokenizer:
    layout, where = find_checkpoint(path)
    vocab_file = where / "vocab.txt" if layout == "hf" else where.parent / "vocab.txt"
    vocab = read_vocab(vocab_file) if vocab_file.is_file() else ESM_VOCAB
    return ESMTokenizer(vocab=vocab)


def build_esm2(cfg: ESM2Config, state_dict: dict[str, torch.Tensor] | None = None, *,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ESM2:
    """An `ESM2` on `device` in `dtype`: from `state_dict`, or randomly initialised (benchmarks) when None."""
    device = torch.device(device)
    if state_dict is None:
        with torch.device(device):
            model = ESM2(cfg)
        init_random_(model, seed=0, fast=device.type != "cpu")
        return model.to(dtype=dtype).eval()
    with torch.device("meta"):
        model = ESM2(cfg)
    # assign=True adopts the loaded tensors instead of copying into a random init: no 3B-parameter init pass.
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}, strict=False,
                          assign=True)
    return model.eval()


def init_random_(model: ESM2, seed: int = 0, std: float | None = None, *, fast: bool = False) -> ESM2:
    """Seeded random weights. A large std (0.1 for small models, 2/sqrt(hidden) for big ones so fp16 activations
    stay in range) keeps attention far from uniform, so tests that compare sequences can tell them apart;
    LayerNorms get random affine terms so a swapped norm would show."""
    if std is None:
        std = min(0.1, 2.0 / math.sqrt(model.config.hidden_size))
    device = next(model.parameters()).device
    # Drawn on the CPU by default so every device gets the same weights for a seed; `fast` draws on the model's
    # device (benchmarks: a 3B model in seconds instead of a minute).
    gen = torch.Generator(device=device if fast else "cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.randn(p.shape, generator=gen, device=gen.device, dtype=torch.float32) * std
            if name.endswith("norm.weight"):
                value = value + 1.0
            p.copy_(value)
    return model


def load_esm2_encoder(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      backend: str = "auto") -> ESM2Encoder:
    from virnucpro.models.registry import fingerprint

    cfg, state_dict, files, layout = load_esm2_checkpoint(path)
    model = build_esm2(cfg, state_dict, device=device, dtype=dtype)
    return ESM2Encoder(model, backend=backend, fingerprint=fingerprint("esm2", asdict(cfg), files),
                       source=str(path))


# --------------------------------------------------------------------------------------------------- writers

def to_hf_state_dict(model: ESM2) -> dict[str, torch.Tensor]:
    """Our layout -> the tensor names of a Hugging Face `EsmForMaskedLM` checkpoint (with `esm.` prefix and the
    LM / contact heads, as facebook/esm2_* ship), so tiny test models exercise the real loading path."""
    cfg = model.config
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, sources in _source_names(cfg, "hf").items():
        chunks = sd[ours].chunk(len(sources), 0)
        for name, t in zip(sources, chunks):
            out["esm." + name] = t.detach().clone().contiguous()
    for i in range(cfg.num_layers):
        out[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = model.rope_inv_freq()
    gen = torch.Generator().manual_seed(1)
    d, v = cfg.hidden_size, cfg.vocab_size
    out["esm.contact_head.regression.weight"] = torch.randn(1, cfg.num_layers * cfg.num_heads, generator=gen)
    out["esm.contact_head.regression.bias"] = torch.zeros(1)
    out["lm_head.dense.weight"] = torch.randn(d, d, generator=gen) * 0.02
    out["lm_head.dense.bias"] = torch.zeros(d)
    out["lm_head.layer_norm.weight"] = torch.ones(d)
    out["lm_head.layer_norm.bias"] = torch.zeros(d)
    out["lm_head.decoder.weight"] = out["esm.embeddings.word_embeddings.weight"].clone()
    out["lm_head.bias"] = torch.zeros(v)
    return out


def to_fair_state_dict(model: ESM2) -> dict[str, torch.Tensor]:
    """Our layout -> fair-esm checkpoint names (`encoder.sentence_encoder.*` as fairseq saved them, LM head under
    `encoder.lm_head.*`)."""
    cfg = model.config
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, sources in _source_names(cfg, "fair").items():
        for name, t in zip(sources, sd[ours].chunk(len(sources), 0)):
            out["encoder.sentence_encoder." + name] = t.detach().clone().contiguous()
    for i in range(cfg.num_layers):
        out[f"encoder.sentence_encoder.layers.{i}.self_attn.rot_emb.inv_freq"] = model.rope_inv_freq()
    d, v = cfg.hidden_size, cfg.vocab_size
    out["encoder.lm_head.weight"] = out["encoder.sentence_encoder.embed_tokens.weight"].clone()
    out["encoder.lm_head.bias"] = torch.zeros(v)
    out["encoder.lm_head.dense.weight"] = torch.zeros(d, d)
    out["encoder.lm_head.dense.bias"] = torch.zeros(d)
    out["encoder.lm_head.layer_norm.weight"] = torch.ones(d)
    out["encoder.lm_head.layer_norm.bias"] = torch.zeros(d)
    return out


def save_hf_folder(model: ESM2, directory: str | Path) -> Path:
    """Write `model` as a Hugging Face ESM-2 folder: config.json, model.safetensors, vocab.txt and the tokenizer
    files `EsmTokenizer.save_pretrained` writes."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2) + "\n")
    save_file(to_hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "<cls>", "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<pad>",
         "unk_token": "<unk>"}, indent=2) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EsmTokenizer", "model_max_length": 1026, "clean_up_tokenization_spaces": True,
         "cls_token": "<cls>", "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<pad>",
         "unk_token": "<unk>"}, indent=2) + "\n")
    return directory


def save_fair_checkpoint(model: ESM2, path: str | Path) -> Path:
    """Write `model` as a fair-esm ESM-2 `.pt`: {"model": state dict, "cfg": {"model": Namespace(...)}}."""
    cfg = model.config
    if cfg.intermediate_size != 4 * cfg.hidden_size:
        raise ModelError("fair-esm ESM-2 checkpoints require intermediate_size = 4 x hidden_size")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(encoder_layers=cfg.num_layers, encoder_embed_dim=cfg.hidden_size,
                              encoder_ffn_embed_dim=cfg.intermediate_size,
                              encoder_attention_heads=cfg.num_heads, token_dropout=cfg.token_dropout)
    torch.save({"model": to_fair_state_dict(model), "cfg": {"model": args}, "args": None}, path)
    return path


def save_tiny_esm2(directory: str | Path, seed: int = 0, cfg: ESM2Config = TINY) -> tuple[Path, Path]:
    """Tiny random ESM-2 in both real formats: DIR/esm2 (HF folder) and DIR/esm2-fair/tiny.pt (same weights)."""
    directory = Path(directory)
    model = init_random_(ESM2(cfg), seed=seed)
    hf = save_hf_folder(model, directory / "esm2")
    fair = save_fair_checkpoint(model, directory / "esm2-fair" / "tiny.pt")
    return hf, fair


__all__ = [
    "ESM2", "ESM2Config", "ESM2Encoder", "ESMTokenizer", "ESM_VOCAB", "PRESETS", "TINY", "MAX_RESIDUES",
    "build_esm2", "load_esm2_checkpoint", "load_esm2_encoder", "load_esm2_tokenizer", "mean_pool_residues",
    "save_tiny_esm2", "save_hf_folder", "save_fair_checkpoint", "find_checkpoint", "init_random_",
]

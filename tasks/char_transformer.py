"""The ``char-transformer`` task: a small character-level Transformer on Python source, in bits per character.

**Corpus.** The Python standard library's own ``.py`` files, present wherever Python is, read
deterministically: the top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` sorted by
name, joined with a newline, cut at ``chars`` bytes.  Bytes are the tokens (vocabulary 128: a
byte :math:`\\ge 128`, from the rare non-ASCII character, becomes 0).  The text is cut into
non-overlapping windows of ``context + 1`` bytes; the first 90% of the windows train (the search
splits its validation data off them), the last 10% test.  The corpus depends on the Python
version (its standard library); on one version it is the same on every machine.

**Model.** A pre-LayerNorm GPT: token and learned position embeddings, ``layers`` blocks of causal
multi-head self-attention and a 4x GELU MLP, each added to the residual stream, a final
LayerNorm and a linear read-out.  With :math:`\\tilde x = \\mathrm{LN}(x)`,

.. math::

    x \\leftarrow x + \\mathrm{Drop}\\big(W_o\\, \\mathrm{Drop}\\big(\\mathrm{softmax}(Q K^\\top / \\sqrt{d} + M)\\big) V\\big),
    \\qquad x \\leftarrow x + \\mathrm{Drop}\\big(W_2\\, \\mathrm{GELU}(W_1 \\mathrm{LN}(x))\\big)

with :math:`(Q, K, V) = \\tilde x W_{qkv}` per head and :math:`M_{ij} = -\\infty` for :math:`j > i`
(causal).  Dropout masks are drawn per inner step from the seeded global RNG
(:meth:`hpo.core.problem.InnerProblem.seed_step`), so every exact backend replays them.  Everything
is written out of place, safe under ``jvp(grad(...))``.

**Loss and metric.** The mean next-byte cross-entropy :math:`\\ell = -\\frac1{BC}\\sum \\log p(y|x)`
in nats trains and is the objective; bits per character :math:`\\mathrm{bpc} = \\ell / \\ln 2` is
reported and ranks (lower is better).
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path
from typing import final

import torch
from torch import Tensor, nn

from hpo.core.data import Batch
from hpo.errors import ConfigError
from hpo.tasks.base import Metric, Problem, cross_entropy

VOCAB = 128
TEST_FRACTION = 0.1


def stdlib_sources() -> list[Path]:
    """The standard library's top-level ``*.py`` files, sorted by name (the corpus's fixed order)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(root.glob("*.py"), key=lambda p: p.name)


def stdlib_bytes(chars: int) -> Tensor:
    """The first ``chars`` bytes of the corpus as a ``(chars,)`` int64 tensor of tokens in ``[0, 128)``.

    A one-line :class:`~hpo.errors.ConfigError` when the standard library's sources hold fewer.
    """
    parts: list[bytes] = []
    size = 0
    for path in stdlib_sources():
        if size >= chars:
            break
        data = path.read_bytes() + b"\n"
        parts.append(data)
        size += len(data)
    if size < chars:
        root = sysconfig.get_paths()["stdlib"]
        raise ConfigError("task", f"char-transformer needs {chars} characters of the standard library's .py "
                                  f"sources in {root} and found {size}; lower --samples or use a Python with its "
                                  f"sources")
    raw = torch.frombuffer(bytearray(b"".join(parts)[:chars]), dtype=torch.uint8).to(torch.int64)
    return torch.where(raw < VOCAB, raw, torch.zeros_like(raw))


@final
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, :math:`\\mathrm{softmax}(QK^\\top/\\sqrt d + M) V` per head."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError("task", f"the width ({width}) must be a multiple of the heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, width) -> (B, C, width)``; position ``i`` attends to ``j <= i`` only."""
        b, c, w = x.shape
        q, k, v = self.qkv(x).reshape(b, c, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) / math.sqrt(w // self.heads)
        causal = torch.ones(c, c, dtype=torch.bool, device=x.device).tril()
        scores = torch.where(causal, scores, torch.full_like(scores, float("-inf")))
        att = self.attn_drop(torch.softmax(scores, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, c, w)
        return self.out_drop(self.proj(y))


@final
class Block(nn.Module):
    """A pre-LayerNorm Transformer block: attention, then a 4x GELU MLP, each added to the input."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        """:math:`x + \\mathrm{attn}(\\mathrm{LN}(x))`, then :math:`x + \\mathrm{MLP}(\\mathrm{LN}(x))`."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@final
class CharTransformer(nn.Module):
    """Byte-level GPT: ``(B, C)`` int64 tokens to ``(B, C, 128)`` next-byte logits.

    Weights start as in GPT-2: linear and embedding weights :math:`\\mathcal N(0, 0.02^2)`, biases 0,
    LayerNorm scale 1 and shift 0.
    """

    def __init__(self, context: int = 64, width: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-byte logits at every position."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok(idx) + self.pos(positions))
        return self.head(self.ln_f(self.blocks(x)))


def next_byte_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-byte cross-entropy (nats) of a ``(B, C + 1)`` batch of windows: inputs ``[:, :-1]``, targets ``[:, 1:]``."""
    return cross_entropy(model(batch[:, :-1]), batch[:, 1:])


def windows(tokens: Tensor, context: int) -> Tensor:
    """``(n, context + 1)``: the non-overlapping windows of ``tokens`` (a short tail is dropped)."""
    n = tokens.shape[0] // (context + 1)
    return tokens[: n * (context + 1)].reshape(n, context + 1)


def char_transformer_task(chars: int = 200_000, context: int = 64, width: int = 64, layers: int = 2, heads: int = 4,
                          dropout: float = 0.1, batch_size: int = 32, samples: int | None = None) -> Problem:
    """The ``char-transformer`` task (see the module docstring): ``chars`` bytes of corpus, the model's sizes.

    ``samples`` keeps only the first ``samples`` training windows (quick runs); the test windows stay.
    """
    data = windows(stdlib_bytes(chars), context)
    n_test = max(1, math.ceil(TEST_FRACTION * data.shape[0]))
    train, test = data[:-n_test], data[-n_test:]
    if samples is not None:
        train = train[: int(samples)]
    bpc = Metric(next_byte_loss, "lower", scale=1 / math.log(2))
    return Problem("char-transformer", lambda: CharTransformer(context, width, layers, heads, dropout),
                   next_byte_loss, train, test, metrics={"bpc": bpc}, batch_size=batch_size)


__all__ = ["CharTransformer", "char_transformer_task", "next_byte_loss", "stdlib_bytes", "stdlib_sources"]

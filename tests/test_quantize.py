"""`suparag models quantize`: an int8 export made here, used by the onnx-int8 backend (issue 16).

One export per session (about a minute): the real CLI makes it from the
packaged all-MiniLM-L6-v2 into a temporary model cache; the tests then check
what it wrote (fused attention, int8 matrix products) and that the backend
runs it, close to the fp32 model, chunking as fp32 does.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import SUPARAG

from worker.models.base import DEFAULT_MODEL
from worker.models.factory import make_embedder
from worker.models.onnx import OnnxInt8Embedder
from worker.models.quantize import MIN_COSINE, QUANTIZED_FILE, RECIPE_FILE, cache_folder
from worker.settings import Settings

TEXTS = [
    "Row level security decides who reads which rows.",
    "An edit committed during a backlog is embedded between the bulk batch's calls.",
    "Les documents sont découpés en morceaux avant d'être vectorisés.",
]


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPARAG_")}
    env.update(SUPARAG_MODEL_CACHE=str(cache), HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.run([SUPARAG, "models", "quantize", *args], env=env, text=True,
                          capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("models")
    result = run("--json", cache=cache)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return cache, json.loads(result.stdout)


def test_the_export_is_fused_int8_and_checked(made):
    cache, report = made
    folder = cache_folder(cache, DEFAULT_MODEL)
    assert report["folder"] == str(folder) and report["model"] == DEFAULT_MODEL
    assert report["fused"] is True and MIN_COSINE <= report["min_cosine"] <= 1.0
    assert json.loads((folder / RECIPE_FILE).read_text()) == report
    ops = {node.op_type for node in onnx.load(str(folder / QUANTIZED_FILE)).graph.node}
    # Matrix products in int8 (not int8 weights cast back to float), attention fused.
    assert {"MatMulInteger", "DynamicQuantizeLinear", "QAttention"} <= ops
    assert "MatMul" not in ops
    # Only finished exports are ever in the cache.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_the_backend_runs_the_export_close_to_fp32(made, embedder):
    cache, _ = made
    int8 = make_embedder("sentence-transformers", settings=Settings(
        embedding_backend="onnx-int8", model_cache=cache))
    assert isinstance(int8, OnnxInt8Embedder)
    assert int8.name == DEFAULT_MODEL + "@onnx-int8"
    assert int8.source == str(cache_folder(cache, DEFAULT_MODEL) / QUANTIZED_FILE)
    ours, theirs = np.array(int8.embed(TEXTS)), np.array(embedder.embed(TEXTS))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    assert ((ours * theirs).sum(axis=1) >= MIN_COSINE).all()
    # The same tokenizer and window: both backends chunk a document alike.
    assert int8.max_tokens == embedder.max_tokens
    assert [int8.count_tokens(t) for t in TEXTS] == [embedder.count_tokens(t) for t in TEXTS]
    # Without the export, the packaged one (another file, its own vectors).
    packaged = OnnxInt8Embedder(cache=cache / "elsewhere")
    assert packaged.source != int8.source


def test_a_second_run_keeps_the_export_and_a_bad_model_is_one_clear_line(made, tmp_path):
    cache, report = made
    file = cache_folder(cache, DEFAULT_MODEL) / QUANTIZED_FILE
    before = file.stat().st_mtime_ns
    again = run("--json", cache=cache)
    assert again.returncode == 0 and json.loads(again.stdout) == report
    assert file.stat().st_mtime_ns == before
    missing = run(str(tmp_path / "no-such-model"), cache=cache)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "cannot load embedding model" in missing.stderr
    assert not cache_folder(cache, str(tmp_path / "no-such-model")).exists()

"""`suparag models`: the local models' int8 exports (issue 16)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cli._common import JsonOption, console, print_json
from worker.models.base import DEFAULT_MODEL
from worker.settings import Settings

app = typer.Typer(help="Local embedding models: make the int8 export the onnx-int8 backend runs.")


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(
        help="A sentence-transformers model: a name (the packaged all-MiniLM-L6-v2, or one "
        "in the Hugging Face cache) or a folder.")] = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option("--force", help="Make it again even if the cache "
                                        "already holds one.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Export MODEL to ONNX, fuse its attention, quantise it to int8, check it, cache it.

    The `onnx-int8` backend (SUPARAG_EMBEDDING_BACKEND=onnx-int8) then runs this
    export rather than the packaged one. It is written under SUPARAG_MODEL_CACHE
    (default ~/.cache/suparag/models) only if its vectors of a few probe texts are
    within a cosine of 0.98 of the fp32 model's. Needs torch and onnx (the worker's
    install has both); all-MiniLM-L6-v2 took about 15 s on 2 cores. Vectors are
    stored as `<model>@onnx-int8`, as with the packaged export."""
    from worker.models.quantize import quantize as make

    settings = Settings()
    if not json_out:
        console.print(f"quantising {escape(model)} (export, fuse, int8, check)…")
    result = make(model, cache=settings.model_cache, force=force)
    if json_out:
        print_json(result.as_dict())
        return
    console.print(
        f"{escape(result.folder)}: int8, attention {'fused' if result.fused else 'not fused'}, "
        f"cosine to fp32 min {result.min_cosine:.4f} mean {result.mean_cosine:.4f}, "
        f"made in {result.seconds:.0f} s. Use it with SUPARAG_EMBEDDING_BACKEND=onnx-int8.")

"""Read files and folders into public.documents, one document per file or JSON record.

Each document has a `source` (the file's path relative to the folder it was
found under, or `file.jsonl#id=...` for one record) that is unique per owner,
so ingesting again upserts on (owner_id, source): unchanged text is left
alone, and the enqueue trigger, which fires only when content_version moves,
queues nothing for it. Problems with one file or record are reported and the
rest goes on; nothing is written in part. docs/ingest.md has the rules.

The stages, one module each, run by `pipeline.ingest`:

    target.make_target   owner, team, visibility, --metadata: checked before anything is read
    discover.discover    paths -> files, each with its source name
    decode.read_text     a file's bytes -> text (encoding, size limit, binary check)
    formats.format_for   text -> documents, one reader per format from one table
    pipeline.read_source one file through those two, its text made storable for PostgreSQL
    write.Batches        batched upsert, and the report

Below are the names `suparag ingest` and the demo use; the rest is in the modules.
"""

from worker.ingest.decode import DEFAULT_FALLBACK_ENCODING, DEFAULT_MAX_BYTES, check_encoding
from worker.ingest.discover import discover
from worker.ingest.items import Skipped, SourceFile
from worker.ingest.pipeline import ingest
from worker.ingest.target import Target, make_target
from worker.ingest.write import IngestReport

__all__ = [
    "DEFAULT_FALLBACK_ENCODING",
    "DEFAULT_MAX_BYTES",
    "IngestReport",
    "Skipped",
    "SourceFile",
    "Target",
    "check_encoding",
    "discover",
    "ingest",
    "make_target",
]

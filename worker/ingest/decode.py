"""Stage 2: a file's bytes to text, or the reason it is skipped. (Binary formats take
the bytes as read by `read_bytes`, with the same checks before the decoding.)

A regular file within the size limit is read whole and decoded: a byte-order
mark's encoding, else UTF-8, else the fallback encoding, unless the bytes look
binary (a NUL in the first 8 KB, as git decides, or mostly control characters
as the fallback), which raises NotText and skips the file.
"""

from __future__ import annotations

import codecs
import stat
from dataclasses import dataclass

from worker.errors import ConfigError, NotText
from worker.ingest.items import Skipped, SourceFile

#: Like git: a NUL in the first 8 KB means binary.
SNIFF_BYTES = 8192
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_FALLBACK_ENCODING = "cp1252"


@dataclass(frozen=True)
class Decoded:
    """A file's text and the encoding it was read with."""

    text: str
    encoding: str

    @property
    def note(self) -> str | None:
        """What to tell the user when the encoding was a guess (the fallback)."""
        if self.encoding in ("utf-8", "utf-16"):
            return None
        return f"not UTF-8: read as {self.encoding} (if that is wrong, pass --encoding)"


def check_encoding(name: str) -> str:
    """The codec's canonical name, or ConfigError."""
    try:
        return codecs.lookup(name).name
    except LookupError as exc:
        raise ConfigError(
            f"unknown encoding {name!r}: use a Python codec name such as cp1252, latin-1 or "
            "shift_jis"
        ) from exc


def read_bytes(file: SourceFile, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | Skipped:
    """The file's bytes, or why it was skipped (not a regular file, too large, unreadable);
    what binary formats (PDF, Office, EPUB) are read from."""
    try:
        info = file.path.stat()
        if not stat.S_ISREG(info.st_mode):
            return Skipped(file.source, "not a regular file")
        if info.st_size > max_bytes:
            return Skipped(
                file.source, f"too large: {info.st_size:,} bytes, the limit is {max_bytes:,} "
                "(raise it with --max-size)")
        data = file.path.read_bytes()
    except OSError as exc:
        broken = " (broken symlink)" if file.path.is_symlink() and not file.path.exists() else ""
        return Skipped(file.source, f"unreadable: {exc.strerror}{broken}")
    return data


def read_text(
    file: SourceFile,
    *,
    fallback_encoding: str = DEFAULT_FALLBACK_ENCODING,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Decoded | Skipped:
    """The file's text, or why it was skipped (not a regular file, too large, unreadable,
    binary)."""
    data = read_bytes(file, max_bytes=max_bytes)
    if isinstance(data, Skipped):
        return data
    try:
        text, encoding = decode(data, fallback_encoding)
    except NotText as exc:
        return Skipped(file.source, str(exc))
    return Decoded(text, encoding)


def decode(data: bytes, fallback: str = DEFAULT_FALLBACK_ENCODING) -> tuple[str, str]:
    """(text, encoding): UTF-8 (or a BOM's encoding), else the fallback, else NotText."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                       (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise NotText(f"binary: has a {codec} byte-order mark but is not {codec} "
                              f"({exc.reason} at byte {exc.start})") from exc
            if "\x00" in text[:SNIFF_BYTES]:
                raise NotText("binary: NUL characters in the first 8 KB")
            return text, "utf-8" if codec == "utf-8-sig" else codec
    if b"\x00" in data[:SNIFF_BYTES]:
        raise NotText("binary: NUL bytes in the first 8 KB")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode(fallback)
        except UnicodeDecodeError as exc:
            raise NotText(f"binary: neither UTF-8 ({utf8_error.reason} at byte "
                          f"{utf8_error.start}) nor {fallback}") from exc
        sample = text[:SNIFF_BYTES]
        controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f\v\x1b")
        if controls > len(sample) / 10:
            raise NotText(f"binary: not UTF-8, and over 10% control characters as {fallback}"
                          ) from utf8_error
        return text, fallback

"""How `suparag worker` logs: for people (rich) or for a supervisor (one JSON object a line).

Every batch is one line (worker/jobs/service.py): its counts and timings ride
on the record as `fields`, which the JSON format puts beside the message, so
a log shipper needs no parsing of prose (issue 17, "logs a supervisor can read").
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

#: The formats `--log-format` / SUPARAG_LOG_FORMAT accept.
LOG_FORMATS = ("rich", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

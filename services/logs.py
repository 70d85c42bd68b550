"""Structured JSON logs, one object a line, carrying `proposal_id` and other extras when given. A
record with a `banner` extra is followed by that text as is (plain lines, for an operator to see)."""

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "banner"}
HEALTHCHECK_PATHS = frozenset({"/healthz"})  # polled every few seconds by compose: not worth a line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(entry, default=str)
        banner = getattr(record, "banner", None)
        return f"{line}\n{banner}" if isinstance(banner, str) else line


class HealthcheckFilter(logging.Filter):
    """Drops uvicorn's access-log lines for successful healthchecks."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        # uvicorn.access: (client address, method, path with query, HTTP version, status code)
        return not (len(args) == 5 and args[2] in HEALTHCHECK_PATHS and args[4] == 200)


def boxed(lines: list[str], mark: str = "#") -> str:
    """`lines` framed by a box of `mark`s, to stand out among log lines."""
    width = max(len(line) for line in lines) + 4
    edge = mark * width
    return "\n".join([edge, *(f"{mark} {line.ljust(width - 4)} {mark}" for line in lines), edge])


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").addFilter(HealthcheckFilter())

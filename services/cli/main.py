"""`autoresearch`: the command line for people (and scripts) driving the service.

    autoresearch submit FILE_OR_DIFF --title T [--description D] [--agent A] [--watch]
    autoresearch status [ID] | list [--state S] | watch ID | logs ID [--follow]
    autoresearch leaderboard | best [--output train.py] | results [--tsv]
    autoresearch program get [--version N] [--diff] | set FILE --message M | versions | stats
    autoresearch repo clone [DIR] | repo bundle --output FILE
    autoresearch token create NAME [--role agent|admin]

The controller's URL and a token come from --url/--token or AUTORESEARCH_URL/AUTORESEARCH_TOKEN.
--url, --token and --json go before or after the command.
Exit codes: 0 done; 1 the controller refused (its problem detail is printed); 2 usage; 3 the
controller cannot be reached; 4 `watch` (or `submit --watch`) saw the proposal end other than merged.
"""

import argparse
import getpass
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from services.cli import clone
from services.cli.client import DEFAULT_URL, ApiClient, ClientError, StreamBroken, Unreachable
from services.states import FAILURES, State

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_MERGED = 0, 1, 2, 3, 4
RECONNECTS = 5  # a broken event stream is reopened this many times (the server replays the state)
RECONNECT_PAUSE_S = 2.0
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPIN_INTERVAL_S = 0.1
_DIFF_MARKERS = (
    re.compile(r"^--- \S", re.MULTILINE),
    re.compile(r"^\+\+\+ \S", re.MULTILINE),
    re.compile(r"^@@ -\d+(,\d+)? \+\d+(,\d+)? @@", re.MULTILINE),
)

Command = Callable[[ApiClient, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.token:
        return _fail("no token: pass --token or set AUTORESEARCH_TOKEN (an admin makes one: POST /v1/tokens)")
    command: Command = args.run
    try:
        with ApiClient(args.url, args.token) as client:
            return command(client, args)
    except Unreachable as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except ClientError as exc:
        return _fail(str(exc), EXIT_REFUSED)
    except OSError as exc:  # a local file: missing, unreadable, not writable
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}", EXIT_REFUSED)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autoresearch",
        description="Submit changes to trainer/train.py, watch them train, read the results.",
        epilog="Exit codes: 0 ok, 1 refused by the controller, 2 usage, 3 controller unreachable, "
        "4 a watched proposal ended other than merged.",
    )
    _add_common(p, None)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)  # after the command too, without resetting what came before
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = parent.add_parser(name, help=help, parents=[common])
        return made

    s = command("submit", help="submit a train.py or a unified diff of trainer/train.py")
    s.add_argument("file", help="a whole train.py or a unified diff ('-': standard input)")
    s.add_argument("--title", required=True, help="one line: what the change is")
    s.add_argument("--description", default="", help="why it should help")
    s.add_argument("--agent", default=os.environ.get("AUTORESEARCH_AGENT") or getpass.getuser())
    s.add_argument("--base", dest="base_commit", help="base commit (default: the current best)")
    s.add_argument(
        "--program-version",
        type=int,
        help="the program.md version you worked from (default: the current one)",
    )
    s.add_argument("--idempotency-key", help="default: a fresh one (retries within this call reuse it)")
    s.add_argument("--watch", action="store_true", help="then follow it until it finishes")
    s.set_defaults(run=cmd_submit)

    s = command("status", help="the service's status, or one proposal's")
    s.add_argument("id", nargs="?")
    s.set_defaults(run=cmd_status)

    s = command("list", help="proposals, newest first")
    s.add_argument("--state", choices=[state.value for state in State])
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--offset", type=int, default=0)
    s.set_defaults(run=cmd_list)

    s = command("watch", help="follow a proposal live until it finishes")
    s.add_argument("id")
    s.set_defaults(run=cmd_watch)

    s = command("logs", help="a proposal's log")
    s.add_argument("id")
    s.add_argument("--follow", "-f", action="store_true", help="stream the output of a running proposal")
    s.set_defaults(run=cmd_logs)

    s = command("leaderboard", help="scored proposals, best first")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(run=cmd_leaderboard)

    s = command("best", help="the best commit; --output saves its train.py")
    s.add_argument("--output", "-o", help="write the best train.py here ('-': standard output)")
    s.set_defaults(run=cmd_best)

    prog = command("program", help="program.md: the instructions agents work from")
    psub = prog.add_subparsers(dest="program_command", required=True, metavar="ACTION")
    s = command("get", help="print the current (or a given) version", parent=psub)
    s.add_argument("--version", type=int)
    s.add_argument("--diff", action="store_true", help="print the diff from the version before instead")
    s.set_defaults(run=cmd_program_get)
    s = command("set", help="store a new version (admin token)", parent=psub)
    s.add_argument("file", help="the new program.md ('-': standard input)")
    s.add_argument("--message", "-m", required=True, help="one line: what changed and why")
    s.set_defaults(run=cmd_program_set)
    s = command("versions", help="list the versions", parent=psub)
    s.set_defaults(run=cmd_program_versions)
    s = command("stats", help="win rate and mean delta per version", parent=psub)
    s.set_defaults(run=cmd_program_stats)

    s = command("results", help="results.tsv: every verdict, oldest first (keep, discard, crash)")
    s.add_argument("--tsv", action="store_true", help="print the tab-separated file as it is (for a file)")
    s.set_defaults(run=cmd_results)

    repo = command("repo", help="the research branch as a git repository")
    rsub = repo.add_subparsers(dest="repo_command", required=True, metavar="ACTION")
    s = command("clone", help="download the branch with its notes and git clone it", parent=rsub)
    s.add_argument("directory", nargs="?", default="research", help="where to clone it (default: research)")
    s.set_defaults(run=cmd_repo_clone)
    s = command("bundle", help="save the git bundle (GET /v1/repo.bundle)", parent=rsub)
    s.add_argument("--output", "-o", required=True, help="the bundle file to write")
    s.set_defaults(run=cmd_repo_bundle)

    token = command("token", help="bearer tokens (admin token)")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    s = command("create", help="create a token; it is printed once, only its hash is kept", parent=tsub)
    s.add_argument("name", help="who uses it (an agent's or a person's name)")
    s.add_argument("--role", choices=["agent", "admin"], default="agent")
    s.set_defaults(run=cmd_token_create)
    return p


def _add_common(p: argparse.ArgumentParser, default: Any) -> None:
    """--url, --token and --json. On a command's own parser `default` is SUPPRESS, so that an option
    given before the command is not reset by the command's parser when it is not repeated after."""
    suppress = default is argparse.SUPPRESS
    url = default if suppress else os.environ.get("AUTORESEARCH_URL", DEFAULT_URL)
    token = default if suppress else os.environ.get("AUTORESEARCH_TOKEN")
    p.add_argument("--url", default=url, help="controller URL")
    p.add_argument("--token", default=token, help="bearer token")
    p.add_argument(
        "--json", action="store_true", default=default if suppress else False,
        help="print the API's JSON instead of a table",
    )  # fmt: skip


# ---------------------------------------------------------------------------- commands


def cmd_submit(client: ApiClient, args: argparse.Namespace) -> int:
    text = _read(args.file)
    body: dict[str, Any] = {
        "title": args.title,
        "description": args.description,
        "agent": args.agent,
        "diff" if looks_like_diff(text) else "train_py": text,
    }
    if args.base_commit:
        body["base_commit"] = args.base_commit
    body["program_version"] = (
        args.program_version if args.program_version is not None else client.get("/v1/program")["version"]
    )
    proposal, created = client.submit(body, args.idempotency_key)
    if args.json:
        _print_json(proposal)
    else:
        what = "submitted" if created else "already submitted (same change on the same base)"
        print(f"{what}: {proposal['id']} ({proposal['state']}) on {proposal['base_commit'][:12]}")
        if not args.watch:
            print(f"follow it: autoresearch watch {proposal['id']}", file=sys.stderr)
    return watch(client, proposal["id"], quiet=args.json) if args.watch else EXIT_OK


def cmd_status(client: ApiClient, args: argparse.Namespace) -> int:
    if args.id is None:
        status = client.get("/v1/status")
        if args.json:
            _print_json(status)
            return EXIT_OK
        best = status["best_commit"]
        print(f"best     {best[:12] if best else '(none yet)'}  val_bpb {_num(status['best_val_bpb'])}")
        print("queues   " + "  ".join(f"{name} {depth}" for name, depth in status["queues"].items()))
        states = {name: count for name, count in status["states"].items() if count}
        print("states   " + ("  ".join(f"{name} {count}" for name, count in states.items()) or "(none)"))
        return EXIT_OK
    proposal = client.get(f"/v1/proposals/{args.id}")
    if args.json:
        _print_json(proposal)
        return EXIT_OK
    print(describe(proposal))
    return EXIT_OK


def cmd_list(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.get("/v1/proposals", state=args.state, limit=args.limit, offset=args.offset)
    if args.json:
        _print_json(page)
        return EXIT_OK
    rows = [
        [p["id"], p["state"], _num(p["val_bpb"]), p["agent"], _ago(p["created_at"]), p["title"]]
        for p in page["items"]
    ]
    _table(["id", "state", "val_bpb", "agent", "age", "title"], rows)
    print(f"{len(rows)} of {page['total']}", file=sys.stderr)
    return EXIT_OK


def cmd_watch(client: ApiClient, args: argparse.Namespace) -> int:
    return watch(client, args.id, quiet=args.json)


def cmd_logs(client: ApiClient, args: argparse.Namespace) -> int:
    if not args.follow:
        sys.stdout.write(client.text(f"/v1/proposals/{args.id}/log"))
        return EXIT_OK
    streamed, state = False, None
    resume: dict[str, str] = {}  # the last entry id seen: a reopened stream goes on from there
    for event in _reconnecting(lambda: _log_events(client, args.id, resume.get("after"))):
        if event.event == "log":
            sys.stdout.write(str(event.data.get("text", "")))
            sys.stdout.flush()
            streamed = True
            if event.id:
                resume["after"] = event.id
        elif event.event == "end":
            state = event.data.get("state")
    if not streamed:  # no live output (finished before, or the worker streams none): the kept tail
        sys.stdout.write(client.text(f"/v1/proposals/{args.id}/log"))
    print(f"# {args.id} is {state}", file=sys.stderr)
    return EXIT_OK


def cmd_leaderboard(client: ApiClient, args: argparse.Namespace) -> int:
    rows = client.get("/v1/leaderboard", limit=args.limit)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _table(
        ["#", "val_bpb", "delta", "state", "agent", "id", "title"],
        [
            [
                str(i),
                _num(r["val_bpb"]),
                _num(r["delta"], signed=True),
                r["state"],
                r["agent"],
                r["id"],
                r["title"],
            ]
            for i, r in enumerate(rows, 1)
        ],
    )
    return EXIT_OK


def cmd_best(client: ApiClient, args: argparse.Namespace) -> int:
    best = client.get("/v1/best")
    summary = (
        f"best {best['commit'][:12]}  val_bpb {_num(best['val_bpb'])}  from {best['proposal_id'] or '-'}"
    )
    if args.output == "-":
        sys.stdout.write(best["train_py"])
        print(summary, file=sys.stderr)
    elif args.output:
        Path(args.output).write_text(best["train_py"], encoding="utf-8")
        print(f"{summary}\nwrote {args.output}")
    elif args.json:
        _print_json(best)
    else:
        print(summary)
    return EXIT_OK


def cmd_program_get(client: ApiClient, args: argparse.Namespace) -> int:
    if args.version is None and not args.diff:
        program = client.get("/v1/program")
    else:
        number = args.version if args.version is not None else client.get("/v1/program")["version"]
        program = client.get(f"/v1/program/versions/{number}")
    if args.json:
        _print_json(program)
        return EXIT_OK
    sys.stdout.write(program["diff"] if args.diff else program["text"])
    print(
        f"# program.md version {program['version']} by {program['author']}: {program['message']}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_program_set(client: ApiClient, args: argparse.Namespace) -> int:
    program, status = client.put("/v1/program", {"text": _read(args.file), "message": args.message})
    if args.json:
        _print_json(program)
    elif status == 201:
        print(f"program.md version {program['version']} stored")
    else:
        print(f"unchanged: the text equals version {program['version']}")
    return EXIT_OK


def cmd_program_versions(client: ApiClient, args: argparse.Namespace) -> int:
    versions = client.get("/v1/program/versions")
    if args.json:
        _print_json(versions)
        return EXIT_OK
    _table(
        ["version", "author", "age", "bytes", "message"],
        [
            [str(v["version"]), v["author"], _ago(v["created_at"]), str(v["bytes"]), v["message"]]
            for v in versions
        ],
    )
    return EXIT_OK


def cmd_program_stats(client: ApiClient, args: argparse.Namespace) -> int:
    rows = client.get("/v1/program/stats")
    if args.json:
        _print_json(rows)
        return EXIT_OK
    _table(
        ["version", "proposals", "scored", "merged", "failed", "win_rate", "mean_delta"],
        [
            [
                "-" if r["version"] is None else str(r["version"]),
                str(r["proposals"]),
                str(r["scored"]),
                str(r["merged"]),
                str(r["failed"]),
                "-" if r["win_rate"] is None else f"{r['win_rate']:.0%}",
                _num(r["mean_delta_bpb"], signed=True),
            ]
            for r in rows
        ],
    )
    return EXIT_OK


def cmd_results(client: ApiClient, args: argparse.Namespace) -> int:
    tsv = client.text("/v1/results.tsv")
    if args.tsv:
        sys.stdout.write(tsv)
        return EXIT_OK
    header, *rows = [line.split("\t") for line in tsv.splitlines() if line]
    if args.json:
        _print_json([dict(zip(header, row, strict=False)) for row in rows])
        return EXIT_OK
    _table(header, rows)
    return EXIT_OK


def cmd_repo_bundle(client: ApiClient, args: argparse.Namespace) -> int:
    head = client.download("/v1/repo.bundle", Path(args.output))
    print(f"wrote {args.output}: the research branch at {head[:12]} with its notes")
    return EXIT_OK


def cmd_repo_clone(client: ApiClient, args: argparse.Namespace) -> int:
    target = Path(args.directory)
    if target.exists() and any(target.iterdir()):
        raise ClientError(f"{target} exists and is not empty")
    with clone.scratch_file("research.bundle") as bundle:
        head = client.download("/v1/repo.bundle", bundle)
        branch = clone.clone_bundle(bundle, target)
    print(f"cloned the research branch ({branch} at {head[:12]}) into {target}; `git log` shows each result")
    return EXIT_OK


def cmd_token_create(client: ApiClient, args: argparse.Namespace) -> int:
    created = client.post("/v1/tokens", {"name": args.name, "role": args.role})
    if args.json:
        _print_json(created)
        return EXIT_OK
    print(created["token"])
    print(f"# a {created['role']} token named {created['name']}: shown only now, keep it", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------- watching


def watch(client: ApiClient, proposal_id: str, quiet: bool = False) -> int:
    """Follow a proposal's transitions until a terminal state; print them with elapsed time."""
    client.get(f"/v1/proposals/{proposal_id}")  # a wrong id fails here, plainly
    last: tuple[str, str] | None = None
    with _progress(enabled=not quiet) as progress:
        for event in _reconnecting(lambda: client.stream(f"/v1/events?proposal_id={proposal_id}")):
            if event.event != "state":
                continue
            state, reason = str(event.data["state"]), str(event.data.get("reason", ""))
            if (state, reason) != last:
                progress.line(f"{state:<11} {reason}", state)
                last = (state, reason)
    proposal = client.get(f"/v1/proposals/{proposal_id}")
    if quiet:
        _print_json(proposal)
    else:
        print(outcome(proposal))
    return EXIT_OK if proposal["state"] == State.MERGED else EXIT_NOT_MERGED


def _reconnecting(open_stream: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Events of a stream, reopened if it breaks off (each reopened stream starts with the state)."""
    for attempt in range(RECONNECTS + 1):
        try:
            yield from open_stream()
            return
        except StreamBroken:
            if attempt == RECONNECTS:
                raise
            time.sleep(RECONNECT_PAUSE_S)


def _log_events(client: ApiClient, proposal_id: str, last_id: str | None) -> Iterator[Any]:
    headers = {"Last-Event-ID": last_id} if last_id else None
    return client.stream(f"/v1/proposals/{proposal_id}/log/stream", headers=headers)


class _Progress:
    """Transition lines with the elapsed time; on a terminal, a spinner with the state in between."""

    def __init__(self, out: TextIO, spinning: bool) -> None:
        self.out = out
        self.spinning = spinning
        self.started = time.monotonic()
        self.state = "connecting"
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def line(self, text: str, state: str) -> None:
        with self._lock:
            self._clear()
            print(f"[{_clock(time.monotonic() - self.started)}] {text}", file=self.out, flush=True)
            self.state = state

    def spin(self) -> None:
        frame = 0
        while not self._stop.wait(SPIN_INTERVAL_S):
            with self._lock:
                elapsed = _clock(time.monotonic() - self.started)
                self.out.write(f"\r{SPINNER[frame % len(SPINNER)]} {self.state} {elapsed} ")
                self.out.flush()
            frame += 1

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        if self.spinning:
            self.out.write("\r\033[K")


@contextmanager
def _progress(enabled: bool) -> Iterator[_Progress]:
    out = sys.stderr if enabled else open(os.devnull, "w")  # noqa: SIM115 (closed below)
    progress = _Progress(out, spinning=enabled and out.isatty())
    spinner = threading.Thread(target=progress.spin, daemon=True) if progress.spinning else None
    if spinner is not None:
        spinner.start()
    try:
        yield progress
    finally:
        progress.stop()
        if spinner is not None:
            spinner.join()
        if not enabled:
            out.close()


# ---------------------------------------------------------------------------- output


def looks_like_diff(text: str) -> bool:
    """A unified diff has ---/+++ file headers and a hunk header; a train.py cannot hold the latter."""
    return all(marker.search(text) for marker in _DIFF_MARKERS)


def describe(p: dict[str, Any]) -> str:
    lines = [
        f"{p['id']}  {p['state']}  {p['title']}",
        f"  agent {p['agent']}  base {p['base_commit'][:12]}  program v{p['program_version'] or '-'}",
        f"  val_bpb {_num(p['val_bpb'])}  reason: {p['reason'] or '-'}",
    ]
    decision = p.get("decision")
    if decision:
        lines.append(
            f"  decision: {verdict(p)}; "
            f"delta {_num(decision.get('delta_bpb'), signed=True)} ({decision['rule']}): {decision['reason']}"
        )
    if p.get("merged_commit"):
        lines.append(f"  merged as {p['merged_commit'][:12]}")
    for event in p.get("events", []):
        lines.append(f"  {_when(event['at'])}  {event['state']:<11} {event['reason']}")
    return "\n".join(lines)


def verdict(p: dict[str, Any]) -> str:
    """Where the decision stands: a screening verdict that sent the proposal to confirmation is not a
    rejection, and a confirmation still running says how many paired runs it waits for."""
    decision = p["decision"]
    state = p["state"]
    if decision.get("stage", "screen") == "screen" and decision.get("confirm"):
        if state == State.CONFIRMING:
            total = len(p.get("confirm_seeds") or [])
            done = len(p.get("baseline_results") or [])
            return f"screening passed; confirming: {done} of {total} paired runs done, waiting for {total - done}"
        if state in FAILURES:
            return f"screening passed; confirmation ended {state}"
        return "screening passed"
    if decision.get("stage", "screen") == "screen":
        return "rejected at screening"
    if decision["accepted"]:
        return "accepted and merged" if state == State.MERGED else "accepted"
    if decision.get("tripwire") == "blocked":
        return "rejected (blocked by the held-out test tripwire)"
    return "rejected"


def outcome(p: dict[str, Any]) -> str:
    delta = (p.get("decision") or {}).get("delta_bpb")
    score = f"val_bpb {_num(p['val_bpb'])}" + (
        f" (delta {_num(delta, signed=True)})" if delta is not None else ""
    )
    if p["state"] == State.MERGED:
        return f"{p['id']} merged as {(p['merged_commit'] or '')[:12]}: {score}"
    if p["state"] == State.REJECTED:
        return f"{p['id']} rejected: {score}; {p['reason']}"
    return f"{p['id']} ended {p['state']}: {p['reason']} (its log: autoresearch logs {p['id']})"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, str(row[-1])]).rstrip())


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.6f}" if signed else f"{value:.6f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _ago(at: float) -> str:
    seconds = max(0.0, time.time() - at)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _read(name: str) -> str:
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ClientError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"autoresearch: error: {message}", file=sys.stderr)
    return code

"""The one module that talks to git (GitPython): the research repository.

The repository is bare (people clone it; nothing keeps a work tree in sync). Commits are made with
plumbing (`hash-object`, a private index, `write-tree`, `commit-tree`, the message on stdin) and
published with `update-ref <ref> <new> <old>`, a compare-and-swap: if the branch moved, nothing is
written.

Which proposal a branch commit merged is recorded in refs only the committer writes, never read
back from commit messages (a proposal's description is part of its message, so a message can claim
anything): `refs/autoresearch/merged/<id>` points to the proposal's commit. It is written *before*
the branch moves, and a proposal counts as merged only while that commit is on the branch. So a
committer killed anywhere in a merge finds, after a restart, either its commit on the branch (merged:
nothing is committed twice) or not (the ref is stale: it commits again and moves the ref), and a
failed compare-and-swap leaves nothing that counts.

`bundle` packs the branch alone for people and agents to clone (GET /v1/repo.bundle): the branch, its
HEAD, and a notes ref holding the notes of branch commits as the caller rewrites them; no other ref
(tried, merged, earlier notes) travels with it.

Every git failure is raised as RepoError.
"""

import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import git
from gitdb import IStream

from services.errors import HeadMoved, RepoError
from services.faults import NO_PAUSES, PausePoints

TRAIN_PY_PATH = "trainer/train.py"
TRIED_REF_PREFIX = "refs/autoresearch/tried/"
MERGED_REF_PREFIX = "refs/autoresearch/merged/"
NOTES_REF = "refs/notes/commits"  # the default, so `git log` shows the result under each commit
# Proposal ids are made by the service (`models.new_id`); anything else is never made into a ref name.
_PROPOSAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    message: str
    train_py: str
    committed_at: float = 0.0  # committer date, seconds since the epoch


class ResearchRepo(Protocol):
    def ensure(self, baseline_train_py: str) -> str: ...

    def head(self) -> str: ...

    def history(self) -> list[CommitInfo]: ...

    def find_merged(self, proposal_id: str) -> str | None: ...

    def merged_refs(self) -> dict[str, str]: ...

    def record_merged(self, proposal_id: str, sha: str) -> None: ...

    def commit_on_branch(self, parent: str, train_py: str, message: str, proposal_id: str) -> str: ...

    def keep_tried(self, proposal_id: str, base: str, train_py: str, message: str, note: str) -> str: ...

    def note(self, sha: str) -> str | None: ...

    def set_note(self, sha: str, note: str) -> None: ...

    def bundle(self, public_note: Callable[[str], str | None]) -> tuple[str, bytes]: ...


class GitResearchRepo:
    def __init__(self, path: Path, branch: str, author: str, pauses: PausePoints = NO_PAUSES) -> None:
        self.path = path
        self.branch = branch
        self.pauses = pauses  # test-only kill points (services/faults.py); inert by default
        name, _, email = author.partition("<")
        self._ident = {
            "GIT_AUTHOR_NAME": name.strip() or "autoresearch",
            "GIT_AUTHOR_EMAIL": email.rstrip(">").strip() or "committer@autoresearch.invalid",
            "GIT_COMMITTER_NAME": name.strip() or "autoresearch",
            "GIT_COMMITTER_EMAIL": email.rstrip(">").strip() or "committer@autoresearch.invalid",
        }
        self._repo: git.Repo | None = None

    # --- set-up

    def ensure(self, baseline_train_py: str) -> str:
        """Create the bare repository with the baseline trainer as its first commit, if it is new.
        Returns the branch head."""
        try:
            if not (self.path / "HEAD").exists():
                self.path.mkdir(parents=True, exist_ok=True)
                git.Repo.init(self.path, bare=True, initial_branch=self.branch)
            if self._ref_sha(f"refs/heads/{self.branch}") is None:
                tree = self._tree_with(None, baseline_train_py)
                sha = self._git("commit-tree", tree, "-m", "Baseline trainer", env=self._ident)
                self._git("update-ref", f"refs/heads/{self.branch}", sha, "0" * 40)
                self._git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}")
            return self.head()
        except (git.GitCommandError, RepoError) as exc:
            raise RepoError(f"cannot initialise the research repo at {self.path}: {exc}") from exc

    # --- reads

    def head(self) -> str:
        sha = self._ref_sha(f"refs/heads/{self.branch}")
        if sha is None:
            raise RepoError(f"branch {self.branch} does not exist in {self.path}")
        return sha

    def history(self) -> list[CommitInfo]:
        """Commits on the branch, oldest first, with their train.py."""
        shas = self._git("rev-list", "--reverse", f"refs/heads/{self.branch}").split()
        infos = []
        for sha in shas:
            committed_at, _, message = self._git("log", "-1", "--format=%ct%n%B", sha).partition("\n")
            infos.append(CommitInfo(sha, message, self.train_py(sha), float(committed_at)))
        return infos

    def train_py(self, sha: str) -> str:
        return self._git("show", f"{sha}:{TRAIN_PY_PATH}", strip=False)

    def find_merged(self, proposal_id: str) -> str | None:
        """The branch commit that merged the proposal, from its merged ref; None if there is no such
        ref or its commit is not on the branch (a merge that never published)."""
        sha = self._ref_sha(_merged_ref(proposal_id))
        return sha if sha is not None and self._on_branch(sha) else None

    def merged_refs(self) -> dict[str, str]:
        """Every merged ref, proposal id → commit (including stale ones; see `find_merged`)."""
        return self._refs(MERGED_REF_PREFIX)

    def record_merged(self, proposal_id: str, sha: str) -> None:
        """Point the proposal's merged ref at `sha` (a branch commit merged before merged refs were
        kept, found by the committer's own note)."""
        self._git("update-ref", _merged_ref(proposal_id), sha)

    def note(self, sha: str) -> str | None:
        try:
            return self._git("notes", f"--ref={NOTES_REF}", "show", sha)
        except RepoError:
            return None

    def tried_refs(self) -> dict[str, str]:
        return self._refs(TRIED_REF_PREFIX)

    def _refs(self, prefix: str) -> dict[str, str]:
        out = self._git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        pairs = (line.split() for line in out.split("\n") if line)
        return {ref.removeprefix(prefix): sha for ref, sha in pairs}

    def _on_branch(self, sha: str) -> bool:
        status, _, err = self._open().git.execute(
            ["git", "merge-base", "--is-ancestor", sha, f"refs/heads/{self.branch}"],
            with_extended_output=True,
            with_exceptions=False,
        )
        if status not in (0, 1):  # 1: not an ancestor; anything else: git failed
            raise RepoError(f"cannot tell whether {sha[:10]} is on {self.branch}: {err}")
        return bool(status == 0)

    # --- writes

    def commit_on_branch(self, parent: str, train_py: str, message: str, proposal_id: str) -> str:
        """Commit `train_py` on top of `parent`, record it as the proposal's merge (its merged ref)
        and move the branch there, only if the branch is still at `parent`; raises HeadMoved
        otherwise (the merged ref is dropped again). The caller writes the note."""
        sha = self._commit(parent, train_py, message)
        merged_ref = _merged_ref(proposal_id)
        self._git("update-ref", merged_ref, sha)  # before publishing: see the module docstring
        self.pauses.reached("merge:commit-written")
        try:
            self._git("update-ref", f"refs/heads/{self.branch}", sha, parent)
        except RepoError as exc:
            head = self.head()
            if head == sha:  # moved, though git reported a failure after (e.g. writing its reflog)
                return sha
            if head != parent:
                self._git("update-ref", "-d", merged_ref, sha)
                raise HeadMoved(f"branch {self.branch} moved from {parent[:10]}") from exc
            raise RepoError(f"cannot move {self.branch}: {exc}") from exc
        self.pauses.reached("merge:branch-moved")
        return sha

    def keep_tried(self, proposal_id: str, base: str, train_py: str, message: str, note: str) -> str:
        """Keep a tried proposal as `refs/autoresearch/tried/<id>` (a commit on its base), with its
        result as a note."""
        sha = self._commit(base, train_py, message)
        self._git("update-ref", f"{TRIED_REF_PREFIX}{_checked_id(proposal_id)}", sha)
        self._add_note(sha, note)
        return sha

    def set_note(self, sha: str, note: str) -> None:
        """Attach (or replace) the note of a commit, e.g. the baseline's score once it is run."""
        self._add_note(sha, note)

    # --- the bundle people and agents clone

    def bundle(self, public_note: Callable[[str], str | None]) -> tuple[str, bytes]:
        """(the branch head, a git bundle of HEAD and the branch with `refs/notes/commits` holding
        `public_note(note)` of each branch commit's note; None drops a note). Built in a scratch
        repository that borrows this one's objects, so nothing is written here. Its notes ref is one
        commit without parents: no earlier version of a note, and no note of a commit off the branch,
        is in the bundle."""
        head = self.head()
        on_branch = set(self._git("rev-list", f"refs/heads/{self.branch}").split())
        notes = self._branch_notes(on_branch)
        with tempfile.TemporaryDirectory(prefix="ar-bundle-") as tmp:
            scratch = Path(tmp) / "scratch.git"
            self._git("init", "--quiet", "--bare", f"--initial-branch={self.branch}", str(scratch))
            alternates = scratch / "objects" / "info" / "alternates"
            alternates.write_text(f"{(self.path / 'objects').resolve()}\n", encoding="utf-8")
            runner = git.Git(str(scratch))
            refs = [f"refs/heads/{self.branch}"]
            self._git("update-ref", refs[0], head, runner=runner)
            entries = []
            for commit, text in sorted(notes.items()):
                public = public_note(text)
                if public is not None:
                    blob = self._git("hash-object", "-w", "--stdin", stdin=public, runner=runner)
                    entries.append(f"100644 blob {blob}\t{commit}\n")
            if entries:
                tree = self._git("mktree", stdin="".join(entries), runner=runner)
                message = f"Notes of {self.branch} at {head[:10]}"
                notes_commit = self._git("commit-tree", tree, "-m", message, env=self._ident, runner=runner)
                self._git("update-ref", NOTES_REF, notes_commit, runner=runner)
                refs.append(NOTES_REF)
            out = Path(tmp) / "research.bundle"
            self._git("bundle", "create", "--quiet", str(out), "HEAD", *refs, runner=runner)
            return head, out.read_bytes()

    def _branch_notes(self, commits: set[str]) -> dict[str, str]:
        """commit → its note, for the given commits that have one."""
        listed = self._git("notes", f"--ref={NOTES_REF}", "list") if self._ref_sha(NOTES_REF) else ""
        notes = {}
        for line in listed.splitlines():
            blob, _, commit = line.partition(" ")
            if commit in commits:
                raw = self._open().odb.stream(bytes.fromhex(blob)).read()
                notes[commit] = raw.decode("utf-8", "replace")
        return notes

    # --- plumbing

    def _commit(self, parent: str, train_py: str, message: str) -> str:
        tree = self._tree_with(parent, train_py)
        return self._git("commit-tree", tree, "-p", parent, "-F", "-", env=self._ident, stdin=message)

    def _tree_with(self, parent: str | None, train_py: str) -> str:
        data = train_py.encode("utf-8")
        blob = self._open().odb.store(IStream("blob", len(data), io.BytesIO(data))).hexsha.decode()
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            if parent is not None:
                self._git("read-tree", parent, env=env)
            self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{TRAIN_PY_PATH}", env=env)
            return self._git("write-tree", env=env)

    def _add_note(self, sha: str, note: str) -> None:
        self._git("notes", f"--ref={NOTES_REF}", "add", "-f", "-F", "-", sha, env=self._ident, stdin=note)

    def _ref_sha(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", ref)
        except RepoError:
            return None

    def _git(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        strip: bool = True,
        stdin: str | None = None,
        runner: git.Git | None = None,
    ) -> str:
        """Run git (in this repository, or where `runner` works); `stdin` (a message) goes through a
        file, never the command line (no length limit, and git itself refuses what it cannot store,
        e.g. a NUL in a commit message)."""
        if stdin is None:
            return self._run(args, env, strip, None, runner)
        with tempfile.TemporaryFile() as feed:
            feed.write(stdin.encode("utf-8", errors="backslashreplace"))
            feed.seek(0)
            return self._run(args, env, strip, feed, runner)

    def _run(
        self,
        args: tuple[str, ...],
        env: dict[str, str] | None,
        strip: bool,
        feed: BinaryIO | None,
        runner: git.Git | None = None,
    ) -> str:
        try:
            out: str = (runner or self._open().git).execute(
                ["git", *args], env=env, strip_newline_in_stdout=strip, istream=feed
            )
        except git.GitCommandError as exc:
            raise RepoError(f"git {args[0]} failed: {_stderr(exc)}") from exc
        return out

    def _open(self) -> git.Repo:
        if self._repo is None:
            try:
                self._repo = git.Repo(self.path)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
                raise RepoError(f"{self.path} is not a git repository") from exc
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


def _merged_ref(proposal_id: str) -> str:
    return f"{MERGED_REF_PREFIX}{_checked_id(proposal_id)}"


def _checked_id(proposal_id: str) -> str:
    if not _PROPOSAL_ID.match(proposal_id):
        raise RepoError(f"{proposal_id[:80]!r} is not a proposal id; no ref is made of it")
    return proposal_id


def _stderr(exc: git.GitCommandError) -> str:
    text = exc.stderr if isinstance(exc.stderr, str) else str(exc)
    text = " ".join(text.replace("stderr:", "").split()).strip("'")
    return text[:500] or f"exit status {exc.status}"

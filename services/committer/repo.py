"""The one module that talks to git (GitPython): the research repository.

The repository is bare (people clone it; nothing keeps a work tree in sync). Commits are made with
plumbing (`hash-object`, a private index, `write-tree`, `commit-tree`) and published with
`update-ref <ref> <new> <old>`, a compare-and-swap: if the branch moved, nothing is written. Every
commit on the branch carries a `Proposal-Id:` trailer, so a committer that crashed after publishing
finds its commit instead of making it twice.
"""

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import git
from gitdb import IStream

from services.errors import InfraError
from services.faults import NO_PAUSES, PausePoints

TRAIN_PY_PATH = "trainer/train.py"
TRIED_REF_PREFIX = "refs/autoresearch/tried/"
NOTES_REF = "refs/notes/commits"  # the default, so `git log` shows the result under each commit
TRAILER = "Proposal-Id"


class RepoError(InfraError):
    """The research repository could not be read or written."""


class HeadMoved(Exception):
    """The branch head is not the commit the caller built on (someone committed meanwhile)."""


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

    def commit_on_branch(self, parent: str, train_py: str, message: str, note: str) -> str: ...

    def keep_tried(self, proposal_id: str, base: str, train_py: str, message: str, note: str) -> str: ...

    def note(self, sha: str) -> str | None: ...

    def set_note(self, sha: str, note: str) -> None: ...


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
            repo = self._open()
            if self._ref_sha(f"refs/heads/{self.branch}") is None:
                tree = self._tree_with(None, baseline_train_py)
                sha = self._git("commit-tree", tree, "-m", "Baseline trainer", env=self._ident)
                self._git("update-ref", f"refs/heads/{self.branch}", sha, "0" * 40)
                repo.git.symbolic_ref("HEAD", f"refs/heads/{self.branch}")
            return self.head()
        except git.GitCommandError as exc:
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
        out = self._git(
            "log",
            f"refs/heads/{self.branch}",
            "--format=%H",
            "--fixed-strings",
            f"--grep={TRAILER}: {proposal_id}",
        )
        return out.split()[0] if out else None

    def note(self, sha: str) -> str | None:
        try:
            return self._git("notes", f"--ref={NOTES_REF}", "show", sha)
        except git.GitCommandError:
            return None

    def tried_refs(self) -> dict[str, str]:
        out = self._git("for-each-ref", "--format=%(refname) %(objectname)", TRIED_REF_PREFIX)
        pairs = (line.split() for line in out.splitlines() if line)
        return {ref.removeprefix(TRIED_REF_PREFIX): sha for ref, sha in pairs}

    # --- writes

    def commit_on_branch(self, parent: str, train_py: str, message: str, note: str) -> str:
        """Commit `train_py` on top of `parent` and move the branch there, only if the branch is
        still at `parent`. Raises HeadMoved otherwise."""
        sha = self._commit(parent, train_py, message)
        self.pauses.reached("merge:commit-written")
        try:
            self._git("update-ref", f"refs/heads/{self.branch}", sha, parent)
        except git.GitCommandError as exc:
            if self.head() != parent:
                raise HeadMoved(f"branch {self.branch} moved from {parent[:10]}") from exc
            raise RepoError(f"cannot move {self.branch}: {exc}") from exc
        self.pauses.reached("merge:branch-moved")
        self._add_note(sha, note)
        return sha

    def keep_tried(self, proposal_id: str, base: str, train_py: str, message: str, note: str) -> str:
        """Keep a tried proposal as `refs/autoresearch/tried/<id>` (a commit on its base), with its
        result as a note."""
        sha = self._commit(base, train_py, message)
        self._git("update-ref", f"{TRIED_REF_PREFIX}{proposal_id}", sha)
        self._add_note(sha, note)
        return sha

    def set_note(self, sha: str, note: str) -> None:
        """Attach (or replace) the note of a commit, e.g. the baseline's score once it is run."""
        self._add_note(sha, note)

    # --- plumbing

    def _commit(self, parent: str, train_py: str, message: str) -> str:
        tree = self._tree_with(parent, train_py)
        return self._git("commit-tree", tree, "-p", parent, "-m", message, env=self._ident)

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
        self._git("notes", f"--ref={NOTES_REF}", "add", "-f", "-m", note, sha, env=self._ident)

    def _ref_sha(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", ref)
        except git.GitCommandError:
            return None

    def _git(self, *args: str, env: dict[str, str] | None = None, strip: bool = True) -> str:
        out: str = self._open().git.execute(["git", *args], env=env, strip_newline_in_stdout=strip)
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

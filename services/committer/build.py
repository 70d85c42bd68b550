"""How the committer is put together, in one place: its main, the tests and the benchmarks all build
it here."""

from services.committer.committer import Committer
from services.committer.repo import GitResearchRepo, ResearchRepo
from services.settings import Settings
from services.store import Store, connect


def research_repo(settings: Settings) -> GitResearchRepo:
    """The research repo on disk, as the settings name it."""
    return GitResearchRepo(
        settings.repo.repo_dir, settings.repo.research_branch, settings.repo.git_author, settings.pauses
    )


def build_committer(
    settings: Settings, *, store: Store | None = None, repo: ResearchRepo | None = None
) -> Committer:
    """The committer from its settings. A store (and its Redis connection) and a research repo may be
    given, as tests do; otherwise they are made from the settings."""
    store = store if store is not None else Store(connect(settings.redis_url))
    repo = repo if repo is not None else research_repo(settings)
    return Committer(settings=settings, store=store, repo=repo, conn=store.r)

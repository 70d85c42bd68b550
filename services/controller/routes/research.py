"""/v1/lineage, /v1/results.tsv, /v1/repo.bundle, /v1/calibration, /v1/fingerprints: the research
record."""

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from services.controller import research
from services.controller.deps import Caller, SettingsDep, StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import CalibrationView, FingerprintView, LineageView

router = APIRouter(prefix="/v1", tags=["research"])

TSV_MEDIA_TYPE = "text/tab-separated-values"
BUNDLE_MEDIA_TYPE = "application/x-git-bundle"


class TsvResponse(PlainTextResponse):
    media_type = TSV_MEDIA_TYPE


@router.get("/lineage", response_model=list[LineageView])
def lineage(viewer: Viewer, store: StoreDep) -> list[LineageView]:
    """The research branch, oldest first: each commit with its parent, proposal, score, Δ and decision."""
    return viewer.models(research.lineage(store))


@router.get(
    "/results.tsv",
    response_class=TsvResponse,
    responses={200: {"content": {TSV_MEDIA_TYPE: {}}, "description": "upstream's results.tsv columns"}},
)
def results_tsv(viewer: Viewer, store: StoreDep) -> TsvResponse:
    """`commit val_bpb memory_gb status description`, tab-separated: keep, discard and crash rows."""
    return TsvResponse(viewer.text(research.results_tsv(store)))


@router.get(
    "/repo.bundle",
    response_class=Response,
    responses={
        200: {"content": {BUNDLE_MEDIA_TYPE: {}}, "description": "a git bundle: `git clone research.bundle`"},
        503: PROBLEM_RESPONSE,
    },
)
def repo_bundle(caller: Caller, store: StoreDep) -> Response:
    """The research branch as a git bundle: the branch and HEAD, and `refs/notes/commits` with each
    commit's result as agents may see it (no other refs; no held-out test figures). Clone it, then
    `git fetch research.bundle refs/notes/commits:refs/notes/commits` for the notes. `ETag` is the
    branch head."""
    head, bundle = research.repo_bundle(store)
    headers = {
        "Content-Disposition": 'attachment; filename="research.bundle"',
        "ETag": f'"{head}"',
        "X-Research-Head": head,
    }
    return Response(bundle, media_type=BUNDLE_MEDIA_TYPE, headers=headers)


@router.get("/calibration", response_model=list[CalibrationView])
def calibration(viewer: Viewer, store: StoreDep, settings: SettingsDep) -> list[CalibrationView]:
    """Per fingerprint: the run-to-run σ the committer decides with, where it comes from, and its runs."""
    return viewer.models([CalibrationView(**vars(row)) for row in research.calibration(store, settings)])


@router.get("/fingerprints", response_model=list[FingerprintView])
def fingerprints(caller: Caller, store: StoreDep) -> list[FingerprintView]:
    """Every fingerprint key seen, with the fields it stands for; scores compare only within one."""
    return [FingerprintView(**vars(row)) for row in research.fingerprints(store)]

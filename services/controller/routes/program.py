"""/v1/program: program.md as a versioned object (read: any token; write: admin)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from services.controller import logic
from services.controller.bodies import json_body
from services.controller.deps import Admin, Caller, StoreDep, Viewer
from services.controller.problems import PROBLEM_RESPONSE
from services.controller.schemas import (
    ProgramStatsRow,
    ProgramVersionDetail,
    ProgramVersionSummary,
    ProgramView,
    PutProgram,
)
from services.models import ProgramVersion

router = APIRouter(prefix="/v1/program", tags=["program"])

VersionNumber = Annotated[int, Path(ge=1, description="a program.md version, from 1")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: PROBLEM_RESPONSE}


def _view(version: ProgramVersion) -> ProgramView:
    return ProgramView(**version.model_dump())


@router.get("", response_model=ProgramView, responses=NOT_FOUND)
def get_program(caller: Caller, store: StoreDep) -> ProgramView:
    """The current program.md: the instructions agents work from, and its version number."""
    return _view(logic.current_program(store))


@router.put(
    "",
    response_model=ProgramView,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "the text equals the current version's: nothing new"},
        422: PROBLEM_RESPONSE,
    },
)
def put_program(
    response: Response, admin: Admin, body: Annotated[PutProgram, json_body(PutProgram)], store: StoreDep
) -> ProgramView:
    """Store a new version of program.md (admin)."""
    version, created = logic.set_program(store, admin, body.text, body.message)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/program/versions/{version.version}"
    return _view(version)


@router.get("/versions", response_model=list[ProgramVersionSummary])
def list_versions(caller: Caller, store: StoreDep) -> list[ProgramVersionSummary]:
    """Every version, oldest first, without texts."""
    return [
        ProgramVersionSummary(**v.model_dump(exclude={"text"}), bytes=len(v.text.encode("utf-8", "replace")))
        for v in store.program_versions()
    ]


@router.get("/versions/{version}", response_model=ProgramVersionDetail, responses=NOT_FOUND)
def get_version(version: VersionNumber, caller: Caller, store: StoreDep) -> ProgramVersionDetail:
    """One version with the unified diff from the version before it."""
    found, diff = logic.program_version(store, version)
    return ProgramVersionDetail(**found.model_dump(), diff=diff)


@router.get("/stats", response_model=list[ProgramStatsRow])
def stats(viewer: Viewer, store: StoreDep) -> list[ProgramStatsRow]:
    """Per version: proposals, scored, merged, failed, win rate and mean val_bpb delta."""
    return viewer.models([ProgramStatsRow(**vars(row)) for row in logic.program_stats(store)])

"""/v1/tokens: bearer tokens (admin)."""

from typing import Annotated

from fastapi import APIRouter, status

from services.controller import auth
from services.controller.bodies import json_body
from services.controller.deps import Admin, StoreDep
from services.controller.schemas import CreateToken, TokenCreated

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(
    admin: Admin, body: Annotated[CreateToken, json_body(CreateToken)], store: StoreDep
) -> TokenCreated:
    """Create an agent or admin token; the token is in this answer only."""
    return TokenCreated(token=auth.create_token(store, body.name, body.role), name=body.name, role=body.role)

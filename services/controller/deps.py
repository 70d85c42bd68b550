"""`Annotated` dependency aliases, so a route's signature says what it needs in one line each.

Settings and store live on `app.state` (set by `create_app`), never built at import. Routes get a store,
never a raw Redis connection: the store and the modules it serves (queue, quotas) own the keys.

A dependency that does no I/O is `async def`: FastAPI runs a plain `def` dependency in its thread pool,
a hop that costs more than these functions do. Those that read Redis stay `def`.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.controller import auth
from services.controller.disclosure import Disclosure
from services.controller.events import EventHub
from services.settings import Settings
from services.store import Store

_bearer = HTTPBearer(auto_error=False, description="a token from AR_ADMIN_TOKEN or POST /v1/tokens")


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


async def _heartbeat_s(request: Request) -> float:
    return float(request.app.state.sse_heartbeat_s)


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
HubDep = Annotated[EventHub, Depends(_hub)]
HeartbeatDep = Annotated[float, Depends(_heartbeat_s)]


def _principal(
    store: StoreDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> auth.Principal:
    return auth.authenticate(store, None if credentials is None else credentials.credentials)


Caller = Annotated[auth.Principal, Depends(_principal)]


async def _admin(principal: Caller) -> auth.Principal:
    return auth.require(principal, auth.Role.ADMIN)


Admin = Annotated[auth.Principal, Depends(_admin)]


async def _viewer(principal: Caller, settings: SettingsDep) -> Disclosure:
    return Disclosure.of(principal, settings)


# An authenticated caller and what it may see (admins everything; agents rounded scores, no test figures)
Viewer = Annotated[Disclosure, Depends(_viewer)]

"""The web dashboard: `/` and `/ui/...` serve one static page, `/ui/static/<file>` its script and
styles. No auth and no data here: the page asks for a token once, keeps it in the browser's
localStorage, and reads everything through the bearer-authenticated /v1 API."""

from importlib import resources

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

STATIC_PACKAGE = "services.controller"
PAGE = "index.html"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page is small and changes with each release; revalidating keeps it fresh behind caches.
CACHE_CONTROL = "no-cache"
# The page loads nothing from elsewhere; the API and its event streams are same-origin.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
HEADERS = {
    "Cache-Control": CACHE_CONTROL,
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
}


def _read(name: str) -> bytes:
    return resources.files(STATIC_PACKAGE).joinpath("static", name).read_bytes()


@router.get("/ui/static/{name}")
def asset(name: str) -> Response:
    """The page's script and styles (a fixed list: nothing else on disk is reachable)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no asset {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)


@router.get("/", response_class=HTMLResponse)
@router.get("/ui", response_class=HTMLResponse)
@router.get("/ui/{page:path}", response_class=HTMLResponse)
def page(page: str = "") -> HTMLResponse:
    """The dashboard; it routes by the URL's hash (`#/proposals/<id>`), so any /ui path shows it.
    Registered after the assets, which its catch-all path would otherwise shadow."""
    return HTMLResponse(_read(PAGE), headers=HEADERS)

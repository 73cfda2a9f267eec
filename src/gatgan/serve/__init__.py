"""`gatgan serve`: a local web page and HTTP API for one trained model (a run directory or a
`save_pretrained` folder). FastAPI rather than the standard library's http.server: request bodies
are validated by declared types (with the field named in every error), generation runs off the
event loop, and uvicorn serves concurrent clients; both are small, well-kept packages (the `serve`
extra)."""

from .app import create_app
from .requests import ServeLimits

__all__ = ["ServeLimits", "create_app"]

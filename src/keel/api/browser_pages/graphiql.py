"""GraphiQL's page, in place of strawberry's (`get_graphql_ide_html`), which loads React and
GraphiQL from unpkg and starts them with an inline script. Same GraphiQL version, served from
`/assets/`, started by `static/graphiql.js`; the headers editor is on (for `Authorization`),
and headers are never persisted in the browser's storage: they hold API keys."""

from __future__ import annotations

from starlette.responses import HTMLResponse

from .assets import GRAPHIQL, KEEL, REACT, REACT_DOM, url
from .security import PAGE_HEADERS

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Keel GraphiQL</title>
<link rel="stylesheet" href="{url(f"{GRAPHIQL}/graphiql.min.css")}">
<link rel="stylesheet" href="{url(f"{KEEL}/pages.css")}">
</head>
<body class="keel-graphiql">
<div id="graphiql">Loading...</div>
<script src="{url(f"{REACT}/react.production.min.js")}"></script>
<script src="{url(f"{REACT_DOM}/react-dom.production.min.js")}"></script>
<script src="{url(f"{GRAPHIQL}/graphiql.min.js")}"></script>
<script src="{url(f"{KEEL}/graphiql.js")}"></script>
</body>
</html>
"""


def graphiql_page() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers=PAGE_HEADERS)

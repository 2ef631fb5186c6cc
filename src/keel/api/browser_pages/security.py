"""The headers of the browser pages. Their scripts and styles all come from Keel (see `assets`),
and neither page has inline script or style, so the policy allows nothing but this origin;
`data:` only for images and fonts (GraphiQL's stylesheet embeds its fonts, Swagger UI its icons).
The pages must not be framed (clickjacking a page that holds a key) nor leak their URL."""

from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

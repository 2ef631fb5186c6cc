"""End users' OpenID Connect access tokens: checked against the issuer's published keys."""

"""The security headers every response carries, and the explorer's relaxed Content-Security-Policy.

``web.app`` sets ``SECURITY_HEADERS`` on every response (and ``HSTS`` over HTTPS); the explorer page
answers with ``EXPLORER_CSP``. No page runs an inline script.
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000"

# Plotly's WebGL traces (scattergl) compile their shaders with regl, which builds its draw functions with
# ``Function(...)``; under ``script-src 'self'`` they fail ("WebGL is not supported"). The one page that
# loads Plotly gets 'unsafe-eval' on top of the app's policy: still no inline scripts or styles, and no
# other origin.
EXPLORER_CSP = CONTENT_SECURITY_POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-eval'")

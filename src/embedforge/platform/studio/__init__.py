"""embedforge studio: the platform in a browser at ``/studio``.

Server-rendered pages (Jinja2), charts drawn as inline SVG on the server and a few lines of vanilla JS
that refresh a running job's or deployment's fragment; nothing is fetched from outside. Every page reads
and writes through the platform's own REST routes (``PlatformApi``), never the database, so the studio
shows exactly what the SDK sees. With an API key set, a login form trades the key for a cookie.
"""

from embedforge.platform.studio.web import mount

__all__ = ["mount"]

"""One blueprint per feature. Each module defines ``bp``; ``web.app.register_blueprints`` lists them.

A new feature adds ``web/blueprints/<feature>.py`` (JSON endpoints declared with ``web.api.api_route``
under ``/api/v1``, pages with plain ``bp.route``), templates under ``web/templates/<feature>/`` that
extend ``base.html``, and scripts as ``web/static/js/<feature>.js`` modules.
"""

"""The operator console: a small server-rendered web app (Flask + Jinja2, CSRF by Flask-WTF, served by waitress)
over the same store and archive the ``payments`` command reads (docs/console.md)."""

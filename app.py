"""The WSGI entry point the Procfile names: gunicorn ... app:app."""

from streamhtml.web import create_app

app = create_app()

"""Production entry point: ``gunicorn 'wsgi:app'``. Serves the web app only; it starts no thread.

Run the forwarder beside it with ``mailjet-bridge worker``.
"""

from bridge.app import create_app

app = create_app()

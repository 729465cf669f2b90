"""streamhtml: stream large dynamic responses from Flask under gunicorn in constant memory."""

__version__ = "0.1.0"

"""helpdesk: an email-driven IT help desk."""

__version__ = "0.1.0"

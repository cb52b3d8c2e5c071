"""The PostgreSQL database backend (``ENGINE = "vending_site.backends.postgresql"``); see
``base``."""

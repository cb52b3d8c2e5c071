"""The PostgreSQL database backend (``ENGINE = "vending_site.postgresql"``); see ``base``."""

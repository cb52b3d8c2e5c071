"""Settings for the vending server.

Every setting comes from an environment variable with a safe default, so that a fresh
checkout runs with no configuration at all (SQLite file, in-memory channel layer) and a
fleet install switches to PostgreSQL and Redis by setting ``DATABASE_URL`` and
``REDIS_URL``. Each variable is listed in the README's configuration table.
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Where the server keeps its own state (SQLite database, generated secret key).
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """The key from ``SECRET_KEY``, else one generated once and kept in ``DATA_DIR``.

    A fixed default would be a published secret; a key regenerated on every start would
    log every staff member out. So an install without configuration gets its own key.
    """
    configured = env.str("SECRET_KEY", default="")
    if configured:
        return configured
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
# The firmware reaches the server by whatever LAN address it found, so the default accepts
# any Host header; a fleet install behind a proxy should list its names.
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Where `manage.py serve` (and so `make run`) listens. Port 5000 is fixed in the firmware.
HOST = env.str("HOST", default="0.0.0.0")
PORT = env.int("PORT", default=5000)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "channels",
    "devices",
    "inventory",
    "transactions",
    "vending_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "vending_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "vending_site.wsgi.application"
ASGI_APPLICATION = "vending_site.asgi.application"

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the single writer; IMMEDIATE makes every transaction take
    # the write lock at BEGIN, so concurrent writers queue (up to `timeout` seconds) instead
    # of failing with "database is locked" when they upgrade from a read.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
        }
    )
    # A file, not Django's shared in-memory database, so the concurrency tests see the
    # same locking as production; one per test process, so two runs never share one.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Django's advice for ASGI servers: no persistent connections (each request's thread
    # would keep one open). Set CONN_MAX_AGE for WSGI workers or a pooler in front.
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve straight from the apps' static folders when `collectstatic` has not been run.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "admin:login"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["vending_site.parsers.SafeJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "vending_site.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "vending_site.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=1)),
}

# --- The vending domain ------------------------------------------------------------------
# A device is online when it was seen within this many seconds.
DEVICE_OFFLINE_AFTER = env.int("DEVICE_OFFLINE_AFTER", default=10)
# The device poll writes `last_seen` only when the stored value is older than this, so an
# idle fleet costs reads, not writes. Must stay well below DEVICE_OFFLINE_AFTER.
DEVICE_SEEN_WRITE_INTERVAL = min(
    env.int("DEVICE_SEEN_WRITE_INTERVAL", default=5), max(DEVICE_OFFLINE_AFTER // 2, 1)
)
# Slots created for a device that polls without having registered.
DEVICE_DEFAULT_SLOTS = env.int("DEVICE_DEFAULT_SLOTS", default=5)
# Write idle polls (no command delivered) to the communication log. Off by default: a
# 1000-machine fleet polls 500 times a second, and `last_seen` already records them.
LOG_IDLE_POLLS = env.bool("LOG_IDLE_POLLS", default=False)
# A queued command not delivered within this many seconds expires (the unit is returned).
VEND_QUEUE_TTL = env.int("VEND_QUEUE_TTL", default=30)
# A delivered vend with no confirmation within this many seconds becomes `unconfirmed`.
VEND_CONFIRM_TIMEOUT = env.int("VEND_CONFIRM_TIMEOUT", default=15)
# The longest `wait` a vend request may ask for.
VEND_MAX_WAIT = env.int("VEND_MAX_WAIT", default=10)
# How long an Idempotency-Key is remembered (at least 24 hours).
IDEMPOTENCY_KEY_TTL = max(env.int("IDEMPOTENCY_KEY_TTL", default=48 * 3600), 24 * 3600)
# A key still marked in progress after this many seconds belongs to a request that died
# before committing anything, so a retry may take it over.
IDEMPOTENCY_LOCK_TIMEOUT = env.int("IDEMPOTENCY_LOCK_TIMEOUT", default=60)

# UDP discovery (`manage.py run_discovery`). The firmware sends to port 12346.
DISCOVERY_HOST = env.str("DISCOVERY_HOST", default="0.0.0.0")
DISCOVERY_PORT = env.int("DISCOVERY_PORT", default=12346)
# Answer with this address instead of the one facing the sender (NAT, containers).
DISCOVERY_ADVERTISE_IP = env.str("DISCOVERY_ADVERTISE_IP", default="")

# USB serial (`manage.py run_serial_bridge`).
SERIAL_BAUD = env.int("SERIAL_BAUD", default=115200)
# A vend with no result line within this many seconds is `unconfirmed`, never a success.
SERIAL_REPLY_TIMEOUT = env.float("SERIAL_REPLY_TIMEOUT", default=3.0)

# The live dashboard. When true, anyone who can reach the server may watch it (read-only);
# acting (vend, select, connect) always needs a staff login.
DASHBOARD_PUBLIC = env.bool("DASHBOARD_PUBLIC", default=False)
# How long live events are kept for pages that reconnect to catch up (seconds).
LIVE_EVENT_RETENTION = env.int("LIVE_EVENT_RETENTION", default=3600)

# First-run staff account (see `manage.py bootstrap`).
ADMIN_USERNAME = env.str("ADMIN_USERNAME", default="admin")
ADMIN_PASSWORD = env.str("ADMIN_PASSWORD", default="")
ADMIN_EMAIL = env.str("ADMIN_EMAIL", default="admin@localhost")

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

"""Settings for the vending server.

Every setting comes from an environment variable with a safe default, so that a fresh
checkout runs with no configuration at all (SQLite file, in-memory channel layer) and a
fleet install switches to PostgreSQL and Redis by setting ``DATABASE_URL`` and
``REDIS_URL``. Each variable is listed in docs/configuration.md.
"""

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from vending_site.observability import logging as _vlog

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
if "*" not in ALLOWED_HOSTS:
    # Health checks (compose, systemd, a proxy on the same host) call the workers by their
    # loopback address; a list of public names must not turn those into 400s.
    ALLOWED_HOSTS += [
        host for host in ("127.0.0.1", "localhost", "[::1]") if host not in ALLOWED_HOSTS
    ]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Where `manage.py serve` (and so `make run`) listens. Port 5000 is fixed in the firmware.
HOST = env.str("HOST", default="0.0.0.0")
PORT = env.int("PORT", default=5000)

# granian, the production server for HTTP (deploy/web.py reads these; manage.py serve, only the
# WebSocket there). Threads share a worker's CPU, so two workers of eight threads suit two
# cores; each thread may keep a PostgreSQL connection (CONN_MAX_AGE), and each worker's
# last_seen writer one more, so workers x (threads + 1) per node must fit max_connections
# beside the other processes. WEB_MAX_RSS_MB (0: off)
# replaces a worker whose memory stays above it, which bounds any slow growth; off by
# default because the soak measured flat memory, and on Linux without the
# net.ipv4.tcp_migrate_req sysctl a connection queued to the replaced worker may be reset.
# WEB_ACCESS_LOG: one line per request from vending_site.wsgi (nginx logs them too).
WEB_WORKERS = env.int("WEB_WORKERS", default=2)
WEB_THREADS = env.int("WEB_THREADS", default=8)
WEB_MAX_RSS_MB = env.int("WEB_MAX_RSS_MB", default=0)
WEB_ACCESS_LOG = env.bool("WEB_ACCESS_LOG", default=True)
for _name in ("WEB_WORKERS", "WEB_THREADS"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1, not {globals()[_name]}")
if WEB_MAX_RSS_MB < 0:
    raise ImproperlyConfigured(f"WEB_MAX_RSS_MB must be 0 (off) or more, not {WEB_MAX_RSS_MB}")

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
    "rest_framework_api_key",
    "rest_framework_simplejwt.token_blacklist",
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "import_export",
    "channels",
    "devices",
    "inventory",
    "transactions",
    "vending_site",
]

# What serves browsers and REST users only: the firmware sends no cookie, session or CSRF
# token, fetches no static file and is shown no page.
_BROWSER_MIDDLEWARE = [
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "vending_site.http.csp.ContentSecurityPolicyMiddleware",
    # Last (django-axes): turns the admin login it refused into the lockout page.
    "axes.middleware.AxesMiddleware",
]
MIDDLEWARE = [
    # First and last, so the request metrics time the whole stack (django-prometheus).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Early, so every log line of the request (other middleware's too) has its request_id.
    "vending_site.http.middleware.RequestIdMiddleware",
    # A view that meets an unreachable database or Redis answers 503 with Retry-After, not 500.
    "vending_site.backends.outages.OutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before anything reads a body (CSRF reads forms): 413 for an oversized one.
    "vending_site.http.limits.RequestSizeLimitMiddleware",
    # Device endpoints refused outside DEVICE_ALLOWED_NETWORKS, before the view runs.
    "devices.access.DeviceNetworkMiddleware",
    *_BROWSER_MIDDLEWARE,
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
# The middleware of the firmware's own requests (vending_site/wsgi.py routes them): the
# browsers' part left out, about a tenth of the CPU of an idle poll (bench/poll_profile.py).
DEVICE_MIDDLEWARE = [name for name in MIDDLEWARE if name not in _BROWSER_MIDDLEWARE]

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

# Seconds to wait for a PostgreSQL connection, and for one statement, before answering 503.
DATABASE_CONNECT_TIMEOUT = max(env.int("DATABASE_CONNECT_TIMEOUT", default=5), 1)
DATABASE_STATEMENT_TIMEOUT = max(env.float("DATABASE_STATEMENT_TIMEOUT", default=10.0), 0.1)
# The Retry-After (seconds) of a 503 answered while the database or Redis is unreachable.
OUTAGE_RETRY_AFTER = max(env.int("OUTAGE_RETRY_AFTER", default=5), 1)

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
    # Persistent connections: 0 (a connection per request) is Django's advice under ASGI,
    # where they leak (measured: Daphne exhausted max_connections with 60), and stays the
    # default for manage.py serve (ASGI) and commands. granian's WSGI threads serve one
    # request after another and reuse theirs: deploy/web.py defaults CONN_MAX_AGE to 60.
    # CONN_HEALTH_CHECKS: a connection the server dropped meanwhile is replaced, not used;
    # vending_site.backends.postgresql (Django's backend otherwise) checks a quiet connection by its
    # socket instead of a SELECT 1 round trip.
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        DATABASES["default"]["ENGINE"] = "vending_site.backends.postgresql"
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # No request may wait forever on PostgreSQL: libpq gives up connecting after
    # DATABASE_CONNECT_TIMEOUT, the server cancels a statement after DATABASE_STATEMENT_TIMEOUT,
    # and vending_site/backends/database.py bounds every wait on the socket by the same figures, so
    # a
    # server that stops answering (a hung network, not only a slow query) is an error too.
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    _pg_options.setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT)
    _pg_options["options"] = " ".join(
        part
        for part in (
            _pg_options.get("options", ""),
            f"-c statement_timeout={int(DATABASE_STATEMENT_TIMEOUT * 1000)}",
        )
        if part
    )
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: a locked-out username or address is refused before any password is
# hashed (vending_site/auth/logins.py).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

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

# The currency of every price (ISO 4217 code), shown beside money in the admin and the API.
# One per install: prices are stored as plain decimals.
CURRENCY = env.str("CURRENCY", default="EUR")
if not (len(CURRENCY) == 3 and CURRENCY.isascii() and CURRENCY.isalpha() and CURRENCY.isupper()):
    raise ImproperlyConfigured(
        f"CURRENCY must be an ISO 4217 code of 3 capital letters (EUR, USD), not {CURRENCY!r}"
    )

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
# Seconds to wait for Redis (connecting, and each answer). Redis holds only throttle counts and
# live-event pushes, so a Redis that does not answer is skipped for REDIS_RETRY_AFTER seconds
# (throttles let requests through, pushes are dropped: pages catch up from the outbox).
REDIS_TIMEOUT = env.float("REDIS_TIMEOUT", default=1.0)
REDIS_RETRY_AFTER = env.float("REDIS_RETRY_AFTER", default=5.0)
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_connect_timeout": REDIS_TIMEOUT,
                        # A socket's receive blocks up to 5 s in BZPOPMIN by design (channels-
                        # redis' brpop_timeout): only a wait well past that means a hang.
                        # Pushes are bounded by REDIS_TIMEOUT in vending_site/live/events.py.
                        "socket_timeout": 5 + 2 * REDIS_TIMEOUT,
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "vending_site.http.openapi.VendingAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "vending_site.auth.permissions.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Roles: see vending_site/auth/permissions.py and docs/security.md.
    "DEFAULT_PERMISSION_CLASSES": ["vending_site.auth.permissions.IsVendClient"],
    "DEFAULT_THROTTLE_CLASSES": [
        "vending_site.http.throttling.AnonThrottle",
        "vending_site.http.throttling.UserThrottle",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["vending_site.http.parsers.SafeJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "vending_site.http.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "vending_site.http.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

# Tokens end with their credentials (vending_site/auth/tokens.py): each carries a hash of the
# password hash (CHECK_REVOKE_TOKEN), so a password change ends access tokens at once; refresh
# tokens are single-use (rotated, the used one blacklisted), and a password change or a
# deactivation blacklists every refresh token the user still holds.
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=1)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "CHECK_REVOKE_TOKEN": True,
    "CHECK_USER_IS_ACTIVE": True,
    "TOKEN_REFRESH_SERIALIZER": "vending_site.auth.tokens.RefreshSerializer",
}

# --- Access control ------------------------------------------------------------------------
# The admin's exports (django-import-export) are for whoever may view the rows exported; the
# product import asks more (inventory/admin.py: add and change products, change prices).
IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"
IMPORT_EXPORT_USE_TRANSACTIONS = True
# Seconds a worker remembers an API key it verified (revocation reaches other workers within
# this); 0: look every key up on every request. See vending_site/auth/permissions.py.
API_KEY_CACHE_SECONDS = max(env.float("API_KEY_CACHE_SECONDS", default=5.0), 0.0)
# Rates ("<n>/<second|minute|hour|day>") of the DRF throttles (vending_site/http/throttling.py).
# They spare the server a runaway client; stock and money are guarded by the database.
API_THROTTLE_ANON = env.str("API_THROTTLE_ANON", default="300/min")
API_THROTTLE_USER = env.str("API_THROTTLE_USER", default="1200/min")
API_THROTTLE_VEND = env.str("API_THROTTLE_VEND", default="120/min")
# Per client address on the token and token-refresh endpoints: each password check is a
# hash, and a sustained stream of them takes the CPU the device polls need.
AUTH_THROTTLE = env.str("AUTH_THROTTLE", default="10/min")
# Failed password logins (admin and token endpoint, django-axes): after AXES_FAILURE_LIMIT
# failures for one username (from any address) or from one address (any username), both
# are refused until AXES_COOLOFF_MINUTES have passed since the last failure. Either alone
# would leave a gap: per address only, a botnet guesses one password from many addresses;
# per username only, one address guesses every username. Anyone can therefore lock a known
# username for that long (staff unlock: `manage.py axes_reset_username NAME`).
AXES_FAILURE_LIMIT = max(env.int("AXES_FAILURE_LIMIT", default=10), 1)
AXES_COOLOFF_TIME = timedelta(minutes=max(env.float("AXES_COOLOFF_MINUTES", default=15.0), 0.1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# A locked-out client that keeps trying does not push the end of its lockout further away,
# so the "refused for N more minutes" it is told stays true.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success does not clear the failures: it would clear its address's count too, so one
# account of one's own would reset the per-address limit between guesses at others.
AXES_RESET_ON_SUCCESS = False
# The same client address as the throttles (X-Forwarded-For believed only from TRUSTED_PROXIES).
AXES_CLIENT_IP_CALLABLE = "vending_site.http.network.client_ip"
AXES_LOCKOUT_CALLABLE = "vending_site.auth.logins.lockout_response"
# Axes still logs each failure (WARNING) with the lockout parameters, masked; not verbose,
# so no "AXES: BEGIN" line at every process start.
AXES_VERBOSE = False
# Per device: the firmware polls every 2 s (30/min); a device must never meet this.
DEVICE_THROTTLE = env.str("DEVICE_THROTTLE", default="600/min")
# Per client address on the device endpoints, whatever device id the requests claim.
DEVICE_ADDRESS_THROTTLE = env.str("DEVICE_ADDRESS_THROTTLE", default="6000/min")
# Throttle counts: shared by every worker through Redis when it is configured.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "vending_site.backends.cache.FailOpenRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "vending",
            "OPTIONS": {
                "socket_connect_timeout": REDIS_TIMEOUT,
                "socket_timeout": REDIS_TIMEOUT,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Proxies whose X-Forwarded-For is believed (CIDRs); default: loopback, where nginx runs.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=["127.0.0.1/32", "::1/128"])
# Device endpoints (HTTP and UDP discovery) answer only these networks (CIDRs); empty: all.
DEVICE_ALLOWED_NETWORKS = env.list("DEVICE_ALLOWED_NETWORKS", default=[])
for _cidr in [*TRUSTED_PROXIES, *DEVICE_ALLOWED_NETWORKS]:
    ipaddress.ip_network(_cidr.strip(), strict=False)  # a typo fails at start, not silently
# A WiFi machine that announces itself waits for staff approval and receives no commands
# until then (USB serial machines need none: their cable is in this server). docs/security.md.
DEVICE_APPROVAL_REQUIRED = env.bool("DEVICE_APPROVAL_REQUIRED", default=True)
# An approved WiFi machine is served only from the address it was approved from; requests
# for it from any other address are refused. Off: anyone on the network can act as it.
DEVICE_ADDRESS_BINDING = env.bool("DEVICE_ADDRESS_BINDING", default=True)
# At most this many WiFi machines await approval at once; a new one beyond is refused
# without a write (a flood of invented ids cannot fill the database).
DEVICE_PENDING_LIMIT = max(env.int("DEVICE_PENDING_LIMIT", default=20), 0)
# A machine that was never approved and not heard from for this many hours is deleted.
DEVICE_PENDING_PRUNE_HOURS = max(env.int("DEVICE_PENDING_PRUNE_HOURS", default=24), 1)
# Device requests must carry the device's X-Device-Token (future firmware; off by default).
DEVICE_TOKEN_REQUIRED = env.bool("DEVICE_TOKEN_REQUIRED", default=False)
# The largest request body accepted (bytes); larger is 413. Our JSON bodies are < 1 KiB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY", default=64 * 1024)

# --- The vending domain ------------------------------------------------------------------
# A device is online when it was seen within this many seconds.
DEVICE_OFFLINE_AFTER = env.int("DEVICE_OFFLINE_AFTER", default=10)
# The device poll writes `last_seen` only when the stored value is older than this, so an
# idle fleet costs reads, not writes. Must stay well below DEVICE_OFFLINE_AFTER.
DEVICE_SEEN_WRITE_INTERVAL = min(
    env.int("DEVICE_SEEN_WRITE_INTERVAL", default=5), max(DEVICE_OFFLINE_AFTER // 2, 1)
)
# An online device's refresh is not written by its poll: each process writes the refreshes
# of the last this-many seconds in one statement (devices/presence.py). 0 writes each in its
# request. A refresh then waits up to this long, so it is capped where a device polling on
# time (every 2 s; 4 s leaves room for a slow answer) could look offline: write interval + 4 s +
# this stays under DEVICE_OFFLINE_AFTER (0, the writer off, when there is no room).
DEVICE_SEEN_FLUSH_SECONDS = min(
    max(env.float("DEVICE_SEEN_FLUSH_SECONDS", default=0.5), 0.0),
    2.0,
    max(DEVICE_OFFLINE_AFTER - DEVICE_SEEN_WRITE_INTERVAL - 4 - 0.5, 0.0),
)
# A WiFi machine handed its next vend while an earlier one still awaits confirmation never
# got the earlier one (the firmware polls only after confirming): flag that one `unconfirmed`
# at once, so it cannot take the next vend's confirmation. Off: PROTOCOL.md's literal rule,
# a confirmation goes to the oldest delivered vend of the slot.
WIFI_ONE_VEND_AT_A_TIME = env.bool("WIFI_ONE_VEND_AT_A_TIME", default=True)
# Slots created for a device that polls without having registered.
DEVICE_DEFAULT_SLOTS = env.int("DEVICE_DEFAULT_SLOTS", default=5)
# Rows a minute the communication log takes for what unauthenticated senders make the
# device endpoints say (requests, refusals), per sending address and per machine; the rest
# are counted and summed up in one row. 0: no limit.
DEVICE_LOG_RATE = max(env.int("DEVICE_LOG_RATE", default=60), 0)
# Write idle polls (no command delivered) to the communication log. Off by default: a
# 1000-machine fleet polls 500 times a second, and `last_seen` already records them.
LOG_IDLE_POLLS = env.bool("LOG_IDLE_POLLS", default=False)
# Answer the v2.1 poll (GET /esp32/commands/<id>) in front of Django's handler under the
# WSGI server (devices/api/poll_shortcut.py: the same services, throttles and checks; a
# quarter less CPU per idle poll, docs/benchmarks.md). Off: every poll goes through the
# middleware and DRF.
DEVICE_POLL_SHORTCUT = env.bool("DEVICE_POLL_SHORTCUT", default=True)
# Seconds a worker keeps "nothing waits for this approved machine" (devices/poll_cache.py):
# its idle polls are answered from memory until a change is announced (Redis pub/sub); the
# longest a lost announcement can delay a command. 0: off.
DEVICE_POLL_CACHE_SECONDS = env.float("DEVICE_POLL_CACHE_SECONDS", default=5.0)
# Seconds between two checks of everything a worker keeps against the database (one query
# per 500 machines): a kept answer that still matches is kept on instead of read again at
# its poll, and one an announcement missed is dropped. At most half of the above. 0: off
# (each answer is read again DEVICE_POLL_CACHE_SECONDS after it was read).
DEVICE_POLL_RECONCILE_SECONDS = env.float("DEVICE_POLL_RECONCILE_SECONDS", default=2.5)
# Overload: a poll that waited this long is answered idle at once, its command left queued
# (devices/api/shed_poll.py). 0: never; at most 2.5, under the firmware's 3 s timeout.
DEVICE_POLL_SHED_AFTER = min(max(env.float("DEVICE_POLL_SHED_AFTER", default=1.0), 0.0), 2.5)
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
# Long-running commands touch their heartbeat row this often (seconds); the dashboard calls a
# service stopped when its heartbeat is three intervals old.
SERVICE_HEARTBEAT_SECONDS = env.float("SERVICE_HEARTBEAT_SECONDS", default=5.0)
# The notifier evaluates the alert rules this often (seconds; vending_site/alerts/evaluation.py).
ALERT_CHECK_SECONDS = max(env.float("ALERT_CHECK_SECONDS", default=10.0), 1.0)

# Notifications and webhooks (docs/alerts.md): the notifier (`manage.py run_notifier`) sends
# the outbox. A webhook host resolving outside the public internet is refused unless inside
# WEBHOOK_ALLOWED_NETWORKS (CIDRs); timeouts, retries and retention in seconds and days.
WEBHOOK_ALLOWED_NETWORKS = env.list("WEBHOOK_ALLOWED_NETWORKS", default=[])
NOTIFY_TIMEOUT = max(env.float("NOTIFY_TIMEOUT", default=5.0), 0.1)
NOTIFY_MAX_ATTEMPTS = max(env.int("NOTIFY_MAX_ATTEMPTS", default=8), 1)
NOTIFY_BACKOFF_BASE = max(env.float("NOTIFY_BACKOFF_BASE", default=5.0), 0.0)
NOTIFY_BACKOFF_CAP = max(env.float("NOTIFY_BACKOFF_CAP", default=3600.0), 0.0)
NOTIFY_LEASE_SECONDS = max(env.float("NOTIFY_LEASE_SECONDS", default=60.0), 1.0)
NOTIFY_WORKERS = max(env.int("NOTIFY_WORKERS", default=8), 1)
NOTIFY_PER_ENDPOINT = max(env.int("NOTIFY_PER_ENDPOINT", default=2), 1)
NOTIFY_POLL_SECONDS = max(env.float("NOTIFY_POLL_SECONDS", default=0.25), 0.01)
NOTIFY_RETENTION_DAYS = max(env.int("NOTIFY_RETENTION_DAYS", default=30), 1)
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=10.0)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="vending@localhost")

# First-run staff account (see `manage.py bootstrap`).
ADMIN_USERNAME = env.str("ADMIN_USERNAME", default="admin")
ADMIN_PASSWORD = env.str("ADMIN_PASSWORD", default="")
ADMIN_EMAIL = env.str("ADMIN_EMAIL", default="admin@localhost")

# --- Production / HTTPS ------------------------------------------------------------------
# The defaults keep `make run` working: plain HTTP on a Pi's LAN, no proxy, cookies over
# HTTP. Behind nginx (docker-compose.yml, `make prod-local`, deploy/production.env.example)
# TLS ends at nginx, which sets X-Forwarded-Proto; these switch Django to HTTPS-only there.
# Trust X-Forwarded-Proto only when a proxy that overwrites it is the sole way in: otherwise
# any client could claim "https".
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# Never redirected to HTTPS: the firmware speaks plain HTTP on port 5000 and follows no
# redirects (it probes /status there too), and /health is probed over plain HTTP by
# orchestrators. Regexes on the path
# without its leading slash.
SECURE_REDIRECT_EXEMPT = env.list(
    "SECURE_REDIRECT_EXEMPT",
    default=[
        r"^esp32/(register|confirm|commands/[^/]+|wifi/(register|command|confirm))$",
        r"^status$",
        r"^health$",
    ],
)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = env.str("SECURE_REFERRER_POLICY", default="same-origin")
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# One JSON object per line from every logger (structlog through stdlib logging); `console`
# for people reading a terminal. Why JSON is the default: see vending_site/observability/logging.py.
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = _vlog.logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL)
_vlog.configure_structlog()

# --- Observability and API docs ------------------------------------------------------------
# Counters/histograms of every process of the stack (web, bridge, discovery, sweeper) are
# written here and summed by /metrics (prometheus_client multiprocess mode, see
# vending_site/observability/metrics.py). Exported before anything imports prometheus_client, which
# reads
# the variable once, at import.
PROMETHEUS_MULTIPROC_DIR = Path(
    env.str("PROMETHEUS_MULTIPROC_DIR", default=str(DATA_DIR / "metrics"))
)
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
# Where /metrics reads every process' files, subdirectories included. Default: the directory
# above. Processes in separate PID namespaces (containers) each write to a subdirectory of
# their own and share this root (see docker-compose.yml).
METRICS_COLLECT_DIR = env.str("METRICS_COLLECT_DIR", default="") or str(PROMETHEUS_MULTIPROC_DIR)
# Who may read /metrics (REMOTE_ADDR and every X-Forwarded-For hop must match); 403 otherwise.
METRICS_ALLOWED_NETWORKS = env.list(
    "METRICS_ALLOWED_NETWORKS",
    default=[
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
    ],
)
# The schema and Swagger UI are public: the schema describes paths the firmware and clients
# already use, holds no secrets, and every endpoint still enforces its own permissions.
SPECTACULAR_SETTINGS = {
    "TITLE": "Vending server API",
    "DESCRIPTION": (
        "REST API for vends and transactions, device management, and the wire protocol the "
        "ESP32 firmware speaks (`/esp32/...`, both WiFi dialects). Errors are "
        '`{"detail": "...", "code": "..."}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Swagger UI from drf-spectacular-sidecar's bundled files: works offline, no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Transaction.state and TransactionEvent.from_state/to_state are one choice set.
    "ENUM_NAME_OVERRIDES": {"TransactionStateEnum": "transactions.choices.TransactionState"},
    # The dashboard page's private JSON is not part of the API (see vending_site/http/openapi.py).
    "PREPROCESSING_HOOKS": ["vending_site.http.openapi.exclude_undocumented"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "vending_site.http.openapi.mark_legacy",
    ],
}

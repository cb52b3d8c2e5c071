"""How long checking an X-Device-Token takes (hash + constant-time compare, no database).

    .venv/bin/python bench/device_token.py

Pure CPU, bounded (100 000 checks); prints the mean per check.
"""

import hashlib
import hmac
import secrets
import time


def main(rounds: int = 100_000) -> None:
    token = secrets.token_urlsafe(32)
    stored = hashlib.sha256(token.encode()).hexdigest()
    started = time.perf_counter()
    for _ in range(rounds):
        hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), stored)
    per_check = (time.perf_counter() - started) / rounds
    print(f"device token check: {per_check * 1e6:.2f} µs per check ({rounds} checks)")


if __name__ == "__main__":
    main()

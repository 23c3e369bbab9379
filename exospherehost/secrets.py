"""Graph secrets, encrypted at rest with a Fernet key from EXOSPHERE_SECRETS_KEY.

`upsert_graph` encrypts each secret value (AES-128-CBC + HMAC-SHA256, `cryptography`'s
Fernet) into the hash of that graph version, `exo:{ns}:secrets:<graph>:<version>`; a Runtime
decrypts them in memory when it first runs a state of that version and hands them to the
node's `Secrets` model: a run sees the secrets of the version it is pinned to. A replaced
version's secrets expire (exospherehost.graphstore.OLD_SECRETS_TTL_S). The
plaintext is never written to Redis, to a stream entry, a dead letter, run history,
results or a log line, and no error message contains it.

EXOSPHERE_SECRETS_KEY may hold several comma-separated keys (rotation): the first one
encrypts, any of them decrypts."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from exospherehost.config import ConfigError
from exospherehost.errors import SecretsError as SecretsError  # old import path

ENV_SECRETS_KEY = "EXOSPHERE_SECRETS_KEY"
GENERATE_KEY = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)

log = logging.getLogger("exospherehost.secrets")


class SecretsCipher:
    """Encrypts and decrypts secret values with the key(s) of EXOSPHERE_SECRETS_KEY."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ConfigError(f"{ENV_SECRETS_KEY} is empty. Generate a key with: {GENERATE_KEY}")
        fernets: list[Fernet] = []
        for i, part in enumerate(parts):
            try:
                fernets.append(Fernet(part))
            except (ValueError, TypeError):
                which = f"key #{i + 1} of {ENV_SECRETS_KEY}" if len(parts) > 1 else ENV_SECRETS_KEY
                # The value itself is not echoed: it is a secret too.
                raise ConfigError(
                    f"{which} is not a valid Fernet key (32 url-safe base64-encoded bytes). "
                    f"Generate one with: {GENERATE_KEY}"
                ) from None
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecretsCipher | None:
        """The cipher of EXOSPHERE_SECRETS_KEY, or None when it is not set."""
        value = (os.environ if environ is None else environ).get(ENV_SECRETS_KEY, "")
        return cls(value) if value.strip() else None

    def encrypt(self, secrets: Mapping[str, str]) -> dict[str, bytes]:
        return {name: self._fernet.encrypt(value.encode()) for name, value in secrets.items()}

    def decrypt(self, graph: str, stored: Mapping[bytes, bytes]) -> dict[str, str]:
        out: dict[str, str] = {}
        for raw_name, token in stored.items():
            name = raw_name.decode("utf-8", "replace")
            try:
                out[name] = self._fernet.decrypt(token).decode()
            except (InvalidToken, UnicodeDecodeError):
                raise SecretsError(
                    f"cannot decrypt secret {name!r} of graph {graph!r}: {ENV_SECRETS_KEY} "
                    f"is not the key it was stored with, or it was stored unencrypted by an "
                    f"older version; set the right key, or upsert the graph again with its "
                    f"secrets"
                ) from None
        return out


def require_cipher(graph: str) -> SecretsCipher:
    """The cipher for storing `graph`'s secrets; ConfigError when no key is set."""
    cipher = SecretsCipher.from_env()
    if cipher is None:
        raise ConfigError(
            f"graph {graph!r} has secrets, which are stored encrypted: set {ENV_SECRETS_KEY} "
            f"to a Fernet key (the same one for every StateManager and Runtime of the "
            f"namespace). Generate one with: {GENERATE_KEY}"
        )
    return cipher


def decrypt_secrets(
    cipher: SecretsCipher | None, graph: str, stored: Mapping[bytes, bytes]
) -> dict[str, str]:
    """Plaintext secrets of `graph` from its secrets hash; SecretsError when impossible."""
    if not stored:
        return {}
    if cipher is None:
        raise SecretsError(
            f"graph {graph!r} has secrets but {ENV_SECRETS_KEY} is not set in this Runtime's "
            f"environment: set it to the key the secrets were stored with"
        )
    return cipher.decrypt(graph, stored)


def check_namespace_secrets(
    stored: Mapping[str, Mapping[bytes, bytes]], cipher: SecretsCipher | None
) -> None:
    """At Runtime start: refuse to start without a key when any graph of the namespace has
    secrets (`stored`: graph name -> its secrets hash as stored); warn about graphs whose
    secrets the key cannot decrypt (their states will fail)."""
    names = sorted(stored)
    with_secrets = [n for n in names if stored[n]]
    if not with_secrets:
        return
    if cipher is None:
        raise ConfigError(
            f"graphs {with_secrets} of this namespace have encrypted secrets, but "
            f"{ENV_SECRETS_KEY} is not set: set it to the Fernet key they were stored with "
            f"(or, for a new key, generate one with: {GENERATE_KEY} and upsert those graphs "
            f"again)"
        )
    for name in with_secrets:
        try:
            cipher.decrypt(name, stored[name])
        except SecretsError as exc:
            log.warning("%s; states of nodes needing these secrets will fail", exc)

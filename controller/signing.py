"""Ed25519 signatures on reconfiguration commands: the controller signs, agents and adapters verify.

Anyone who can produce to ``tapas.control.commands`` could otherwise cap GPUs. The
controller signs each :class:`~contracts.ReconfigCommand` with its private key
(``controller.command_signing_key`` or ``..._key_file``); node agents and serving
adapters pin one or more public keys (``controller.command_public_keys`` /
``..._key_files``) and refuse an enforce command whose signature does not verify under
one of them. Several pinned keys make rotation possible (SECURITY.md#key-rotation).

The signature covers :func:`canonical_bytes`: every field of the command except
``signature`` and ``key_id``, as sorted-key compact JSON, so changing any content
(server, GPUs, cap, times, mode, trigger) invalidates it. :func:`content_digest` of the
same bytes binds a command id to its content in the agents' ledger.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contracts import ConfigError, ReconfigCommand
from foundation.settings import ControllerSettings

_UNSIGNED_FIELDS = {"signature", "key_id"}


def canonical_bytes(cmd: ReconfigCommand) -> bytes:
    """The bytes a signature covers: all content fields, sorted keys, no whitespace.

    Examples:
        >>> from datetime import UTC, datetime, timedelta
        >>> t = datetime(2026, 1, 1, tzinfo=UTC)
        >>> c = ReconfigCommand(command_id="cmd-00000001", issued_at=t, expires_at=t + timedelta(minutes=1),
        ...                     server_id="s1", action="revert", reason="r")
        >>> canonical_bytes(c) == canonical_bytes(c.model_copy(update={"signature": "x", "key_id": "k"}))
        True
        >>> canonical_bytes(c) == canonical_bytes(c.model_copy(update={"server_id": "s2"}))
        False
    """
    doc = cmd.model_dump(mode="json", exclude=_UNSIGNED_FIELDS)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def content_digest(cmd: ReconfigCommand) -> str:
    """sha256 of :func:`canonical_bytes` (hex): what the agents' ledger binds a command id to."""
    return hashlib.sha256(canonical_bytes(cmd)).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_command(cmd: ReconfigCommand, private: Ed25519PrivateKey) -> ReconfigCommand:
    """``cmd`` with ``signature`` and ``key_id`` set (the controller calls this where it publishes)."""
    sig = private.sign(canonical_bytes(cmd))
    return cmd.model_copy(update={"signature": base64.b64encode(sig).decode(), "key_id": key_id(private.public_key())})


def verify_command(cmd: ReconfigCommand, pinned: dict[str, Ed25519PublicKey]) -> str | None:
    """Why ``cmd``'s signature is not acceptable under the ``pinned`` keys, or ``None`` when it verifies.

    A command naming an unknown ``key_id`` is tried against every pinned key (the id is
    only a hint), so a forged ``key_id`` gains nothing.
    """
    if not cmd.signature:
        return "unsigned command (no signature)"
    if not pinned:
        return "signed command but no controller public key is pinned on this agent"
    try:
        sig = base64.b64decode(cmd.signature, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not valid base64"
    if len(sig) != 64:
        return f"signature has {len(sig)} bytes, an Ed25519 signature has 64"
    body = canonical_bytes(cmd)
    first = [pinned[cmd.key_id]] if cmd.key_id in pinned else []
    for pub in first + [p for k, p in pinned.items() if k != cmd.key_id]:
        try:
            pub.verify(sig, body)
        except InvalidSignature:
            continue
        return None
    return f"bad signature: does not verify under any of the {len(pinned)} pinned controller key(s)"


def generate_key_pair() -> tuple[str, str]:
    """A new (private PEM, public base64 raw) pair, for ``tapas controller keygen`` and tests."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem, public_key_text(private.public_key())


def public_key_text(public: Ed25519PublicKey) -> str:
    """The base64 of the raw 32-byte public key (the form ``command_public_keys`` takes)."""
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def parse_private_key(text: str, *, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM or base64 of its 32 raw bytes; ``ConfigError`` naming ``source``."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{source}: not an Ed25519 private key ({type(key).__name__})")
            return key
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except ConfigError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{source}: cannot read an Ed25519 private key (PEM or base64 of 32 bytes): {exc}") from exc


def parse_public_key(text: str, *, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or base64 of its 32 raw bytes; ``ConfigError`` naming ``source``."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{source}: not an Ed25519 public key ({type(key).__name__})")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ConfigError:
        raise
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{source}: cannot read an Ed25519 public key (PEM or base64 of 32 bytes): {exc}") from exc


def load_signing_key(settings: ControllerSettings) -> Ed25519PrivateKey | None:
    """The controller's signing key from settings (inline secret first, then the key file), or None."""
    if settings.command_signing_key is not None:
        return parse_private_key(settings.command_signing_key.get_secret_value(),
                                 source="controller.command_signing_key")
    if settings.command_signing_key_file is not None:
        path = settings.command_signing_key_file
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"controller.command_signing_key_file={path}: {exc}") from exc
        return parse_private_key(text, source=f"controller.command_signing_key_file={path}")
    return None


def load_pinned_keys(settings: ControllerSettings) -> dict[str, Ed25519PublicKey]:
    """The pinned public keys by :func:`key_id` (inline and from files)."""
    keys: list[Ed25519PublicKey] = [parse_public_key(t, source=f"controller.command_public_keys[{i}]")
                                    for i, t in enumerate(settings.command_public_keys)]
    for path in settings.command_public_key_files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"controller.command_public_key_files: {path}: {exc}") from exc
        keys.append(parse_public_key(text, source=f"controller.command_public_key_files: {path}"))
    return pin(keys)


def pin(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Index public keys by :func:`key_id`."""
    return {key_id(k): k for k in keys}

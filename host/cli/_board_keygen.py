"""``autoq board keygen -o FILE``: write a fresh shared HMAC key for ``autoq board serve --key-file FILE`` and the
hosts' ``tcp://board:7700?key=FILE`` (64 hex digits from ``secrets``, file mode 0600; an existing file is kept
unless ``--force``). Standard library only: it runs on the board."""
from __future__ import annotations

import argparse
import os
import secrets
import sys

from autoq.common.errors import AutoQError

KEY_BYTES = 32


class KeygenError(AutoQError, OSError):
    """The key file cannot be written (it exists, or the folder is not writable)."""


def write_key(path: str, force: bool = False) -> None:
    """A new random key in ``path``, readable by its owner only."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeygenError(f"key file {path} exists: keep it, or overwrite it with --force") from None
    except OSError as exc:
        raise KeygenError(f"cannot write key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    os.chmod(path, 0o600)


def register_keygen(commands: argparse._SubParsersAction) -> None:
    """Add ``keygen`` to the ``autoq board`` actions."""
    keygen = commands.add_parser("keygen", help="write a new shared key file for serve --key-file and ?key=")
    keygen.add_argument("-o", "--output", required=True, metavar="FILE", help="key file to write (mode 0600)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(handler=keygen_handler)


def keygen_handler(args: argparse.Namespace) -> int:
    write_key(args.output, args.force)
    print(f"wrote a {KEY_BYTES * 8}-bit key to {args.output}; copy it to the hosts (scp) and keep it private",
          file=sys.stderr)
    return 0

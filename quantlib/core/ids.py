"""Validation of identifiers at the boundary: symbols and run ids never reach a path unchecked."""
from __future__ import annotations

import re

from quantlib.core.errors import IdentifierError

SYMBOL_RE = re.compile(r"^[A-Z0-9]+:[A-Z0-9._-]+$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def check_symbol(symbol: str) -> str:
    """Return `symbol` if it is `EXCHANGE:TICKER`, else raise IdentifierError."""
    if not isinstance(symbol, str) or not SYMBOL_RE.match(symbol) or ".." in symbol:
        raise IdentifierError(
            f"invalid symbol {symbol!r}: expected EXCHANGE:TICKER matching {SYMBOL_RE.pattern}"
        )
    return symbol


def check_run_id(run_id: str) -> str:
    """Return `run_id` if it is safe as a directory name, else raise IdentifierError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or run_id in {".", ".."} or ".." in run_id:
        raise IdentifierError(
            f"invalid run id {run_id!r}: use letters, digits, '_', '-', '.' only (pattern {RUN_ID_RE.pattern})"
        )
    return run_id


def check_name(name: str, what: str = "name") -> str:
    """Return a profile/scanner name if it is a plain file stem (no path separators)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise IdentifierError(f"invalid {what} {name!r}: use letters, digits, '_' and '-' only")
    return name


def split_symbol(symbol: str) -> tuple[str, str]:
    """`BINANCE:BTCUSDT` -> (`BINANCE`, `BTCUSDT`)."""
    exchange, ticker = check_symbol(symbol).split(":", 1)
    return exchange, ticker


def symbol_filename(symbol: str) -> str:
    """File stem for a symbol in the lakehouse: `BINANCE_BTCUSDT`."""
    exchange, ticker = split_symbol(symbol)
    return f"{exchange}_{ticker}"

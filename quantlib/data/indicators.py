"""Vectorized technical indicators on a (time x symbol) panel.

Every function takes 2-D float arrays shaped ``(T, N)``: rows are bars (oldest first), columns are
symbols. A 1-D array is accepted too and treated as one column (the result is 1-D again).

NaN policy (the same for every function)
-----------------------------------------
* A column may start with NaN rows: its series starts at its first finite value, and the caller
  guarantees that it has no NaN after that row (a "missing bar" must be removed, not left as NaN;
  :func:`quantlib.data.ratings.ratings_panel` does this by compacting each symbol's own bars).
  Multi-input functions (high/low/close...) start where *all* their inputs are finite.
* Outputs are ``(T, N)`` float64 arrays that are NaN before the column's start and during the
  indicator's warm-up (the first bars for which its definition needs data that does not exist yet).
  The warm-up length of each function is stated in its docstring as "first value at start + k".
* Ratios with a zero denominator (flat high == low range, no movement at all) follow TA-Lib and
  return 0 instead of NaN, so an indicator never becomes NaN after its warm-up; exceptions are
  :func:`vwma` (NaN when the volume over the window is zero), :func:`ultimate_oscillator` (NaN
  when a true-range sum is zero, as in TradingView's Technical Ratings script) and :func:`rsi`
  (TradingView: 100 when there was no loss, 0 when there was no gain, 100 when neither).

Point-in-time: the value at row ``t`` uses rows ``<= t`` only (trailing windows, causal recursions).

Implementation notes
--------------------
* Rolling sums / max / min use a doubling scheme: window sums of length 1, 2, 4, ... are combined
  with shifted element-wise ops (O(log n) passes over the panel, no cumulative sum, so no
  cancellation error when a series' scale changes by orders of magnitude). NaN propagation makes
  any window that touches a row before the column's start NaN, which *is* the warm-up mask.
* EMA / Wilder recursions run through :func:`scipy.signal.lfilter` along the time axis. Each column's
  seed (the simple mean of its first ``n`` values, the TA-Lib / TradingView convention) is injected
  as the filter input at the seed row, with zero input before it, so columns with different start
  rows are filtered in one call.
* scipy is imported lazily inside the functions that need it.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "first_valid",
    "lag",
    "rolling_sum",
    "rolling_max",
    "rolling_min",
    "sma",
    "ema",
    "rma",
    "wma",
    "hma",
    "vwma",
    "rsi",
    "stoch",
    "typical_price",
    "cci",
    "dmi",
    "adx",
    "plus_di",
    "minus_di",
    "awesome_oscillator",
    "momentum",
    "macd",
    "stoch_rsi",
    "williams_r",
    "bull_bear_power",
    "ultimate_oscillator",
    "ichimoku",
]

_NAN = np.nan


# ----------------------------------------------------------------------------------------------
# plumbing
# ----------------------------------------------------------------------------------------------
def _panel(fn):
    """Convert array arguments to 2-D float64; squeeze the outputs back if all inputs were 1-D."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        conv = []
        one_d = None
        for a in args:
            if np.ndim(a) == 0:
                conv.append(a)
                continue
            arr = np.asarray(a, dtype=np.float64)
            if arr.ndim == 1:
                arr = arr[:, None]
                one_d = True if one_d is None else one_d
            elif arr.ndim == 2:
                one_d = False
            else:
                raise ValueError(f"{fn.__name__}: expected 1-D or 2-D (T, N) arrays, got shape {arr.shape}")
            conv.append(arr)
        shapes = {c.shape for c in conv if isinstance(c, np.ndarray)}
        if len(shapes) > 1:
            raise ValueError(f"{fn.__name__}: input arrays must have the same shape, got {sorted(shapes)}")
        out = fn(*conv, **kwargs)
        if one_d:
            if isinstance(out, tuple):
                return tuple(o[:, 0] for o in out)
            return out[:, 0]
        return out

    return wrapper


def first_valid(x: np.ndarray) -> np.ndarray:
    """Row index of the first finite value of each column of a (T, N) array (T if none).

    Returns an int64 array shaped (N,).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    T, N = x.shape
    fin = np.isfinite(x)
    s = fin.argmax(axis=0).astype(np.int64)
    if T:
        s[~fin[s.clip(max=T - 1), np.arange(N)]] = T
    return s


def _start(*arrays: np.ndarray) -> np.ndarray:
    """First row where all inputs are finite (they share one start by contract)."""
    if len(arrays) == 1:
        return first_valid(arrays[0])
    acc = arrays[0] + arrays[1]
    for a in arrays[2:]:
        acc += a
    return first_valid(acc)


def _shift_op(a: np.ndarray, b: np.ndarray, k: int, op) -> np.ndarray:
    """out[t] = op(a[t], b[t - k]) for t >= k and NaN for t < k (b's row t-k does not exist)."""
    T = a.shape[0]
    out = np.empty_like(a)
    if k >= T:
        out.fill(_NAN)
        return out
    out[:k] = _NAN
    op(a[k:], b[: T - k], out=out[k:])
    return out


def lag(x: np.ndarray, k: int = 1) -> np.ndarray:
    """x shifted down by k rows (value at t is x[t-k]); the first k rows are NaN."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    k = int(k)
    if k >= x.shape[0]:
        out.fill(_NAN)
        return out
    out[:k] = _NAN
    out[k:] = x[: x.shape[0] - k]
    return out


def _rolling(x: np.ndarray, windows, op) -> dict[int, np.ndarray]:
    """Trailing-window reductions of x for several window lengths at once (doubling scheme).

    ``op`` is an associative binary ufunc (np.add, np.maximum, np.minimum) that propagates NaN.
    A window that reaches before row 0 or touches a NaN row is NaN. Returns {n: array}; arrays may
    be shared between entries and with ``x`` itself (n = 1): treat them as read-only.
    """
    wins = sorted({int(n) for n in windows})
    if not wins or wins[0] < 1:
        raise ValueError(f"window lengths must be >= 1, got {list(windows)}")
    maxn = wins[-1]
    acc: dict[int, np.ndarray] = {}
    length: dict[int, int] = {}
    power, p = x, 1  # `power` holds windows of length p
    while True:
        for n in wins:
            if n & p:
                if n not in acc:
                    acc[n], length[n] = power, p
                else:
                    # window of length `length[n]` ending at t + window of length p ending before it
                    acc[n] = _shift_op(acc[n], power, length[n], op)
                    length[n] += p
        if 2 * p > maxn:
            break
        power = _shift_op(power, power, p, op)
        p *= 2
    return acc


def _recursive(x: np.ndarray, n: int, alpha: float, start: np.ndarray) -> np.ndarray:
    """y_t = (1 - alpha) y_{t-1} + alpha x_t, seeded at row start+n-1 with mean(x[start : start+n]).

    ``x`` is NaN before ``start`` (per column) and finite after. Rows before the seed row are NaN.
    One lfilter call for all columns: the filter input is 0 before the seed row, the seed itself
    at the seed row and alpha * x after it.
    """
    from scipy.signal import lfilter

    T, N = x.shape
    n = int(n)
    if n < 1:
        raise ValueError(f"period must be >= 1, got {n}")
    seed_row = np.asarray(start, dtype=np.int64) + (n - 1)
    # only the first R rows contain a column that is still before its seed row
    R = int(min(T, seed_row.max(initial=0)))
    warm = np.arange(R)[:, None] < seed_row[None, :]
    u = np.multiply(x, alpha)
    np.copyto(u[:R], 0.0, where=warm)
    cols = np.nonzero(seed_row < T)[0]
    if cols.size:
        rows = start[cols][None, :] + np.arange(n)[:, None]
        # sequential sum (np.add.accumulate) so the seed does not depend on how many columns
        # are processed together (a pairwise reduction would change the rounding)
        seed = np.cumsum(x[rows, cols[None, :]], axis=0)[-1] / n
        u[seed_row[cols], cols] = seed
    y = lfilter([1.0], [1.0, alpha - 1.0], u, axis=0)
    np.copyto(y[:R], _NAN, where=warm)
    return y


def _safe_ratio(num: np.ndarray, den: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """scale * num / den, 0 where den == 0 (TA-Lib convention); NaN in num or den gives NaN."""
    out = np.divide(num, np.where(den == 0.0, np.inf, den))  # finite / inf = 0
    if scale != 1.0:
        out *= scale
    return out


def _nan_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (the ratio is undefined there, e.g. no volume or no range)."""
    return np.divide(num, den, out=np.full_like(num, _NAN), where=den != 0)


# ----------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------
@_panel
def rolling_sum(x, n: int):
    """Trailing n-bar sum. (T, N) -> (T, N); first value at start + n - 1."""
    out = _rolling(x, [n], np.add)[n]
    return out.copy() if out is x else out


@_panel
def rolling_max(x, n: int):
    """Trailing n-bar maximum. (T, N) -> (T, N); first value at start + n - 1."""
    out = _rolling(x, [n], np.maximum)[n]
    return out.copy() if out is x else out


@_panel
def rolling_min(x, n: int):
    """Trailing n-bar minimum. (T, N) -> (T, N); first value at start + n - 1."""
    out = _rolling(x, [n], np.minimum)[n]
    return out.copy() if out is x else out


def _sma_multi(x: np.ndarray, windows) -> dict[int, np.ndarray]:
    sums = _rolling(x, windows, np.add)
    return {n: s / n for n, s in sums.items()}


@_panel
def sma(x, n: int):
    """Simple moving average of the last n values. (T, N) -> (T, N); first value at start + n - 1."""
    return _sma_multi(x, [n])[n]


@_panel
def ema(x, n: int, *, start=None):
    """Exponential moving average, alpha = 2 / (n + 1), seeded with the SMA of the first n values.

    (T, N) -> (T, N); first value (= that SMA) at start + n - 1 (TA-Lib EMA / SPEC §1.5).
    ``start`` (optional, (N,) ints) is the first finite row per column if already known.
    """
    s = first_valid(x) if start is None else np.asarray(start)
    return _recursive(x, n, 2.0 / (n + 1.0), s)


@_panel
def rma(x, n: int, *, start=None):
    """Wilder's moving average (alpha = 1/n), seeded with the SMA of the first n values.

    (T, N) -> (T, N); first value at start + n - 1.
    """
    s = first_valid(x) if start is None else np.asarray(start)
    return _recursive(x, n, 1.0 / n, s)


def _wma(x: np.ndarray, n: int) -> np.ndarray:
    n = int(n)
    T = x.shape[0]
    out = x * float(n)
    tmp = np.empty_like(x)
    for i in range(1, n):  # loop over the n weights, not over time or symbols
        if i >= T:
            break
        np.multiply(x[: T - i], float(n - i), out=tmp[: T - i])
        out[i:] += tmp[: T - i]
    out[: min(n - 1, T)] = _NAN
    out /= n * (n + 1) / 2.0
    return out


@_panel
def wma(x, n: int):
    """Linearly weighted moving average (weights 1..n, newest heaviest). First value at start + n - 1."""
    return _wma(x, n)


def _hma(x: np.ndarray, n: int) -> np.ndarray:
    half, root = int(n) // 2, int(round(np.sqrt(n)))
    raw = _wma(x, half)
    raw *= 2.0
    raw -= _wma(x, n)
    return _wma(raw, root)


@_panel
def hma(x, n: int = 9):
    """Hull moving average: WMA(2 * WMA(x, n // 2) - WMA(x, n), round(sqrt(n))).

    (TradingView's definition.) For n = 9: WMA 4, WMA 9, then WMA 3; first value at start + 10.
    """
    return _hma(x, n)


def _vwma(close: np.ndarray, volume: np.ndarray, n: int) -> np.ndarray:
    num = _rolling(close * volume, [n], np.add)[n]
    den = _rolling(volume, [n], np.add)[n]
    return _nan_ratio(num, den)


@_panel
def vwma(close, volume, n: int = 20):
    """Volume-weighted moving average sum(close * volume, n) / sum(volume, n).

    First value at start + n - 1; NaN where the n-bar volume is 0 (undefined, does not vote).
    """
    return _vwma(close, volume, n)


# ----------------------------------------------------------------------------------------------
# oscillators
# ----------------------------------------------------------------------------------------------
def _rsi(close: np.ndarray, n: int, start: np.ndarray) -> np.ndarray:
    d = _shift_op(close, close, 1, np.subtract)  # close_t - close_{t-1}; NaN at start
    gain = np.maximum(d, 0.0)
    loss = np.maximum(-d, 0.0)
    ag = _recursive(gain, n, 1.0 / n, start + 1)
    al = _recursive(loss, n, 1.0 / n, start + 1)
    den = ag + al
    # RSI = 100 * ag / (ag + al) = 100 - 100 * al / (ag + al); with no move at all (den == 0)
    # al / inf = 0 gives 100 (TradingView); NaN (warm-up) propagates
    frac = np.divide(al, np.where(den == 0.0, np.inf, den))
    np.multiply(frac, -100.0, out=frac)
    frac += 100.0
    return frac


@_panel
def rsi(close, n: int = 14, *, start=None):
    """Relative Strength Index with Wilder smoothing (TA-Lib / TradingView).

    avg gain / avg loss are seeded with the mean of the first n changes (rows start+1..start+n),
    then Wilder-smoothed. RSI = 100 * avg_gain / (avg_gain + avg_loss) (= 100 - 100 / (1 + RS)).
    First value at start + n. 100 if avg_loss == 0 (TradingView), 0 if avg_gain == 0.
    """
    s = first_valid(close) if start is None else np.asarray(start)
    return _rsi(close, n, s)


def _stoch_raw(close: np.ndarray, hh: np.ndarray, ll: np.ndarray) -> np.ndarray:
    return _safe_ratio(close - ll, hh - ll, 100.0)


def _stoch_from_extremes(close, hh, ll, smooth_k: int, d: int):
    k = _sma_multi(_stoch_raw(close, hh, ll), [smooth_k])[smooth_k]
    return k, _sma_multi(k, [d])[d]


@_panel
def stoch(high, low, close, k: int = 14, smooth_k: int = 3, d: int = 3):
    """Slow stochastic: %K = SMA(100 (C - LL_k) / (HH_k - LL_k), smooth_k), %D = SMA(%K, d).

    Returns (k, d). Raw %K is 0 when HH == LL (TA-Lib). First %K at start + k + smooth_k - 2,
    first %D at start + k + smooth_k + d - 3 (= start + 17 for 14, 3, 3; TA-Lib STOCH).
    """
    hh = _rolling(high, [k], np.maximum)[k]
    ll = _rolling(low, [k], np.minimum)[k]
    return _stoch_from_extremes(close, hh, ll, smooth_k, d)


def _cci(src: np.ndarray, n: int) -> np.ndarray:
    m = _sma_multi(src, [n])[n]
    T = src.shape[0]
    md = np.abs(src - m)
    tmp = np.empty_like(src)
    for i in range(1, n):  # loop over the window lags (the mean deviation needs the current mean)
        if i >= T:
            break
        np.subtract(src[: T - i], m[i:], out=tmp[i:])
        np.abs(tmp[i:], out=tmp[i:])
        md[i:] += tmp[i:]
    md /= n  # rows < n-1 are NaN through m
    return _safe_ratio(src - m, md, 1.0 / 0.015)


@_panel
def typical_price(high, low, close):
    """(H + L + C) / 3, the classic CCI source (TA-Lib CCI)."""
    return (high + low + close) / 3.0


@_panel
def cci(source, n: int = 20):
    """Commodity Channel Index of one series (TradingView ``ta.cci(source, n)``):
    (x - SMA(x, n)) / (0.015 * mean |x - SMA(x, n)|).

    The Technical Ratings use ``cci(close)``; the classic / TA-Lib CCI is
    ``cci(typical_price(high, low, close))``. 0 when the mean deviation is 0 (TA-Lib).
    First value at start + n - 1.
    """
    return _cci(source, n)


def _dmi(high, low, close, n: int, adx_n: int, start: np.ndarray):
    up = _shift_op(high, high, 1, np.subtract)  # high_t - high_{t-1}
    down = _shift_op(low, low, 1, np.subtract)
    np.negative(down, out=down)  # low_{t-1} - low_t
    pdm = np.where((up > down) & (up > 0.0), up, 0.0)
    mdm = np.where((down > up) & (down > 0.0), down, 0.0)
    pc = lag(close, 1)
    tr = np.maximum(high, pc)
    tr -= np.minimum(low, pc)  # max(H, C_{t-1}) - min(L, C_{t-1}) == classic true range
    # rows before start+1 (no previous bar) hold 0 in pdm/mdm; _recursive never reads them
    s1 = start + 1
    a = 1.0 / n
    str_ = _recursive(tr, n, a, s1)
    pdi = _safe_ratio(_recursive(pdm, n, a, s1), str_, 100.0)
    mdi = _safe_ratio(_recursive(mdm, n, a, s1), str_, 100.0)
    dx = _safe_ratio(np.abs(pdi - mdi), pdi + mdi, 100.0)
    adx_ = _recursive(dx, adx_n, 1.0 / adx_n, start + n)
    return pdi, mdi, adx_


@_panel
def dmi(high, low, close, n: int = 14, adx_n: int = 14, *, start=None):
    """Directional movement (Wilder): returns (plus_di, minus_di, adx).

    +DM = up if up > down and up > 0 else 0 (up = H_t - H_{t-1}, down = L_{t-1} - L_t), -DM mirror,
    TR = true range; each is Wilder-smoothed (RMA seeded with the mean of the first n values,
    rows start+1..start+n); DI = 100 * RMA(DM) / RMA(TR) (0 if RMA(TR) == 0);
    DX = 100 |+DI - -DI| / (+DI + -DI) (0 if the sum is 0); ADX = RMA(DX, adx_n).
    First DI at start + n, first ADX at start + n + adx_n - 1 (TradingView ``ta.dmi``).

    TA-Lib seeds its DM/TR sums with n-1 values and one Wilder step instead, so TA-Lib's
    PLUS_DI / MINUS_DI / ADX differ at the start; the difference decays as (1 - 1/n)^t
    (below 1e-12 relative after ~400 bars for n = 14).
    """
    s = _start(high, low, close) if start is None else np.asarray(start)
    return _dmi(high, low, close, n, adx_n, s)


def adx(high, low, close, n: int = 14, *, start=None):
    """Average directional index (see :func:`dmi`). First value at start + 2n - 1."""
    return dmi(high, low, close, n, n, start=start)[2]


def plus_di(high, low, close, n: int = 14, *, start=None):
    """+DI (see :func:`dmi`). First value at start + n."""
    return dmi(high, low, close, n, n, start=start)[0]


def minus_di(high, low, close, n: int = 14, *, start=None):
    """-DI (see :func:`dmi`). First value at start + n."""
    return dmi(high, low, close, n, n, start=start)[1]


def _ao(hl2: np.ndarray, fast: int, slow: int) -> np.ndarray:
    m = _sma_multi(hl2, [fast, slow])
    return m[fast] - m[slow]


@_panel
def awesome_oscillator(high, low, fast: int = 5, slow: int = 34):
    """Awesome oscillator SMA((H+L)/2, fast) - SMA((H+L)/2, slow). First value at start + slow - 1."""
    return _ao((high + low) / 2.0, fast, slow)


@_panel
def momentum(x, n: int = 10):
    """Momentum x_t - x_{t-n} (TA-Lib MOM). First value at start + n."""
    return _shift_op(x, x, int(n), np.subtract)


def _macd(close, fast: int, slow: int, signal: int, start: np.ndarray):
    line = _recursive(close, fast, 2.0 / (fast + 1.0), start)
    line -= _recursive(close, slow, 2.0 / (slow + 1.0), start)
    sig = _recursive(line, signal, 2.0 / (signal + 1.0), start + (max(fast, slow) - 1))
    return line, sig, line - sig


@_panel
def macd(close, fast: int = 12, slow: int = 26, signal: int = 9, *, start=None):
    """MACD: returns (macd, signal, hist) with macd = EMA(fast) - EMA(slow), signal = EMA(macd, signal).

    Every EMA is seeded with the SMA of its own first n values (TradingView ``ta.macd``; SPEC §1.5).
    First macd at start + slow - 1, first signal / hist at start + slow + signal - 2.
    TA-Lib's MACD instead seeds the fast EMA later (so both start on the same bar); its macd line
    therefore differs at the start and converges at the rate (1 - 2/(fast+1))^t.
    """
    s = first_valid(close) if start is None else np.asarray(start)
    return _macd(close, fast, slow, signal, s)


def _stoch_rsi_from_rsi(r: np.ndarray, n: int, k: int, d: int):
    hh = _rolling(r, [n], np.maximum)[n]
    ll = _rolling(r, [n], np.minimum)[n]
    return _stoch_from_extremes(r, hh, ll, k, d)


@_panel
def stoch_rsi(close, rsi_n: int = 14, stoch_n: int = 14, k: int = 3, d: int = 3, *, start=None):
    """Stochastic RSI (TradingView): K = SMA(stoch(RSI, RSI, RSI, stoch_n), k), D = SMA(K, d).

    Returns (k, d). Raw stoch is 0 when the RSI range is 0. For 14, 14, 3, 3: RSI from start + 14,
    K from start + 29, D from start + 31. (TA-Lib's STOCHRSI is a *fast* stoch of RSI, not this.)
    """
    s = first_valid(close) if start is None else np.asarray(start)
    return _stoch_rsi_from_rsi(_rsi(close, rsi_n, s), stoch_n, k, d)


def _willr_from_extremes(close, hh, ll):
    return _safe_ratio(hh - close, hh - ll, -100.0)


@_panel
def williams_r(high, low, close, n: int = 14):
    """Williams %R = -100 (HH_n - C) / (HH_n - LL_n), 0 if HH == LL (TA-Lib). First value at start + n - 1."""
    hh = _rolling(high, [n], np.maximum)[n]
    ll = _rolling(low, [n], np.minimum)[n]
    return _willr_from_extremes(close, hh, ll)


@_panel
def bull_bear_power(high, low, close, n: int = 13, *, start=None):
    """Elder ray: returns (bull, bear) = (H - EMA(C, n), L - EMA(C, n)). First value at start + n - 1."""
    s = _start(high, low, close) if start is None else np.asarray(start)
    e = _recursive(close, n, 2.0 / (n + 1.0), s)
    return high - e, low - e


def _uo(high, low, close, p1: int, p2: int, p3: int):
    pc = lag(close, 1)
    tl = np.minimum(low, pc)
    bp = close - tl
    tr = np.maximum(high, pc)
    tr -= tl
    sb = _rolling(bp, [p1, p2, p3], np.add)
    st = _rolling(tr, [p1, p2, p3], np.add)
    out = _nan_ratio(sb[p1], st[p1])
    out *= 4.0
    out += 2.0 * _nan_ratio(sb[p2], st[p2])
    out += _nan_ratio(sb[p3], st[p3])
    out *= 100.0 / 7.0
    return out


@_panel
def ultimate_oscillator(high, low, close, p1: int = 7, p2: int = 14, p3: int = 28):
    """Ultimate oscillator 100 (4 A1 + 2 A2 + A3) / 7, A_i = sum(BP, p_i) / sum(TR, p_i).

    BP = C - min(L, C_{t-1}), TR = max(H, C_{t-1}) - min(L, C_{t-1}). NaN where any TR sum is 0
    (a flat window): TradingView's Technical Ratings script leaves the oscillator undefined there,
    whereas TA-Lib ULTOSC counts the term as 0 (which can turn a flat market into a sell vote).
    Otherwise equal to TA-Lib ULTOSC. First value at start + p3 (the first bar has no previous close).
    """
    return _uo(high, low, close, p1, p2, p3)


def _ichimoku_from_extremes(hh: dict, ll: dict, conv: int, base: int, span_b: int):
    c = (hh[conv] + ll[conv]) / 2.0
    b = (hh[base] + ll[base]) / 2.0
    a = (c + b) / 2.0
    sb = (hh[span_b] + ll[span_b]) / 2.0
    return c, b, a, sb


@_panel
def ichimoku(high, low, conv: int = 9, base: int = 26, span_b: int = 52):
    """Ichimoku lines as computed at bar t (no displacement): returns (conversion, base, lead1, lead2).

    conversion / base / lead 2 = midpoint of the conv / base / span_b-bar highest high and lowest
    low (TA-Lib MIDPRICE); lead 1 = (conversion + base) / 2. These are the values TradingView's
    Technical Ratings script compares (a chart plots the leads 26 bars ahead as the cloud's span
    A / B). First values at start + n - 1.
    """
    w = (conv, base, span_b)
    hh = _rolling(high, w, np.maximum)
    ll = _rolling(low, w, np.minimum)
    return _ichimoku_from_extremes(hh, ll, conv, base, span_b)

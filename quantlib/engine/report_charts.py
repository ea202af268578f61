"""The plotly figures of a run's `report.html` (`engine.run_report`): pure functions of frames, percentages
on the axes, one colour per stream across every chart (the book dark blue, the market grey, the
equal-weight benchmark orange)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from quantlib.portfolio.metrics import drawdown, wealth
from quantlib.portfolio.performance import (monthly_table, rolling_beta, rolling_sharpe, rolling_vol,
                                            yearly_returns)

BOOK, MARKET, EQUAL = "#1f3b73", "#8c8c8c", "#f58518"
PALETTE = ("#4c78a8", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#eeca3b")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def colors(streams: list[str], book: str, market: str | None, equal: str | None) -> dict[str, str]:
    """One colour per stream name: the book, the two benchmarks, then the palette."""
    fixed = {book: BOOK, **({market: MARKET} if market else {}), **({equal: EQUAL} if equal else {})}
    others = iter(PALETTE * 4)
    return {s: fixed.get(s) or next(others) for s in streams}


#: Pixels between the bottom of the plot area and the top of the legend (room for the x tick labels).
LEGEND_GAP = 34


def _layout(fig: go.Figure, title: str, height: int, **extra) -> go.Figure:
    """Title top left; the legend in rows under the plot area (above it, five streams or more wrapped into
    the title), the bottom margin growing with it (plotly's automargin)."""
    margin = {"l": 60, "r": 20, "t": 56, "b": 40, **extra.pop("margin", {})}
    plot_height = max(height - margin["t"] - margin["b"], 1)
    settings = {"margin": margin, "hovermode": "x unified",
                "legend": {"orientation": "h", "yanchor": "top", "y": -LEGEND_GAP / plot_height, "xanchor": "left",
                           "x": 0.0}}
    fig.update_layout(title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}}, height=height,
                      template="plotly_white", **{**settings, **extra})
    return fig


def equity_figure(returns: pd.DataFrame, palette: dict[str, str], book: str) -> go.Figure:
    """Wealth from 1.0 of every stream (the book thick; other risk profiles start hidden in the legend)."""
    fig = go.Figure()
    for name in returns.columns:
        w = wealth(returns[name])
        fig.add_trace(go.Scatter(x=w.index, y=w.to_numpy(), mode="lines", name=name,
                                 line={"color": palette[name], "width": 2.6 if name == book else 1.4},
                                 visible=True if name == book or palette[name] in (MARKET, EQUAL) else "legendonly",
                                 hovertemplate="%{y:.3f}"))
    fig.update_yaxes(title_text="wealth (start = 1.0)")
    return _layout(fig, "Equity vs benchmarks (out of sample)", 420)


def underwater_figure(returns: pd.DataFrame, palette: dict[str, str], book: str) -> go.Figure:
    """Drawdown from the running peak of the book (filled) and the benchmarks."""
    fig = go.Figure()
    for name in returns.columns:
        dd = drawdown(returns[name])
        fig.add_trace(go.Scatter(x=dd.index, y=dd.to_numpy(), mode="lines", name=name,
                                 fill="tozeroy" if name == book else None, line={"color": palette[name], "width": 1.4},
                                 hovertemplate="%{y:.1%}"))
    fig.update_yaxes(title_text="drawdown", tickformat=".0%")
    return _layout(fig, "Underwater curve: drawdown from the running peak", 300)


def monthly_figure(returns: pd.Series, name: str) -> go.Figure:
    """Year x month heatmap of compounded monthly returns (red losses, green gains, centred on 0)."""
    table = monthly_table(returns)
    z = table.to_numpy(dtype=float)
    text = [["" if np.isnan(v) else f"{v:+.1%}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=MONTHS, y=[str(y) for y in table.index], text=text, texttemplate="%{text}",
                               colorscale="RdYlGn", zmid=0.0, colorbar={"tickformat": ".0%", "title": {"text": "return"}},
                               hovertemplate="%{y} %{x}: %{z:.2%}<extra></extra>", xgap=2, ygap=2))
    fig.update_yaxes(type="category", autorange="reversed")
    return _layout(fig, f"Monthly returns: {name} (out of sample)", 150 + 46 * len(table), hovermode="closest")


def yearly_figure(returns: pd.DataFrame, palette: dict[str, str]) -> go.Figure:
    """Calendar-year compounded return of each stream, grouped bars."""
    fig = go.Figure()
    for name in returns.columns:
        yearly = yearly_returns(returns[name])
        fig.add_trace(go.Bar(x=[str(y) for y in yearly.index], y=yearly.to_numpy(), name=name,
                             marker_color=palette[name], text=[f"{v:+.1%}" for v in yearly], textposition="outside",
                             hovertemplate="%{x}: %{y:.2%}"))
    fig.update_yaxes(title_text="return", tickformat=".0%")
    fig.update_xaxes(type="category")
    return _layout(fig, "Yearly returns (partial years: the out-of-sample part only)", 320, barmode="group",
                   hovermode="closest")


def rolling_figure(book: pd.Series, market: pd.Series | None, window: int, annualization: int,
                   palette: dict[str, str]) -> go.Figure:
    """Rolling `window`-day volatility, Sharpe and beta to the market benchmark of the book (vol and Sharpe
    of the market too)."""
    rows = 3 if market is not None else 2
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["volatility (annualized)", "Sharpe (annualized, rf = 0)",
                                        "beta to the market benchmark"][:rows])
    streams = [(book, palette.get(str(book.name), BOOK))] + ([(market, MARKET)] if market is not None else [])
    for series, color in streams:
        for row, values in ((1, rolling_vol(series, window, annualization)),
                            (2, rolling_sharpe(series, window, annualization))):
            fig.add_trace(go.Scatter(x=values.index, y=values.to_numpy(), mode="lines", name=str(series.name),
                                     legendgroup=str(series.name), showlegend=row == 1, line={"color": color}),
                          row=row, col=1)
    if market is not None:
        beta = rolling_beta(book, market, window)
        fig.add_trace(go.Scatter(x=beta.index, y=beta.to_numpy(), mode="lines", name="beta", showlegend=False,
                                 line={"color": palette.get(str(book.name), BOOK)}), row=3, col=1)
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    return _layout(fig, f"Rolling {window}-day risk (out of sample)", 200 + 170 * rows)


def distribution_figure(returns: pd.DataFrame, palette: dict[str, str]) -> go.Figure:
    """Histogram of daily returns of each stream (overlaid, as a share of days)."""
    fig = go.Figure()
    values = returns.stack().to_numpy(dtype=float)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    bins = {"start": low, "end": high, "size": (high - low) / 60 or 1e-4}  # the same bins for every stream
    for name in returns.columns:
        r = returns[name].dropna()
        fig.add_trace(go.Histogram(x=r.to_numpy(), name=name, histnorm="probability", opacity=0.55, xbins=bins,
                                   marker_color=palette[name], hovertemplate="%{x:.2%}: %{y:.1%} of days"))
    fig.update_xaxes(title_text="daily return", tickformat=".0%")
    fig.update_yaxes(title_text="share of days", tickformat=".0%")
    return _layout(fig, "Distribution of daily returns", 320, barmode="overlay", hovermode="closest")


def treemap_figure(book: pd.DataFrame, title: str) -> go.Figure:
    """Physical names by |net weight| under LONG and SHORT (the label shows the signed weight)."""
    book = book[book["net_weight"].abs() > 1e-12]
    side = np.where(book["net_weight"] >= 0, "LONG", "SHORT")
    totals = {s: float(book.loc[side == s, "net_weight"].abs().sum()) for s in ("LONG", "SHORT")}
    ids = [s for s in totals if totals[s] > 0] + [f"{s}/{n}" for s, n in zip(side, book["symbol"])]
    labels = [f"{s} {totals[s]:.1%}" for s in totals if totals[s] > 0] + [str(n) for n in book["symbol"]]
    parents = ["" for s in totals if totals[s] > 0] + list(side)
    values = [totals[s] for s in totals if totals[s] > 0] + book["net_weight"].abs().tolist()
    signed = [totals[s] * (1 if s == "LONG" else -1) for s in totals if totals[s] > 0] + book["net_weight"].tolist()
    fig = go.Figure(go.Treemap(ids=ids, labels=labels, parents=parents, values=values, branchvalues="total",
                               customdata=signed, texttemplate="%{label}<br>%{customdata:+.2%}",
                               hovertemplate="%{label}: %{customdata:+.2%}<extra></extra>",
                               marker={"colors": ["#2e7d32" if v >= 0 else "#c62828" for v in signed]}))
    return _layout(fig, title, 460, hovermode="closest", margin={"l": 10, "r": 10, "t": 56, "b": 10})


def exposure_figure(exposure: pd.DataFrame, title: str) -> go.Figure:
    """Net exposure over time per group (stacked; shorts negative), with the book's net and gross lines."""
    fig = go.Figure()
    groups = [c for c in exposure.columns if c not in ("net", "gross")]
    for i, col in enumerate(groups):
        fig.add_trace(go.Scatter(x=exposure.index, y=exposure[col].to_numpy(), mode="lines", name=col,
                                 stackgroup="short" if exposure[col].min() < 0 else "long", line={"width": 0.5,
                                 "shape": "hv", "color": PALETTE[i % len(PALETTE)]}, hovertemplate="%{y:+.1%}"))
    for col, dash in (("net", "solid"), ("gross", "dot")):
        if col in exposure:
            fig.add_trace(go.Scatter(x=exposure.index, y=exposure[col].to_numpy(), mode="lines", name=col,
                                     line={"color": "black", "dash": dash, "width": 1.6, "shape": "hv"},
                                     hovertemplate="%{y:+.1%}"))
    fig.update_yaxes(title_text="weight", tickformat=".0%")
    return _layout(fig, title, 340)


def rebalance_figure(turnover: pd.Series, cost: pd.Series | None, title: str) -> go.Figure:
    """Turnover (½ Σ|Δw|) at each rebalance and, if known, the cost charged (share of the book)."""
    rows = 2 if cost is not None else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["turnover (½ Σ|Δw|)", "cost charged (share of the book)"][:rows])
    days = [pd.Timestamp(t).strftime("%Y-%m-%d") for t in turnover.index]  # one bar per rebalance, dated
    fig.add_trace(go.Bar(x=days, y=turnover.to_numpy(), name="turnover", marker_color=BOOK,
                         hovertemplate="%{x}: %{y:.1%}<extra></extra>"), row=1, col=1)
    if cost is not None:
        fig.add_trace(go.Bar(x=days, y=cost.reindex(turnover.index).to_numpy(), name="cost", marker_color="#c62828",
                             hovertemplate="%{x}: %{y:.3%}<extra></extra>"), row=2, col=1)
        fig.update_yaxes(tickformat=".2%", row=2, col=1)
    fig.update_xaxes(type="category")
    fig.update_yaxes(tickformat=".0%", row=1, col=1)
    return _layout(fig, title, 180 + 150 * rows, showlegend=False, hovermode="closest")


def weights_history_figure(history: pd.DataFrame) -> go.Figure:
    """The meta's sleeve weights from each rebalance on (stacked, held until the next one)."""
    fig = go.Figure()
    for i, col in enumerate(history.columns):
        fig.add_trace(go.Scatter(x=history.index, y=history[col].to_numpy(), mode="lines", name=str(col),
                                 stackgroup="w", line={"shape": "hv", "width": 0.5, "color": PALETTE[i % len(PALETTE)]},
                                 hovertemplate="%{y:.1%}"))
    fig.update_yaxes(title_text="weight", tickformat=".0%", range=[0, 1.0])
    return _layout(fig, "Sleeve weights over time (walk-forward rebalances)", 320)


def correlation_figure(returns: pd.DataFrame) -> go.Figure:
    """Correlation of the sleeves' joined daily returns."""
    corr = returns.corr()
    names = [str(c) for c in corr.columns]
    fig = go.Figure(go.Heatmap(z=corr.to_numpy(), x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r",
                               text=[[f"{v:.2f}" for v in row] for row in corr.to_numpy()], texttemplate="%{text}",
                               hovertemplate="%{x} / %{y}: %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Correlation of the sleeves' daily returns", 120 + 70 * len(names), hovermode="closest")


def contribution_figure(contrib: pd.DataFrame) -> go.Figure:
    """Cumulative sum of each sleeve's daily contribution w r (they add up to the meta's arithmetic total)."""
    fig = go.Figure()
    cum = contrib.cumsum()
    for i, col in enumerate(cum.columns):
        fig.add_trace(go.Scatter(x=cum.index, y=cum[col].to_numpy(), mode="lines", name=str(col),
                                 line={"color": PALETTE[i % len(PALETTE)]}, hovertemplate="%{y:+.2%}"))
    total = cum.sum(axis=1)
    fig.add_trace(go.Scatter(x=total.index, y=total.to_numpy(), mode="lines", name="meta (sum)",
                             line={"color": BOOK, "width": 2.4}, hovertemplate="%{y:+.2%}"))
    fig.update_yaxes(title_text="cumulative Σ w·r", tickformat=".0%")
    return _layout(fig, "Each sleeve's contribution to the meta's return (out of sample)", 340)

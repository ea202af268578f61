"""Sleeve tearsheets (SPEC §2.6): in-sample statistics, weights, cluster exposure, risk contributions.

Pure tables plus plotly figures; the report stage writes them. Everything here is *in-sample* (the
training window the weights were fitted on) and labelled as such; out-of-sample figures come from
the validation backtest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from quantlib.core.gates import GateResult
from quantlib.portfolio.metrics import drawdown, performance_metrics, wealth


def portfolio_returns(synthetic: pd.DataFrame, weights: pd.DataFrame) -> pd.DataFrame:
    """Dates x risk profile: the in-sample return of each profile's (static) atom weights."""
    out = {}
    for profile, frame in weights.groupby("profile", sort=False):
        w = frame.set_index("atom_id")["weight"].reindex(synthetic.columns).fillna(0.0)
        out[profile] = synthetic.to_numpy() @ w.to_numpy()
    return pd.DataFrame(out, index=synthetic.index)


def risk_contributions(synthetic: pd.DataFrame, weights: pd.Series) -> pd.Series:
    """Share of portfolio variance from each atom: w_i (S w)_i / (w' S w), S the sample covariance."""
    w = weights.reindex(synthetic.columns).fillna(0.0).to_numpy()
    cov = np.cov(synthetic.to_numpy(), rowvar=False, ddof=1)
    marginal = cov @ w
    total = float(w @ marginal)
    return pd.Series(w * marginal / total if total > 0 else np.nan, index=synthetic.columns, name="risk_share")


def in_sample_table(portfolio: pd.DataFrame, annualization: int) -> pd.DataFrame:
    """Performance metrics per profile on the training window (in-sample)."""
    return pd.DataFrame({p: performance_metrics(portfolio[p], annualization) for p in portfolio.columns}).T


def profile_tables(profile: str, synthetic: pd.DataFrame, weights: pd.DataFrame, atoms: pd.DataFrame) -> dict:
    """Weights (with direction and risk share) and cluster exposure of one risk profile."""
    frame = weights[weights["profile"] == profile].merge(atoms, on="atom_id", how="left")
    frame = frame.assign(risk_share=frame["atom_id"].map(risk_contributions(synthetic, frame.set_index("atom_id")["weight"])))
    clusters = frame.groupby("cluster", sort=True).agg(weight=("weight", "sum"), atoms=("atom_id", "count"),
                                                       risk_share=("risk_share", "sum")).reset_index()
    return {"weights": frame.sort_values("weight", ascending=False, ignore_index=True), "clusters": clusters}


def weights_figure(table: pd.DataFrame, profile: str):
    import plotly.express as px

    fig = px.bar(table, x="atom_id", y="weight", color="direction", hover_data=["cluster", "risk_share"],
                 title=f"{profile}: atom weights (optimizer, synthetic-long)")
    return fig.update_layout(height=380, xaxis_tickangle=-45)


def clusters_figure(clusters: pd.DataFrame, profile: str):
    import plotly.graph_objects as go

    fig = go.Figure([go.Bar(name="weight", x=clusters["cluster"].astype(str), y=clusters["weight"]),
                     go.Bar(name="risk share", x=clusters["cluster"].astype(str), y=clusters["risk_share"])])
    return fig.update_layout(barmode="group", height=340, title=f"{profile}: cluster exposure (weight vs risk)",
                             xaxis_title="cluster")


def risk_figure(table: pd.DataFrame, profile: str):
    import plotly.express as px

    fig = px.scatter(table, x="weight", y="risk_share", color="direction", hover_name="atom_id",
                     title=f"{profile}: risk contribution vs weight (in-sample covariance)")
    return fig.update_layout(height=340)


def equity_figure(portfolio: pd.DataFrame, benchmark: pd.Series | None = None, title: str = "In-sample equity"):
    """Wealth and drawdown of each column (and the benchmark) as a two-row plotly figure."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.04)
    series = dict(portfolio.items())
    if benchmark is not None:
        series["benchmark"] = benchmark.reindex(portfolio.index)
    palette = px_colors()
    for i, (name, r) in enumerate(series.items()):
        line = {"color": palette[i % len(palette)]}  # one colour per series in both panels
        fig.add_trace(go.Scatter(x=r.index, y=wealth(r.dropna()), name=name, legendgroup=name, line=line),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=r.index, y=drawdown(r.dropna()), name=name, legendgroup=name, line=line,
                                 showlegend=False), row=2, col=1)
    fig.update_yaxes(title_text="wealth", row=1, col=1)
    fig.update_yaxes(title_text="drawdown", tickformat=".0%", row=2, col=1)
    return fig.update_layout(height=520, title=title)


def px_colors() -> list[str]:
    import plotly.express as px

    return list(px.colors.qualitative.Plotly)


def markdown_summary(run_id: str, profile_name: str, stats: pd.DataFrame, flattened: pd.DataFrame,
                     audit: GateResult, window: tuple) -> str:
    """tearsheet.md: the in-sample table, top physical positions per profile and the audit verdicts."""
    lines = [f"# Sleeve tearsheet: `{profile_name}`", "", f"Run `{run_id}` · training window {window[0]} → {window[1]} "
             "(all figures **in-sample**)", "", "## In-sample statistics", "",
             "| profile | CAGR | vol | Sharpe | Sortino | max DD | Calmar |", "|---|---|---|---|---|---|---|"]
    for p, row in stats.iterrows():
        lines.append(f"| {p} | {row['cagr']:.2%} | {row['vol']:.2%} | {row['sharpe']:.2f} | {row['sortino']:.2f} | "
                     f"{row['max_drawdown']:.2%} | {row['calmar']:.2f} |")
    lines += ["", "## Largest physical positions (net weight, shorts negative)", ""]
    for p, frame in flattened.groupby("profile", sort=False):
        top = frame.reindex(frame["net_weight"].abs().sort_values(ascending=False).index).head(5)
        lines.append(f"- **{p}**: " + ", ".join(f"{s} {w:+.2%}" for s, w in zip(top["symbol"], top["net_weight"])))
    lines += ["", f"## Audit gate: {'PASS' if audit.passed else 'FAIL'}", "", "| check | result | required | detail |",
              "|---|---|---|---|"]
    for c in audit.checks:
        lines.append(f"| {c.label()} | {'PASS' if c.passed else 'FAIL'} | {'yes' if c.required else 'no'} | {c.detail} |")
    return "\n".join(lines) + "\n"


def rolling_sharpe_figure(returns: pd.DataFrame, window: int, annualization: int):
    """Rolling annualized Sharpe ratio of each column (out-of-sample streams)."""
    import plotly.express as px

    roll = returns.rolling(window, min_periods=window)
    sharpe = roll.mean() / roll.std(ddof=1) * np.sqrt(annualization)
    fig = px.line(sharpe, title=f"Rolling {window}-day Sharpe (out of sample)")
    return fig.update_layout(height=340, yaxis_title="Sharpe", legend_title_text="")


def turnover_figure(turnover: pd.DataFrame):
    """Turnover (½ Σ|Δw|) at each rebalance, per risk profile."""
    import plotly.express as px

    at_rebalance = turnover[(turnover > 0).any(axis=1)]
    fig = px.bar(at_rebalance, barmode="group", title="Turnover per rebalance (½ Σ|Δw|)")
    return fig.update_layout(height=340, yaxis_tickformat=".0%", legend_title_text="")

"""The bundle page's plot of per-query deltas (matplotlib, Agg). The calibration diagrams are the
bundle's own (`reliability.png`, `selective.png`: harness.calibration)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def delta_plot(deltas: list[tuple[str, float]], measure: str, first_stage: str, system: str, out: Path) -> Path:
    """Bars of reranked - first stage per query, sorted from the largest gain to the largest loss."""
    plt = _pyplot()
    values = sorted((d for _, d in deltas), reverse=True)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.bar(range(len(values)), values, width=1.0, color=["tab:green" if v > 0 else "tab:red" for v in values])
    ax.axhline(0, color="black", lw=0.8)
    if values:
        mean = sum(values) / len(values)
        ax.axhline(mean, color="tab:blue", lw=1, ls="--", label=f"mean {mean:+.4f}")
        ax.legend(fontsize=8)
    gains, losses = sum(v > 0 for v in values), sum(v < 0 for v in values)
    ax.set_title(f"{measure}: {system} - {first_stage} per query ({gains} gained, {losses} lost, "
                 f"{len(values) - gains - losses} unchanged)", fontsize=9)
    ax.set_xlabel("queries, sorted by delta")
    ax.set_ylabel(f"delta {measure}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

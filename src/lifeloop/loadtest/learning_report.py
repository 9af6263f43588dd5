"""learning.html: `lifeloop bench-learning`'s figures as one page. Per variant, accuracy per
round for lifeloop, naive and joint (on all classes and on the classes seen), a heat map of
forgetting per class, and what the gate did each round; the targets on top."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lifeloop.loadtest.report import svg_text

# One colour per learner, the same in every plot.
COLOURS = {"lifeloop": "#1f77b4", "naive": "#d62728", "joint": "#2ca02c"}


def write_learning_report(result: dict[str, Any], path: Path) -> Path:
    Path(path).write_text(render_learning_html(result))
    return Path(path)


def render_learning_html(result: dict[str, Any]) -> str:
    title = f"lifeloop bench-learning on {result['data']}"
    targets = "".join(
        f'<tr><td class="{"met" if row["met"] else "missed"}">'
        f"{'met' if row['met'] else 'missed'}</td><td>{html.escape(row['target'])}</td>"
        f"<td>{html.escape(str(row['value']))}</td></tr>"
        for row in result["targets"]
    )
    sections = "".join(_variant(name, figures) for name, figures in result["variants"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: .25rem .75rem; text-align: left; vertical-align: top; }}
th {{ color: #555; font-weight: 500; }} tr:nth-child(even) {{ background: #f4f4f4; }}
.met {{ color: #2c7a2c; }} .missed {{ color: #b02020; font-weight: 600; }}
.plot svg {{ width: 100%; height: auto; }} figure {{ margin: 1.5rem 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{result["train_images"]} training images. Every figure is top-1 accuracy on the data
set's test split; forgetting is a class's best accuracy before the last round minus its
final one.</p>
<table><tr><th></th><th>target</th><th>measured</th></tr>{targets}</table>
{sections}
</body></html>
"""


def _variant(name: str, figures: dict[str, Any]) -> str:
    rounds = figures["rounds"]
    order = ", ".join(figures["class_order"])
    gate_rows = "".join(
        f"<tr><td>{r['round']}</td><td>{html.escape(', '.join(r['new_classes']))}</td>"
        f"<td>{_gate(r['gate'])}</td></tr>"
        for r in rounds
    )
    plots = "".join(
        f'<figure class="plot" id="{name}-{key}">{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for key, svg, caption in _plots(figures)
    )
    return f"""<h2 id="{name}">{html.escape(name)}</h2>
<p>Class order: {html.escape(order)}. {_scale(figures["settings"])} {figures["seconds"]} s.</p>
{plots}
<table><tr><th>round</th><th>new classes</th><th>the gate</th></tr>{gate_rows}</table>
"""


def _scale(settings: dict[str, Any]) -> str:
    limit = settings.get("limit_per_class")
    share = settings.get("feedback_share")
    used = f"At most {limit} training images per class" if limit else "Every training image"
    return html.escape(
        f"{used}; {share:.0%} of each round's traffic labelled; "
        f"{settings['retrain']['epochs']} epochs; noise {settings.get('noise', 0):.0%}, "
        f"rarest new class 1/{settings.get('rare_ratio', 1):g}."
    )


def _gate(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "first version: trained on the round's classes"
    verdict = "accepted" if gate["accepted"] else "refused: " + "; ".join(gate["refused"])
    return html.escape(
        f"{verdict} (held-out {gate['champion_accuracy']:.3f} -> "
        f"{gate['candidate_accuracy']:.3f}; {gate['feedback']} labels, "
        f"{gate['replayed']} replayed)"
    )


def _plots(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = figures["rounds"]
    x = [r["round"] for r in rounds]
    learners = list(rounds[0]["learners"])
    plots = []
    for key, what in (("all_accuracy", "all classes"), ("seen_accuracy", "the classes seen")):
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for learner in learners:
            ax.plot(
                x,
                [r["learners"][learner][key] for r in rounds],
                marker="o",
                linewidth=2.5,
                label=learner,
                color=COLOURS.get(learner),
            )
        ax.set_xticks(x)
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        plots.append((key, svg_text(fig, plt), f"Accuracy on {what} after each round"))

    forgetting = figures["forgetting"]
    classes = list(next(iter(forgetting.values())))
    if classes:
        values = [
            [forgetting[learner][c]["max_minus_final"] for c in classes] for learner in learners
        ]
        fig, ax = plt.subplots(figsize=(9, 0.6 + 0.55 * len(learners)))
        image = ax.imshow(values, cmap="Reds", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(learners)), learners)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 0.5 else "black",
                )
        fig.colorbar(image, ax=ax, label="points lost (0..1)")
        plots.append(
            (
                "forgetting",
                svg_text(fig, plt),
                "Forgetting per class: best before the end minus final",
            )
        )
    return plots

"""A made-up run directory in the exact layout `visplay evolve` writes, for tests and docs.

Nothing is trained or sampled: numbers come from a seeded RNG, questions from the world grammar
(so true answers are real), images from `make_scene(...).render()`. `stop_before="iter2/labels"`
leaves a crashed run: every stage before it done, that stage's partial parts on disk, later ones
absent, and a lock file whose holder is gone. Imports neither torch nor matplotlib.

Build one and its report (this is how docs/report-screenshot.png was made):
    python tests/synthetic.py /tmp/demo-run && visplay report /tmp/demo-run
Test: `pytest -q tests/test_report.py tests/test_status.py`.
"""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

from visplay.evolve.stages import unlabeled
from visplay.io import atomic_write_json, atomic_write_parquet
from visplay.evolve.plan_of_stages import stage_names
from visplay.worlds.questions import FAMILIES, make_question
from visplay.worlds.scene import WorldConfig, make_scene

T0 = 1_750_000_000.0  # fixed clock, so two builds are identical


def synthetic_config(iterations: int = 2) -> dict:
    """The parts of a real config the report reads (a real manifest carries the full dict)."""
    phase = {"steps": 6, "prompts_per_step": 4, "num_generations": 4, "lr": 5e-5, "beta": 0.04,
             "max_completion_length": 64, "save_steps": 3, "seed": 0}
    return {
        "model": "tiny",
        "world": {"grid": 5, "min_objects": 1, "max_objects": 8, "noise": 4.0, "cell_marks": True},
        "evolve": {"iterations": iterations, "source": "world:unlabeled", "questioner_images": 8,
                   "images_per_iteration": 6, "questions_per_image": 2, "reward_samples": 10, "label_samples": 9,
                   "band_low": 0.25, "band_high": 0.75, "diversity_threshold": 0.5, "chunk_size": 4, "seed": 0,
                   "questioner": dict(phase), "reasoner": dict(phase),
                   "eval": {"split": "heldout", "n": 40, "k": 5, "seed": 0}, "labels": "majority",
                   "diversity_penalty": True, "train_questioner": True},
    }


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _wrong(answer: str) -> str:
    if answer.isdigit():
        return str(int(answer) + 1)
    if len(answer) == 1 and answer in "ABCDE":
        return "ABCDE"[("ABCDE".index(answer) + 1) % 5]
    return "none"


class _Builder:
    def __init__(self, root: Path, iterations: int, seed: int):
        self.root, self.rng, self.clock = root, random.Random(seed), T0
        self.config = synthetic_config(iterations)
        self.manifest = {"version": 1, "config": self.config, "created": T0, "stages": {},
                         "command": ["visplay", "evolve", "--preset", "tiny", "--run", str(root),
                                     "--iterations", str(iterations)]}
        self.base: dict[str, int] = {}  # correct greedy answers per family at iteration 0
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "manifest.json", self.manifest)
        (root / "lock").write_text("999999999")  # the pid of a long-gone evolve process: the lock is free

    def tick(self, seconds: float) -> float:
        self.clock += seconds
        return self.clock

    def log(self, record: dict) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"time": self.tick(1.5), **record}) + "\n")

    def mark(self, stage: str, info: dict) -> None:
        seconds = round(self.rng.uniform(5, 90), 1)
        self.manifest["stages"][stage] = {"state": "done", "time": self.tick(seconds), "seconds": seconds, **info}
        atomic_write_json(self.root / "manifest.json", self.manifest)
        self.log({"stage": stage, **{k: v for k, v in info.items() if isinstance(v, (int, float, str)) or v is None}})

    # ------------------------------------------------------------ stages

    def eval(self, t: int) -> dict:
        n, k = 40, 5
        fams = sorted(FAMILIES)
        per = n // len(fams)
        by_family, rows = {}, []
        for f in fams:
            g = max(0, min(per, self.base.setdefault(f, self.rng.randint(0, 2)) + t - (self.rng.random() < 0.25)))
            mj = min(per, g + self.rng.randint(0, 2))
            ps = min(per, mj + self.rng.randint(1, 3))
            pr = self.rng.randint(0, per // 2)
            by_family[f] = {"n": per, "prior": pr / per, "greedy": g / per, "maj": mj / per, "pass": ps / per}
            rows += [{"id": f"world/heldout/{len(rows) + i}", "family": f, "greedy_correct": i < g,
                      "maj_correct": i < mj, "pass_at_k": i < ps, "prior_correct": i < pr,
                      "agreement": self.rng.randint(1, k) / k} for i in range(per)]
        total = len(rows)
        overall = {key: sum(s[key] * s["n"] for s in by_family.values()) / total
                   for key in ("prior", "greedy", "maj", "pass")}
        overall["n"] = total
        d = self.root / f"iter{t}" / "eval"
        atomic_write_parquet(d / "items.parquet", rows)
        atomic_write_json(d / "summary.json", {
            "overall": overall, "by_family": by_family, "greedy_format_ok": 0.95,
            "label_accuracy_by_band": {"0.25-0.75": {"n": 12, "accuracy": 0.5}, ">=0.5": {"n": 20, "accuracy": 0.65}},
            "agreement_histogram": {"0.2": 8, "0.6": 20, "1.0": 12}, "meta": {"model": f"iter{t}/reasoner"}})
        return {key: overall[key] for key in ("greedy", "maj", "pass", "n")}

    def bench(self, t: int) -> None:
        names = {"mmmu": "MMMU", "mathvista": "MathVista", "world": "World"}
        per = {n: {"title": title, "accuracy": round(self.rng.uniform(0.2, 0.6), 4), "skipped": {"image failed to decode": 1}
                   if n == "mmmu" else {}, "n_items": 50} for n, title in names.items()}
        avg = sum(b["accuracy"] for b in per.values()) / len(per)
        atomic_write_json(self.root / f"iter{t}" / "bench" / "summary.json",
                          {"order": list(names), "benchmarks": per, "average": {"accuracy": avg, "rule": avg},
                           "judge": None})

    def grpo(self, t: int, role: str) -> None:
        steps = self.config["evolve"][role]["steps"]
        for s in range(1, steps + 1):
            x = s / steps
            rec = {"stage": f"iter{t}/{role}", "step": s, "epoch": s / steps, "loss": self.rng.uniform(-0.02, 0.02),
                   "kl": 0.002 * s * (1 + self.rng.random()), "entropy": 2.0 - 0.1 * x,
                   "completions/mean_length": 30 + 8 * x + self.rng.uniform(-2, 2)}
            if role == "questioner":
                unc = min(1.0, 0.3 + 0.4 * x + self.rng.uniform(-0.05, 0.05))
                pen = max(0.0, 0.3 - 0.2 * x + self.rng.uniform(-0.03, 0.03))
                rec.update({"questioner/uncertainty": unc, "questioner/diversity_penalty": pen,
                            "questioner/valid": min(1.0, 0.7 + 0.3 * x), "questioner/agreement": 0.6, "reward": unc - pen})
            else:
                acc = min(1.0, 0.4 + 0.3 * x + self.rng.uniform(-0.05, 0.05))
                fmt_ = min(1.0, 0.85 + 0.15 * x)
                rec.update({"reasoner/accuracy": acc, "reasoner/format": fmt_, "reward": acc + 0.5 * fmt_})
            self.log(rec)
        self.log({"stage": f"iter{t}/{role}", "train_runtime": 12.5, "train_loss": 0.001, "step": steps})

    def questions(self, t: int) -> tuple[list[dict], list[str]]:
        ev = self.config["evolve"]
        world = WorldConfig()
        rows, ids = [], []
        for i in range(ev["images_per_iteration"]):
            index = 100 * t + i
            scene = make_scene("unlabeled", index, world)
            png = _png(scene.render())
            ids.append(scene.id)
            for j in range(ev["questions_per_image"]):
                row = {"image_id": scene.id, "origin": "world", "sample": j, "image_png": png}
                if self.rng.random() < 0.2:
                    row.update(raw="<question>how many</question>", valid=False, reason="tags missing or out of order",
                               qtype=None, question=None, questioner_answer=None, true_answer=None)
                else:
                    q = make_question(scene, self.rng)
                    mine = q.answer if self.rng.random() < 0.6 else _wrong(q.answer)
                    row.update(raw=f"<type>{q.qtype}</type><question>{q.text}</question><answer>{mine}</answer>",
                               valid=True, reason=None, qtype=q.qtype, question=q.text, questioner_answer=mine,
                               true_answer=q.answer)
                rows.append(row)
        return rows, ids

    def labels(self, rows: list[dict]) -> list[dict]:
        ev = self.config["evolve"]
        m, lo, hi = ev["label_samples"], ev["band_low"], ev["band_high"]
        out = []
        for r in rows:
            base = unlabeled(r)
            if not r["valid"]:
                out.append({**base, "skip_reason": f"invalid question: {r['reason']}"})
                continue
            if self.rng.random() < 0.1:
                out.append({**base, "answered": 0, "skip_reason": "no boxed answer in any sample"})
                continue
            count = self.rng.randint(2, m)
            right = self.rng.random() < 0.25 + 0.75 * count / m
            label = r["true_answer"] if right else _wrong(r["true_answer"])
            answers = [label] * count + [_wrong(label)] * (m - count)
            c = count / m
            out.append({**base, "samples": [f"<think>…</think>\\boxed{{{a}}}" for a in answers], "answers": answers,
                        "label": label, "count": count, "answered": m, "agreement": c, "kept": lo <= c <= hi,
                        "label_correct": right, "questioner_correct": r["questioner_answer"] == r["true_answer"]})
        return out


def label_stats(rows: list[dict]) -> dict:
    """The same statistics as `visplay.evolve.stages.label_accuracy` (kept here to avoid its imports)."""
    rows = [r for r in rows if r["label"] is not None]
    known = [r for r in rows if r.get("label_correct") is not None]
    kept = [r for r in known if r["kept"]]

    def rate(rs, k):
        return sum(bool(r[k]) for r in rs) / len(rs) if rs else None

    return {"n_labeled": len(rows), "n_kept": sum(r["kept"] for r in rows), "n_with_truth": len(known),
            "label_accuracy": rate(known, "label_correct"), "label_accuracy_kept": rate(kept, "label_correct"),
            "questioner_answer_accuracy": rate(known, "questioner_correct"),
            "mean_agreement": sum(r["agreement"] for r in rows) / len(rows) if rows else None}


def make_synthetic_run(root: str | Path, iterations: int = 2, stop_before: str | None = None, seed: int = 0,
                       bench: bool = True) -> Path:
    """Write a synthetic run to ``root`` (must not exist yet); stop before stage ``stop_before`` if given."""
    root = Path(root)
    if (root / "manifest.json").exists():
        raise FileExistsError(f"{root} already holds a run")
    b = _Builder(root, iterations, seed)
    order = stage_names(iterations)
    if stop_before is not None and stop_before not in order:
        raise ValueError(f"stop_before must be one of {order}, got {stop_before!r}")
    questions: list[dict] = []
    for stage in order:
        t = int(stage[4:].split("/")[0])
        kind = stage.split("/")[1]
        it = root / f"iter{t}"
        if stage == stop_before:
            if kind in ("questions", "labels") and questions:  # a chunk written before the crash
                part = questions[:4] if kind == "questions" else b.labels(questions[:4])
                atomic_write_parquet(it / f"{kind}.parts" / "00000.parquet", part)
            break
        if kind == "eval":
            info = b.eval(t)
            if bench and (t == 0 or t == iterations):
                b.bench(t)
        elif kind == "questioner":
            b.grpo(t, "questioner")
            info = {"model": str(it / "questioner"), "images": 8, "skipped_images": {}}
        elif kind == "questions":
            questions, ids = b.questions(t)
            atomic_write_parquet(it / "questions.parquet", questions)
            info = {"rows": len(questions), "valid": sum(r["valid"] for r in questions), "image_ids": ids,
                    "skipped_images": {"image failed to decode": 1} if t == 1 else {}}
        elif kind == "labels":
            labeled = b.labels(questions)
            atomic_write_parquet(it / "labels.parquet", labeled)
            reasons: dict[str, int] = {}
            for r in labeled:
                if r["skip_reason"]:
                    reasons[r["skip_reason"]] = reasons.get(r["skip_reason"], 0) + 1
            info = {**label_stats(labeled), "skipped": reasons}
            n_kept = info["n_kept"]
        else:  # reasoner
            b.grpo(t, "reasoner")
            info = {"model": str(it / "reasoner"), "train_rows": n_kept}
        b.mark(stage, info)
    return root


if __name__ == "__main__":
    out = make_synthetic_run(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic")
    print(f"synthetic run: {out}  (report: visplay report {out})")

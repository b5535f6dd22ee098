"""Inline-marks traces: one pass over the objects in random order; each object is described and
marked with a running tally for the question, so no step needs a long-range text search.
argv: out steps lr init seed [order: random|read]"""
ORDER = 'random'
RESTATE = False
import sys, random
import visplay.tiny.pretrain as P
from visplay.models import load_model
from visplay.roles.prompts import questioner_messages, questioner_target, reasoner_messages
from visplay.worlds.questions import make_question, parse, LETTERS

def trace(scene, qtext, rng):
    fam, p = parse(qtext)
    objs = list(scene.objects)
    if ORDER == 'random':
        rng.shuffle(objs)
    parts, n = [], 0
    k = {"x": 0}
    name = fam.name
    best = None
    for i, o in enumerate(objs, 1):
        d = f"{o.cell}: {o.size} {o.colour} {o.shape}"
        if name == "count":
            hit = (p["colour"] in (None, o.colour)) and (p["shape"] in (None, o.shape)) and (p["size"] in (None, o.size))
        elif name in ("sum",):
            hit = o.colour in (p["a"], p["b"])
        elif name == "ratio":
            hit = o.colour == p["colour"]
        elif name == "column":
            hit = o.colour == p["colour"] and o.shape == p["shape"]
        elif name == "attribute":
            hit = o.cell == p["cell"]
        elif name == "leftmost":
            hit = o.shape == p["shape"]
        elif name == "compare":
            hit = o.colour in (p["a"], p["b"])
        if not hit:
            mark = "-"
        elif name in ("count", "sum", "ratio"):
            k["x"] += 1; mark = str(k["x"])
        elif name == "compare":
            k[o.colour] = k.get(o.colour, 0) + 1; mark = f"{o.colour} {k[o.colour]}"
        elif name in ("column", "attribute"):
            mark = "+"
        elif name == "leftmost":
            if best is None or o.col < best.col:
                best = o
            mark = f"best {best.cell} {best.colour}"
        parts.append(f"{i} {d} {mark}")
    body = ". ".join(parts) or "none"
    ans = fam.solve(scene, p)
    if name in ("count", "sum"):
        tail = f"total {k['x']}"
    elif name == "ratio":
        tail = f"{k['x']}/{len(objs)}"
    elif name == "compare":
        a, b = k.get(p["a"], 0), k.get(p["b"], 0)
        rel = ">" if a > b else ("<" if a < b else "=")
        tail = f"{p['a']} {a} {rel} {p['b']} {b}. {'yes' if a > b else 'no'}: {ans}"
    elif name == "column":
        o = next(o for o in objs if o.colour == p["colour"] and o.shape == p["shape"])
        tail = f"{o.cell} column {o.col + 1}"
    elif name == "attribute":
        o = scene.at(p["cell"]); v = getattr(o, p["attr"])
        tail = f"{p['cell']} {v}: {ans}"
    elif name == "leftmost":
        tail = f"left-most {best.colour}: {ans}"
    if RESTATE:
        words = {"count": " ".join(w for w in (p.get("size"), p.get("colour"), p.get("shape")) if w) if name == "count" else "",
                 "sum": f"{p.get('a')} or {p.get('b')}", "ratio": p.get("colour"), "compare": f"{p.get('a')} vs {p.get('b')}",
                 "column": f"{p.get('colour')} {p.get('shape')}", "attribute": p.get("cell"), "leftmost": p.get("shape")}[name] or "all"
        body = f"find {words}. {body}"
    return f"<think>{body}. {tail}</think>\\boxed{{{ans}}}"

def example(i, cfg):
    from visplay.worlds.scene import make_scene
    rng = random.Random(f"{cfg.seed}:{i}")
    scene = make_scene("train", i, cfg.world)
    q = make_question(scene, rng, cfg.families)
    role = rng.random()
    if role < cfg.questioner_share:
        return {"messages": questioner_messages(), "target": questioner_target(q.qtype, q.text, q.answer), "image": scene.render()}
    if role < cfg.questioner_share + cfg.describe_share:
        return {"messages": reasoner_messages(P.DESCRIBE), "target": P.describe_target(scene), "image": scene.render()}
    return {"messages": reasoner_messages(q.text), "target": trace(scene, q.text, rng), "image": scene.render()}

if __name__ == "__main__":
    out, steps, lr, init, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    P.example = example
    ORDER = sys.argv[6] if len(sys.argv) > 6 else 'random'
    RESTATE = len(sys.argv) > 7 and sys.argv[7] == 'restate'
    P.init_model_dir = lambda out, cfg: load_model(init)
    from visplay.config import load_config
    cfg = load_config("tiny").pretrain
    cfg.steps, cfg.lr, cfg.warmup_steps, cfg.save_steps, cfg.logging_steps = steps, lr, 30, 100, 20
    cfg.seed = seed
    cfg.describe_share = 0.1
    P.pretrain(out, cfg)

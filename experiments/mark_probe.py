"""Teacher-forced mark probe: given a correct reading-order inline trace up to an object, does the
model mark it as matching the question ("How many <colour> objects are there?")? argv: model [n] [restate]"""
import sys, random, torch
from transformers import AutoProcessor, AutoModelForImageTextToText
from visplay.roles.prompts import reasoner_messages
from visplay.worlds.scene import make_scene, COLOURS, WorldConfig

model_dir, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
restate = len(sys.argv) > 3 and sys.argv[3] == "restate"
proc = AutoProcessor.from_pretrained(model_dir); model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
tok = proc.tokenizer; tok.padding_side = "left"
world = WorldConfig()  # the default world, 1-8 objects (as in the held-out eval)
dash = tok(" -", add_special_tokens=False)["input_ids"]
nums = {k: tok(f" {k}", add_special_tokens=False)["input_ids"] for k in range(1, 9)}
assert dash[0] == nums[1][0]
rng = random.Random(0); items = []; i = 0
while len(items) < n:
    scene = make_scene("heldout", i, world); i += 1
    if not scene.objects: continue
    colour = rng.choice(list(COLOURS))
    q = f"How many {colour} objects are there?"
    objs = list(scene.objects); j = rng.randrange(len(objs))
    parts, k = [], 0
    for t, o in enumerate(objs[:j], 1):
        if o.colour == colour: k += 1; parts.append(f"{t} {o.cell}: {o.size} {o.colour} {o.shape} {k}")
        else: parts.append(f"{t} {o.cell}: {o.size} {o.colour} {o.shape} -")
    o = objs[j]
    prefix = ". ".join(parts + [f"{j+1} {o.cell}: {o.size} {o.colour} {o.shape} "])
    text = proc.apply_chat_template(reasoner_messages(q), add_generation_prompt=True, tokenize=False) + f"<think>{'find ' + colour + '. ' if restate else ''}{prefix}"
    items.append((text, scene.render(), o.colour == colour, nums[k + 1][1]))
res = {True: [0, 0], False: [0, 0]}
with torch.no_grad():
    for b in range(0, n, 32):
        ch = items[b:b+32]
        enc = proc(text=[t for t, *_ in ch], images=[im for _, im, *_ in ch], padding=True, return_tensors="pt")
        lg = model(**enc).logits[:, -1, :]
        for row, (_, _, hit, num) in zip(lg, ch):
            says_hit = row[num] > row[dash[1]]
            res[hit][0] += int(says_hit == hit); res[hit][1] += 1
        model.model.rope_deltas = None
for h in (True, False):
    print(f"{'matching' if h else 'non-matching'} objects: mark right {res[h][0]}/{res[h][1]} = {res[h][0]/max(1,res[h][1]):.1%}")
# debug: top tokens for the first matching item
hit_items = [it for it in items if it[2]][:3]
enc = proc(text=[t for t, *_ in hit_items], images=[im for _, im, *_ in hit_items], padding=True, return_tensors="pt")
with torch.no_grad():
    lg = model(**enc).logits[:, -1, :]
for row, it in zip(lg, hit_items):
    top = row.softmax(-1).topk(5)
    print(it[0][-120:].replace("\n"," "), "->", [(tok.convert_ids_to_tokens(int(i)), round(float(p),3)) for p, i in zip(top.values, top.indices)], "gold", tok.convert_ids_to_tokens(it[3]))
